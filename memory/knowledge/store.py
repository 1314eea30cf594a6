"""Knowledge bases on Redis: documents, their chunks and metadata, replaced atomically per document.

A knowledge base (KB) belongs to a tenant, and optionally to one user of it (`tandem ingest --user`).
All of its keys share one hash tag (see `memory.keys.KnowledgeKeys`), so every write is one Lua
script on one slot, which works the same on one server and on Redis Cluster:

- `meta` (hash): `epoch` (a random id, new each time the KB is created), `gen` (a generation
  counter, bumped by every document change), counters (`docs`, `chunks`, `vectors`, `tokens`), the
  embedding model whose vectors the KB holds (`embed_model`, `dims`), the BM25 analyzer its terms
  come from (`analyzer`), `created_at`, `updated_at`.
- `docs` (hash): document id to its record (`DocumentRecord` as JSON): source, title, content
  hash, the chunk ids of its current version, when it was ingested.
- `changes` (sorted set): document id scored by the generation that last changed it. A process
  that caches an index of the KB asks for the documents changed since the generation it has, so
  indexes are updated incrementally and survive restarts: nothing is rebuilt on each query.
- `snapshots` (hash): the in-process indexes as bytes, so a new process needs no rebuild (see
  `memory.knowledge.index`).
- `chunk:<chunk id>` (one hash per chunk): the text and its metadata and, when the server has the
  Query Engine, what it indexes: the BM25 terms (space-separated) and the embedding vector
  (float32 bytes) when the KB has embeddings. One hash per chunk is the shape the Query Engine
  indexes (`FT.CREATE ... ON HASH PREFIX`).

Writing a document (`KnowledgeBase.put_document`) deletes the chunks of its previous version,
writes the new ones, replaces its record and bumps the generation in one script, after checking
the revision it read (compare-and-set): a search sees the old version or the new one, never a mix,
and an interrupted ingest leaves every document fully in or fully out.

Chunk ids are `<doc id>-<revision>-<position>`, new for every version of a document, so a cached
index can tell an old chunk from a new one without comparing contents.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from tandem.agent.core.errors import TandemError
from tandem.memory.connection import RedisClient, query_engine_available
from tandem.memory.keys import KnowledgeKeys, knowledge_bases_key, validate_id
from tandem.memory.knowledge.query_engine import drop_indexes

__all__ = (
    'CHUNK_FIELDS',
    'ChunkData',
    'DocumentRecord',
    'EmbeddingModelMismatch',
    'KbInfo',
    'KbState',
    'KnowledgeBase',
    'StoredChunk',
    'WriteConflict',
    'document_id',
    'list_knowledge_bases',
)

CHUNK_FIELDS = ('text', 'doc', 'pos', 'title', 'source', 'heading', 'page', 'ntok', 'vec', 'terms')
"""The fields of a chunk hash, in the order `put_document` sends them."""

_READ_FIELDS = ('text', 'doc', 'pos', 'title', 'source', 'heading', 'page', 'ntok')
_BATCH = 500
"""Keys per pipelined round trip when reading many chunks."""

# KEYS: meta, docs, changes, terms, vectors, then `nold` old chunk keys, then one key per new chunk.
# ARGV: doc id, expected revision ('' when the document must not exist), new revision ('' to delete),
#       record JSON ('' to delete), nold, epoch for a new KB, now (ISO), embedding model ('' for
#       none), dims, the document's BM25 terms (a line per chunk), its vectors ('' for none), how many
#       vectors, how many tokens, the BM25 analyzer's name ('' to leave it), then len(CHUNK_FIELDS)
#       values per new chunk ('' for none).
# Returns the new generation (> 0); 0 on a revision conflict; -1 when this exact write was already
# applied (a retry whose first reply was lost); -2 when the KB holds vectors of another model;
# -3 when deleting a document that isn't stored.
_PUT_SCRIPT = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
local old_chunks, old_vectors, old_tokens = 0, 0, 0
if current then
  local record = cjson.decode(current)
  if ARGV[3] ~= '' and record['rev'] == ARGV[3] then return -1 end
  if record['rev'] ~= ARGV[2] then return 0 end
  old_chunks = #record['chunks']
  old_vectors = tonumber(record['vectors'])
  old_tokens = tonumber(record['tokens'])
else
  if ARGV[2] ~= '' then return 0 end
  if ARGV[3] == '' then return -3 end
end
local nold = tonumber(ARGV[5])
local first_new = 6 + nold
local new_vectors = tonumber(ARGV[12])
local new_tokens = tonumber(ARGV[13])
if new_vectors > 0 then
  local model = redis.call('HGET', KEYS[1], 'embed_model')
  local vectors = tonumber(redis.call('HGET', KEYS[1], 'vectors') or '0')
  if model and model ~= ARGV[8] and vectors - old_vectors > 0 then return -2 end
  redis.call('HSET', KEYS[1], 'embed_model', ARGV[8], 'dims', ARGV[9])
end
if ARGV[14] ~= '' then redis.call('HSET', KEYS[1], 'analyzer', ARGV[14]) end
-- How many chunk hashes carry the fields the Query Engine indexes (terms, vec), kept exact.
local served_chunks, served_vectors = 0, 0
for i = 6, 5 + nold do
  served_chunks = served_chunks - redis.call('HEXISTS', KEYS[i], 'terms')
  served_vectors = served_vectors - redis.call('HEXISTS', KEYS[i], 'vec')
  redis.call('DEL', KEYS[i])
end
local names = {'text', 'doc', 'pos', 'title', 'source', 'heading', 'page', 'ntok', 'vec', 'terms'}
local nfields = #names
for i = first_new, #KEYS do
  local base = 14 + (i - first_new) * nfields
  local args = {}
  for f = 1, nfields do
    local value = ARGV[base + f]
    if value ~= '' or f == 1 then
      args[#args + 1] = names[f]
      args[#args + 1] = value
      if value ~= '' and names[f] == 'terms' then served_chunks = served_chunks + 1 end
      if value ~= '' and names[f] == 'vec' then served_vectors = served_vectors + 1 end
    end
  end
  redis.call('HSET', KEYS[i], unpack(args))
end
local new_chunks = #KEYS - first_new + 1
local doc_delta = 0
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
  doc_delta = -1
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[10])
  if ARGV[11] ~= '' then
    redis.call('HSET', KEYS[5], ARGV[1], ARGV[11])
  else
    redis.call('HDEL', KEYS[5], ARGV[1])
  end
  if not current then doc_delta = 1 end
end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[6])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[7])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'docs', doc_delta)
redis.call('HINCRBY', KEYS[1], 'chunks', new_chunks - old_chunks)
redis.call('HINCRBY', KEYS[1], 'vectors', new_vectors - old_vectors)
redis.call('HINCRBY', KEYS[1], 'tokens', new_tokens - old_tokens)
redis.call('HINCRBY', KEYS[1], 'served_chunks', served_chunks)
redis.call('HINCRBY', KEYS[1], 'served_vectors', served_vectors)
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('ZADD', KEYS[3], gen, ARGV[1])
return gen
"""

# KEYS: meta, docs, changes, terms, vectors. Deletes them when the KB holds no document any more;
# returns 1 if so.
_DROP_EMPTY_SCRIPT = """
if redis.call('HLEN', KEYS[2]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return 1
"""


class WriteConflict(TandemError):
    """Another writer changed the document between our read and our write; read again and retry."""


class EmbeddingModelMismatch(TandemError):
    """The knowledge base holds vectors from another embedding model than the one configured."""


def document_id(source: str) -> str:
    """The id of the document ingested from `source` (an absolute path or a URL): a stable digest."""
    return hashlib.sha256(source.encode('utf-8')).hexdigest()[:24]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec='seconds')


@dataclass(frozen=True)
class DocumentRecord:
    """One stored document: where it came from, what it hashed to, and its chunks.

    Attributes:
        id: `document_id(source)`.
        source: The absolute path or URL it was read from.
        title: Its title (first heading, HTML title, PDF title, or file name).
        kind: How it was read: `markdown`, `text`, `html`, `pdf`, `json` or `csv`.
        hash: SHA-256 of its raw bytes.
        sig: What else decides its chunks and vectors (chunker settings, tokenizer, embedding model):
            re-ingesting the same bytes under another `sig` re-indexes the document.
        rev: A random id of this version; chunk ids contain it.
        chunks: The chunk ids of this version, in document order.
        tokens: Tokens in all its chunks.
        vectors: How many of its chunks carry a vector.
        bytes: Size of the raw document.
        ingested_at: When this version was stored (ISO 8601, UTC).
        created_at: When the document was first stored.
    """

    id: str
    source: str
    title: str
    kind: str
    hash: str
    sig: str
    rev: str
    chunks: list[str] = field(default_factory=list[str])
    tokens: int = 0
    vectors: int = 0
    bytes: int = 0
    ingested_at: str = ''
    created_at: str = ''

    def to_json(self) -> str:
        """The record as stored."""
        return json.dumps(asdict(self), ensure_ascii=False, separators=(',', ':'))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DocumentRecord:
        """A stored record; unknown fields (from a newer Tandem) are ignored."""
        data = cast(dict[str, Any], json.loads(raw))
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass(frozen=True)
class ChunkData:
    """A chunk to write: its text and metadata, BM25 terms and optional vector.

    Attributes:
        position: Its index in the document, from 0.
        text: The passage shown to the model and the user.
        heading: The section it is in, e.g. `Install > From source`; `''` for none.
        page: The PDF page it starts on, from 1; `None` for other kinds.
        tokens: Its size in tokens.
        terms: Its BM25 terms, in order (see `memory.knowledge.index.Analyzer`).
        vector: Its embedding as float32 bytes, or `None` without embeddings.
    """

    position: int
    text: str
    heading: str
    page: int | None
    tokens: int
    terms: Sequence[str]
    vector: bytes | None = None


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as read back, with what a citation needs."""

    id: str
    doc_id: str
    source: str
    title: str
    heading: str
    position: int
    page: int | None
    text: str
    tokens: int


@dataclass(frozen=True)
class KbInfo:
    """A knowledge base's summary, from its `meta` hash."""

    name: str
    user: str | None
    docs: int
    chunks: int
    vectors: int
    tokens: int
    embed_model: str | None
    dims: int | None
    epoch: str
    gen: int
    created_at: str
    updated_at: str

    @property
    def label(self) -> str:
        """`name`, or `user/name` for a user's own KB."""
        return f'{self.user}/{self.name}' if self.user else self.name


@dataclass(frozen=True)
class KbState:
    """A knowledge base's identity and version: a cached index is current when both match.

    Attributes:
        epoch: A random id, new each time the KB is created (after `rm`, say).
        gen: Bumped by every document change.
        chunks: How many chunks it holds.
        vectors: How many of them carry a vector.
        embed_model: The model those vectors come from.
        analyzer: The name of the BM25 analyzer its terms come from; `None` before analyzers were recorded.
        served_chunks: How many chunk hashes carry their BM25 terms, and `served_vectors` their
            vector, for the Query Engine: fewer than `chunks` (`vectors`) when some were written
            while the server had no Query Engine, and the server's index would miss them.
    """

    epoch: str
    gen: int
    chunks: int
    vectors: int
    embed_model: str | None
    analyzer: str | None = None
    served_chunks: int = 0
    served_vectors: int = 0


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ''
    return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else value


def _int(value: bytes | str | None, default: int = 0) -> int:
    try:
        return int(_text(value)) if value not in (None, b'', '') else default
    except ValueError:
        return default


class KnowledgeBase:
    """One knowledge base of a tenant (or of one of its users) on Redis.

    Args:
        redis: A client with `decode_responses=False`.
        tenant: The tenant id.
        name: The KB's name (an id: letters, digits, `.`, `_`, `-`, `@`).
        user: The owner, for a user's own KB; `None` for the tenant's shared one.

    Raises:
        InvalidIdError: If `tenant`, `name` or `user` isn't a valid id.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        tenant: str,
        name: str,
        user: str | None = None,
        space: Literal['kb', 'examples'] = 'kb',
    ) -> None:
        self.redis = redis
        self.keys = KnowledgeKeys(tenant=tenant, kb=name, user=user, space=space)
        self._put: AsyncScript = redis.register_script(_PUT_SCRIPT)  # pyright: ignore[reportUnknownMemberType]
        self._drop_empty: AsyncScript = redis.register_script(_DROP_EMPTY_SCRIPT)  # pyright: ignore[reportUnknownMemberType]

    @property
    def name(self) -> str:
        """The KB's name."""
        return self.keys.kb

    @property
    def _own_keys(self) -> tuple[str, str, str, str, str]:
        """The KB's own keys, in the order its scripts take them: meta, docs, changes, terms, vectors."""
        keys = self.keys
        return (keys.meta, keys.docs, keys.changes, keys.terms, keys.vectors)

    @property
    def user(self) -> str | None:
        """The owner of a user's own KB, else `None`."""
        return self.keys.user

    @property
    def label(self) -> str:
        """`name`, or `user/name` for a user's own KB."""
        return f'{self.user}/{self.name}' if self.user else self.name

    # --- reading ---------------------------------------------------------------------------------

    async def info(self) -> KbInfo | None:
        """The KB's summary, or `None` when it doesn't exist (nothing was ever ingested, or it was removed)."""
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.meta))  # pyright: ignore[reportUnknownMemberType]
        if not raw or b'epoch' not in raw:
            return None
        model = _text(raw.get(b'embed_model')) or None
        return KbInfo(
            name=self.name,
            user=self.user,
            docs=_int(raw.get(b'docs')),
            chunks=_int(raw.get(b'chunks')),
            vectors=_int(raw.get(b'vectors')),
            tokens=_int(raw.get(b'tokens')),
            embed_model=model,
            dims=_int(raw.get(b'dims')) or None,
            epoch=_text(raw.get(b'epoch')),
            gen=_int(raw.get(b'gen')),
            created_at=_text(raw.get(b'created_at')),
            updated_at=_text(raw.get(b'updated_at')),
        )

    async def state(self) -> KbState | None:
        """What a cached index needs to know whether it is current, in one round trip; `None` when
        the KB doesn't exist."""
        epoch, gen, chunks, vectors, model, analyzer, served_chunks, served_vectors = cast(
            list[bytes | None],
            await self.redis.hmget(  # pyright: ignore[reportUnknownMemberType]
                self.keys.meta,
                ['epoch', 'gen', 'chunks', 'vectors', 'embed_model', 'analyzer', 'served_chunks', 'served_vectors'],
            ),
        )
        if epoch is None:
            return None
        return KbState(
            epoch=_text(epoch),
            gen=_int(gen),
            chunks=_int(chunks),
            vectors=_int(vectors),
            embed_model=_text(model) or None,
            analyzer=_text(analyzer) or None,
            served_chunks=_int(served_chunks),
            served_vectors=_int(served_vectors),
        )

    async def changed_since(self, gen: int) -> list[str]:
        """Ids of the documents changed (written or removed) after generation `gen`."""
        members = cast(list[bytes], await self.redis.zrangebyscore(self.keys.changes, f'({gen}', '+inf'))  # pyright: ignore[reportUnknownMemberType]
        return [_text(member) for member in members]

    async def documents(self, doc_ids: Sequence[str]) -> list[DocumentRecord | None]:
        """The records of `doc_ids`, `None` for those not stored, in the same order."""
        if not doc_ids:
            return []
        raws = cast(list[bytes | None], await self.redis.hmget(self.keys.docs, list(doc_ids)))  # pyright: ignore[reportUnknownMemberType]
        return [DocumentRecord.from_json(raw) if raw is not None else None for raw in raws]

    async def document(self, doc_id: str) -> DocumentRecord | None:
        """One document's record, or `None`."""
        return (await self.documents([doc_id]))[0]

    async def iter_documents(self, batch: int = _BATCH) -> AsyncIterator[list[DocumentRecord]]:
        """Every stored document, in batches (HSCAN: memory stays bounded however big the KB)."""
        cursor = 0
        while True:
            cursor, page = cast(
                tuple[int, dict[bytes, bytes]],
                await self.redis.hscan(self.keys.docs, cursor, count=batch),  # pyright: ignore[reportUnknownMemberType]
            )
            if page:
                yield [DocumentRecord.from_json(raw) for raw in page.values()]
            if cursor == 0:
                return

    async def chunk_fields(self, chunk_ids: Sequence[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        """`fields` of each chunk, `None` values for a chunk that no longer exists; pipelined in batches."""
        result: list[list[bytes | None]] = []
        for start in range(0, len(chunk_ids), _BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for chunk_id in chunk_ids[start : start + _BATCH]:
                pipe.hmget(self.keys.chunk(chunk_id), list(fields))  # pyright: ignore[reportUnknownMemberType]
            result.extend(cast(list[list[bytes | None]], await pipe.execute()))  # pyright: ignore[reportUnknownMemberType]
        return result

    async def document_fields(self, doc_ids: Sequence[str], which: Literal['terms', 'vectors']) -> list[bytes | None]:
        """Each document's BM25 terms (a line per chunk) or vectors (float32, concatenated), in bulk."""
        key = self.keys.terms if which == 'terms' else self.keys.vectors
        found: list[bytes | None] = []
        for start in range(0, len(doc_ids), _BATCH):
            found += cast(list[bytes | None], await self.redis.hmget(key, list(doc_ids[start : start + _BATCH])))  # pyright: ignore[reportUnknownMemberType]
        return found

    async def chunks(self, chunk_ids: Sequence[str]) -> list[StoredChunk | None]:
        """The chunks `chunk_ids` with text and metadata, `None` for any that no longer exists."""
        rows = await self.chunk_fields(chunk_ids, _READ_FIELDS)
        found: list[StoredChunk | None] = []
        for chunk_id, row in zip(chunk_ids, rows, strict=True):
            text, doc, pos, title, source, heading, page, ntok = row
            if doc is None:
                found.append(None)
                continue
            found.append(
                StoredChunk(
                    id=chunk_id,
                    doc_id=_text(doc),
                    source=_text(source),
                    title=_text(title),
                    heading=_text(heading),
                    position=_int(pos),
                    page=_int(page) or None,
                    text=_text(text),
                    tokens=_int(ntok),
                )
            )
        return found

    # --- writing ---------------------------------------------------------------------------------

    def new_record(
        self,
        *,
        source: str,
        title: str,
        kind: str,
        content_hash: str,
        sig: str,
        chunks: Sequence[ChunkData],
        size: int,
        previous: DocumentRecord | None,
    ) -> DocumentRecord:
        """The record of a new version of the document read from `source`, with fresh chunk ids."""
        doc_id = document_id(source)
        rev = uuid.uuid4().hex[:12]
        now = _now()
        return DocumentRecord(
            id=doc_id,
            source=source,
            title=title,
            kind=kind,
            hash=content_hash,
            sig=sig,
            rev=rev,
            chunks=[f'{doc_id}-{rev}-{chunk.position}' for chunk in chunks],
            tokens=sum(chunk.tokens for chunk in chunks),
            vectors=sum(1 for chunk in chunks if chunk.vector is not None),
            bytes=size,
            ingested_at=now,
            created_at=previous.created_at if previous is not None and previous.created_at else now,
        )

    async def put_documents(
        self,
        writes: Sequence[tuple[DocumentRecord, Sequence[ChunkData], DocumentRecord | None]],
        *,
        embed_model: str | None = None,
        analyzer: str = '',
    ) -> list[int]:
        """Store new versions of documents, each atomically replacing its previous version.

        Args:
            writes: `(record, chunks, previous)` triples: the new record (from `new_record`), its
                chunks in the record's order, and the record it replaces as read before
                (`None` for a new document). The writes go in one pipelined round trip; each is
                its own atomic script, so an interruption leaves each document old or new, whole.
            embed_model: The model the chunks' vectors come from, when they have vectors.
            analyzer: The name of the analyzer the chunks' terms come from (`Analyzer.name`), recorded
                in the KB's meta so that queries use it too.

        Returns:
            For each write: the generation after it (> 0); -1 when this very write was already
            stored (a retry); 0 when the document changed since `previous` was read (another
            ingest wrote it): read it again and retry that one.

        Raises:
            EmbeddingModelMismatch: The KB holds vectors of another model (other writes in the
                same call may be stored).
        """
        if not writes:
            return []
        await self._register()
        # Pipelined scripts: one round trip for the batch, each script still atomic on its own. A
        # cluster client can't pipeline scripts, so there they run concurrently instead.
        cluster = isinstance(self.redis, RedisCluster)
        pipe: Any = None if cluster else self.redis.pipeline(transaction=False)
        calls: list[Awaitable[Any]] = []
        epoch = uuid.uuid4().hex
        # Chunk hashes carry their vector only where the Query Engine can index it; the in-process
        # search reads every vector of a document at once from the `vectors` hash.
        on_server = await query_engine_available(self.redis)  # chunk hashes carry what it indexes
        for record, chunks, previous in writes:
            vectors = [chunk.vector for chunk in chunks if chunk.vector is not None]
            if vectors and len(vectors) != len(chunks):
                raise ValueError('either every chunk of a document has a vector, or none has')
            argv: list[str | bytes | int] = [
                record.id,
                previous.rev if previous is not None else '',
                record.rev,
                record.to_json(),
                len(previous.chunks) if previous is not None else 0,
                epoch,
                record.ingested_at,
                embed_model or '',
                len(vectors[0]) // 4 if vectors else 0,
                '\n'.join(' '.join(chunk.terms) for chunk in chunks),
                b''.join(vectors),
                len(vectors),
                sum(chunk.tokens for chunk in chunks),
                analyzer,
            ]
            for chunk in chunks:
                argv += [
                    chunk.text,
                    record.id,
                    chunk.position,
                    record.title,
                    record.source,
                    chunk.heading,
                    chunk.page if chunk.page is not None else '',
                    chunk.tokens,
                    chunk.vector if chunk.vector is not None and on_server else b'',
                    ' '.join(chunk.terms) if on_server else '',
                ]
            keys = [
                *self._own_keys,
                *(self.keys.chunk(chunk_id) for chunk_id in (previous.chunks if previous is not None else [])),
                *(self.keys.chunk(chunk_id) for chunk_id in record.chunks),
            ]
            if pipe is None:
                calls.append(self._put(keys=keys, args=argv))  # pyright: ignore[reportUnknownMemberType]
            else:
                await self._put(keys=keys, args=argv, client=pipe)  # pyright: ignore[reportUnknownMemberType]
        replies = await asyncio.gather(*calls) if pipe is None else await pipe.execute()
        results = [int(value) for value in cast(list[int], replies)]
        if -2 in results:
            raise EmbeddingModelMismatch(
                f'knowledge base {self.label!r} holds vectors from another embedding model than {embed_model!r}: '
                f'set knowledge.embeddings back to the model it was built with (`tandem kb stats {self.name}` '
                f'shows it), or run `tandem kb rm {self.name}` and ingest again.'
            )
        return results

    async def put_document(
        self,
        record: DocumentRecord,
        chunks: Sequence[ChunkData],
        previous: DocumentRecord | None,
        *,
        embed_model: str | None = None,
        analyzer: str = '',
    ) -> int:
        """Store one document; see `put_documents`.

        Raises:
            WriteConflict: The document changed since `previous` was read.
            EmbeddingModelMismatch: The KB holds vectors of another model.
        """
        result = (await self.put_documents([(record, chunks, previous)], embed_model=embed_model, analyzer=analyzer))[0]
        if result == 0:
            raise WriteConflict(f'{record.source} was changed by another ingest at the same time; ingest it again.')
        return result

    async def remove_document(self, doc_id: str) -> bool:
        """Remove one document and its chunks atomically; `False` when it isn't stored."""
        for _ in range(5):
            previous = await self.document(doc_id)
            if previous is None:
                return False
            keys = [*self._own_keys, *(self.keys.chunk(chunk_id) for chunk_id in previous.chunks)]
            argv: list[str | int] = [
                doc_id,
                previous.rev,
                '',
                '',
                len(previous.chunks),
                uuid.uuid4().hex,
                _now(),
                '',
                0,
                '',
                '',
                0,
                0,
                '',
            ]
            result = int(cast(int, await self._put(keys=keys, args=argv)))  # pyright: ignore[reportUnknownMemberType]
            if result > 0:
                await self._drop_if_empty()
                return True
            if result == -3:
                return False
        raise WriteConflict(f'document {doc_id} keeps changing while it is being removed; try again.')

    async def remove_sources(self, sources: Iterable[str], *, prefixes: Iterable[str] = ()) -> list[str]:
        """Remove the documents read from `sources`, and those whose source starts with one of `prefixes`.

        Returns:
            The sources removed.
        """
        wanted = {document_id(source): source for source in sources}
        prefix_list = tuple(prefixes)
        removed: list[str] = []
        if prefix_list:
            async for batch in self.iter_documents():
                for record in batch:
                    if record.source.startswith(prefix_list):
                        wanted[record.id] = record.source
        for doc_id, source in wanted.items():
            if await self.remove_document(doc_id):
                removed.append(source)
        return removed

    async def drop(self) -> int:
        """Remove the whole KB, one document at a time (each atomically), then its own keys.

        Returns:
            How many documents were removed.
        """
        removed = 0
        while True:
            ids = [record.id async for batch in self.iter_documents() for record in batch]
            if not ids:
                break
            for doc_id in ids:
                removed += await self.remove_document(doc_id)
        await self.redis.delete(*self._own_keys, self.keys.snapshots)
        if await query_engine_available(self.redis):
            await drop_indexes(self)
        await self.redis.hdel(self.keys.registry, self.keys.registry_field)  # pyright: ignore[reportUnknownMemberType]
        return removed

    async def _drop_if_empty(self) -> None:
        # Keep the KB (and its epoch) while it has documents; forget it once the last one is gone.
        dropped = await self._drop_empty(keys=list(self._own_keys))  # pyright: ignore[reportUnknownMemberType]
        if dropped:
            await self.redis.delete(self.keys.snapshots)
            await self.redis.hdel(self.keys.registry, self.keys.registry_field)  # pyright: ignore[reportUnknownMemberType]

    async def _register(self) -> None:
        # The registry lives in the tenant's slot, so it is written apart from the KB's own keys;
        # listing skips an entry whose KB has no `meta` (a crash between the two writes).
        await self.redis.hsetnx(self.keys.registry, self.keys.registry_field, str(int(time.time())))  # pyright: ignore[reportUnknownMemberType]


async def list_knowledge_bases(redis: RedisClient, *, tenant: str, user: str | None = None) -> list[KbInfo]:
    """The tenant's shared knowledge bases, and `user`'s own when given (all users' when `user` is `'*'`).

    Entries whose KB no longer exists are skipped and removed from the registry.
    """
    validate_id('tenant', tenant)
    if user is not None and user != '*':
        validate_id('user', user)
    registry = knowledge_bases_key(tenant)
    fields = cast(list[bytes], await redis.hkeys(registry))  # pyright: ignore[reportUnknownMemberType]
    infos: list[KbInfo] = []
    for raw in sorted(fields):
        field_name = _text(raw)
        kind, _, rest = field_name.partition(':')
        if kind == 'shared':
            owner, name = None, rest
        elif kind == 'user':
            owner, _, name = rest.partition(':')
            if user is None or (user != '*' and owner != user):
                continue
        else:
            continue
        try:
            kb = KnowledgeBase(redis, tenant=tenant, name=name, user=owner)
        except TandemError:
            continue
        info = await kb.info()
        if info is None:
            await redis.hdel(registry, field_name)  # pyright: ignore[reportUnknownMemberType]
            continue
        infos.append(info)
    return infos
