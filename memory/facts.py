"""Long-term memory: durable facts about a user, on Redis, deduplicated, recalled by relevance.

A fact belongs to one user of one tenant and records its text, its source (`user-stated`, `tool`
or `inferred`), the session and turn it came from, when it was created and last updated, and
optionally when it expires. Every key of a user's memory shares the user's hash tag
(`tandem:{<tenant>:user:<user>}:...`, see `memory.keys.UserFactKeys`), so each write is one Lua
script on one slot, which works the same on one server and on Redis Cluster.

Remembering a fact that restates a known one updates that fact instead of adding another:

1. exact: the same text;
2. normalized: the same text once case, punctuation, accents' compatibility forms and spacing are
   normalized (`normalize_fact`);
3. similar: a known fact whose normalized text is at least `similarity_threshold` similar
   (`text_similarity`, character-level, by default), e.g. "favourite colour" and "favorite color".

The first two are checked inside the write script, against an index of normalized-text digests, so
two concurrent `remember` calls of the same fact store one fact, whatever the interleaving. The
similarity check runs in the client on a validated cache of the user's facts; the write script
refuses it (and the client retries) if any fact changed since that cache was read, so concurrent
similar facts also end up as one.

A restatement takes the new wording and source, unless its source is less trusted than the stored
one (`user-stated` > `inferred` > `tool`): then only `updated_at`, `mentions` and the expiry change,
so content from a tool can never rewrite what the user said.

Reads are served from an in-process cache per user, validated by one `GET` of a version counter
that every write bumps: a recall is one round trip, however many facts there are. Relevance ranking
is the knowledge base's BM25 (`memory.knowledge.index.Bm25Index`, bm25s's Lucene scoring) over the cached
facts, kept up to date incrementally as this process writes; see `FactSnapshot.search`.

Expiry is logical: a fact past its `expires_at` is never returned, and the next script that touches
the user's memory (any read that reloads, or any write) deletes it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import secrets
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tandem.agent.core.errors import RedisUnavailableError, TandemError
from tandem.memory.connection import RedisClient
from tandem.memory.keys import UserFactKeys, validate_id

if TYPE_CHECKING:
    from tandem.memory.knowledge.index import Bm25Index

__all__ = (
    'EXPORT_FORMAT',
    'FACT_ID_PATTERN',
    'MAX_FACT_CHARS',
    'Fact',
    'FactLimitError',
    'FactSnapshot',
    'FactSource',
    'FactStore',
    'ImportReport',
    'RememberOutcome',
    'RememberResult',
    'SecretFactError',
    'Similarity',
    'looks_like_secret',
    'normalize_fact',
    'text_similarity',
)

FactSource = Literal['user-stated', 'tool', 'inferred']
"""Where a fact came from: the user said it, a tool returned it (untrusted), or a model inferred it."""

RememberOutcome = Literal['created', 'exact', 'normalized', 'similar']
"""What `remember` did: stored a new fact, or updated one that matched exactly, once normalized, or by similarity."""

MAX_FACT_CHARS = 500
"""The longest fact text accepted: a fact is a sentence, not a document."""

FACT_ID_PATTERN = re.compile(r'f-[0-9a-f]{12}')
"""What a fact id looks like, e.g. `f-3f2a9c0b1d4e`."""

EXPORT_FORMAT = 'tandem.facts'
"""The `format` field of an export, checked on import."""

_TRUST: dict[str, int] = {'tool': 0, 'inferred': 1, 'user-stated': 2}
_INLINE_LOAD_LIMIT = 20_000
"""Up to this many facts, a cache reload is one script; above it, the hash is scanned in pages."""
_SCAN_PAGE = 5_000
_PURGE_LIMIT = 500
"""Expired facts deleted per script at most, to bound the time one script holds the server."""
_WRITE_ATTEMPTS = 8
_SIMILAR_CANDIDATES = 20


class Fact(BaseModel):
    """One durable fact about a user."""

    model_config = ConfigDict(frozen=True, extra='ignore')

    id: str
    """A short id such as `f-3f2a9c0b1d4e`, for `forget`."""
    text: str
    source: FactSource
    session: str | None = None
    """The session the fact was first stated in, if known."""
    turn: int | None = None
    """The turn of that session (1 for the first user message), if known."""
    created_at: datetime
    updated_at: datetime
    """When it was last stated again (or changed)."""
    expires_at: datetime | None = None
    """When it stops being recalled; `None` for never."""
    mentions: int = 1
    """How many times it was stated."""

    def expired(self, now: float) -> bool:
        """Whether the fact has expired at `now` (seconds since the epoch)."""
        return self.expires_at is not None and self.expires_at.timestamp() <= now


@dataclass(frozen=True)
class RememberResult:
    """What `FactStore.remember` stored."""

    fact: Fact
    """The fact as stored now: new, or the existing one, updated."""
    outcome: RememberOutcome

    @property
    def created(self) -> bool:
        """Whether a new fact was stored (rather than an existing one updated)."""
        return self.outcome == 'created'


@dataclass(frozen=True)
class ImportReport:
    """What `FactStore.import_facts` did."""

    created: int = 0
    updated: int = 0
    skipped: int = 0
    """Expired facts, and facts that were invalid."""


class FactLimitError(TandemError):
    """A user already has as many facts as the store allows."""


class SecretFactError(ValueError):
    """A fact that looks like a credential: long-term memory never stores one, whoever proposes it."""


class Similarity(Protocol):
    """How alike two normalized fact texts are, from 0 (unrelated) to 1 (the same)."""

    def __call__(self, a: str, b: str) -> float:
        """Args:
        a: One fact, as `normalize_fact` returns it.
        b: The other, the same way.
        """
        ...


_APOSTROPHES = re.compile(r"['’`´]")
_WORD = re.compile(r'[^\W_]+')


def normalize_fact(text: str) -> str:
    """The form facts are compared in: NFKC, case-folded, apostrophes dropped, other punctuation as spaces.

    >>> normalize_fact("  Alice's  FAVOURITE colour: teal! ")
    'alices favourite colour teal'
    """
    return ' '.join(_WORD.findall(_APOSTROPHES.sub('', unicodedata.normalize('NFKC', text).casefold())))


def text_similarity(a: str, b: str) -> float:
    """Character-level similarity of two normalized texts (difflib's ratio), the default `Similarity`.

    Conservative by design at the default threshold (0.9): spelling variants and small rewordings
    match ("favourite colour" / "favorite color", "is vegetarian" / "is a vegetarian"), different
    facts that share most words do not ("my sister" / "my brother", "project Apollo" / "project Zeus").
    """
    if not a or not b:
        return 0.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


_SECRET = re.compile(
    r'-----BEGIN [A-Z ]*PRIVATE KEY-----'
    r'|\b(?:sk|pk|rk|ghp|gho|ghs|glpat|xox[abpr])[-_][A-Za-z0-9_-]{16,}'
    r'|\bAKIA[0-9A-Z]{16}\b'
    r'|\b(?:password|passwd|passphrase|pin|api[ _-]?key|secret[ _-]?key|access[ _-]?token|auth[ _-]?token)\b'
    r'\s*(?:is|was|=|:)\s*\S',
    re.IGNORECASE,
)


def looks_like_secret(text: str) -> bool:
    """Whether `text` looks like it holds a credential (a password, an API key, a private key).

    Long-term memory never stores those: `FactStore.remember` refuses them, for every caller.
    """
    return _SECRET.search(text) is not None


_STOPWORD_TEXT = (
    'a an and are as at be but by for if in into is it no not of on or such that the their then there these they '
    'this to was will with i im me my mine we our you your user users s'
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _terms(text: str) -> list[str]:
    """Index terms of a text: its `normalize_fact` words without stopwords, with a light plural stemming."""
    terms: list[str] = []
    for word in _WORD.findall(_APOSTROPHES.sub('', unicodedata.normalize('NFKC', text).casefold())):
        if word in _STOPWORDS:
            continue
        if len(word) > 3 and word.endswith('s') and not word.endswith('ss'):
            word = word[:-1]
        terms.append(word)
    return terms


def _digest(normalized: str) -> str:
    return hashlib.sha256(normalized.encode()).hexdigest()[:32]


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace('+00:00', 'Z')


# --- the per-user cache --------------------------------------------------------------------------


class _UserCache:
    """One user's facts as of `version`, each parsed on first use, with views derived from them.

    A load brings the facts unparsed, with their expiry times, and, once the user's memory is
    indexed in Redis, the BM25 index restored from its snapshot and the recency order: a recall
    parses only the facts it returns. Views that need every fact (the oldest-first list, the
    similarity check) parse the rest then.

    A change through `put` or `remove` keeps the BM25 and similarity indexes, the recency order and
    the expiry times up to date (all incremental) and drops the sorted list, so reads between writes
    cost no more than the view they use.

    Relevance is the knowledge base's BM25 (`memory.knowledge.index.Bm25Index`: bm25s's Lucene scoring,
    with adds and removes), over the terms of `_terms`.
    """

    def __init__(
        self,
        version: str,
        entries: Mapping[str, Fact | bytes],
        expiry_ms: Mapping[str, int],
    ) -> None:
        self.version = version
        self._entries: dict[str, Fact | bytes] = dict(entries)
        self._expiry_ms: dict[str, int] = dict(expiry_ms)
        self._lexical: Bm25Index | None = None
        self._recency: list[str] | None = None
        """Fact ids, most recently stated first: all of them, or the first few when read from Redis;
        `None` until a view needs it (then sorted from the facts)."""
        self._recency_complete = False
        self._terms: dict[str, list[str]] = {}
        self._postings: dict[str, set[str]] | None = None
        self._by_created: list[Fact] | None = None
        self._next_expiry: int | None = None
        self._expiry_known = False

    def __len__(self) -> int:
        return len(self._entries)

    def attach(self, lexical: Bm25Index, recency: list[str]) -> None:
        """Use a BM25 index and the start of the recency order read from Redis, instead of building them from the facts."""
        self._lexical = lexical
        self._recency = [fact_id for fact_id in recency if fact_id in self._entries]
        self._recency_complete = len(self._recency) == len(self._entries)

    def __contains__(self, fact_id: object) -> bool:
        return fact_id in self._entries

    # -- changes ----------------------------------------------------------------------------------

    def put(self, fact: Fact) -> None:
        self.remove(fact.id)
        self._entries[fact.id] = fact
        if self._lexical is not None:
            self._lexical.add(fact.id, self.terms(fact))
        if self._postings is not None:
            for term in set(self.terms(fact)):
                self._postings.setdefault(term, set()).add(fact.id)
        if self._recency is not None:
            self._recency.insert(0, fact.id)
        if fact.expires_at is not None:
            moment = round(fact.expires_at.timestamp() * 1000)
            self._expiry_ms[fact.id] = moment
            if self._expiry_known:
                self._next_expiry = moment if self._next_expiry is None else min(self._next_expiry, moment)

    def remove(self, fact_id: str) -> None:
        entry = self._entries.pop(fact_id, None)
        self._by_created = None
        if entry is None:
            return
        if self._lexical is not None:
            self._lexical.remove([fact_id])
        if self._postings is not None:
            fact = entry if isinstance(entry, Fact) else Fact.model_validate_json(entry)
            for term in set(self.terms(fact)):
                ids = self._postings.get(term)
                if ids is not None:
                    ids.discard(fact_id)
                    if not ids:
                        del self._postings[term]
        if self._recency is not None and fact_id in self._recency:
            self._recency.remove(fact_id)
        self._terms.pop(fact_id, None)
        if self._expiry_ms.pop(fact_id, None) is not None:
            self._expiry_known = False

    def drop_expired(self, now: float) -> None:
        if self.any_expired(now):
            for fact_id in [fact_id for fact_id in self._expiry_ms if self.expired(fact_id, now)]:
                self.remove(fact_id)

    # -- facts ------------------------------------------------------------------------------------

    def fact(self, fact_id: str) -> Fact:
        entry = self._entries[fact_id]
        if isinstance(entry, Fact):
            return entry
        fact = self._entries[fact_id] = Fact.model_validate_json(entry)
        return fact

    def all_facts(self) -> dict[str, Fact]:
        """Every fact by id, parsing in one batch those not parsed yet."""
        unparsed = [(fact_id, entry) for fact_id, entry in self._entries.items() if not isinstance(entry, Fact)]
        if unparsed:
            for (fact_id, _), fact in zip(unparsed, _decode_facts(entry for _, entry in unparsed), strict=True):
                self._entries[fact_id] = fact
        return cast(dict[str, Fact], self._entries)

    def expired(self, fact_id: str, now: float) -> bool:
        moment = self._expiry_ms.get(fact_id)
        return moment is not None and moment <= round(now * 1000)

    def live_count(self, now: float) -> int:
        now_ms = round(now * 1000)
        return len(self._entries) - sum(1 for moment in self._expiry_ms.values() if moment <= now_ms)

    def any_expired(self, now: float) -> bool:
        if not self._expiry_known:
            self._next_expiry = min(self._expiry_ms.values()) if self._expiry_ms else None
            self._expiry_known = True
        return self._next_expiry is not None and self._next_expiry <= round(now * 1000)

    # -- views ------------------------------------------------------------------------------------

    def terms(self, fact: Fact) -> list[str]:
        terms = self._terms.get(fact.id)
        if terms is None:
            terms = self._terms[fact.id] = _terms(fact.text)
        return terms

    @property
    def lexical(self) -> Bm25Index:
        """The BM25 index of the facts, built from all of them when it was not restored."""
        if self._lexical is None:
            from tandem.memory.knowledge.index import Bm25Index

            facts = self.all_facts()
            index = Bm25Index()
            index.add_many(list(facts), [' '.join(self.terms(fact)) for fact in facts.values()])
            index.finish()
            self._lexical = index
        return self._lexical

    def ranked(self, query: str, k: int) -> list[str]:
        """The ids of the `k` facts that match `query` best (BM25), best first; only those sharing a term with it."""
        terms = list(dict.fromkeys(_terms(query)))
        if not terms or not self._entries or k <= 0:
            return []
        return [fact_id for fact_id, _ in self.lexical.search(terms, k)]

    def by_created(self) -> list[Fact]:
        if self._by_created is None:
            self._by_created = sorted(self.all_facts().values(), key=lambda f: (f.created_at, f.id))
        return self._by_created

    def most_recent(self, k: int, now: float) -> list[str]:
        """The ids of the `k` most recently stated live facts, newest first."""
        while True:
            if self._recency is None:
                ordered = sorted(self.all_facts().values(), key=lambda f: (f.updated_at, f.id), reverse=True)
                self._recency = [fact.id for fact in ordered]
                self._recency_complete = True
            live = (fact_id for fact_id in self._recency if not self.expired(fact_id, now))
            found = list(itertools.islice(live, k))
            if len(found) == k or self._recency_complete:
                return found
            self._recency = None  # the start read from Redis ran out: sort them all

    def most_similar(
        self, normalized: str, similarity: Similarity, threshold: float, now: float
    ) -> tuple[str, float] | None:
        """The live fact most similar to `normalized`, if one reaches `threshold`.

        Candidates are the facts that contain one of its three rarest index terms (a fact similar
        enough to count shares nearly all of its words), ranked by how many terms they share;
        the best `_SIMILAR_CANDIDATES` of them are compared. With the default similarity, difflib's
        cheap upper bounds rule most of them out before the exact ratio is computed.
        """
        if self._postings is None:
            self._postings = {}
            for fact in self.all_facts().values():
                for term in set(self.terms(fact)):
                    self._postings.setdefault(term, set()).add(fact.id)
        postings = self._postings
        terms = set(_terms(normalized))
        rarest = sorted(terms, key=lambda term: len(postings.get(term, ())))[:3]
        pool: set[str] = set()
        for term in rarest:
            pool |= postings.get(term, set())
        shared = {fact_id: sum(1 for term in terms if fact_id in postings.get(term, ())) for fact_id in pool}
        candidates = sorted(shared, key=lambda fact_id: -shared[fact_id])[:_SIMILAR_CANDIDATES]
        best: tuple[str, float] | None = None
        for fact_id in candidates:
            if self.expired(fact_id, now):
                continue
            other = normalize_fact(self.fact(fact_id).text)
            if similarity is text_similarity:
                matcher = SequenceMatcher(None, normalized, other, autojunk=False)
                if matcher.real_quick_ratio() < threshold or matcher.quick_ratio() < threshold:
                    continue
                score = matcher.ratio()
            else:
                score = similarity(normalized, other)
            if score >= threshold and (best is None or score > best[1]):
                best = (fact_id, score)
        return best


class FactSnapshot:
    """One user's live facts at one moment, for ranking without further round trips."""

    def __init__(self, cache: _UserCache, now: float) -> None:
        self._cache = cache
        self._now = now
        self._expired = cache.any_expired(now)

    @property
    def facts(self) -> list[Fact]:
        """Every live fact, oldest first."""
        ordered = self._cache.by_created()
        if not self._expired:
            return list(ordered)
        return [fact for fact in ordered if not self._cache.expired(fact.id, self._now)]

    def __len__(self) -> int:
        return self._cache.live_count(self._now) if self._expired else len(self._cache)

    def search(self, query: str, k: int = 10) -> list[Fact]:
        """The live facts most relevant to `query` (BM25), best first; only facts sharing a term with it."""
        ranked = self._cache.ranked(query, len(self._cache) if self._expired else k)
        if self._expired:
            ranked = [fact_id for fact_id in ranked if not self._cache.expired(fact_id, self._now)][:k]
        return [self._cache.fact(fact_id) for fact_id in ranked]

    def recent(self, k: int = 10) -> list[Fact]:
        """The `k` most recently updated live facts, newest first."""
        return [self._cache.fact(fact_id) for fact_id in self._cache.most_recent(k, self._now)]


# --- Lua -------------------------------------------------------------------------------------------

# Shared by every script. KEYS: facts, norms, expiry, version, updated, index, changes
# (UserFactKeys.all). A change to a fact bumps the version and, while a BM25 snapshot is stored,
# records the fact's id in the change log at that version, so a reader can bring the snapshot up
# to date with only the facts changed since. A log grown past _LOG_LIMIT drops the snapshot
# instead: the next reader rebuilds it.
_LOG_LIMIT = 5_000
_PRELUDE = f"""
local LOG_LIMIT = {_LOG_LIMIT}
local CHANGED = {{}}
local function bump(base)
  if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('SET', KEYS[4], base) end
  redis.call('INCR', KEYS[4])
  -- Read back as a string: Lua prints a number this large with 14 digits.
  local version = redis.call('GET', KEYS[4])
  if #CHANGED > 0 and redis.call('EXISTS', KEYS[6]) == 1 then
    for _, id in ipairs(CHANGED) do redis.call('ZADD', KEYS[7], version, id) end
    if redis.call('ZCARD', KEYS[7]) > LOG_LIMIT then redis.call('DEL', KEYS[6], KEYS[7]) end
  end
  CHANGED = {{}}
  return version
end
local function drop(id)
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local norm = cjson.decode(raw)['norm']
    if norm and redis.call('HGET', KEYS[2], norm) == id then redis.call('HDEL', KEYS[2], norm) end
    redis.call('HDEL', KEYS[1], id)
    CHANGED[#CHANGED + 1] = id
  end
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[5], id)
  return raw
end
local function purge(now, limit, base)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do drop(id) end
  if #expired > 0 then bump(base) end
  return #expired
end
"""


# ARGV: now (ms), version the client's cache had ('' for none), digest of the normalized text,
# the new fact's JSON, a similar fact's id ('' for none), text, source, trust of the source,
# updated_at (ISO), expiry (ms, 0 for none), expires_at (ISO, '' for none), max facts, version
# base, purge limit, updated_at (µs, the recency score).
# Returns {outcome, fact id, version, fact JSON}, or {'conflict'} / {'full'}.
_REMEMBER_SCRIPT = (
    _PRELUDE
    + """
local TRUST = {['tool'] = 0, ['inferred'] = 1, ['user-stated'] = 2}
local seen = redis.call('GET', KEYS[4]) or ''
purge(ARGV[1], tonumber(ARGV[14]), ARGV[13])
local id = redis.call('HGET', KEYS[2], ARGV[3])
if id and redis.call('HEXISTS', KEYS[1], id) == 0 then
  redis.call('HDEL', KEYS[2], ARGV[3])  -- a digest left behind by an interrupted write: ignore it
  id = false
end
local outcome = 'normalized'
if not id then
  -- Similarity was judged on the client's cache: only valid if nothing changed since.
  if seen ~= ARGV[2] then return {'conflict'} end
  if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[5]) == 1 then
    id = ARGV[5]
    outcome = 'similar'
  end
end
if id then
  local fact = cjson.decode(redis.call('HGET', KEYS[1], id))
  if fact['text'] == ARGV[6] then outcome = 'exact' end
  if TRUST[ARGV[7]] >= (TRUST[fact['source']] or 0) then
    if fact['norm'] ~= ARGV[3] then
      if redis.call('HGET', KEYS[2], fact['norm']) == id then redis.call('HDEL', KEYS[2], fact['norm']) end
      redis.call('HSET', KEYS[2], ARGV[3], id)
      fact['norm'] = ARGV[3]
    end
    fact['text'] = ARGV[6]
    fact['source'] = ARGV[7]
  end
  fact['updated_at'] = ARGV[9]
  fact['mentions'] = (tonumber(fact['mentions']) or 1) + 1
  if ARGV[10] ~= '0' then
    fact['expires_at'] = ARGV[11]
    redis.call('ZADD', KEYS[3], ARGV[10], id)
  else
    fact['expires_at'] = cjson.null
    redis.call('ZREM', KEYS[3], id)
  end
  local encoded = cjson.encode(fact)
  redis.call('HSET', KEYS[1], id, encoded)
  redis.call('ZADD', KEYS[5], ARGV[15], id)
  CHANGED[#CHANGED + 1] = id
  return {outcome, id, bump(ARGV[13]), encoded}
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[12]) then return {'full'} end
id = cjson.decode(ARGV[4])['id']
redis.call('HSET', KEYS[1], id, ARGV[4])
redis.call('HSET', KEYS[2], ARGV[3], id)
redis.call('ZADD', KEYS[5], ARGV[15], id)
if ARGV[10] ~= '0' then redis.call('ZADD', KEYS[3], ARGV[10], id) end
CHANGED[#CHANGED + 1] = id
return {'created', id, bump(ARGV[13]), ARGV[4]}
"""
)

# ARGV: version base, then fact ids. Returns {version, removed fact JSON...}.
_FORGET_SCRIPT = (
    _PRELUDE
    + """
local removed = {}
for i = 2, #ARGV do
  local raw = drop(ARGV[i])
  if raw then removed[#removed + 1] = raw end
end
local version = redis.call('GET', KEYS[4]) or ''
if #removed > 0 then version = bump(ARGV[1]) end
return {version, unpack(removed)}
"""
)

# ARGV: version base. Returns {version, how many facts were deleted}.
_FORGET_ALL_SCRIPT = (
    _PRELUDE
    + """
local count = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7])
return {bump(ARGV[1]), count}
"""
)

# Lists are returned as one string of newline-separated items (ids and fact JSON never hold a
# newline): a reply of a few long strings parses far faster than one of thousands of short ones.
_JOIN = """
local function joined(flat, from, step)
  local out = {}
  for i = from, #flat, step do out[#out + 1] = flat[i] end
  return table.concat(out, '\\n')
end
"""

# ARGV: now (ms), purge limit, version base, most facts to return inline, most recent ids to return.
# Returns {version, fact count, index, expiring ids, their expiry (ms), recency, fact ids, facts}:
# index is {} or, when a snapshot is stored, {its version, the snapshot, ids changed since};
# recency is the first ids of the most recently stated first (only with a snapshot: the snapshot's
# save wrote the whole set); the fact ids and their JSON come unless there are more than the limit
# (then the client reads them in pages, `_PAGE_SCRIPT`).
_READ_SCRIPT = (
    _PRELUDE
    + _JOIN
    + """
purge(ARGV[1], tonumber(ARGV[2]), ARGV[3])
local version = redis.call('GET', KEYS[4]) or ''
local count = redis.call('HLEN', KEYS[1])
local index = {}
local recency = ''
local saved = redis.call('HMGET', KEYS[6], 'version', 'bm25')
if saved[1] and saved[2] and version ~= '' and tonumber(saved[1]) <= tonumber(version) then
  index = {saved[1], saved[2], table.concat(redis.call('ZRANGEBYSCORE', KEYS[7], '(' .. saved[1], '+inf'), '\\n')}
  recency = table.concat(redis.call('ZREVRANGE', KEYS[5], 0, tonumber(ARGV[5]) - 1), '\\n')
end
local expiry = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
local facts = {}
if count <= tonumber(ARGV[4]) then facts = redis.call('HGETALL', KEYS[1]) end
return {version, count, index, joined(expiry, 1, 2), joined(expiry, 2, 2), recency, joined(facts, 1, 2), joined(facts, 2, 2)}
"""
)

# KEYS: facts. ARGV: cursor, page size. Returns {next cursor, fact ids, facts}: one HSCAN page.
_PAGE_SCRIPT = (
    _JOIN
    + """
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
return {page[1], joined(page[2], 1, 2), joined(page[2], 2, 2)}
"""
)

# ARGV: the version the snapshot reflects, the snapshot, '1' to replace a stored one as new (it
# could not be used), then, when the snapshot was built from every fact, each fact's (updated_at in
# µs, id) for the recency set. A snapshot of an older version than the current one is stored only
# if the change log covers the versions between (an older snapshot is stored); one built from every
# fact or replacing, only if it is of the current version. Returns 1 if stored.
_SAVE_INDEX_SCRIPT = """
local version = redis.call('GET', KEYS[4])
if not version then return 0 end
local saved = redis.call('HGET', KEYS[6], 'version')
local at = tonumber(ARGV[1])
if ARGV[1] ~= version then
  if #ARGV > 3 or ARGV[3] == '1' or not saved or tonumber(saved) >= at or at > tonumber(version) then return 0 end
elseif saved and ARGV[3] ~= '1' and tonumber(saved) >= at then
  return 0
end
if #ARGV > 3 then
  redis.call('DEL', KEYS[5])
  for i = 4, #ARGV, 2 do redis.call('ZADD', KEYS[5], ARGV[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[6], 'version', ARGV[1], 'bm25', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', ARGV[1])
return 1
"""

_FACT_ANALYZER = 'facts-terms-v1'
"""Names `_terms` in a snapshot's header: a snapshot made with other terms is rebuilt, not used."""
_RECENT_READ = 1_000
"""How many of the most recently stated fact ids a load reads (recent facts beyond them sort every fact)."""
_INDEX_MIN_FACTS = 200
"""From this many facts, the BM25 index is kept in Redis (below it, building it takes a few ms); a
reader that replays more changes than this (or a tenth of the facts, but at most half the log's
limit, so the log never outgrows it) stores a fresh snapshot."""


@dataclass
class _Read:
    """What the read script returned (see `_READ_SCRIPT`)."""

    version: str
    count: int
    index: tuple[bytes, list[str]] | None
    """The BM25 snapshot and the ids of the facts changed since it, when one is stored."""
    expiry_ms: dict[str, int]
    recency: list[str]
    entries: dict[str, bytes]


_SCRIPTS = {
    'remember': _REMEMBER_SCRIPT,
    'forget': _FORGET_SCRIPT,
    'forget_all': _FORGET_ALL_SCRIPT,
    'read': _READ_SCRIPT,
    'save_index': _SAVE_INDEX_SCRIPT,
    'page': _PAGE_SCRIPT,
}

_FACTS: TypeAdapter[list[Fact]] = TypeAdapter(list[Fact])


def _decode_facts(raw: Iterable[bytes]) -> list[Fact]:
    # One parse for all of them, as memory.conversations does for history entries.
    return _FACTS.validate_json(b'[' + b','.join(raw) + b']')


def _split(joined: bytes) -> list[bytes]:
    """The items of a list a script returned joined by newlines."""
    return joined.split(b'\n') if joined else []


def _lines(joined: bytes) -> list[str]:
    return joined.decode().split('\n') if joined else []


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ''
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def _unavailable(action: str) -> Generator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        detail = str(exc).strip().rstrip('.') or type(exc).__name__
        raise RedisUnavailableError(
            f'lost the connection to Redis while {action}: {detail}. Check that Redis is running, then retry.'
        ) from exc


# --- the store ---------------------------------------------------------------------------------


class FactStore:
    """Long-term memory on Redis: remember, recall, list, forget, export and import a user's facts.

    Every method takes the tenant and user explicitly; front ends pass them from `Deps.identity`,
    never from model output. One store may serve many users: it caches each user's facts in
    memory (up to `cache_users` of them), validated by one `GET` per read.

    Args:
        redis: A client from `memory.connection.connect` (bytes responses).
        default_ttl_seconds: The TTL of facts remembered without one; `None` keeps them forever.
        similarity_threshold: How similar (0-1, by `similarity`) a fact must be to a known one to
            update it instead of being added.
        max_facts: The most facts one user may have; `remember` then raises `FactLimitError`.
        similarity: Compares normalized fact texts; `text_similarity` by default.
        clock: Seconds since the epoch; tests pass a fake one to move time.
        cache_users: How many users' facts to keep cached.

    Raises:
        ValueError: A threshold outside (0, 1], or a non-positive limit or TTL.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        default_ttl_seconds: float | None = None,
        similarity_threshold: float = 0.9,
        max_facts: int = 10_000,
        similarity: Similarity = text_similarity,
        clock: Callable[[], float] = time.time,
        cache_users: int = 256,
    ) -> None:
        if not 0 < similarity_threshold <= 1:
            raise ValueError('similarity_threshold must be in (0, 1]')
        if default_ttl_seconds is not None and default_ttl_seconds <= 0:
            raise ValueError('default_ttl_seconds must be positive, or None for facts that never expire')
        if max_facts <= 0 or cache_users <= 0:
            raise ValueError('max_facts and cache_users must be positive')
        self.default_ttl_seconds = default_ttl_seconds
        self.similarity_threshold = similarity_threshold
        self.max_facts = max_facts
        self._redis = redis
        self._similarity = similarity
        self._clock = clock
        self._cache_users = cache_users
        self._caches: OrderedDict[tuple[str, str], _UserCache] = OrderedDict()
        self._scripts: dict[str, AsyncScript] = {}

    # -- writing ------------------------------------------------------------------------------------

    async def remember(
        self,
        tenant: str,
        user: str,
        text: str,
        *,
        source: FactSource = 'user-stated',
        session: str | None = None,
        turn: int | None = None,
        ttl_seconds: float | None = None,
    ) -> RememberResult:
        """Store a fact, or update the known fact it restates (exact, normalized, then similar).

        Args:
            tenant: The tenant.
            user: The user the fact is about.
            text: The fact, one sentence; surrounding whitespace is dropped.
            source: Where it came from.
            session: The session it was stated in.
            turn: The turn of that session.
            ttl_seconds: Forget it this long after it was last stated; the store's default when `None`.

        Raises:
            InvalidIdError: An invalid tenant, user or session id.
            SecretFactError: Text that looks like a credential (see `looks_like_secret`).
            ValueError: Empty text, text over `MAX_FACT_CHARS`, an unknown source or a non-positive TTL.
            FactLimitError: The user has `max_facts` facts already and this one is new.
            TandemError: Too many concurrent writers to the same user's memory.
            RedisUnavailableError: Redis can't be reached.
        """
        keys = UserFactKeys(tenant, user)
        text = ' '.join(text.split())
        if not text:
            raise ValueError('a fact needs some text')
        if len(text) > MAX_FACT_CHARS:
            raise ValueError(f'a fact is at most {MAX_FACT_CHARS} characters; this one has {len(text)}')
        if looks_like_secret(text):
            raise SecretFactError('it looks like a secret (a password, key or token), and secrets are never remembered')
        if source not in _TRUST:
            raise ValueError(f'unknown fact source {source!r}: use user-stated, tool or inferred')
        if session is not None:
            validate_id('session', session)
        ttl = ttl_seconds if ttl_seconds is not None else self.default_ttl_seconds
        if ttl is not None and ttl <= 0:
            raise ValueError('ttl_seconds must be positive')
        normalized = normalize_fact(text)
        if not normalized:
            raise ValueError('a fact needs some letters or digits')
        digest = _digest(normalized)
        for _ in range(_WRITE_ATTEMPTS):
            cache = await self._fresh(keys)
            now = self._clock()
            similar = cache.most_similar(normalized, self._similarity, self.similarity_threshold, now)
            similar_id = similar[0] if similar is not None else ''
            expires_ms = round((now + ttl) * 1000) if ttl is not None else 0
            new_fact = Fact(
                id=f'f-{uuid.uuid4().hex[:12]}',
                text=text,
                source=source,
                session=session,
                turn=turn,
                created_at=datetime.fromtimestamp(now, UTC),
                updated_at=datetime.fromtimestamp(now, UTC),
                expires_at=datetime.fromtimestamp(now + ttl, UTC) if ttl is not None else None,
            )
            stored = {**new_fact.model_dump(mode='json'), 'norm': digest}
            args: list[str | int | bytes] = [
                round(now * 1000),
                cache.version,
                digest,
                _json(stored),
                similar_id,
                text,
                source,
                _TRUST[source],
                _iso(now),
                expires_ms,
                _iso(now + ttl) if ttl is not None else '',
                self.max_facts,
                _version_base(),
                _PURGE_LIMIT,
                _micros(now),
            ]
            with _unavailable('remembering a fact'):
                reply = cast(list[bytes], await self._script('remember')(keys=keys.all, args=args))
            status = _text(reply[0])
            if status == 'conflict':
                continue
            if status == 'full':
                raise FactLimitError(
                    f'user {user!r} already has {self.max_facts} facts: forget some (`tandem memory forget`) '
                    'or raise memory.max_facts.'
                )
            fact = Fact.model_validate_json(reply[3])
            self._applied(keys, cache, expected=cache.version, version=_text(reply[2]), put=[fact], now=now)
            return RememberResult(fact=fact, outcome=cast(RememberOutcome, status))
        raise TandemError(
            f'the memory of user {user!r} is being written by too many processes at once; '
            'the fact was not stored. Try again.'
        )

    async def forget(self, tenant: str, user: str, fact_id: str) -> Fact | None:
        """Delete one fact; returns it, or `None` if the user has no such fact.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            RedisUnavailableError: Redis can't be reached.
        """
        forgotten = await self.forget_many(tenant, user, [fact_id])
        return forgotten[0] if forgotten else None

    async def forget_many(self, tenant: str, user: str, fact_ids: Sequence[str]) -> list[Fact]:
        """Delete facts by id in one script; returns those that existed.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            RedisUnavailableError: Redis can't be reached.
        """
        keys = UserFactKeys(tenant, user)
        wanted = [fact_id for fact_id in dict.fromkeys(fact_ids) if FACT_ID_PATTERN.fullmatch(fact_id)]
        if not wanted:
            return []
        cache = self._caches.get((tenant, user))
        expected = cache.version if cache is not None else None
        with _unavailable('forgetting facts'):
            reply = cast(list[bytes], await self._script('forget')(keys=keys.all, args=[_version_base(), *wanted]))
        removed = _decode_facts(reply[1:]) if len(reply) > 1 else []
        if cache is not None and expected is not None:
            self._applied(
                keys, cache, expected=expected, version=_text(reply[0]), drop=[f.id for f in removed], now=self._clock()
            )
        return removed

    async def forget_all(self, tenant: str, user: str) -> int:
        """Delete every fact of the user; returns how many there were.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            RedisUnavailableError: Redis can't be reached.
        """
        keys = UserFactKeys(tenant, user)
        with _unavailable('forgetting facts'):
            reply = cast(list[Any], await self._script('forget_all')(keys=keys.all, args=[_version_base()]))
        self._caches[(tenant, user)] = _UserCache(_text(reply[0]), {}, {})
        self._trim()
        return int(reply[1])

    # -- reading ------------------------------------------------------------------------------------

    async def snapshot(self, tenant: str, user: str) -> FactSnapshot:
        """The user's live facts, for ranking locally; one round trip when the cache is current.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            RedisUnavailableError: Redis can't be reached.
        """
        cache = await self._fresh(UserFactKeys(tenant, user))
        return FactSnapshot(cache, self._clock())

    async def recall(self, tenant: str, user: str, query: str, *, limit: int = 10) -> list[Fact]:
        """The user's facts most relevant to `query`, best first; the most recent ones for an empty query.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            RedisUnavailableError: Redis can't be reached.
        """
        snapshot = await self.snapshot(tenant, user)
        if not _terms(query):
            return snapshot.recent(limit)
        return snapshot.search(query, limit)

    async def list_facts(self, tenant: str, user: str) -> list[Fact]:
        """Every live fact of the user, oldest first.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            RedisUnavailableError: Redis can't be reached.
        """
        return (await self.snapshot(tenant, user)).facts

    async def get(self, tenant: str, user: str, fact_id: str) -> Fact | None:
        """One live fact of the user by id, or `None`.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            RedisUnavailableError: Redis can't be reached.
        """
        snapshot = await self.snapshot(tenant, user)
        return next((fact for fact in snapshot.facts if fact.id == fact_id), None)

    # -- export and import ------------------------------------------------------------------------

    async def export(self, tenant: str, user: str) -> dict[str, Any]:
        """Every live fact of the user as JSON-ready data: `{"format", "version", "user", "exported_at", "facts"}`.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            RedisUnavailableError: Redis can't be reached.
        """
        facts = await self.list_facts(tenant, user)
        return {
            'format': EXPORT_FORMAT,
            'version': 1,
            'tenant': tenant,
            'user': user,
            'exported_at': _iso(self._clock()),
            'facts': [fact.model_dump(mode='json') for fact in facts],
        }

    async def import_facts(self, tenant: str, user: str, data: Mapping[str, Any] | Sequence[Any]) -> ImportReport:
        """Import facts (an `export`, or a list of facts or of strings) into the user's memory.

        Each fact goes through `remember`, so importing twice adds nothing, and facts dedupe against
        what the user already has. The target user is always `user`, whatever the data says.
        Source, session and turn are kept; an imported fact that expires later keeps its expiry,
        and one that has expired is skipped.

        Raises:
            InvalidIdError: An invalid tenant or user id.
            TandemError: The data isn't an export or a list of facts; nothing is imported then.
            FactLimitError: The user's memory filled up part-way; what was imported stays.
            RedisUnavailableError: Redis can't be reached.
        """
        UserFactKeys(tenant, user)
        items: Any = data
        if isinstance(data, Mapping):
            if data.get('format') != EXPORT_FORMAT:
                raise TandemError(f'not a Tandem fact export: expected "format": "{EXPORT_FORMAT}".')
            items = data.get('facts')
        if not isinstance(items, list):
            raise TandemError('no facts to import: expected an export, or a JSON list of facts or strings.')
        now = self._clock()
        created = updated = skipped = 0
        for item in cast(list[Any], items):
            parsed = _imported(item)
            if parsed is None:
                skipped += 1
                continue
            text, source, session, turn, expires_at = parsed
            if expires_at is not None and expires_at <= now:
                skipped += 1
                continue
            try:
                result = await self.remember(
                    tenant,
                    user,
                    text,
                    source=source,
                    session=session,
                    turn=turn,
                    ttl_seconds=expires_at - now if expires_at is not None else None,
                )
            except ValueError:  # includes InvalidIdError for a bad session id
                skipped += 1
                continue
            if result.created:
                created += 1
            else:
                updated += 1
        return ImportReport(created=created, updated=updated, skipped=skipped)

    # -- internals ----------------------------------------------------------------------------------

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.register_script(_SCRIPTS[name])
        return script

    async def _fresh(self, keys: UserFactKeys) -> _UserCache:
        """The user's cache, reloaded if any write happened since it was read (one GET when current)."""
        slot = (keys.tenant, keys.user)
        cache = self._caches.get(slot)
        if cache is not None:
            with _unavailable('reading facts'):
                version = _text(await self._redis.get(keys.version))
            if version == cache.version:
                self._caches.move_to_end(slot)
                return cache
        cache = await self._load(keys)
        self._caches[slot] = cache
        self._trim()
        return cache

    async def _load(self, keys: UserFactKeys) -> _UserCache:
        """Read the user's memory: the facts unparsed, and the BM25 index from its snapshot when one is stored."""
        with _unavailable('reading facts'):
            read = await self._read(keys, _INLINE_LOAD_LIMIT)
            if read.count > _INLINE_LOAD_LIMIT:
                entries = await self._scan(keys, read.version)
                if entries is None:  # still changing: take a consistent copy in one (blocking) script
                    read = await self._read(keys, 1 << 40)
                else:
                    read.entries = entries
        cache = _UserCache(read.version, read.entries, read.expiry_ms)
        replayed = self._restore(cache, read.index, read.recency) if read.index is not None else None
        with _unavailable('indexing facts'):
            if replayed is None and len(cache) >= _INDEX_MIN_FACTS:
                await self._save_index(keys, cache, replace=read.index is not None, rebuilt=True)
            elif replayed is not None and replayed > min(_LOG_LIMIT // 2, max(_INDEX_MIN_FACTS, len(cache) // 10)):
                await self._save_index(keys, cache)  # so the next reader replays less
        return cache

    async def _read(self, keys: UserFactKeys, inline: int) -> _Read:
        reply = cast(
            list[Any],
            await self._script('read')(
                keys=keys.all,
                args=[round(self._clock() * 1000), _PURGE_LIMIT, _version_base(), inline, _RECENT_READ],
            ),
        )
        version, count, index, expiring, expiry, recency, ids, entries = reply
        return _Read(
            version=_text(version),
            count=int(count),
            index=(index[1], _lines(index[2])) if index else None,
            expiry_ms={fact_id: int(float(ms)) for fact_id, ms in zip(_lines(expiring), _lines(expiry), strict=True)},
            recency=_lines(recency),
            entries=dict(zip(_lines(ids), _split(entries), strict=True)),
        )

    @staticmethod
    def _restore(cache: _UserCache, index: tuple[bytes, list[str]], recency: list[str]) -> int | None:
        """Give `cache` the stored BM25 index, brought up to the cache's version by replaying the
        facts changed since; how many that was, or `None` if the snapshot can't be used."""
        from tandem.memory.knowledge.index import Bm25Index, unpack_snapshot

        blob, changed = index
        try:
            header, parts = unpack_snapshot(blob)
            if header.get('analyzer') != _FACT_ANALYZER:
                return None
            lexical = Bm25Index.restore(header, parts)
        except (ValueError, KeyError):
            return None
        lexical.remove(changed)
        for fact_id in changed:
            if fact_id in cache:
                lexical.add(fact_id, cache.terms(cache.fact(fact_id)))
        if len(lexical) != len(cache):
            return None  # facts added or removed by a Tandem that did not keep the index: build it again
        cache.attach(lexical, recency)
        return len(changed)

    async def _save_index(
        self, keys: UserFactKeys, cache: _UserCache, *, replace: bool = False, rebuilt: bool = False
    ) -> None:
        """Store the BM25 snapshot of `cache` as of its version.

        Args:
            replace: Even if one as new is stored (it could not be used).
            rebuilt: The index was built from every fact: store the recency set too.
        """
        from tandem.memory.knowledge.index import pack_snapshot

        header, parts = cache.lexical.dump()
        args: list[str | int | bytes] = [
            cache.version,
            pack_snapshot({**header, 'analyzer': _FACT_ANALYZER}, parts),
            '1' if replace else '',
        ]
        if rebuilt:
            for fact in cache.all_facts().values():
                args += [_micros(fact.updated_at.timestamp()), fact.id]
        await self._script('save_index')(keys=keys.all, args=args)

    async def _scan(self, keys: UserFactKeys, version: str) -> dict[str, bytes] | None:
        """Read a large memory in pages without blocking the server; `None` if it kept changing meanwhile."""
        for _ in range(3):
            entries: dict[str, bytes] = {}
            cursor = b'0'
            while True:
                cursor, ids, raw = cast(
                    list[bytes], await self._script('page')(keys=[keys.facts], args=[cursor, _SCAN_PAGE])
                )
                entries.update(zip(_lines(ids), _split(raw), strict=True))
                if cursor == b'0':
                    break
            after = _text(await self._redis.get(keys.version))
            if after == version:
                return entries
            version = after
        return None

    def _applied(
        self,
        keys: UserFactKeys,
        cache: _UserCache,
        *,
        expected: str,
        version: str,
        put: Sequence[Fact] = (),
        drop: Sequence[str] = (),
        now: float,
    ) -> None:
        """Bring the cache up to a write this store just made, if it was current before it."""
        slot = (keys.tenant, keys.user)
        if self._caches.get(slot) is not cache or cache.version != expected:
            self._caches.pop(slot, None)  # someone else wrote in between: reload on the next read
            return
        for fact_id in drop:
            cache.remove(fact_id)
        for fact in put:
            cache.put(fact)
        cache.drop_expired(now)  # the script purged them too
        cache.version = version

    def _trim(self) -> None:
        while len(self._caches) > self._cache_users:
            self._caches.popitem(last=False)


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(',', ':')).encode()


def _micros(moment: float) -> int:
    """A recency score: microseconds, as `updated_at` keeps them, so ties sort by id as the facts do."""
    return round(moment * 1_000_000)


def _version_base() -> int:
    """Where a user's version counter starts: random, so a deleted and recreated counter never repeats a value."""
    return secrets.randbelow(1 << 40) * 1024


def _imported(item: Any) -> tuple[str, FactSource, str | None, int | None, float | None] | None:
    """Text, source, session, turn and expiry (epoch seconds) of one imported item, or `None` if invalid."""
    if isinstance(item, str):
        return (item, 'user-stated', None, None, None)
    if not isinstance(item, Mapping):
        return None
    fields = cast(Mapping[str, Any], item)
    try:
        partial = _ImportedFact.model_validate(dict(fields))
    except ValidationError:
        return None
    expires = partial.expires_at.timestamp() if partial.expires_at is not None else None
    return (partial.text, partial.source, partial.session, partial.turn, expires)


class _ImportedFact(BaseModel):
    model_config = ConfigDict(extra='ignore')

    text: str = Field(min_length=1, max_length=MAX_FACT_CHARS)
    source: FactSource = 'user-stated'
    session: str | None = None
    turn: int | None = None
    expires_at: datetime | None = None
