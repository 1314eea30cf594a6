"""Connecting to Redis: a configured server, a Redis Cluster, or the embedded one.

URL schemes:

- `redis://[[user]:password@]host[:port][/db]`: TCP.
- `rediss://...`: TCP with TLS.
- `unix:///path/to/redis.sock[?db=0&password=...]`: a Unix socket.
- `redis+cluster://host:port` (or `rediss+cluster://`): a Redis Cluster, through
  `redis.asyncio.cluster.RedisCluster`, which discovers the other nodes from this one. Tandem's
  stores keep every multi-key operation on one hash tag, so they work unchanged on a cluster.

No URL starts (or attaches to) the embedded server of the Tandem home; see `memory.redis_server`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry  # not redis.retry.Retry: that one cannot retry a coroutine
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterDownError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import ScriptTextT

from tandem.agent.core.errors import ConfigError, RedisUnavailableError
from tandem.memory.redis_server import EmbeddedRedis

__all__ = ('RedisClient', 'ServerReport', 'connect', 'mask_url', 'server_report')

RedisClient: TypeAlias = Redis | RedisCluster
"""Either client: both offer the commands, scripts and non-transactional pipelines the stores use."""

CONNECT_TIMEOUT = 2.0
"""Seconds to wait for a connection: long enough for a remote server, short enough to fail fast."""

COMMAND_TIMEOUT = 10.0
"""Seconds to wait for a reply, so a hung server fails a command instead of hanging Tandem."""

_SCHEMES = ('redis', 'rediss', 'unix')
_CLUSTER_SCHEMES = {'redis+cluster': 'redis', 'rediss+cluster': 'rediss'}


async def connect(url: str | None, *, home: Path, retries: int = 3) -> Redis:
    """Connect to Redis at `url`, or to the embedded server of `home` when `url` is `None`, and PING it.

    Commands that fail on a dropped connection or a timeout are retried `retries` times with
    exponential backoff, so a server restart doesn't fail a turn.

    The client is created with `decode_responses=False`: values are bytes. For a
    `redis+cluster://` URL it is a `RedisCluster`, typed as `Redis` because it offers the same
    commands Tandem uses; code that needs `Redis`-only features (pub/sub, transactions across
    slots) must not assume them on a cluster.

    Args:
        url: A `redis://`, `rediss://`, `unix://` or `redis+cluster://` URL, or `None`.
        home: The Tandem home, where the embedded server keeps its data.
        retries: How many times to retry a command after a connection error or timeout.

    Raises:
        ConfigError: If `url` isn't a Redis URL Tandem understands.
        RedisUnavailableError: If Redis doesn't answer, or the embedded server can't start.
    """
    embedded = url is None
    if url is None:
        # Starting the server polls and sleeps: keep that off the event loop.
        url = await asyncio.to_thread(EmbeddedRedis(home).ensure_running)
    client = _client(url, retries)
    try:
        await client.ping()  # pyright: ignore[reportUnknownMemberType] -- redis-py leaves **kwargs untyped
    except (RedisError, OSError) as exc:
        await client.aclose()
        hint = (
            'Run `tandem` again to restart the embedded server, or set TANDEM_REDIS_URL.'
            if embedded
            else 'Start it, fix TANDEM_REDIS_URL, or unset it to use the embedded server.'
        )
        raise RedisUnavailableError(f'cannot reach Redis at {mask_url(url)}: {_reason(exc)}. {hint}') from exc
    return cast(Redis, client)


@dataclass(frozen=True)
class ServerReport:
    """What `tandem redis status` shows of a server that answers."""

    product: str
    """`redis` or `valkey`."""
    version: str
    used_memory: str
    """As the server words it, e.g. `1.02M`."""
    keys: int
    """In the connected database (summed over the primaries of a cluster)."""
    query_engine: bool
    """Whether `FT.SEARCH` is there (Redis 8, Redis Stack), so vectors are searched in Redis."""


_QUERY_ENGINE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def opened(url: str | None, *, home: Path) -> AsyncGenerator[Redis]:
    """`connect(url, home=home)`, closed on exit."""
    client = await connect(url, home=home)
    try:
        yield client
    finally:
        await client.aclose()


async def query_engine_available(redis: RedisClient) -> bool:
    """Whether the server has the Redis Query Engine (`FT.SEARCH`): Redis 8, Redis Stack, or the
    search module. Asked once per client. Always `False` on a Redis Cluster, whose search indexes
    are per shard: there vectors are searched in process."""
    if isinstance(redis, RedisCluster):
        return False
    known = _QUERY_ENGINE.get(redis)
    if known is None:
        try:
            await redis.execute_command('FT._LIST')  # pyright: ignore[reportUnknownMemberType]
            known = True
        except ResponseError:
            known = False
        _QUERY_ENGINE[redis] = known
    return known


async def server_report(redis: RedisClient) -> ServerReport:
    """Ask a connected server what it is, how much memory and how many keys it holds, and its modules."""
    info: dict[str, Any] = await redis.info()  # pyright: ignore[reportUnknownMemberType]
    product = 'valkey' if 'valkey_version' in info else 'redis'
    version = str(info.get('valkey_version') or info.get('redis_version') or '?')
    keys = int(await redis.dbsize())  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    return ServerReport(
        product=product,
        version=version,
        used_memory=str(info.get('used_memory_human', '?')),
        keys=keys,
        query_engine=await query_engine_available(redis),
    )


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***`, fit for messages and logs."""
    parts = urlsplit(url)
    masked = url
    if parts.password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition('@')
        user = userinfo.partition(':')[0]
        masked = masked.replace(parts.netloc, f'{user}:***@{hostinfo}', 1)
    if parts.query:
        pairs = parts.query.split('&')
        query = '&'.join('password=***' if pair.lower().startswith('password=') else pair for pair in pairs)
        masked = masked.replace(f'?{parts.query}', f'?{query}', 1)
    return masked


class _ClusterNodeConnection(Connection):
    """A cluster node's connection that reports a socket closed under a command as a lost connection.

    When a failover moves slots, redis-py's `RedisCluster` reloads its slot map with `aclose()`, which
    closes every node's connections, those other commands are sending on too. Such a command found no
    socket and raised `AttributeError`, which the client doesn't retry; a `ConnectionError` makes it
    reconnect and retry, as it does for any dropped connection.
    """

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        # Only called with a socket timeout set, which `_client` always sets.
        writer = self._writer
        if writer is None:
            raise RedisConnectionError(f'the connection to {self.host}:{self.port} was closed under a command')
        writer.writelines(command)
        await writer.drain()


class _ClusterNodeSSLConnection(_ClusterNodeConnection, SSLConnection):
    """`_ClusterNodeConnection` over TLS."""


class _FailoverTolerantCluster(RedisCluster):
    """`RedisCluster` that rides out a failover under concurrent commands.

    Three things redis-py's cluster client leaves undone, all hit when a master fails over mid-turn:
    its nodes' connections report a socket closed by a slot map reload as a lost connection (see
    `_ClusterNodeConnection`); a command whose immediate retries all met the burst of reconnects that
    follows a reload is tried again after a backoff, `rounds` times, as the single-server client's
    retries are; and a script the promoted replica has never seen is loaded again and retried the same
    way (redis-py reloads it once, on the primaries its slot map knew of, which may not include it yet).
    """

    def __init__(self, *args: Any, rounds: int, backoff: ExponentialBackoff, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # pyright: ignore[reportUnknownMemberType]
        self._rounds = rounds
        self._backoff = backoff
        self._script_sources: dict[str, ScriptTextT] = {}
        tls = issubclass(self.connection_kwargs['connection_class'], SSLConnection)
        connection_class = _ClusterNodeSSLConnection if tls else _ClusterNodeConnection
        self.connection_kwargs['connection_class'] = connection_class  # shared with the nodes manager
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class

    def register_script(self, script: ScriptTextT) -> AsyncScript:
        registered = super().register_script(script)
        self._script_sources[registered.sha] = script
        return registered

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        failures = 0
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except (RedisConnectionError, ClusterDownError):
                failures += 1
                if failures > self._rounds:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))
            except NoScriptError:
                source = self._script_sources.get(args[1]) if str(args[0]).upper() == 'EVALSHA' else None
                failures += 1
                if source is None or failures > self._rounds:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))
                await super().execute_command('SCRIPT LOAD', source)


def _client(url: str, retries: int) -> RedisClient:
    scheme = urlsplit(url).scheme.lower()
    backoff = ExponentialBackoff(cap=1.0, base=0.05)
    retry = Retry(backoff, retries)
    retry_on_error: list[type[Exception]] = [RedisConnectionError, RedisTimeoutError]
    try:
        if scheme in _CLUSTER_SCHEMES:
            return _FailoverTolerantCluster.from_url(
                _CLUSTER_SCHEMES[scheme] + url[len(scheme) :],
                rounds=retries,
                backoff=backoff,
                decode_responses=False,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT,
                retry=retry,
                retry_on_error=retry_on_error,
            )
        if scheme in _SCHEMES:
            return Redis.from_url(  # pyright: ignore[reportUnknownMemberType]
                url,
                decode_responses=False,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT,
                retry=retry,
                retry_on_error=retry_on_error,
            )
    except (ValueError, RedisError) as exc:
        raise ConfigError(f'invalid Redis URL {mask_url(url)}: {_reason(exc)}. Fix TANDEM_REDIS_URL.') from exc
    raise ConfigError(
        f'invalid Redis URL {mask_url(url)}: use redis://, rediss://, unix:// or redis+cluster://. Fix TANDEM_REDIS_URL.'
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().rstrip('.')
    return text or type(exc).__name__
