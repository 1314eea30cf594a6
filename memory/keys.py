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
- `tandem:{<tenant>:kb:<kb>}:<part>` and `tandem:{<tenant>:user:<user>:kb:<kb>}:<part>`: a knowledge base;
  with `examples` in place of `kb`, an example set (`memory.examples`), indexed the same way.
- `tandem:suite:{<suite>}:<part>`: one distributed scenario suite's keys (`SuiteKeys`), and
  `tandem:queue:{scenario-runs}`, the stream `tandem worker`s take its runs from. No tenant pattern
  matches them: they do not start with `tandem:{`.

Ids can't contain `:`, so a session tag (one colon) never collides with a user tag (two colons).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from tandem.agent.core.errors import InvalidIdError

__all__ = (
    'ID_PATTERN',
    'MAX_ID_LENGTH',
    'SCENARIO_QUEUE',
    'KnowledgeKeys',
    'SessionKeys',
    'SuiteKeys',
    'UserFactKeys',
    'knowledge_bases_key',
    'knowledge_key',
    'rate_limit_key',
    'session_key',
    'session_summary_key',
    'sessions_index_key',
    'tenant_key',
    'tenant_key_patterns',
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


SCENARIO_QUEUE = f'{PREFIX}:queue:{{scenario-runs}}'
"""The Redis stream of queued scenario runs (`tandem run --distributed`), which `tandem worker`s read."""


@dataclass(frozen=True)
class SuiteKeys:
    """The keys of one distributed suite run, under one hash tag: recording a run touches two of them at once.

    Raises:
        InvalidIdError: If `suite` isn't a valid id.
    """

    suite: str

    def __post_init__(self) -> None:
        validate_id('suite', self.suite)

    def _key(self, part: str) -> str:
        return f'{PREFIX}:suite:{{{self.suite}}}:{part}'

    @property
    def spec(self) -> str:
        """What workers need to run the suite's runs, as JSON; deleted when the suite ends or is cancelled."""
        return self._key('spec')

    @property
    def runs(self) -> str:
        """Hash of run id (`cell:scenario:trial`) to the finished run's JSON; a run is set once (HSETNX)."""
        return self._key('runs')

    @property
    def done(self) -> str:
        """Stream of the run ids as they are recorded, which the suite's process reads for progress."""
        return self._key('done')

    @property
    def all(self) -> tuple[str, str, str]:
        """Every key of the suite."""
        return (self.spec, self.runs, self.done)


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

    # The keys are cached: a turn asks for them several times, and building one validates both ids again.
    @cached_property
    def conv(self) -> str:
        """The conversation record, as JSON."""
        return session_key(self.tenant, self.session, 'conv')

    @cached_property
    def entries(self) -> str:
        """Hash of entry id to entry JSON: every message the session stored, on any branch."""
        return session_key(self.tenant, self.session, 'entries')

    @cached_property
    def parents(self) -> str:
        """Hash of entry id to its parent's id, or `''` for a first message: walked server-side."""
        return session_key(self.tenant, self.session, 'parents')

    @cached_property
    def depths(self) -> str:
        """Hash of entry id to how many messages its history has, up to and including it."""
        return session_key(self.tenant, self.session, 'depths')

    @cached_property
    def count(self) -> str:
        """How many messages the current history has, kept next to the record for cheap listing."""
        return session_key(self.tenant, self.session, 'count')

    @cached_property
    def title(self) -> str:
        """The session's title: its first user message, shortened, unless one was set."""
        return session_key(self.tenant, self.session, 'title')

    @cached_property
    def all(self) -> tuple[str, ...]:
        """Every key of the session, in the order the store's Lua scripts take them as `KEYS`."""
        return (self.conv, self.entries, self.parents, self.depths, self.count, self.title)

    @cached_property
    def index(self) -> str:
        """The tenant's session index this session is listed in (another slot than the rest)."""
        return sessions_index_key(self.tenant)


def rate_limit_key(tenant: str, caller: str) -> str:
    """One API caller's sliding-window request log: a sorted set of request ids scored by time (ms).

    Args:
        tenant: The tenant the caller acts for.
        caller: A short lowercase hex digest naming the caller (never the API key itself).

    Raises:
        InvalidIdError: If `tenant` isn't a valid id.
        ValueError: If `caller` isn't lowercase letters, digits, `_`, `.` or `-`.
    """
    return tenant_key(tenant, 'ratelimit', caller)


def session_summary_key(tenant: str, session: str) -> str:
    """The running summary of a session's older turns (history compaction), in the session's slot.

    Raises:
        InvalidIdError: If `tenant` or `session` isn't a valid id.
    """
    return session_key(tenant, session, 'summary')


@dataclass(frozen=True)
class UserFactKeys:
    """The keys of one user's long-term memory, all under the user's hash tag for one Lua script.

    Constructing one validates both ids.

    Raises:
        InvalidIdError: If `tenant` or `user` isn't a valid id.
    """

    tenant: str
    user: str

    def __post_init__(self) -> None:
        validate_id('tenant', self.tenant)
        validate_id('user', self.user)

    @property
    def facts(self) -> str:
        """Hash of fact id to fact JSON."""
        return user_key(self.tenant, self.user, 'facts')

    @property
    def norms(self) -> str:
        """Hash of a digest of a fact's normalized text to its fact id: exact and normalized dedupe."""
        return user_key(self.tenant, self.user, 'facts.norm')

    @property
    def expiry(self) -> str:
        """Sorted set of fact id scored by expiry time (ms): facts with a TTL."""
        return user_key(self.tenant, self.user, 'facts.expiry')

    @property
    def version(self) -> str:
        """A counter bumped by every change to the facts, so readers can keep a validated cache."""
        return user_key(self.tenant, self.user, 'facts.version')

    @property
    def updated(self) -> str:
        """Sorted set of fact id scored by when it was last stated (ms): recency without reading the facts."""
        return user_key(self.tenant, self.user, 'facts.updated')

    @property
    def index(self) -> str:
        """Hash of the BM25 snapshot of the facts (`bm25`) and the version it reflects (`version`)."""
        return user_key(self.tenant, self.user, 'facts.index')

    @property
    def changes(self) -> str:
        """Sorted set of fact id scored by the version that last changed it, since the snapshot."""
        return user_key(self.tenant, self.user, 'facts.changes')

    @property
    def all(self) -> tuple[str, ...]:
        """Every key of the user's memory, in the order the fact store's Lua scripts take them as `KEYS`."""
        return (self.facts, self.norms, self.expiry, self.version, self.updated, self.index, self.changes)


# --- knowledge bases -------------------------------------------------------------------------------
#
# A knowledge base (KB) keeps every key under one hash tag, so a document's chunks are replaced by one
# script on one slot: `tandem:{<tenant>:kb:<kb>}:<part>` for a tenant-wide KB, and
# `tandem:{<tenant>:user:<user>:kb:<kb>}:<part>` for one user's own KB. The literal `kb` part keeps
# both apart from session tags (one colon) and user tags (`<tenant>:user:<user>`, two colons).


def knowledge_key(tenant: str, kb: str, *parts: str, user: str | None = None, space: str = 'kb') -> str:
    """A key of one knowledge base: `tandem:{<tenant>:kb:<kb>}:<parts...>`, or a user's own KB's.

    Args:
        tenant: The tenant id.
        kb: The knowledge base's name.
        *parts: Constant key parts, such as `'meta'` or `'chunk', chunk_id`.
        user: The owner, for a user's own KB; `None` for the tenant's shared KB.
        space: `kb` for a knowledge base; `examples` for an example set, which is indexed the same
            way but is neither listed nor searched as a knowledge base.

    Raises:
        InvalidIdError: If `tenant`, `kb` or `user` isn't a valid id.
    """
    owner = f'user:{validate_id("user", user)}:' if user is not None else ''
    tag = f'{validate_id("tenant", tenant)}:{owner}{space}:{validate_id("knowledge base", kb)}'
    return f'{PREFIX}:{{{tag}}}{_suffix(parts)}'


def knowledge_bases_key(tenant: str) -> str:
    """The tenant's registry of knowledge bases: a hash of `shared:<kb>` / `user:<user>:<kb>` to creation time.

    Raises:
        InvalidIdError: If `tenant` isn't a valid id.
    """
    return tenant_key(tenant, 'kbs')


@dataclass(frozen=True)
class KnowledgeKeys:
    """The keys of one knowledge base, all under one hash tag so one script may touch them together.

    Constructing one validates the ids, so holding a `KnowledgeKeys` means they are safe.

    Raises:
        InvalidIdError: If `tenant`, `kb` or `user` isn't a valid id.
    """

    tenant: str
    kb: str
    user: str | None = None
    space: Literal['kb', 'examples'] = 'kb'
    """`examples`: an example set (`memory.examples`), kept apart from the knowledge bases."""

    def __post_init__(self) -> None:
        knowledge_key(self.tenant, self.kb, user=self.user, space=self.space)

    def key(self, *parts: str) -> str:
        """Any key under this KB's hash tag, e.g. a Query Engine index name."""
        return knowledge_key(self.tenant, self.kb, *parts, user=self.user, space=self.space)

    def _key(self, *parts: str) -> str:
        return self.key(*parts)

    @property
    def meta(self) -> str:
        """Hash: the KB's epoch, generation, counters and embedding model."""
        return self._key('meta')

    @property
    def docs(self) -> str:
        """Hash of document id to the document's record (JSON)."""
        return self._key('docs')

    @property
    def changes(self) -> str:
        """Sorted set of document id scored by the generation that last changed it (tombstones included)."""
        return self._key('changes')

    @property
    def terms(self) -> str:
        """Hash of document id to its chunks' BM25 terms (one line per chunk), read in bulk to build the index."""
        return self._key('terms')

    @property
    def vectors(self) -> str:
        """Hash of document id to its chunks' vectors (float32, concatenated), read in bulk to search in process."""
        return self._key('vectors')

    @property
    def snapshots(self) -> str:
        """Hash: each in-process index's snapshot (`bm25`, `vectors`), with the epoch and generation it reflects."""
        return self._key('snapshots')

    @property
    def chunk_prefix(self) -> str:
        """What every chunk key starts with; also the prefix a Query Engine index covers."""
        return self._key('chunk') + ':'

    def chunk(self, chunk_id: str) -> str:
        """Hash: one chunk's text, metadata, BM25 terms and vector.

        Raises:
            ValueError: If `chunk_id` isn't lowercase letters, digits, `_`, `.` or `-`.
        """
        return self._key('chunk', chunk_id)

    @property
    def registry(self) -> str:
        """The tenant's registry of knowledge bases, or of example sets (another slot than the rest)."""
        return knowledge_bases_key(self.tenant) if self.space == 'kb' else tenant_key(self.tenant, 'example-sets')

    @property
    def registry_field(self) -> str:
        """This KB's field in the registry: `shared:<kb>` or `user:<user>:<kb>`."""
        return f'user:{self.user}:{self.kb}' if self.user is not None else f'shared:{self.kb}'


def tenant_key_patterns(tenant: str) -> tuple[str, ...]:
    """`SCAN MATCH` patterns that together match every key of `tenant`, and no key of another tenant.

    `tandem:{<tenant>}*` matches the tenant-wide keys; `tandem:{<tenant>:*` every other hash tag the
    tenant owns (sessions, users, knowledge bases). Ids can't contain `:`, `}` or glob characters,
    so neither pattern can reach a tenant whose id merely starts with this one. Used to delete a
    whole namespace, e.g. a scenario run's.

    Raises:
        InvalidIdError: If `tenant` isn't a valid id.
    """
    validate_id('tenant', tenant)
    return (f'{PREFIX}:{{{tenant}}}*', f'{PREFIX}:{{{tenant}:*')
