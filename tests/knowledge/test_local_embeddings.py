"""Hybrid retrieval with the bundled local model (all-MiniLM-L6-v2 on NumPy), on a small labelled set."""

from __future__ import annotations

from pathlib import Path

from tandem.memory.knowledge.embeddings import local_embedder
from tandem.memory.knowledge.ingest import Ingestor
from tandem.memory.knowledge.retrieval import Bm25Retriever, DenseRetriever, HybridRetriever, Retriever
from tandem.memory.knowledge.store import KnowledgeBase
from tests.knowledge.conftest import needs_local_embeddings, write_tree
from tests.knowledge.labelled import DOCUMENTS, QUERIES


async def _recall_at(retriever: Retriever, k: int) -> float:
    found = 0
    for query, answer in QUERIES:
        names = [Path(passage.source).name for passage in await retriever.search(query, k)]
        found += answer in names
    return found / len(QUERIES)


@needs_local_embeddings
async def test_hybrid_search_with_local_embeddings_finds_the_labelled_answers(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    embedder = local_embedder()
    report = await Ingestor(kb, embedder=embedder).ingest([str(write_tree(tmp_path / 'docs', DOCUMENTS))])
    assert report.added == len(DOCUMENTS)
    info = await kb.info()
    assert info is not None and info.embed_model == 'local:all-MiniLM-L6-v2' and info.dims == 384
    assert info.vectors == info.chunks

    bm25 = await _recall_at(Bm25Retriever([kb]), 5)
    dense = await _recall_at(DenseRetriever([kb], embedder, vector_search='exact'), 5)
    hybrid = await _recall_at(HybridRetriever([Bm25Retriever([kb]), DenseRetriever([kb], embedder)]), 5)

    assert hybrid >= 0.9, (bm25, dense, hybrid)
    assert hybrid >= bm25 and hybrid >= dense - 0.1, (bm25, dense, hybrid)
    assert bm25 < 0.9  # the set has paraphrases BM25 alone misses, so the fusion is what is tested
