"""Searching knowledge bases: one `Retriever` interface over BM25, dense vectors, and their fusion.

- **BM25** (`Bm25Retriever`, the default, no model): bm25s's tokenizer with Snowball stemming and
  the language's stop words (`memory.knowledge.index.Analyzer`, recorded per KB, so each KB is
  queried as it was indexed), the chunk's title and section heading indexed with its text, and
  bm25s's Lucene BM25 scoring (k1=1.5, b=0.75), over an inverted index kept in
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
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt

from tandem.agent.core.errors import TandemError
from tandem.agent.core.log import get_logger
from tandem.memory.connection import RedisClient, query_engine_available
from tandem.memory.knowledge import query_engine
from tandem.memory.knowledge.embeddings import EmbeddingsUnavailable, TextEmbedder, make_embedder
from tandem.memory.knowledge.index import BM25_KIND, VECTOR_KIND, Analyzer, VectorIndex, synced_index
from tandem.memory.knowledge.store import KbState, KnowledgeBase

if TYPE_CHECKING:
    from tandem.agent.core.config import KnowledgeConfig

__all__ = (
    'Bm25Retriever',
    'DenseRetriever',
    'HybridRetriever',
    'Passage',
    'Retriever',
    'build_retriever',
    'reciprocal_rank_fusion',
)

_log = get_logger('tandem.retrieval')


_RRF_K = 60


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
        tokens: The passage's size in tokens, as counted when it was stored.
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
    tokens: int = 0


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
                tokens=chunk.tokens,
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


# --- retrievers ----------------------------------------------------------------------------------


Placement = Literal['auto', 'process', 'redis']


class Bm25Retriever(_RankingRetriever):
    """BM25 over one or more knowledge bases; several KBs' rankings are fused by reciprocal rank
    (BM25 scores of different collections are not comparable).

    Args:
        kbs: The knowledge bases to search.
        bm25_search: `process` searches the in-process index; `redis` has the Redis Query Engine
            rank (`FT.SEARCH`, BM25 over the chunks' stored terms) and fails without it; `auto` uses it when the
            server has it.
    """

    def __init__(self, kbs: Sequence[KnowledgeBase], *, bm25_search: Placement = 'auto') -> None:
        super().__init__(kbs)
        self.bm25_search = bm25_search

    @property
    def name(self) -> str:
        return 'bm25'

    async def rank(self, query: str, n: int) -> _Ranked:
        if not query.strip():
            return []
        rankings: list[_Ranked] = []
        states = await asyncio.gather(*(kb.state() for kb in self.kbs))
        for kb, state in zip(self.kbs, states, strict=True):
            if state is None or state.chunks == 0:
                continue
            # Each KB is queried the way it was indexed (its language; unstemmed before 0.2).
            analyzer = Analyzer.named(state.analyzer)
            hits = await self._on_server(kb, query, n, analyzer, state)
            if hits is None:
                terms = analyzer.terms(query)
                if not terms:
                    continue
                synced = await synced_index(kb, BM25_KIND, state)
                hits = synced.index.search(terms, n)
            rankings.append([(kb, chunk_id, score) for chunk_id, score in hits])
        return _fuse(rankings, n)

    async def _on_server(
        self, kb: KnowledgeBase, query: str, n: int, analyzer: Analyzer, state: KbState
    ) -> list[tuple[str, float]] | None:
        if self.bm25_search == 'process':
            return None
        if await query_engine_available(kb.redis):
            if state.served_chunks < state.chunks:
                return None  # chunks the server can't see: written before it had the Query Engine
            return await query_engine.bm25_search(kb, query, n, analyzer=analyzer)
        if self.bm25_search == 'redis':
            raise TandemError(
                'knowledge.bm25_search is "redis", but this Redis server has no Query Engine (FT.SEARCH): use '
                'Redis 8 or Redis Stack, install the search extra (`make search`) for the embedded server, or set '
                'knowledge.bm25_search = "auto".'
            )
        return None


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
                        'retrieval.dense_skips_kb',
                        kb=kb.label,
                        vectors_of=state.embed_model,
                        embedder=self.embedder.model_id,
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
                # Not while some vectors are in no chunk hash (written before the server had the Query Engine).
                hits = (
                    await query_engine.vector_search(kb, vector, n) if state.served_vectors >= state.vectors else None
                )
                if hits is not None:
                    return hits
            elif self.vector_search == 'redis':
                raise TandemError(
                    'knowledge.vector_search is "redis", but this Redis server has no Query Engine (FT.SEARCH): '
                    'use Redis 8 or Redis Stack, install the search extra (`make search`) for the embedded server, '
                    'or set knowledge.vector_search = "auto".'
                )
        synced = await synced_index(kb, VECTOR_KIND, state, dims=vector.shape[0])
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

    async def rank(self, query: str, n: int) -> _Ranked:
        """The fused best `n` `(kb, chunk id, score)`, best first, when every retriever ranks chunk ids.

        Raises:
            TypeError: A retriever only searches (it has no `rank`).
        """
        if not all(isinstance(retriever, _RankingRetriever) for retriever in self.retrievers):
            raise TypeError('only retrievers that rank chunk ids can be fused without reading the chunks')
        outcomes = await _gather_tolerant(
            [cast(_RankingRetriever, retriever).rank(query, max(2 * n, 40)) for retriever in self.retrievers],
            [retriever.name for retriever in self.retrievers],
        )
        fused = reciprocal_rank_fusion(
            [[(kb, chunk_id) for kb, chunk_id, _ in ranked] for ranked in outcomes], k=self.rrf_k
        )
        return [(kb, chunk_id, score) for (kb, chunk_id), score in fused[:n]]

    async def search(self, query: str, k: int = 5) -> list[Passage]:
        n = max(4 * k, 40)
        if all(isinstance(retriever, _RankingRetriever) for retriever in self.retrievers):
            return await _materialize(await self.rank(query, 2 * k), k)
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
            _log.warning('retrieval.retriever_failed', retriever=name, error=str(outcome), fallback='the others')
    return good


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
        return Bm25Retriever(bases, bm25_search=config.bm25_search)
    embedder = embedder if embedder is not None else make_embedder(config)
    if embedder is None:
        if mode in ('dense', 'hybrid'):
            raise EmbeddingsUnavailable(
                f'{mode} search needs embeddings: set knowledge.embeddings to "local" or "openai:MODEL".'
            )
        return Bm25Retriever(bases, bm25_search=config.bm25_search)
    dense = DenseRetriever(bases, embedder, vector_search=config.vector_search)
    if mode == 'dense':
        return dense
    return HybridRetriever([Bm25Retriever(bases, bm25_search=config.bm25_search), dense], rrf_k=config.rrf_k)
