"""Every Redis key Tandem uses, and the id validation that keeps them unambiguous.

This is the only module that builds key names. Ids are validated here, once, before any key is
built, so nothing user-supplied can reach Redis as a glob pattern, a hash tag or a key separator.

Layout (all keys start with `tandem:`; the part in braces is the Redis Cluster hash tag, so the
keys one operation touches always live in the same slot):

- `tandem:{<tenant>:<session>}:<part>`: one session's keys, e.g. `conv` (the conversation record
  as JSON), `entries` (hash of entry id to entry JSON), `parents` (hash of entry id to parent id,
  or `''` for the first message).
- `tandem:{<tenant>}:<part>`: tenant-wide keys, e.g. `sessions` (sorted set of session id by last
  save time).
- `tandem:{<tenant>:user:<user>}:<part>`: one user's keys, for features such as long-term memory.

Ids can't contain `:`, so a session tag (one colon) never collides with a user tag (two colons).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import InvalidIdError

__all__ = (
    'ID_PATTERN',
    'MAX_ID_LENGTH',
    'SessionKeys',
    'session_key',
    'sessions_index_key',
    'tenant_key',
    'user_key',
    'validate_id',
)

PREFIX = 'tandem'
MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(rf'[A-Za-z0-9._@-]{{1,{MAX_ID_LENGTH}}}')
"""What an id may be: an allow-list, so glob characters, braces, `:`, whitespace and control
characters are all refused without having to name each one."""

_PART_PATTERN = re.compile(r'[a-z0-9_.-]+')


def validate_id(kind: str, value: str) -> str:
    """Check that `value` is a safe id for a key, and return it unchanged.

    Args:
        kind: What the id names, such as `'tenant'`, `'user'` or `'session'`; used in the error.
        value: The id to check.

    Returns:
        `value`, so callers can validate and assign in one step.

    Raises:
        InvalidIdError: If `value` isn't 1-128 letters, digits, `-`, `_`, `.` or `@`.
    """
    # `isinstance` guards against a `None` or bytes sneaking through untyped callers.
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise InvalidIdError(
            f"invalid {kind} id {value!r}: use 1-{MAX_ID_LENGTH} letters, digits, '-', '_', '.' or '@'"
        )
    return value


def _suffix(parts: tuple[str, ...]) -> str:
    # Parts are constants from our own code, but a typo like 'conv:' would silently split a
    # layout, so they get a (stricter) check too.
    for part in parts:
        if _PART_PATTERN.fullmatch(part) is None:
            raise ValueError(f'invalid key part {part!r}: use lowercase letters, digits, _, . or -')
    return ''.join(f':{part}' for part in parts)


def tenant_key(tenant: str, *parts: str) -> str:
    """A tenant-wide key: `tandem:{<tenant>}:<parts...>`.

    Raises:
        InvalidIdError: If `tenant` isn't a valid id.
    """
    return f'{PREFIX}:{{{validate_id("tenant", tenant)}}}{_suffix(parts)}'


def user_key(tenant: str, user: str, *parts: str) -> str:
    """A key of one user of a tenant: `tandem:{<tenant>:user:<user>}:<parts...>`.

    Raises:
        InvalidIdError: If `tenant` or `user` isn't a valid id.
    """
    tag = f'{validate_id("tenant", tenant)}:user:{validate_id("user", user)}'
    return f'{PREFIX}:{{{tag}}}{_suffix(parts)}'


def session_key(tenant: str, session: str, *parts: str) -> str:
    """A key of one session of a tenant: `tandem:{<tenant>:<session>}:<parts...>`.

    Raises:
        InvalidIdError: If `tenant` or `session` isn't a valid id.
    """
    tag = f'{validate_id("tenant", tenant)}:{validate_id("session", session)}'
    return f'{PREFIX}:{{{tag}}}{_suffix(parts)}'


def sessions_index_key(tenant: str) -> str:
    """The tenant's session index: a sorted set of session id scored by last save time.

    Raises:
        InvalidIdError: If `tenant` isn't a valid id.
    """
    return tenant_key(tenant, 'sessions')


@dataclass(frozen=True)
class SessionKeys:
    """The keys of one session, all under one hash tag so a Lua script may touch them together.

    Constructing one validates both ids, so holding a `SessionKeys` means the ids are safe.

    Raises:
        InvalidIdError: If `tenant` or `session` isn't a valid id.
    """

    tenant: str
    session: str

    def __post_init__(self) -> None:
        validate_id('tenant', self.tenant)
        validate_id('session', self.session)

    @property
    def conv(self) -> str:
        """The conversation record, as JSON."""
        return session_key(self.tenant, self.session, 'conv')

    @property
    def entries(self) -> str:
        """Hash of entry id to entry JSON: every message the session stored, on any branch."""
        return session_key(self.tenant, self.session, 'entries')

    @property
    def parents(self) -> str:
        """Hash of entry id to its parent's id, or `''` for a first message: walked server-side."""
        return session_key(self.tenant, self.session, 'parents')

    @property
    def depths(self) -> str:
        """Hash of entry id to how many messages its history has, up to and including it."""
        return session_key(self.tenant, self.session, 'depths')

    @property
    def count(self) -> str:
        """How many messages the current history has, kept next to the record for cheap listing."""
        return session_key(self.tenant, self.session, 'count')

    @property
    def all(self) -> tuple[str, ...]:
        """Every key of the session, in the order the store's Lua scripts take them as `KEYS`."""
        return (self.conv, self.entries, self.parents, self.depths, self.count)

    @property
    def index(self) -> str:
        """The tenant's session index this session is listed in (another slot than the rest)."""
        return sessions_index_key(self.tenant)
