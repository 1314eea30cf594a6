"""Shared fixtures. Redis: a real server process on a loopback port, never a fake.

- `redis_server` (session): the URL of one server shared by the whole run.
- `redis_url` (function): the same URL, with the database flushed before the test.
- `redis` (function, async): a `redis.asyncio.Redis` client on a flushed database, made by
  `memory.connection.connect`, closed after the test.
- `redis_control` (function): the shared server's `RedisTestServer`, to `kill()` or `restart()`
  it mid-test; it is running again (same port, same data) after the test.
- `redis_server_factory` (function): `factory(data_dir=None, appendonly=True, cluster=False)`
  starts a private server, for tests that must not disturb the shared one; all are killed after
  the test. With `cluster=True` it is a one-node Redis Cluster owning every slot, reached through
  a `redis+cluster://` URL: it enforces the same one-slot rules as a real cluster.
- `search_redis` (function, async): a client on a second shared server that has the Redis Query
  Engine (the same Valkey with RediSearch from the `search` extra loaded), flushed before the test.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
import redis as sync_redis
from redis.asyncio import Redis

from tandem.memory.connection import connect
from tandem.memory.redis_server import find_search_module, find_server_binary

pytest_plugins = ['tests.support.planted']  # the planted page and its canary (`canary`, `notes`)

_START_TIMEOUT = 5.0


class RedisTestServer:
    """A Redis (or Valkey) server process on a free `127.0.0.1` port, for tests.

    It runs in the foreground as a child of the test process, so killing it is immediate and
    certain. `restart()` brings it back on the same port with the same data directory.

    Args:
        data_dir: Where it keeps its append-only file and log.
        appendonly: Whether to persist writes, so they survive `kill()` and `restart()`.
        cluster: Whether to run it as a Redis Cluster node: by default one that owns every slot.
        claim_slots: With `cluster`, whether it takes every slot; `False` leaves it to a multi-node
            cluster's creation (`tests.support.cluster`).
        modules: Server modules to load, e.g. RediSearch.
    """

    port: int
    bus_port: int
    url: str
    """`redis://127.0.0.1:<port>/0`, or `redis+cluster://127.0.0.1:<port>` for a cluster."""
    _plain_url: str

    def __init__(
        self,
        data_dir: Path,
        *,
        appendonly: bool = True,
        cluster: bool = False,
        claim_slots: bool = True,
        modules: Sequence[Path] = (),
    ) -> None:
        self.data_dir = data_dir
        self.modules = list(modules)
        self.appendonly = appendonly
        self.cluster = cluster
        self.claim_slots = claim_slots
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False
        self._pick_ports()

    @property
    def running(self) -> bool:
        """Whether the process is alive (not necessarily answering yet)."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING.

        A first start retries on fresh ports if the server exits at once: a port found free can
        be taken by another process before the server binds it. A restart keeps its port.
        """
        for attempt in range(1 if self._started else 3):
            if attempt:
                self._pick_ports()
            if self._launch():
                self._started = True
                if self.cluster and self.claim_slots:
                    self._claim_all_slots()
                return
        log = (self.data_dir / 'server.log').read_text(errors='replace')[-2000:]
        raise RuntimeError(f'test Redis server did not start on port {self.port}:\n{log}')

    def _pick_ports(self) -> None:
        self.port = _free_port()
        # A cluster node also listens on a bus port, by default port + 10000, which may not exist.
        self.bus_port = _free_port()
        self.url = f'redis+cluster://127.0.0.1:{self.port}' if self.cluster else f'redis://127.0.0.1:{self.port}/0'
        self._plain_url = f'redis://127.0.0.1:{self.port}/0'

    def _launch(self) -> bool:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster = [
            '--cluster-enabled', 'yes',
            '--cluster-port', str(self.bus_port),
            '--cluster-config-file', str(self.data_dir / 'nodes.conf'),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            [
                str(find_server_binary()),
                '--port', str(self.port),
                '--bind', '127.0.0.1',
                '--dir', str(self.data_dir),
                '--logfile', str(self.data_dir / 'server.log'),
                '--save', '',
                '--appendonly', 'yes' if self.appendonly else 'no',
                *(cluster if self.cluster else []),
                *(argument for module in self.modules for argument in ('--loadmodule', str(module))),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                return False
            time.sleep(0.02)
        return True

    def _claim_all_slots(self) -> None:
        client = sync_redis.Redis.from_url(self._plain_url)
        try:
            if b'cluster_slots_assigned:16384' not in cast(bytes, client.execute_command('CLUSTER', 'INFO')):
                client.execute_command('CLUSTER', 'ADDSLOTS', *range(16384))
            deadline = time.monotonic() + _START_TIMEOUT
            while b'cluster_state:ok' not in cast(bytes, client.execute_command('CLUSTER', 'INFO')):
                if time.monotonic() > deadline:
                    raise RuntimeError('test Redis cluster did not reach cluster_state:ok')
                time.sleep(0.02)
        finally:
            client.close()

    def ping(self) -> bool:
        """Whether the server answers PING now."""
        client = sync_redis.Redis.from_url(self._plain_url, socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            return bool(client.ping())
        except (sync_redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, no final fsync; what it replied to is in the AOF."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=_START_TIMEOUT)
        self.process = None

    def restart(self) -> None:
        """Kill the server if it runs, then start it again on the same port and data."""
        self.kill()
        self.start()

    def flushall(self) -> None:
        """Empty every database."""
        client = sync_redis.Redis.from_url(self._plain_url)
        try:
            client.flushall()
        finally:
            client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope='session')
def _redis_test_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTestServer]:
    # Tests share it, and FLUSHALL it per test; nothing needs its data to outlive a kill.
    server = RedisTestServer(tmp_path_factory.mktemp('redis-server'), appendonly=False)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope='session')
def redis_server(_redis_test_server: RedisTestServer) -> str:
    """The URL of a real Redis server shared by the whole test run."""
    return _redis_test_server.url


@pytest.fixture
def redis_control(_redis_test_server: RedisTestServer) -> Iterator[RedisTestServer]:
    """The shared server, to kill or restart mid-test; running again after the test."""
    yield _redis_test_server
    if not _redis_test_server.ping():
        _redis_test_server.restart()


@pytest.fixture
def redis_url(_redis_test_server: RedisTestServer) -> str:
    """The shared server's URL, with every database flushed first."""
    if not _redis_test_server.ping():
        _redis_test_server.restart()  # a previous test killed it
    _redis_test_server.flushall()
    return _redis_test_server.url


@pytest_asyncio.fixture
async def redis(redis_url: str, tmp_path: Path) -> AsyncIterator[Redis]:
    """An async client (bytes responses) on the flushed shared server."""
    client = await connect(redis_url, home=tmp_path)
    try:
        yield client
    finally:
        with contextlib.suppress(sync_redis.RedisError, OSError):
            await client.aclose()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisTestServer]]:
    """`factory(data_dir=None, appendonly=True, cluster=False)`: a started private server, killed after the test."""
    servers: list[RedisTestServer] = []

    def factory(data_dir: Path | None = None, *, appendonly: bool = True, cluster: bool = False) -> RedisTestServer:
        server = RedisTestServer(data_dir or tmp_path / f'redis-{len(servers)}', appendonly=appendonly, cluster=cluster)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.kill()


@pytest.fixture(scope='session')
def _search_test_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTestServer]:
    home = tmp_path_factory.mktemp('search-server')
    module = find_search_module(home)
    if module is None:
        pytest.skip('the search extra (RediSearch) is not installed: `make test` installs it')
    server = RedisTestServer(home / 'data', appendonly=False, modules=[module])
    server.start()
    yield server
    server.kill()


@pytest_asyncio.fixture
async def search_redis(_search_test_server: RedisTestServer, tmp_path: Path) -> AsyncIterator[Redis]:
    """An async client on a flushed server that has the Redis Query Engine (FT.SEARCH)."""
    if not _search_test_server.ping():
        _search_test_server.restart()
    _search_test_server.flushall()
    client = await connect(_search_test_server.url, home=tmp_path)
    try:
        yield client
    finally:
        with contextlib.suppress(sync_redis.RedisError, OSError):
            await client.aclose()


@pytest.fixture
def cli_env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a `tandem` command run in `tmp_path`, tenant `acme`, on the test's Redis, with no
    config file or OpenAI variables."""
    monkeypatch.chdir(tmp_path)
    for name in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'TANDEM_CONFIG', 'TANDEM_BACKBONE'):
        monkeypatch.delenv(name, raising=False)
    return {
        'TANDEM_HOME': str(tmp_path / 'home'),
        'TANDEM_REDIS_URL': redis_url,
        'TANDEM_TENANT': 'acme',
        'XDG_CONFIG_HOME': str(tmp_path),
    }
