"""In-process indexes (BM25 and exact vectors) over a knowledge base, kept in step with Redis by its change log.

A process never re-tokenizes a knowledge base to search it: each index is stored in Redis as a
snapshot (its arrays, as bytes, with the KB's epoch and the generation it reflects), which a new
process reads in one round trip and brings up to date by applying the documents changed since. An
ingest brings the snapshots up to date when it ends (`save_snapshots`); a process that had to
build an index (no snapshot yet, or too many changes) stores one for the next.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import Stemmer  # pyright: ignore[reportMissingTypeStubs]
from bm25s import stopwords as bm25s_stopwords  # pyright: ignore[reportMissingTypeStubs]
from redis.exceptions import RedisError

from tandem.agent.core.errors import TandemError
from tandem.agent.core.log import get_logger
from tandem.memory.connection import query_engine_available
from tandem.memory.knowledge.store import DocumentRecord, KbState, KnowledgeBase
from tandem.memory.knowledge.words import query_words

_log = get_logger('tandem.retrieval')


def _words(name: str) -> frozenset[str]:
    return frozenset(cast(Iterable[str], getattr(bm25s_stopwords, name)))


_STOPWORDS: dict[str, frozenset[str]] = {
    'english': _words('STOPWORDS_EN'),
    'danish': _words('STOPWORDS_DANISH'),
    'dutch': _words('STOPWORDS_DUTCH'),
    'french': _words('STOPWORDS_FRENCH'),
    'german': _words('STOPWORDS_GERMAN'),
    'italian': _words('STOPWORDS_ITALIAN'),
    'norwegian': _words('STOPWORDS_NORWEGIAN'),
    'portuguese': _words('STOPWORDS_PORTUGUESE'),
    'russian': _words('STOPWORDS_RUSSIAN'),
    'spanish': _words('STOPWORDS_SPANISH'),
    'swedish': _words('STOPWORDS_SWEDISH'),
    'turkish': _words('STOPWORDS_TURKISH'),
}
"""bm25s's stop-word lists by Snowball language name; other languages keep every word."""


_K1 = 1.5


_B = 0.75


def languages() -> list[str]:
    """The languages the analyzer can stem (Snowball's, through PyStemmer)."""
    return sorted(cast(list[str], Stemmer.algorithms()))  # pyright: ignore[reportUnknownMemberType]


@functools.cache
def _stemmer(language: str) -> Any:
    return cast(Any, Stemmer.Stemmer(language))  # pyright: ignore[reportUnknownMemberType]


@dataclass(frozen=True)
class Analyzer:
    """How text becomes BM25 terms, the same at ingest and at query time: bm25s's tokenizer (its token
    pattern, lowercased), the language's stop words removed, each word stemmed with Snowball, so
    "patents" matches "patent".

    Its `name` is stored in the knowledge base, so a KB is always queried the way it was indexed,
    and in each document's signature, so changing the language re-indexes on the next ingest.

    Attributes:
        language: A Snowball language (`languages()`).
        stem: `False` only for knowledge bases indexed before stemming (`LEGACY_ANALYZER`).
    """

    language: str = 'english'
    stem: bool = True

    @property
    def name(self) -> str:
        return f'bm25s-{self.language}-stem-v2' if self.stem else 'bm25s-en-v1'

    @property
    def stopwords(self) -> frozenset[str]:
        """The words left out: bm25s's list for the language, none for a language it has no list for."""
        return _STOPWORDS.get(self.language, frozenset[str]())

    def terms(self, text: str) -> list[str]:
        """The BM25 terms of `text`, in order, duplicates kept."""
        stopwords = self.stopwords
        words = [word for word in query_words(text) if word not in stopwords]
        return cast(list[str], _stemmer(self.language).stemWords(words)) if self.stem else words

    @staticmethod
    def named(name: str | None) -> Analyzer:
        """The analyzer a KB records; `LEGACY_ANALYZER` for a KB written before analyzers were recorded.

        Raises:
            TandemError: A name this version doesn't know (a KB written by a newer Tandem).
        """
        return _analyzer_named(name or LEGACY_ANALYZER.name)


LEGACY_ANALYZER = Analyzer('english', stem=False)
"""Lowercased words, English stop words removed, no stemming: knowledge bases from before 0.2."""


DEFAULT_ANALYZER = Analyzer()


@functools.cache  # every search asks, once per knowledge base
def _analyzer_named(name: str) -> Analyzer:
    if name == LEGACY_ANALYZER.name:
        return LEGACY_ANALYZER
    language = name.removeprefix('bm25s-').removesuffix('-stem-v2')
    if name != f'bm25s-{language}-stem-v2' or language not in languages():
        raise TandemError(f'this knowledge base was indexed with an analyzer this Tandem does not know ({name}).')
    return Analyzer(language)


def bm25_terms(text: str) -> list[str]:
    """BM25 terms of `text` with the default analyzer (English, stemmed)."""
    return DEFAULT_ANALYZER.terms(text)


_IntArray = npt.NDArray[np.int32]


_FloatArray = npt.NDArray[np.float32]


def _grow(array: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    if size <= array.shape[0]:
        return array
    grown = np.zeros((max(size, 2 * array.shape[0], 1024), *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


class _ChunkSlots:
    """Chunk ids by slot (`None` where a chunk was removed), and the id → slot map, built on first use:
    a restored index answers queries without it."""

    def __init__(self) -> None:
        self._ids: list[str | None] = []
        self._slots: dict[str, int] | None = {}

    @property
    def _slot_of(self) -> dict[str, int]:
        if self._slots is None:
            self._slots = {chunk_id: slot for slot, chunk_id in enumerate(self._ids) if chunk_id is not None}
        return self._slots

    def chunk_ids(self) -> list[str]:
        """The ids of the chunks indexed."""
        return [chunk_id for chunk_id in self._ids if chunk_id is not None]


class Bm25Index(_ChunkSlots):
    """An in-memory BM25 inverted index (bm25s's Lucene variant) that supports adds and removes.

    Postings live in a compact CSR block (term → chunk slots and term frequencies), folded by
    `finish()`, plus the chunks added since, each with its own terms, and a delta of their postings
    that searches see at once. Removed chunks are masked until enough pile up to compact. Document
    frequencies, the live chunk count and the total length are maintained exactly, so scores
    always equal those of an index built from scratch over the live chunks.

    `dump()` turns it into bytes and `restore()` back, without re-tokenizing anything: that is how a
    new process starts from the snapshot stored in Redis (see `synced_index`).
    """

    def __init__(self, *, k1: float = _K1, b: float = _B) -> None:
        super().__init__()
        self.k1 = k1
        self.b = b
        self._vocab: dict[str, int] = {}
        self._df: _IntArray = np.zeros(1024, dtype=np.int32)
        self._length: _FloatArray = np.zeros(1024, dtype=np.float32)
        self._alive: npt.NDArray[np.bool_] = np.zeros(1024, dtype=np.bool_)
        self._live = 0
        self._total = 0.0
        self._dead = 0
        # CSR over slots [0, _folded): the chunks present at the last `finish()`.
        self._indptr: npt.NDArray[np.int64] = np.zeros(1, dtype=np.int64)
        self._posting_slots: _IntArray = np.zeros(0, dtype=np.int32)
        self._posting_tfs: _FloatArray = np.zeros(0, dtype=np.float32)
        self._folded = 0
        # Chunks added since: their term ids and frequencies, and (unless deferred) their postings.
        self._pending: dict[int, tuple[_IntArray, _FloatArray]] = {}
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
            terms: Its BM25 terms (`Analyzer.terms`).
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
        self._pending[slot] = (term_ids, tfs)
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
        slots = range(start, start + count)
        self._pending.update(
            zip(slots, zip(np.split(pair_terms, bounds), np.split(pair_tfs, bounds), strict=True), strict=True)
        )
        self._ids.extend(chunk_ids)
        self._slot_of.update(zip(chunk_ids, slots, strict=True))
        self._length = _grow(self._length, start + count)
        self._alive = _grow(self._alive, start + count)
        self._length[start : start + count] = lengths
        self._alive[start : start + count] = True
        self._live += count
        self._total += float(lengths.sum())
        self._norm = None

    def remove(self, chunk_ids: Iterable[str]) -> None:
        """Unindex chunks; unknown ids are ignored."""
        folded: list[int] = []
        for chunk_id in chunk_ids:
            slot = self._slot_of.pop(chunk_id, None)
            if slot is None:
                continue
            pending = self._pending.pop(slot, None)
            if pending is not None:
                self._df[pending[0]] -= 1
            else:
                folded.append(slot)
            self._ids[slot] = None
            self._alive[slot] = False
            self._live -= 1
            self._total -= float(self._length[slot])
            self._dead += 1
            self._norm = None
        if folded:
            # A folded chunk's terms are where its postings are: one pass over the CSR block.
            doomed = np.zeros(self._folded, dtype=np.bool_)
            doomed[folded] = True
            where = np.flatnonzero(doomed[self._posting_slots])
            terms_of = np.searchsorted(self._indptr, where, side='right') - 1
            self._df[: self._indptr.shape[0] - 1] -= np.bincount(terms_of, minlength=self._indptr.shape[0] - 1).astype(
                np.int32
            )
        if self._dead > 1000 and self._dead > len(self._ids) // 2:
            self.finish(compact=True)

    def finish(self, *, compact: bool = False) -> None:
        """Fold every pending chunk into the CSR block, leaving out removed ones (after deferred adds,
        when the delta grows, and before `dump`).

        Args:
            compact: Also renumber the live chunks densely, dropping what removed ones left behind.
        """
        slots = len(self._ids)
        terms_parts: list[_IntArray] = []
        slots_parts: list[_IntArray] = []
        tfs_parts: list[_FloatArray] = []
        if self._posting_slots.shape[0]:
            keep = self._alive[self._posting_slots]
            folded_terms = np.repeat(np.arange(self._indptr.shape[0] - 1, dtype=np.int32), np.diff(self._indptr))
            terms_parts.append(folded_terms[keep])
            slots_parts.append(self._posting_slots[keep])
            tfs_parts.append(self._posting_tfs[keep])
        for slot in sorted(self._pending):
            term_ids, tfs = self._pending[slot]
            terms_parts.append(term_ids)
            slots_parts.append(cast(_IntArray, np.full(term_ids.shape[0], slot, dtype=np.int32)))
            tfs_parts.append(tfs)
        if compact:
            alive = self._alive[:slots]
            renumber = (np.cumsum(alive) - 1).astype(np.int32)
            slots_parts = [renumber[part] for part in slots_parts]
            kept = np.flatnonzero(alive)
            self._ids = [self._ids[slot] for slot in kept.tolist()]
            self._slots = None
            self._length = np.concatenate([self._length[kept], np.zeros(1024, dtype=np.float32)])
            self._alive = np.concatenate([np.ones(kept.shape[0], dtype=np.bool_), np.zeros(1024, dtype=np.bool_)])
            self._dead = 0
            self._norm = None
        vocab_size = len(self._vocab)
        if terms_parts:
            all_terms = np.concatenate(terms_parts)
            # Folded postings are already in term order: a stable sort of them plus a few new ones is near linear.
            order = np.argsort(all_terms, kind='stable')
            self._posting_slots = np.concatenate(slots_parts)[order]
            self._posting_tfs = np.concatenate(tfs_parts)[order]
            counts = np.bincount(all_terms, minlength=vocab_size)
        else:
            self._posting_slots = np.zeros(0, dtype=np.int32)
            self._posting_tfs = np.zeros(0, dtype=np.float32)
            counts = np.zeros(vocab_size, dtype=np.int64)
        self._indptr = np.zeros(vocab_size + 1, dtype=np.int64)
        np.cumsum(counts, out=self._indptr[1:])
        self._folded = len(self._ids)
        self._pending.clear()
        self._delta.clear()
        self._delta_arrays.clear()
        self._delta_size = 0

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

    def dump(self) -> tuple[dict[str, Any], list[bytes]]:
        """The index as a header and byte parts, for `restore` (folds pending chunks first)."""
        if self._pending or self._dead:
            self.finish(compact=bool(self._dead))
        slots = len(self._ids)
        vocab = list(self._vocab)  # term ids are given in insertion order, so this is id order
        header = {'k1': self.k1, 'b': self.b, 'slots': slots, 'terms': len(vocab), 'total': self._total}
        parts = [
            '\n'.join(vocab).encode('utf-8'),
            '\n'.join(cast(list[str], self._ids)).encode('utf-8'),
            self._df[: len(vocab)].tobytes(),
            self._length[:slots].tobytes(),
            self._indptr.tobytes(),
            self._posting_slots.tobytes(),
            # Term frequencies within one chunk fit 16 bits: a quarter less to store and read.
            np.minimum(self._posting_tfs, 65535).astype(np.uint16).tobytes(),
        ]
        return header, parts

    @classmethod
    def restore(cls, header: dict[str, Any], parts: Sequence[memoryview]) -> Bm25Index:
        """The index `dump` described; arrays are read in place, nothing is tokenized."""
        vocab_raw, ids_raw, df, length, indptr, posting_slots, posting_tfs = parts
        index = cls(k1=float(header['k1']), b=float(header['b']))
        slots, terms = int(header['slots']), int(header['terms'])
        vocab = str(vocab_raw, 'utf-8').split('\n') if terms else []
        index._vocab = dict(zip(vocab, range(terms), strict=True))
        index._ids = list(str(ids_raw, 'utf-8').split('\n')) if slots else []
        index._slots = None
        index._df = np.frombuffer(df, dtype=np.int32).copy()
        index._length = np.frombuffer(length, dtype=np.float32).copy()
        index._alive = np.ones(slots, dtype=np.bool_)
        index._live = slots
        index._total = float(header['total'])
        index._indptr = np.frombuffer(indptr, dtype=np.int64)
        index._posting_slots = np.frombuffer(posting_slots, dtype=np.int32)
        index._posting_tfs = np.frombuffer(posting_tfs, dtype=np.uint16).astype(np.float32)
        index._folded = slots
        if len(index._ids) != slots or index._indptr.shape[0] != terms + 1:
            raise ValueError('a BM25 snapshot whose parts disagree')
        return index


class VectorIndex(_ChunkSlots):
    """Exact nearest neighbours by cosine similarity over unit vectors held in one float32 matrix.

    The matrix is stored transposed (one column per chunk), which makes the query's product with it
    a BLAS `sgemv` over contiguous rows, the fastest form on a CPU. Columns are appended as chunks
    arrive and masked when they go; the matrix is compacted when half of it is dead. A search is
    that one product plus a partial sort.
    """

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = dims
        self._matrix: _FloatArray = np.zeros((dims, 0), dtype=np.float32)
        self._alive: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self._dead = 0

    def __len__(self) -> int:
        return len(self._ids) - self._dead

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
        self.remove([chunk_id for chunk_id in chunk_ids if chunk_id in self._slot_of])
        start = len(self._ids)
        self._reserve(start + len(chunk_ids))
        self._matrix[:, start : start + len(chunk_ids)] = vectors.T
        self._alive[start : start + len(chunk_ids)] = True
        for offset, chunk_id in enumerate(chunk_ids):
            self._slot_of[chunk_id] = start + offset
        self._ids.extend(chunk_ids)

    def remove(self, chunk_ids: Iterable[str]) -> None:
        """Unindex chunks; unknown ids are ignored."""
        for chunk_id in chunk_ids:
            row = self._slot_of.pop(chunk_id, None)
            if row is None:
                continue
            self._ids[row] = None
            self._alive[row] = False
            self._dead += 1
        if self._dead > 1000 and self._dead > len(self._ids) // 2:
            keep = np.flatnonzero(self._alive[: len(self._ids)])
            self._matrix = np.ascontiguousarray(self._matrix[:, keep])
            self._ids = [self._ids[row] for row in keep.tolist()]
            self._slots = None
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

    def dump(self) -> tuple[dict[str, Any], list[bytes]]:
        """The index as a header and byte parts, for `restore`: the live chunks' ids and their
        vectors as one float32 matrix."""
        rows = len(self._ids)
        live = np.flatnonzero(self._alive[:rows])
        matrix = self._matrix[:, live] if self._dead else self._matrix[:, :rows]
        ids = [cast(str, self._ids[row]) for row in live.tolist()]
        header = {'dims': self.dims, 'rows': len(ids)}
        return header, ['\n'.join(ids).encode('utf-8'), np.ascontiguousarray(matrix).tobytes()]

    @classmethod
    def restore(cls, header: dict[str, Any], parts: Sequence[memoryview]) -> VectorIndex:
        """The index `dump` described; the matrix is read in place."""
        ids_raw, matrix = parts
        dims, rows = int(header['dims']), int(header['rows'])
        index = cls(dims)
        index._ids = list(str(ids_raw, 'utf-8').split('\n')) if rows else []
        index._slots = None
        index._matrix = np.frombuffer(matrix, dtype=np.float32).reshape(dims, rows)
        index._alive = np.ones(rows, dtype=np.bool_)
        if len(index._ids) != rows:
            raise ValueError('a vector snapshot whose parts disagree')
        return index


def _top(scores: npt.NDArray[np.float32], n: int) -> list[tuple[int, float]]:
    size = scores.shape[0]
    if size == 0 or n <= 0:
        return []
    candidates: npt.NDArray[np.intp] = (
        np.argpartition(-scores, n - 1)[:n] if n < size else np.arange(size, dtype=np.intp)
    )
    order: list[int] = candidates[np.argsort(-scores[candidates], kind='stable')].tolist()
    return [(slot, float(scores[slot])) for slot in order]


@dataclass
class _Synced:
    """An in-process index of one KB, as of a generation."""

    epoch: str
    gen: int
    index: Any
    known_docs: dict[str, list[str]] | None = None

    @property
    def docs(self) -> dict[str, list[str]]:
        """Document id to the chunk ids indexed for it; for a restored index, read off the chunk ids
        (`<doc id>-<revision>-<position>`) the first time a change needs it."""
        if self.known_docs is None:
            docs: dict[str, list[str]] = {}
            for chunk_id in cast(list[str], self.index.chunk_ids()):
                docs.setdefault(chunk_id.split('-', 1)[0], []).append(chunk_id)
            self.known_docs = docs
        return self.known_docs


@dataclass(frozen=True)
class _Kind:
    """How to build, store and restore one kind of in-process index."""

    name: str
    field: Literal['terms', 'vectors']
    make: Callable[[int], Any]
    """Makes an empty index, given the vector dimensions (0 when not a vector index)."""
    add: Callable[[Any, Sequence[tuple[DocumentRecord, bytes]], bool], dict[str, list[str]]]
    """Indexes documents' chunks from the field's stored values; returns each document's chunk ids
    indexed. The bool: a bulk load (`finish` follows)."""
    finish: Callable[[Any], None]
    restore: Callable[[dict[str, Any], Sequence[memoryview]], Any]
    """The index a snapshot's header and parts describe (the index's `dump()`)."""


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


BM25_KIND = _Kind(
    'bm25', 'terms', lambda dims: Bm25Index(), cast(Any, _add_terms), cast(Any, _finish_bm25), Bm25Index.restore
)


VECTOR_KIND = _Kind('vectors', 'vectors', VectorIndex, cast(Any, _add_vectors), lambda index: None, VectorIndex.restore)


_CACHE: collections.OrderedDict[tuple[str, str], _Synced] = collections.OrderedDict()


_CACHE_SIZE = 16


def clear_index_cache() -> None:
    """Forget every in-process index (they come back from Redis on the next search)."""
    _CACHE.clear()


async def synced_index(kb: KnowledgeBase, kind: _Kind, state: KbState, *, dims: int = 0) -> _Synced:
    """The in-process index of `kind` for `kb`, brought up to `state`'s generation.

    A process that has none restores the KB's stored snapshot and applies the documents changed
    since it was taken; only without a usable snapshot is the index built from every document's
    stored terms or vectors (and a snapshot stored for the next process).
    """
    key = (kind.name, kb.keys.meta)
    for _ in range(5):
        current = _CACHE.get(key)
        if current is not None and current.epoch == state.epoch and (dims == 0 or current.index.dims == dims):
            _CACHE.move_to_end(key)
            if current.gen >= state.gen:
                return current
            caught_up = await _catch_up(kb, kind, current, state.gen)
            if caught_up is None:
                continue  # another search applied changes meanwhile: look again
            if caught_up:
                return current
        loaded = await _restore(kb, kind, state, dims)
        if loaded is None:
            loaded = await _load(kb, kind, state, dims)
            await _save(kb, kind, loaded, replace=True)
        existing = _CACHE.get(key)
        if existing is None or existing.epoch != loaded.epoch or existing.gen <= loaded.gen:
            _CACHE[key] = loaded
            _CACHE.move_to_end(key)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return loaded
    raise TandemError(f'knowledge base {kb.label!r} keeps changing during the search; try again.')


async def _catch_up(kb: KnowledgeBase, kind: _Kind, synced: _Synced, gen: int) -> bool | None:
    """Apply the documents changed since `synced.gen`: `True` when done, `False` when so many changed
    that a full load is cheaper, `None` when another search applied changes meanwhile."""
    base = synced.gen
    changed = await kb.changed_since(base)
    if len(changed) > max(1000, len(synced.docs) // 2):
        return False
    records = await kb.documents(changed)
    values = await kb.document_fields(changed, kind.field)
    if synced.gen != base:
        return None
    for doc_id in changed:
        old = synced.docs.pop(doc_id, None)
        if old:
            synced.index.remove(old)
    present = [(record, raw) for record, raw in zip(records, values, strict=True) if record and raw]
    synced.docs.update(kind.add(synced.index, present, False))
    synced.gen = max(synced.gen, gen)
    return True


async def _load(kb: KnowledgeBase, kind: _Kind, state: KbState, dims: int) -> _Synced:
    """Build the index of `kind` from everything stored (no snapshot yet, or a stale one): one
    bulk read per batch of documents, then one bulk build."""
    index = kind.make(dims)
    docs: dict[str, list[str]] = {}
    async for batch in kb.iter_documents():
        values = await kb.document_fields([record.id for record in batch], kind.field)
        docs.update({record.id: [] for record in batch})
        docs.update(kind.add(index, [(record, raw) for record, raw in zip(batch, values, strict=True) if raw], True))
    kind.finish(index)
    return _Synced(epoch=state.epoch, gen=state.gen, index=index, known_docs=docs)


# --- snapshots in Redis -----------------------------------------------------------------------------

_SNAPSHOT_MAGIC = b'TANDEM-INDEX-1\n'


# KEYS: meta, snapshots. ARGV: kind, epoch, gen, snapshot, '1' to replace even a newer one. Stores
# the snapshot unless the KB was recreated since (another epoch) or a snapshot as new is stored;
# returns 1 if stored.
_SAVE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then return 0 end
local saved = redis.call('HMGET', KEYS[2], ARGV[1] .. ':epoch', ARGV[1] .. ':gen')
if ARGV[5] ~= '1' and saved[1] == ARGV[2] and tonumber(saved[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4], ARGV[1] .. ':epoch', ARGV[2], ARGV[1] .. ':gen', ARGV[3])
return 1
"""


def pack_snapshot(header: dict[str, Any], parts: Sequence[bytes]) -> bytes:
    """One blob of an index's `dump()` (the header may carry more fields), for `unpack_snapshot`."""
    head = json.dumps({**header, 'parts': [len(part) for part in parts]}).encode('utf-8')
    return b''.join([_SNAPSHOT_MAGIC, len(head).to_bytes(4, 'little'), head, *parts])


def unpack_snapshot(blob: bytes) -> tuple[dict[str, Any], list[memoryview]]:
    """The header and parts of a snapshot (views into `blob`, nothing copied).

    Raises:
        ValueError: Not a snapshot of this format, or cut short.
    """
    view = memoryview(blob)
    if not blob.startswith(_SNAPSHOT_MAGIC):
        raise ValueError('not an index snapshot of this version')
    offset = len(_SNAPSHOT_MAGIC)
    size = int.from_bytes(view[offset : offset + 4], 'little')
    offset += 4
    header = cast(dict[str, Any], json.loads(bytes(view[offset : offset + size])))
    offset += size
    parts: list[memoryview] = []
    for length in cast(list[int], header['parts']):
        parts.append(view[offset : offset + length])
        offset += length
    if offset != len(blob):
        raise ValueError('an index snapshot of the wrong length')
    return header, parts


async def _saved_gen(kb: KnowledgeBase, kind: _Kind, epoch: str) -> int:
    saved_epoch, saved_gen = cast(
        list[bytes | None],
        await kb.redis.hmget(kb.keys.snapshots, [f'{kind.name}:epoch', f'{kind.name}:gen']),  # pyright: ignore[reportUnknownMemberType]
    )
    if saved_epoch is None or saved_gen is None or saved_epoch.decode() != epoch:
        return -1
    return int(saved_gen)


async def _save(kb: KnowledgeBase, kind: _Kind, synced: _Synced, *, replace: bool = False) -> None:
    """Store `synced` as the KB's snapshot of `kind`, unless one as new is stored.

    Args:
        replace: Store it even so (the stored one could not be used).
    """
    if not replace and await _saved_gen(kb, kind, synced.epoch) >= synced.gen:
        return
    header, parts = synced.index.dump()
    blob = pack_snapshot({**header, 'kind': kind.name, 'epoch': synced.epoch, 'gen': synced.gen}, parts)
    script = kb.redis.register_script(_SAVE_SCRIPT)  # pyright: ignore[reportUnknownMemberType]
    try:
        await script(  # pyright: ignore[reportUnknownMemberType]
            keys=[kb.keys.meta, kb.keys.snapshots],
            args=[kind.name, synced.epoch, synced.gen, blob, '1' if replace else '0'],
        )
    except RedisError as error:
        # Searching works without it; the next process just builds the index again.
        _log.warning('index.snapshot_not_saved', kb=kb.label, kind=kind.name, bytes=len(blob), error=str(error))


async def _restore(kb: KnowledgeBase, kind: _Kind, state: KbState, dims: int) -> _Synced | None:
    """The KB's stored snapshot of `kind`, brought up to `state`; `None` when there is no usable one."""
    blob = cast(bytes | None, await kb.redis.hget(kb.keys.snapshots, kind.name))  # pyright: ignore[reportUnknownMemberType]
    if blob is None:
        return None
    try:
        header, parts = unpack_snapshot(blob)
        if header.get('epoch') != state.epoch or header.get('kind') != kind.name:
            return None
        if dims and int(header.get('dims', 0)) != dims:
            return None
        synced = _Synced(epoch=state.epoch, gen=int(header['gen']), index=kind.restore(header, parts))
    except (ValueError, KeyError, TypeError) as error:
        _log.warning('index.snapshot_unreadable', kb=kb.label, kind=kind.name, error=str(error))
        return None
    if synced.gen < state.gen:
        if not await _catch_up(kb, kind, synced, state.gen):
            return None
        await _save(kb, kind, synced)  # so the next process has less to apply
    return synced


async def save_snapshots(kb: KnowledgeBase) -> None:
    """Bring the KB's stored index snapshots up to its current generation (after an ingest), so
    that the next process to search it starts from them instead of building its indexes."""
    info = await kb.info()
    if info is None:
        return
    state = KbState(epoch=info.epoch, gen=info.gen, chunks=info.chunks, vectors=info.vectors, embed_model=None)
    kinds: list[tuple[_Kind, int]] = [(BM25_KIND, 0)]
    # With the Query Engine, vectors are searched on the server: a vector snapshot is kept current
    # only if one is stored (a process searched them in process: `vector_search = "exact"`).
    if (
        info.vectors
        and info.dims
        and (not await query_engine_available(kb.redis) or await _saved_gen(kb, VECTOR_KIND, info.epoch) >= 0)
    ):
        kinds.append((VECTOR_KIND, info.dims))
    for kind, dims in kinds:
        if await _saved_gen(kb, kind, info.epoch) >= info.gen:
            continue
        await _save(kb, kind, await synced_index(kb, kind, state, dims=dims))
