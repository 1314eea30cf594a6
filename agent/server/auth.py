"""Who is calling: API keys that name a tenant, the anonymous caller on a loopback address, and per-key rate limits."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from tandem.agent.core.config import ApiKeyConfig, Settings, parse_api_keys
from tandem.agent.core.errors import ConfigError
from tandem.memory.keys import rate_limit_key, validate_id

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript


API_KEYS_ENV = 'TANDEM_API_KEYS'
"""`key1:tenant1,key2:tenant2`: API keys from the environment, added to the config's."""


@dataclass(frozen=True)
class Caller:
    """Who a request is from: the tenant its API key acts for, and a short digest naming the key."""

    tenant: str
    key_id: str
    """The first 16 hex digits of the key's SHA-256: safe to log, and the rate limit's name."""
    user: str | None = None
    """The one user a user-bound key acts for; `None` when the request names its user."""


ANONYMOUS_KEY_ID = 'anonymous'


def load_api_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> list[ApiKeyConfig]:
    """The config's `[server] api_keys`, plus `TANDEM_API_KEYS` from the environment.

    Raises:
        ConfigError: `TANDEM_API_KEYS` is malformed.
    """
    environ = os.environ if environ is None else environ
    keys = list(settings.server.api_keys)
    text = environ.get(API_KEYS_ENV, '').strip()
    if text:
        try:
            keys += parse_api_keys(text)
        except ValueError as error:
            raise ConfigError(f'{API_KEYS_ENV} is invalid: {error} (e.g. "key1:tenant1,key2:tenant2").') from None
    return keys


class KeyRing:
    """API keys held as SHA-256 digests, matched in constant time."""

    def __init__(self, keys: Sequence[ApiKeyConfig]) -> None:
        self._entries: list[tuple[bytes, Caller]] = []
        seen: dict[bytes, str] = {}
        for config in keys:
            tenant = validate_id('tenant', config.tenant)
            if config.key is not None:
                digest = hashlib.sha256(config.key.get_secret_value().encode()).digest()
            else:
                digest = bytes.fromhex(cast(str, config.sha256))
            if seen.get(digest, tenant) != tenant:
                raise ConfigError('one API key is given for two tenants: give each tenant its own key.')
            seen[digest] = tenant
            user = validate_id('user', config.user) if config.user is not None else None
            self._entries.append((digest, Caller(tenant=tenant, key_id=digest.hex()[:16], user=user)))

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, presented: str) -> Caller | None:
        """The caller whose key is `presented`, comparing against every key so timing tells nothing."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: Caller | None = None
        for stored, caller in self._entries:
            if hmac.compare_digest(stored, digest):
                found = caller
        return found


_SLIDING_WINDOW = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window)
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""
"""A sliding-window log: one sorted-set member per allowed request, scored by the server's clock (ms).

The server's clock, not the worker's, so every worker agrees on the window. Refused requests are
not logged, so a client that keeps retrying still gets in as soon as the window allows."""


class RateLimiter:
    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window_ms = max(1, round(window_seconds * 1000))
        self._script: AsyncScript | None = None

    async def retry_after(self, redis: Redis, caller: Caller) -> float | None:
        """Log a request by `caller`; `None` if it is allowed, else the seconds until it would be."""
        if self.limit <= 0:
            return None
        script = self._script
        if script is None or script.registered_client is not redis:
            script = self._script = redis.register_script(_SLIDING_WINDOW)
        reply = cast(
            list[int],
            await script(
                keys=[rate_limit_key(caller.tenant, caller.key_id)],
                args=[self.limit, self.window_ms, uuid.uuid4().hex],
            ),
        )
        allowed, _remaining, wait_ms = (int(value) for value in reply)
        return None if allowed else max(wait_ms, 1) / 1000


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) only reaches this machine."""
    if host.lower() == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False
