"""Who is calling: API keys that name a tenant, the anonymous caller on a loopback address, the user a
request acts for, and per-key rate limits; the rules both servers (`tandem serve`, `tandem mcp --http`) apply."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
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


class Refusal(Exception):
    """A request refused before it runs: the HTTP status, one line saying why, and what to send with it.

    Both servers (`tandem serve`, `tandem mcp --http`) refuse by these rules, each in its own shape.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = 'invalid_request_error',
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = dict(headers or {})


def identify(keys: KeyRing, presented: str, client: str | None, *, allow_anonymous: bool, tenant: str) -> Caller:
    """Who presents the bearer key `presented` (`''` for none) from the address `client`.

    Without auth, any key counts as none (the openai SDK insists on sending one), and only this machine
    is answered. `client` is `None` when the address was checked already.

    Raises:
        Refusal: 401 for a missing or wrong key; 403 for an anonymous call from another machine.
    """
    found = keys.match(presented) if presented else None
    if found is not None:
        return found
    if allow_anonymous:
        if client is not None and not is_loopback(client):
            raise Refusal(403, 'this server runs without auth and answers only this machine.', type='permission_error')
        return Caller(tenant=validate_id('tenant', tenant), key_id=ANONYMOUS_KEY_ID)
    if not presented:
        raise Refusal(
            401,
            'missing API key: send the header "Authorization: Bearer YOUR_KEY".',
            code='missing_api_key',
            headers={'WWW-Authenticate': 'Bearer'},
        )
    raise Refusal(401, 'invalid API key.', code='invalid_api_key', headers={'WWW-Authenticate': 'Bearer'})


def acting_user(caller: Caller, *named: str | None) -> str | None:
    """The user a request acts for: a user-bound key's own, else the first one the request names.

    Raises:
        Refusal: 403 when a user-bound key's request names another user.
    """
    if caller.user is None:
        return next((user for user in named if user is not None), None)
    if any(user is not None and user != caller.user for user in named):
        raise Refusal(
            403,
            f'this API key acts for user {caller.user!r} only: leave the user out, or use a key of the tenant.',
            type='permission_error',
            code='user_mismatch',
        )
    return caller.user


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

    async def admit(self, redis: Redis, caller: Caller) -> None:
        """Log a request by `caller`, or refuse it.

        Raises:
            Refusal: 429, with `Retry-After`, when the key has used up its window.
        """
        wait = await self.retry_after(redis, caller)
        if wait is None:
            return
        seconds = max(1, math.ceil(wait))
        raise Refusal(
            429,
            f'rate limit reached: {self.limit} requests per {self.window_ms / 1000:g} s for this key; '
            f'retry in {seconds} s.',
            type='rate_limit_error',
            code='rate_limit_exceeded',
            headers={
                'Retry-After': str(seconds),
                'retry-after-ms': str(max(1, math.ceil(wait * 1000))),
                'x-ratelimit-limit-requests': str(self.limit),
                'x-ratelimit-remaining-requests': '0',
            },
        )


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) only reaches this machine."""
    if host.lower() == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False
