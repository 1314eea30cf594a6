"""Conversations on Redis: pydantic-ai's `ConversationStore`, one Tandem session per conversation.

A conversation's `conversation_id` is the Tandem session id, and its `scope` the id of the user it
belongs to. Each session keeps its keys under one hash tag (see `memory.keys`), so every write is a
single Lua script on a single slot, which works the same on one server and on Redis Cluster:

- a save appends only the new entries and replaces the record in one script, after checking the
  revision it was loaded with, so a conflict or a dropped connection leaves nothing half-written.
  It is one round trip: the store remembers the record it loaded, rather than read it again;
- `append` chains a turn's messages after whatever the stored history ends with, in one script and
  with no revision to check, so concurrent turns on one session all land, each whole and contiguous;
- a load is one round trip, however long the history: a script reads the record and walks the
  history server-side from its newest entry. The store holds the JSON of the histories it last
  loaded or saved, so when the stored head is still the one it holds, the script returns the
  record alone and the walk and its transfer are skipped.

Limitations, by design of the one-slot layout:

- A fork that keeps messages would point into another session's entries, in another slot, so
  `fork` works only with `at=0`; otherwise `write_record` raises `ConversationConflict`.
- `read_history` and `read_entry` are given only an entry id. The store resolves it to its session
  through a bounded in-memory map of the entries it saw as heads or branch tips in records it read
  or wrote; an entry it never saw raises `LookupError`. Every `ConversationStore` method reads the
  record before its history, so this only matters when calling them directly.
- `delete` removes the session's record and all of its entries, on every branch.

The tenant's session index (a sorted set, in the tenant's own slot) is updated by the write script
on one server. On a cluster it is in another slot, so a separate command updates it just before the
script, and a crash between the two leaves at most an index member whose record doesn't exist;
listing skips such members and removes them.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections import OrderedDict
from collections.abc import Generator, Iterable, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pydantic import ConfigDict, TypeAdapter
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import (
    ConversationConflict,
    ConversationEntry,
    ConversationRecord,
    ConversationStore,
)
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelRequest, TextPart, UserPromptPart
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import RunUsage
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tandem.agent.core.errors import RedisUnavailableError, TandemError
from tandem.memory.connection import RedisClient
from tandem.memory.keys import SessionKeys, session_summary_key, sessions_index_key, validate_id

__all__ = (
    'TITLE_LENGTH',
    'HistoryCache',
    'RedisConversationStore',
    'SessionInfo',
    'SessionMatch',
    'SessionNotFoundError',
    'session_title',
    'shorten_title',
)

# Bytes anywhere in a message (a binary attachment, a tool's raw return) are stored as base64, the
# same as `ModelMessagesTypeAdapter` does, so stored messages read back as that adapter reads them.
# Built lazily: the message schema is large, and importing this module should stay cheap.
# Only keys go into pydantic-core's process-wide string cache: stored values (ids, timestamps) are unique,
# so caching them would only fill it.
_JSON = ConfigDict(ser_json_bytes='base64', val_json_bytes='base64', defer_build=True, cache_strings='keys')
_RECORD: TypeAdapter[ConversationRecord | None] = TypeAdapter(ConversationRecord | None, config=_JSON)
_ENTRY: TypeAdapter[ConversationEntry | None] = TypeAdapter(ConversationEntry | None, config=_JSON)
_ENTRIES: TypeAdapter[list[ConversationEntry]] = TypeAdapter(list[ConversationEntry], config=_JSON)
_USAGE: TypeAdapter[RunUsage] = TypeAdapter(RunUsage)

_OK = 1
_UNCHANGED = 2

# Shared by the write and append scripts. `hset_all` writes one hash's fields with one HSET per slice:
# Lua caps how many values `unpack` returns. `finish` stores the record and the message count, sets
# the title unless the session has one ('' for none to offer), gives every key the TTL (ARGV[ttl], in
# ms, 0 for none), and updates the session index when it is KEYS[7].
# Each `redis.call` costs a script a few microseconds, so they make as few as they can.
_STORE = """
local function hset_all(key, fields)
  for i = 1, #fields, 1000 do
    redis.call('HSET', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
end
local function finish(record, count, title, ttl, score, member)
  ttl = tonumber(ttl)
  -- A plain SET drops the key's TTL: ask the entries hash, which keeps it, whether the session had one.
  local had_ttl = ttl == 0 and redis.call('PTTL', KEYS[2]) >= 0
  redis.call('SET', KEYS[1], record)
  redis.call('SET', KEYS[5], count)
  if title ~= '' then redis.call('SET', KEYS[6], title, 'NX') end
  for i = 1, 6 do
    -- All or none expire: a record outliving its entries would be a history with holes.
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) elseif had_ttl then redis.call('PERSIST', KEYS[i]) end
  end
  if KEYS[7] then redis.call('ZADD', KEYS[7], 'GT', score, member) end
end
"""

# KEYS: conv, entries, parents, depths, count, title (SessionKeys.all), then the tenant's session index
# on a single server (a cluster keeps it in another slot, so there it is updated by a command of its own).
# ARGV: expected revision ('' for none), new revision, record JSON, head id ('' for none), TTL in ms
# (0 for none), the index score and member, the title to set if none is ('' for none), then id, parent
# id ('' for none), entry JSON for each new entry, oldest first. Returns 1 when stored, 0 on a revision conflict, -1 when the head or a parent
# isn't stored.
_WRITE_SCRIPT = (
    _STORE
    + """
local FIRST = 9
local current = redis.call('GET', KEYS[1])
if current then
  local revision = cjson.decode(current)['revision']
  -- A retried call whose first attempt was stored but whose reply was lost: done already.
  if revision == ARGV[2] then return 1 end
  if revision ~= ARGV[1] then return 0 end
elseif ARGV[1] ~= '' then
  return 0
end
local depth = {}
local function depth_of(id)
  if id == '' then return 0 end
  if depth[id] then return depth[id] end
  local stored = redis.call('HGET', KEYS[4], id)
  if stored then return tonumber(stored) end
  return nil
end
local entries, parents, depths = {}, {}, {}
for i = FIRST, #ARGV, 3 do
  local id, parent = ARGV[i], ARGV[i + 1]
  local parent_depth = depth_of(parent)
  if parent_depth == nil then return -1 end
  depth[id] = parent_depth + 1
  entries[#entries + 1] = id
  entries[#entries + 1] = ARGV[i + 2]
  parents[#parents + 1] = id
  parents[#parents + 1] = parent
  depths[#depths + 1] = id
  depths[#depths + 1] = depth[id]
end
local count = depth_of(ARGV[4])
if count == nil then return -1 end
hset_all(KEYS[2], entries)
hset_all(KEYS[3], parents)
hset_all(KEYS[4], depths)
finish(ARGV[3], count, ARGV[8], ARGV[5], ARGV[6], ARGV[7])
return 1
"""
)

# Appends a turn after whatever the history ends with now, whoever saved last: concurrent turns on one
# session each land whole, in the order the scripts run, with no revision to check and nothing to retry.
# KEYS: as the write script's. ARGV: new revision, updated_at, scope ('' for none), TTL in ms (0 for
# none), the index score and member, the turn's usage JSON, the session id, the title to set if none
# is ('' for none), then id, entry JSON for each entry, oldest first, chained; the first entry's JSON names itself as its parent, which the
# script replaces with the stored head. Returns {1, record JSON, the head the turn was appended after
# ('' for none)}, {0} when the session belongs to another scope, or {-1} when the stored head isn't stored.
_APPEND_SCRIPT = (
    _STORE
    + """
local FIRST = 10
local current = redis.call('GET', KEYS[1])
local record
if current then
  record = cjson.decode(current)
  -- A retried call whose first attempt was stored but whose reply was lost: done already.
  local stored_parent = redis.call('HGET', KEYS[3], ARGV[FIRST])
  if stored_parent then return {1, current, stored_parent} end
  if ARGV[3] ~= '' and record['scope'] ~= ARGV[3] then return {0} end
else
  record = {conversation_id = ARGV[8], scope = ARGV[3] ~= '' and ARGV[3] or cjson.null}
end
local head = record['head_id']
if head == nil or head == cjson.null then head = '' end
local depth = 0
if head ~= '' then
  depth = tonumber(redis.call('HGET', KEYS[4], head))
  if depth == nil then return {-1} end
end
local first = ARGV[FIRST + 1]
local from, to = string.find(first, '"parent_id":"' .. ARGV[FIRST] .. '"', 1, true)
local parent_json = head == '' and 'null' or '"' .. head .. '"'
first = string.sub(first, 1, from - 1) .. '"parent_id":' .. parent_json .. string.sub(first, to + 1)
local entries, parents, depths = {}, {}, {}
local parent = head
for i = FIRST, #ARGV, 2 do
  depth = depth + 1
  entries[#entries + 1] = ARGV[i]
  entries[#entries + 1] = i == FIRST and first or ARGV[i + 1]
  parents[#parents + 1] = ARGV[i]
  parents[#parents + 1] = parent
  depths[#depths + 1] = ARGV[i]
  depths[#depths + 1] = depth
  parent = ARGV[i]
end
-- Usage adds up field by field. The cost is a decimal string, summed here to 12 places.
local usage = type(record['usage']) == 'table' and record['usage'] or {}
for key, value in pairs(cjson.decode(ARGV[7])) do
  local stored = usage[key]
  if type(value) == 'number' then
    usage[key] = (type(stored) == 'number' and stored or 0) + value
  elseif type(value) == 'string' then
    usage[key] = type(stored) == 'string' and string.format('%.12f', tonumber(stored) + tonumber(value)) or value
  elseif type(value) == 'table' then
    local merged = type(stored) == 'table' and stored or {}
    for name, n in pairs(value) do merged[name] = (merged[name] or 0) + n end
    usage[key] = merged
  end
end
record['usage'] = usage
record['head_id'] = parent
record['revision'] = ARGV[1]
record['updated_at'] = ARGV[2]
-- An appended turn leaves no tool calls pending. cjson writes an empty list as {}: leave the
-- branches out when there are none, and the record reads them back as its default, [].
record['deferred_tool_requests'] = nil
if type(record['branches']) == 'table' and next(record['branches']) == nil then record['branches'] = nil end
local encoded = cjson.encode(record)
hset_all(KEYS[2], entries)
hset_all(KEYS[3], parents)
hset_all(KEYS[4], depths)
finish(encoded, depth, ARGV[9], ARGV[4], ARGV[5], ARGV[6])
return {1, encoded, head}
"""
)

# KEYS: SessionKeys.all. ARGV: expected revision. Returns 1 when deleted, else 0.
_DELETE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current or cjson.decode(current)['revision'] ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
return 1
"""

# Appends a session's history from `id` towards its root to `out`, newest first; false when an entry
# is missing or the chain loops. Shared by the history and load scripts. (No `unpack`: Lua caps how
# many values it returns, and histories can be longer.)
_WALK = """
local function walk(out, entries, parents, id, limit)
  local stored = redis.call('HLEN', parents)
  local ids = {}
  while id ~= '' and (limit < 0 or #ids < limit) do
    if #ids >= stored then return false end
    local parent = redis.call('HGET', parents, id)
    if not parent then return false end
    ids[#ids + 1] = id
    id = parent
  end
  for i = 1, #ids do
    local entry = redis.call('HGET', entries, ids[i])
    if not entry then return false end
    out[#out + 1] = entry
  end
  return true
end
"""

# KEYS: entries, parents. ARGV: head id, limit (-1 for none).
# Returns {1, entry JSON...} newest first, or {0} when an entry is missing or the chain loops.
_HISTORY_SCRIPT = (
    _WALK
    + """
local out = {1}
if not walk(out, KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])) then return {0} end
return out
"""
)

# KEYS: conv, entries, parents, count. ARGV: limit (-1 for none), the head id of the history the caller
# holds ('' for none), the index of the first message to return (0 for all; it overrides the limit).
# Returns {} when there is no record, {2, record JSON} when its head is the one the caller holds, else
# {status, record JSON, entries as one JSON array, oldest first}: status 1, or 0 when an entry is
# missing or the chain loops. One round trip, one consistent read, and one value to parse however
# long the history; from a start, the walk stops there, so it costs what it returns.
_LOAD_SCRIPT = (
    _WALK
    + """
local record = redis.call('GET', KEYS[1])
if not record then return {} end
local head = cjson.decode(record)['head_id']
if head == cjson.null or head == nil then return {1, record, '[]'} end
if head == ARGV[2] then return {2, record} end
local limit = tonumber(ARGV[1])
local start = tonumber(ARGV[3])
if start > 0 then limit = math.max(tonumber(redis.call('GET', KEYS[4]) or 0) - start, 0) end
local newest = {}
if not walk(newest, KEYS[2], KEYS[3], head, limit) then return {0, record} end
local oldest = {}
for i = #newest, 1, -1 do oldest[#oldest + 1] = newest[i] end
return {1, record, '[' .. table.concat(oldest, ',') .. ']'}
"""
)

# KEYS: the tenant's session index. ARGV: member, score pairs as last read.
# Removes each member whose score is still the one read: one a concurrent save re-added has a newer one.
_PRUNE_SCRIPT = """
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""

# KEYS: conv, title. ARGV: the title, the title it may replace ('' for any). Sets it with the record's TTL;
# returns 1, 0 when there is no record, or 2 when the stored title is not the one it may replace.
_TITLE_SCRIPT = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 2 end
redis.call('SET', KEYS[2], ARGV[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

_SCRIPTS = {
    'write': _WRITE_SCRIPT,
    'append': _APPEND_SCRIPT,
    'delete': _DELETE_SCRIPT,
    'history': _HISTORY_SCRIPT,
    'load': _LOAD_SCRIPT,
    'prune': _PRUNE_SCRIPT,
    'title': _TITLE_SCRIPT,
}

_LIST_PAGE = 100

_KNOWN_RECORDS = 1024
"""How many sessions' last records a store keeps, for `save`."""

_ENTRY_CACHE_SIZE = 2048
"""How many entry ids a store remembers the session of by default, for `read_history`."""

_HISTORY_CACHE_BYTES = 1024 * 1024
"""How many bytes of stored history JSON a store keeps by default, for `load` (see `RedisConversationStore`)."""

_SAVING: ContextVar[list[ConversationRecord] | None] = ContextVar('tandem_saving', default=None)
"""The record a save in flight may take as read (see `RedisConversationStore.save`), consumed by its first read."""

_LOAD_START: ContextVar[int] = ContextVar('tandem_load_start', default=0)
"""The first message a load in flight returns (see `RedisConversationStore.load_owned`)."""


class SessionNotFoundError(TandemError, LookupError):
    """A session that doesn't exist, or belongs to another user."""


TITLE_LENGTH = 60
"""The most characters a title taken from a message has, an ellipsis included."""


def session_title(messages: Iterable[ModelMessage]) -> str | None:
    """The title a session takes from its first user message: that message's first non-blank line,
    with its whitespace collapsed, cut at a word to at most `TITLE_LENGTH` characters. `None` when no
    message has text from the user.
    """
    for message in messages:
        if not isinstance(message, ModelRequest):
            continue
        for part in message.parts:
            if not isinstance(part, UserPromptPart):
                continue
            texts = [part.content] if isinstance(part.content, str) else [c for c in part.content if isinstance(c, str)]
            for text in texts:
                line = next((' '.join(line.split()) for line in text.splitlines() if line.strip()), '')
                if line:
                    return shorten_title(line)
    return None


def shorten_title(text: str) -> str:
    """`text` on one line, cut at a word (or mid-word, when one word is longer) to `TITLE_LENGTH` characters."""
    text = ' '.join(text.split())
    if len(text) <= TITLE_LENGTH:
        return text
    cut = text[: TITLE_LENGTH - 1]
    if text[TITLE_LENGTH - 1] != ' ' and ' ' in cut:
        cut = cut[: cut.rindex(' ')]
    return cut.rstrip() + '…'


@dataclass(frozen=True)
class SessionInfo:
    """One line of a session listing."""

    id: str
    """The session id (the conversation's `conversation_id`)."""
    user: str | None
    """The user the session belongs to (the conversation's `scope`)."""
    message_count: int
    """How many messages its current history has."""
    updated_at: datetime
    """When it was last saved."""
    usage: RunUsage
    """Usage accumulated across every run in the session."""
    title: str | None = None
    """Its first user message, shortened (see `session_title`), or the title set for it; `None` before one."""


@dataclass(frozen=True)
class SessionMatch:
    """A session `search_sessions` found, and where."""

    session: SessionInfo
    snippet: str
    """The title, or the words around the first message text that matched, on one line."""


_Listed = tuple[ConversationRecord, int, str | None]
"""A listed session: its record, message count and title (0 and `None` when not asked for)."""


class RedisConversationStore(ConversationStore):
    """A `ConversationStore` on Redis or Redis Cluster, for one tenant; see the module docs for the layout.

    Args:
        redis: A client from `memory.connection.connect` (bytes responses).
        tenant: The tenant whose sessions this store reads and writes.
        ttl_seconds: If set, a session expires this long after its last save.
        entry_cache_size: How many entry ids to remember the session of, for `read_history`
            (2,048 when omitted).
        history_cache_bytes: How much stored history JSON to keep in memory, most recent sessions
            first, so that loading a session this store saved or loaded skips the history walk and
            its transfer. The JSON is parsed again on every load, so no two loads share a message.
            0 turns it off.
        history_cache: A cache to share with other stores, such as one per tenant, within one budget
            (their sessions' keys differ); it replaces `history_cache_bytes`.

    Raises:
        InvalidIdError: If `tenant` isn't a valid id.
        ValueError: If `ttl_seconds` or `entry_cache_size` isn't positive, or `history_cache_bytes` is negative.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        tenant: str,
        ttl_seconds: int | None = None,
        entry_cache_size: int | None = None,
        history_cache_bytes: int = _HISTORY_CACHE_BYTES,
        history_cache: HistoryCache | None = None,
    ) -> None:
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError('ttl_seconds must be positive, or None for sessions that never expire')
        if entry_cache_size is None:
            entry_cache_size = _ENTRY_CACHE_SIZE
        if entry_cache_size <= 0:
            raise ValueError('entry_cache_size must be positive')
        self.tenant = validate_id('tenant', tenant)
        self.ttl_seconds = ttl_seconds
        self._redis = redis
        self._index = sessions_index_key(tenant)
        self._entry_sessions: OrderedDict[str, str] = OrderedDict()
        self._entry_cache_size = entry_cache_size
        self._records: OrderedDict[str, ConversationRecord] = OrderedDict()
        """The last record this store read or wrote of each session, for `save`."""
        self._histories = history_cache if history_cache is not None else HistoryCache(history_cache_bytes)
        # Registered on first use, so constructing a store never touches the client.
        self._scripts: dict[str, AsyncScript] = {}

    # -- pydantic-ai's storage primitives ---------------------------------------------------------

    async def read_record(self, conversation_id: str) -> ConversationRecord | None:
        """The session's record, or `None` if it doesn't exist (or expired).

        Raises:
            InvalidIdError: If `conversation_id` isn't a valid session id.
            RedisUnavailableError: If Redis can't be reached.
        """
        known = _SAVING.get()
        if known and known[0].conversation_id == conversation_id:
            return known.pop()
        keys = self._keys(conversation_id)
        with _unavailable('reading a session'):
            raw = _bytes(await self._redis.get(keys.conv))
        if raw is None:
            return None
        record = _decode_record(raw)
        self._remember(record, keys.session)
        return record

    async def read_records(self, *, scope: str | None = None, limit: int | None = None) -> Sequence[ConversationRecord]:
        """The tenant's records, or one user's, newest first, at most `limit` of them.

        Raises:
            InvalidIdError: If `scope` isn't a valid user id.
            RedisUnavailableError: If Redis can't be reached.
        """
        return [record for record, _, _ in await self._scan(scope=scope, limit=limit, with_details=False)]

    async def write_record(
        self,
        record: ConversationRecord,
        *,
        new_entries: Sequence[ConversationEntry] = (),
        expected_revision: str | None,
    ) -> None:
        """Store `record` and its new entries in one script, if the stored revision is `expected_revision`.

        Raises:
            InvalidIdError: If the session or scope isn't a valid id.
            ConversationConflict: If the stored revision isn't `expected_revision`, or `record.head_id`
                (or an entry's parent) is neither stored in this session nor among `new_entries`,
                which includes a fork into another session's history.
            RedisUnavailableError: If Redis can't be reached; the save landed whole or not at all.
        """
        keys = self._keys(record.conversation_id)
        if record.scope is not None:
            validate_id('user', record.scope)
        new_ids = {entry.id for entry in new_entries}
        head = record.head_id
        if head is not None and head not in new_ids and self._entry_sessions.get(head, keys.session) != keys.session:
            raise ConversationConflict(record.conversation_id)  # a fork into another slot: see the module docs
        score = repr(record.updated_at.timestamp())
        args: list[str | bytes | int] = [
            expected_revision or '',
            record.revision,
            _RECORD.dump_json(record),
            head or '',
            self.ttl_seconds * 1000 if self.ttl_seconds is not None else 0,
            score,
            keys.session,
            session_title(entry.message for entry in new_entries) or '',
        ]
        encoded = [_ENTRY.dump_json(entry) for entry in new_entries]
        for entry, entry_json in zip(new_entries, encoded, strict=True):
            args += [entry.id, entry.parent_id or '', entry_json]
        with _unavailable('saving a session', saving=True):
            status = await self._write('write', keys, score, args)
        if status != _OK:
            raise ConversationConflict(record.conversation_id)
        self._remember(record, keys.session)
        self._histories.extend(keys.conv, head, new_entries, encoded)

    async def append(
        self, session: str, messages: Sequence[ModelMessage], *, usage: RunUsage, scope: str | None = None
    ) -> list[ConversationEntry]:
        """Append `messages` after whatever the session's history ends with now, in one script.

        Unlike `save`, it checks no revision: concurrent appends to one session each land whole and
        contiguous, in the order Redis runs them, so a turn that ran on an older history joins the
        newest one instead of being refused. `usage` is added to the session's. A session that
        doesn't exist yet is created, with `scope`.

        Returns:
            The entries stored, oldest first; the first one's parent is the head it was appended after.

        Raises:
            InvalidIdError: If the session or scope isn't a valid id.
            ConversationConflict: If the session belongs to another scope than `scope`, or its head
                entry is missing.
            RedisUnavailableError: If Redis can't be reached; the append landed whole or not at all.
        """
        self._check(session, scope)
        if not messages:
            return []
        keys = self._keys(session)
        template = ConversationRecord(conversation_id=session, head_id=None, scope=scope)
        entries: list[ConversationEntry] = []
        for message in messages:
            entries.append(ConversationEntry(parent_id=entries[-1].id if entries else None, message=message))
        # The script puts the stored head in place of this self-reference.
        encoded = [_ENTRY.dump_json(dataclasses.replace(entries[0], parent_id=entries[0].id))]
        encoded += [_ENTRY.dump_json(entry) for entry in entries[1:]]
        score = repr(template.updated_at.timestamp())
        args: list[str | bytes | int] = [
            template.revision,
            template.updated_at.isoformat().replace('+00:00', 'Z'),
            scope or '',
            self.ttl_seconds * 1000 if self.ttl_seconds is not None else 0,
            score,
            keys.session,
            _USAGE.dump_json(usage),
            session,
            session_title(messages) or '',
        ]
        for entry, entry_json in zip(entries, encoded, strict=True):
            args += [entry.id, entry_json]
        with _unavailable('saving a session', saving=True):
            reply: list[Any] = await self._write('append', keys, score, args)
        if reply[0] != _OK:
            raise ConversationConflict(session)
        record = _decode_record(reply[1])
        self._remember(record, keys.session)
        previous = reply[2].decode() or None
        entries[0] = dataclasses.replace(entries[0], parent_id=previous)
        encoded[0] = _ENTRY.dump_json(entries[0])  # as stored: with the head it was appended after
        self._histories.extend(keys.conv, record.head_id, entries, encoded)
        return entries

    async def delete_record(self, conversation_id: str, *, expected_revision: str) -> None:
        """Delete the session's record and every entry it stored, then drop it from the index.

        Raises:
            InvalidIdError: If `conversation_id` isn't a valid session id.
            ConversationConflict: If no record with `expected_revision` is stored.
            RedisUnavailableError: If Redis can't be reached.
        """
        keys = self._keys(conversation_id)
        with _unavailable('deleting a session'):
            # Read the index score first, so a concurrent re-create (which re-adds the session with
            # a newer score) isn't dropped from the index by this delete.
            score: float | None = await self._redis.zscore(self._index, keys.session)
            self._histories.drop(keys.conv)
            status = await self._script('delete')(keys=keys.all, args=[expected_revision])
            if status != _OK:
                raise ConversationConflict(conversation_id)
            if score is not None:
                await self._prune([(keys.session, score)])

    async def read_entry(self, entry_id: str) -> ConversationEntry:
        """One entry, in one round trip.

        Raises:
            LookupError: If the entry isn't stored, or its session isn't known (see the module docs).
            RedisUnavailableError: If Redis can't be reached.
        """
        keys = self._session_of(entry_id)
        with _unavailable('reading a session'):
            raw = _bytes(await self._redis.hget(keys.entries, entry_id))
        if raw is None:
            raise LookupError(f'entry {entry_id!r} is not stored in session {keys.session!r}')
        entry = _ENTRY.validate_json(raw)
        if entry is None:
            raise LookupError(f'entry {entry_id!r} in session {keys.session!r} is stored as null')
        return entry

    async def read_history(self, head_id: str | None, *, limit: int | None = None) -> list[ConversationEntry]:
        """The entries up to `head_id`, oldest first, or the last `limit` of them, in one round trip.

        Raises:
            UserError: If `limit` is negative.
            LookupError: If an entry is missing, or the head's session isn't known (see the module docs).
            RedisUnavailableError: If Redis can't be reached.
        """
        if limit is not None and limit < 0:
            raise UserError('`limit` must not be negative.')
        if head_id is None or limit == 0:
            return []
        keys = self._session_of(head_id)
        with _unavailable('reading a session'):
            reply: list[Any] = await self._script('history')(
                keys=[keys.entries, keys.parents], args=[head_id, -1 if limit is None else limit]
            )
        if reply[0] != _OK:
            raise LookupError(f'the history of entry {head_id!r} in session {keys.session!r} is incomplete')
        return _decode_entries(reversed(reply[1:]))

    # -- id checks on the inherited entry points ----------------------------------------------------

    async def load(
        self, conversation_id: str, *, limit: int | None = None, scope: str | None = None
    ) -> Conversation | None:
        """Load a session (see `ConversationStore.load`), checking the ids before touching Redis.

        Raises:
            InvalidIdError: If the session or scope isn't a valid id.
            RedisUnavailableError: If Redis can't be reached.
        """
        self._check(conversation_id, scope)
        return await super().load(conversation_id, limit=limit, scope=scope)

    async def load_owned(self, session: str, *, user: str, start: int = 0) -> Conversation | None:
        """`user`'s session, or `None` if it doesn't exist yet: one round trip, where `load` and a
        `read_record` to tell "not yours" from "not there" would be two.

        Args:
            session: The session to load.
            user: Who must own it.
            start: Leave out the history's first `start` messages, and walk only the rest: a turn whose
                older messages a running summary stands for costs what it sends, not what is stored.
                Past the end, the conversation has no messages. Saving it appends, as after `load`.

        Raises:
            InvalidIdError: If the session or user isn't a valid id.
            SessionNotFoundError: If the session belongs to another user.
            RedisUnavailableError: If Redis can't be reached.
        """
        if start < 0:
            raise UserError('`start` must not be negative.')
        token = _LOAD_START.set(start)
        try:
            conversation = await self.load(session, scope=user)
        finally:
            _LOAD_START.reset(token)
        # The load remembered the record it read, whoever's it is, and forgot one it found gone.
        seen = self._records.get(session)
        if conversation is None and seen is not None and seen.scope != user:
            raise SessionNotFoundError(
                f'session {session!r} belongs to another user: pick another session, or omit it to start a new one.'
            )
        return conversation

    async def load_entries(
        self, conversation_id: str, *, limit: int | None = None, scope: str | None = None
    ) -> list[ConversationEntry] | None:
        """Load a session's entries (see `ConversationStore.load_entries`), checking the ids first.

        Raises:
            InvalidIdError: If the session or scope isn't a valid id.
            RedisUnavailableError: If Redis can't be reached.
        """
        self._check(conversation_id, scope)
        return await super().load_entries(conversation_id, limit=limit, scope=scope)

    async def _read(
        self, conversation_id: str, *, limit: int | None = None, scope: str | None = None
    ) -> tuple[ConversationRecord, list[ConversationEntry]] | None:
        # pydantic-ai's `load` and `load_entries` read the record, then its history: one script does both.
        if limit is not None and limit < 0:
            raise UserError('`limit` must not be negative.')
        keys = self._keys(conversation_id)
        start = _LOAD_START.get()
        # The cache holds whole histories: a window or a limit reads Redis. A session loaded from a start
        # is loaded so from then on (its older messages are summarized), so its whole history is let go.
        whole = limit is None and start == 0
        held = self._histories.get(keys.conv) if whole else None
        if start:
            self._histories.drop(keys.conv)
        with _unavailable('reading a session'):
            reply: list[Any] = await self._script('load')(
                keys=[keys.conv, keys.entries, keys.parents, keys.count],
                args=[-1 if limit is None else limit, held.head if held is not None else '', start],
            )
        if not reply:
            self._histories.drop(keys.conv)
            self._records.pop(conversation_id, None)
            return None
        record = _decode_record(reply[1])
        self._remember(record, keys.session)
        if scope is not None and record.scope != scope:
            return None
        if reply[0] == _UNCHANGED and held is not None:
            entries_json = held.json()
        elif reply[0] == _OK:
            entries_json = reply[2]
            if whole and record.head_id is not None:
                self._histories.put(keys.conv, record.head_id, entries_json)
        else:
            raise LookupError(f'the history of session {keys.session!r} is incomplete')
        return record, _ENTRIES.validate_json(entries_json)

    async def save(
        self, conversation: Conversation | AgentRunResult[Any], *, scope: str | None = None
    ) -> list[ConversationEntry]:
        """Save a session (see `ConversationStore.save`), checking the ids before touching Redis.

        Raises:
            InvalidIdError: If the session or scope isn't a valid id.
            ConversationConflict: If it was saved by someone else since it was loaded.
            RedisUnavailableError: If Redis can't be reached; the save landed whole or not at all.
        """
        target = conversation.conversation if isinstance(conversation, AgentRunResult) else conversation
        self._check(target.conversation_id, scope)
        # A conversation this store loaded or saved at its current revision needs no re-read: the record
        # is the one read then, and the write script checks the revision again, atomically.
        known = self._records.get(target.conversation_id)
        token = _SAVING.set([known] if known is not None and known.revision == target.revision else None)
        try:
            return await super().save(conversation, scope=scope)
        finally:
            _SAVING.reset(token)

    async def delete(self, conversation_id: str, *, scope: str | None = None) -> None:
        """Delete a session (see `ConversationStore.delete`), checking the ids before touching Redis.

        Raises:
            InvalidIdError: If the session or scope isn't a valid id.
            RedisUnavailableError: If Redis can't be reached.
        """
        self._check(conversation_id, scope)
        await super().delete(conversation_id, scope=scope)
        if await self.read_record(conversation_id) is None:
            # Compaction's running summary lives beside the session; it goes with it.
            with _unavailable('deleting a session'):
                await self._redis.delete(session_summary_key(self.tenant, conversation_id))

    # -- helpers for the CLI ------------------------------------------------------------------------

    async def list_sessions(self, user: str | None = None, limit: int | None = None) -> list[SessionInfo]:
        """The tenant's sessions, or one user's, most recently saved first.

        Raises:
            InvalidIdError: If `user` isn't a valid id.
            UserError: If `limit` is negative.
            RedisUnavailableError: If Redis can't be reached.
        """
        return [
            SessionInfo(
                id=record.conversation_id,
                user=record.scope,
                message_count=count,
                updated_at=record.updated_at,
                usage=record.usage,
                title=title,
            )
            for record, count, title in await self._scan(scope=user, limit=limit, with_details=True)
        ]

    async def search_sessions(self, text: str, *, user: str | None = None, limit: int = 20) -> list[SessionMatch]:
        """The sessions whose title, or whose user's or assistant's text, contains `text`, newest first.

        The match ignores case and runs of whitespace. Every message a session stored counts, on any
        branch; tool calls and their results don't. The tenant's sessions are read page by page, one
        round trip a page, so a search costs about what exporting the matching user's sessions would.

        Raises:
            InvalidIdError: If `user` isn't a valid id.
            ValueError: If `text` is blank or `limit` isn't positive.
            RedisUnavailableError: If Redis can't be reached.
        """
        needle = ' '.join(text.split()).casefold()
        if not needle:
            raise ValueError('give some text to search the sessions for')
        if limit <= 0:
            raise ValueError('limit must be positive')
        # Entries are JSON: the needle's words, escaped as JSON, are a cheap test for each one, and only
        # the entries that have them all are parsed.
        raw_words = [json.dumps(word, ensure_ascii=False)[1:-1].encode() for word in needle.split()]
        infos = await self.list_sessions(user=user)
        matches: list[SessionMatch] = []
        for start in range(0, len(infos), _LIST_PAGE):
            page = infos[start : start + _LIST_PAGE]
            pipe = self._redis.pipeline(transaction=False)
            for info in page:
                pipe.hvals(self._keys(info.id).entries)
            with _unavailable('searching sessions'):
                stored: list[list[bytes]] = await pipe.execute()
            for info, entries in zip(page, stored, strict=True):
                snippet = _find(needle, info.title) if info.title else None
                for raw in entries if snippet is None else ():
                    if (
                        all(word in raw.lower() for word in raw_words)
                        and (entry := _ENTRY.validate_json(raw)) is not None
                    ):
                        snippet = next(filter(None, (_find(needle, t) for t in _message_texts(entry.message))), None)
                        if snippet is not None:
                            break
                if snippet is not None:
                    matches.append(SessionMatch(info, snippet))
                    if len(matches) == limit:
                        return matches
        return matches

    async def set_title(self, session: str, title: str, *, replacing: str | None = None) -> str | None:
        """Give a session a title, in place of the one it took from its first message.

        Args:
            session: The session to title.
            title: The new title.
            replacing: Set it only if the session's title is still this one (so a title written
                meanwhile, by a user say, stays).

        Returns:
            The title as stored: on one line, and shortened as a first message's would be; `None` when
            the title was not `replacing`.

        Raises:
            InvalidIdError: If `session` isn't a valid id.
            SessionNotFoundError: If the session doesn't exist.
            ValueError: If `title` is blank.
            RedisUnavailableError: If Redis can't be reached.
        """
        title = shorten_title(title)
        if not title:
            raise ValueError('a title needs some text')
        keys = self._keys(session)
        with _unavailable('saving a session'):
            stored = await self._script('title')(keys=[keys.conv, keys.title], args=[title, replacing or ''])
        if stored == 0:
            raise SessionNotFoundError(f'no session {session!r}: it may have expired or been deleted.')
        return title if stored == _OK else None

    async def export_messages(self, session: str, *, user: str | None = None) -> list[ModelMessage]:
        """Every message of a session's current history, oldest first.

        Raises:
            InvalidIdError: If `session` or `user` isn't a valid id.
            SessionNotFoundError: If the session doesn't exist, or belongs to another user than `user`.
            RedisUnavailableError: If Redis can't be reached.
        """
        conversation = await self.load(session, scope=user)
        if conversation is None:
            raise SessionNotFoundError(
                f'no session {session!r} in tenant {self.tenant!r}'
                + (f' for user {user!r}' if user is not None else '')
                + ': it may have expired or been deleted; list the sessions to pick another.'
            )
        return conversation.messages

    async def message_count(self, session: str) -> int:
        """How many messages a session's current history has (0 if it doesn't exist), in one round trip.

        Raises:
            InvalidIdError: If `session` isn't a valid id.
            RedisUnavailableError: If Redis can't be reached.
        """
        keys = self._keys(session)
        with _unavailable('reading a session'):
            raw = _bytes(await self._redis.get(keys.count))
        return int(raw) if raw is not None else 0

    # -- internals ----------------------------------------------------------------------------------

    def _keys(self, session: str) -> SessionKeys:
        return _session_keys(self.tenant, session)

    def _check(self, conversation_id: str, scope: str | None) -> None:
        validate_id('session', conversation_id)
        if scope is not None:
            validate_id('user', scope)

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.register_script(_SCRIPTS[name])
        return script

    async def _write(self, script_name: str, keys: SessionKeys, score: str, args: Sequence[str | bytes | int]) -> Any:
        """Run the write or append script, with the index update: the script's reply.

        On one server the script updates the index itself, atomically with the write. A cluster keeps
        the index in another slot, so there a command just before the script updates it: index first,
        so a crash between the two leaves an index member without a record, which listing cleans up,
        never a session missing from the index. GT keeps the newest time.
        """
        script = self._script(script_name)
        if isinstance(self._redis, RedisCluster):
            await self._redis.zadd(self._index, {keys.session: float(score)}, gt=True)
            return await script(keys=keys.all, args=args)
        return await script(keys=[*keys.all, self._index], args=args)

    def _remember(self, record: ConversationRecord, session: str) -> None:
        """Note which session the record's head and branch tips are in, for `read_history`."""
        for entry_id in (record.head_id, record.forked_at, *record.branches):
            if entry_id is not None:
                self._entry_sessions[entry_id] = session
                self._entry_sessions.move_to_end(entry_id)
        while len(self._entry_sessions) > self._entry_cache_size:
            self._entry_sessions.popitem(last=False)
        self._records[record.conversation_id] = record
        self._records.move_to_end(record.conversation_id)
        if len(self._records) > _KNOWN_RECORDS:
            self._records.popitem(last=False)

    def _session_of(self, entry_id: str) -> SessionKeys:
        session = self._entry_sessions.get(entry_id)
        if session is None:
            raise LookupError(
                f'entry {entry_id!r} is not the head or a branch of a session this store has read or written'
            )
        return self._keys(session)

    async def _scan(self, *, scope: str | None, limit: int | None, with_details: bool) -> list[_Listed]:
        """Records (with message counts and titles) in the index, newest first, filtered by scope, pruning
        dead members."""
        if limit is not None and limit < 0:
            raise UserError('`limit` must not be negative.')
        if scope is not None:
            validate_id('user', scope)
        if limit == 0:
            return []
        found: list[_Listed] = []
        dead: list[tuple[str | bytes, float]] = []
        offset = 0
        with _unavailable('listing sessions'):
            while True:
                page = cast(
                    list[tuple[bytes, float]],
                    await self._redis.zrevrange(self._index, offset, offset + _LIST_PAGE - 1, withscores=True),  # pyright: ignore[reportUnknownMemberType]
                )
                if not page:
                    break
                if limit is not None and len(found) >= limit:
                    # A member's score is never below its record's updated_at (saves only raise it),
                    # so once the page's best score is older than the limit-th newest record, stop.
                    newest = sorted((record.updated_at.timestamp() for record, _, _ in found), reverse=True)
                    if page[0][1] < newest[limit - 1]:
                        break
                found += await self._fetch_page(page, scope, with_details, dead)
                offset += len(page)
                if len(page) < _LIST_PAGE:
                    break
            if dead:
                await self._prune(dead)
        found.sort(key=lambda item: item[0].updated_at, reverse=True)
        return found[:limit]

    async def _fetch_page(
        self,
        page: list[tuple[bytes, float]],
        scope: str | None,
        with_details: bool,
        dead: list[tuple[str | bytes, float]],
    ) -> list[_Listed]:
        sessions: list[tuple[SessionKeys, float]] = []
        for raw_member, score in page:
            try:
                sessions.append((self._keys(raw_member.decode()), score))
            except ValueError:  # includes InvalidIdError and UnicodeDecodeError
                dead.append((raw_member, score))  # not a session id this store writes: drop it
        # Not MGET: the sessions live in different slots. A non-transactional pipeline is one round
        # trip on one server, and redis-py's cluster client splits it per node.
        pipe = self._redis.pipeline(transaction=False)
        for keys, _ in sessions:
            pipe.get(keys.conv)
            if with_details:
                pipe.get(keys.count)
                pipe.get(keys.title)
        replies: list[bytes | None] = await pipe.execute()
        step = 3 if with_details else 1
        found: list[_Listed] = []
        for index, (keys, score) in enumerate(sessions):
            raw = replies[index * step]
            if raw is None:
                dead.append((keys.session, score))  # expired, deleted, or a save that crashed
                continue
            record = _decode_record(raw)
            if scope is not None and record.scope != scope:
                continue
            count, title = replies[index * step + 1 : index * step + 3] if with_details else (None, None)
            found.append((record, int(count) if count is not None else 0, title.decode() if title else None))
        return found

    async def _prune(self, members: Sequence[tuple[str | bytes, float]]) -> None:
        args: list[str | bytes] = []
        for member, score in members:
            args += [member, repr(float(score))]
        await self._script('prune')(keys=[self._index], args=args)


def _message_texts(message: ModelMessage) -> Iterable[str]:
    """What the user and the assistant wrote in a message, for search."""
    for part in message.parts:
        if isinstance(part, UserPromptPart):
            yield from (
                [part.content] if isinstance(part.content, str) else (c for c in part.content if isinstance(c, str))
            )
        elif isinstance(part, TextPart):
            yield part.content


def _find(needle: str, text: str, *, context: int = 30) -> str | None:
    """The words around `needle`'s first place in `text` (both on one line, needle casefolded), or `None`."""
    line = ' '.join(text.split())
    at = line.casefold().find(needle)
    if at < 0:
        return None
    # casefold keeps lengths for all but a few letters (ß): the snippet is for reading, not slicing on.
    start, end = max(at - context, 0), min(at + len(needle) + context, len(line))
    if start > 0 and ' ' in line[start:at]:
        start = line.index(' ', start, at) + 1  # at a word
    if end < len(line) and ' ' in line[at + len(needle) : end]:
        end = line.rindex(' ', at + len(needle), end)
    return ('…' if start else '') + line[start:end] + ('…' if end < len(line) else '')


@functools.lru_cache(maxsize=4096)
def _session_keys(tenant: str, session: str) -> SessionKeys:
    # One `SessionKeys` per session: each turn asks for its keys a few times, and they never change.
    return SessionKeys(tenant, session)


@dataclass
class _Held:
    head: str
    parts: list[bytes]
    """The entries' JSON in pieces, oldest first, each one entry or a loaded run of them: a save adds
    its own pieces, so it costs what it saved, not the length of the history."""
    size: int


@dataclass(frozen=True)
class _HeldView:
    """A held history as it was when taken: a save in flight may extend the pieces, never change them."""

    head: str
    parts: list[bytes]
    count: int

    def json(self) -> bytes:
        """The history as one JSON array, oldest first."""
        return b'[' + b','.join(self.parts[: self.count]) + b']'


class HistoryCache:
    """The JSON of recently loaded or saved histories, within a byte budget; least recent out first.

    Histories are held by their conversation record's Redis key, which names the tenant, so the stores of many
    tenants can share one cache, and one budget (as each `Assistant` does). Each is held with its head entry's id. Entries never change once stored, so a session whose stored
    head is still that id has exactly that history: the load script checks, and only then is the
    walk skipped. Holding JSON rather than messages keeps every load's messages its own to change.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError('history_cache_bytes must not be negative (0 turns the cache off)')
        self._budget = budget
        self._size = 0
        self._held: OrderedDict[str, _Held] = OrderedDict()

    @property
    def budget(self) -> int:
        """The most bytes of history JSON held at once."""
        return self._budget

    @property
    def size(self) -> int:
        """The bytes of history JSON held now."""
        return self._size

    def __len__(self) -> int:
        """How many sessions' histories are held."""
        return len(self._held)

    def get(self, session: str) -> _HeldView | None:
        """The history held for `session` as it is now, if any; marks it as recently used."""
        held = self._held.get(session)
        if held is None:
            return None
        self._held.move_to_end(session)
        return _HeldView(held.head, held.parts, len(held.parts))

    def put(self, session: str, head: str, entries_json: bytes) -> None:
        inner = entries_json[1:-1]
        self._hold(session, _Held(head, [inner] if inner else [], len(inner)))

    def extend(
        self, session: str, head: str | None, entries: Sequence[ConversationEntry], encoded: Sequence[bytes]
    ) -> None:
        """After a save of `entries` (as `encoded`) with `head` as the new head: the held history, extended."""
        held = self._held.get(session)
        if not entries and held is not None and held.head == head:
            return  # saved again unchanged
        chained = all(entry.parent_id == previous.id for previous, entry in itertools.pairwise(entries))
        if not entries or head != entries[-1].id or not chained:
            self.drop(session)  # the head moved elsewhere in the tree: walk it on the next load
            return
        added = sum(len(piece) for piece in encoded)
        first_parent, new_head = entries[0].parent_id, entries[-1].id
        if first_parent is None:
            self._hold(session, _Held(new_head, list(encoded), added))
        elif held is not None and held.head == first_parent:
            held.head = new_head
            held.parts.extend(encoded)
            held.size += added
            self._size += added
            self._held.move_to_end(session)
            self._fit(session)
        else:
            self.drop(session)

    def drop(self, session: str) -> None:
        held = self._held.pop(session, None)
        if held is not None:
            self._size -= held.size

    def _hold(self, session: str, held: _Held) -> None:
        self.drop(session)
        self._held[session] = held
        self._size += held.size
        self._fit(session)

    def _fit(self, session: str) -> None:
        """Drop a history larger than the whole budget, then the least recent ones until within it."""
        held = self._held.get(session)
        if held is not None and held.size > self._budget:
            self.drop(session)
        while self._size > self._budget:
            _, dropped = self._held.popitem(last=False)
            self._size -= dropped.size


@contextmanager
def _unavailable(action: str, *, saving: bool = False) -> Generator[None]:
    """Turn a connection lost for good (after the client's retries) into a one-line user error."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        detail = str(exc).strip().rstrip('.') or type(exc).__name__
        # A save is one script: it landed whole or not at all, even if its reply was lost.
        outcome = ' The save landed whole or not at all.' if saving else ''
        raise RedisUnavailableError(
            f'lost the connection to Redis while {action}: {detail}.{outcome} Check that Redis is running, then retry.'
        ) from exc


def _bytes(value: bytes | str | None) -> bytes | None:
    # The client returns bytes (`decode_responses=False`); redis-py's types allow str as well.
    return value.encode() if isinstance(value, str) else value


def _decode_record(raw: bytes) -> ConversationRecord:
    record = _RECORD.validate_json(raw)
    if record is None:
        raise ValueError('a conversation record is stored as null')
    return record


def _decode_entries(raw_entries: Iterable[bytes]) -> list[ConversationEntry]:
    # One parse for the whole history rather than one per entry.
    return _ENTRIES.validate_json(b'[' + b','.join(raw_entries) + b']')
