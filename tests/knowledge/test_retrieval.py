"""Dense and hybrid retrieval: local and remote embeddings, exact vector search (the Query Engine path: test_query_engine.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

import tandem.memory.knowledge.retrieval as retrieval
from tandem.memory.connection import query_engine_available
from tandem.memory.knowledge.embeddings import openai_embedder
from tandem.memory.knowledge.index import VectorIndex
from tandem.memory.knowledge.ingest import Ingestor
from tandem.memory.knowledge.retrieval import Bm25Retriever, DenseRetriever, HybridRetriever, reciprocal_rank_fusion
from tandem.memory.knowledge.store import EmbeddingModelMismatch, KnowledgeBase
from tests.knowledge.conftest import write_tree
from tests.support.fake_openai import FakeOpenAI
from tests.support.loopback_http import refused_port


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(embedding_models=['tiny-embed', 'other-embed']) as server:
        yield server


async def test_remote_openai_compatible_embeddings(kb: KnowledgeBase, tmp_path: Path, fake: FakeOpenAI) -> None:
    embedder = openai_embedder('tiny-embed', base_url=fake.url)
    docs = write_tree(
        tmp_path / 'docs', {'a.md': 'Zebras graze on the savanna.', 'b.md': 'Penguins swim in icy water.'}
    )
    await Ingestor(kb, embedder=embedder).ingest([str(docs)])

    info = await kb.info()
    assert info is not None and (info.embed_model, info.dims, info.vectors) == ('openai:tiny-embed', 64, 2)
    assert fake.embedding_requests and all(body['model'] == 'tiny-embed' for body in fake.embedding_requests)
    dense = DenseRetriever([kb], embedder, vector_search='exact')
    assert Path((await dense.search('zebras savanna', 1))[0].source).name == 'a.md'

    (docs / 'a.md').write_text('Giraffes eat acacia leaves.')
    await Ingestor(kb, embedder=embedder).ingest([str(docs)])
    hits = await dense.search('giraffes acacia', 2)
    assert Path(hits[0].source).name == 'a.md' and 'Giraffes' in hits[0].text
    assert all('Zebras' not in hit.text for hit in hits)  # the cached vectors followed the update


async def test_documents_are_embedded_in_batches_of_like_lengths_and_returned_in_order(fake: FakeOpenAI) -> None:
    embedder = openai_embedder('tiny-embed', base_url=fake.url, batch_size=2)
    texts = ['a long passage about zebras and the savanna', 'ok', 'a mid-sized note', 'hi', 'penguins swim fast']

    together = await embedder.embed_documents(texts)

    alone = np.concatenate([await embedder.embed_documents([text]) for text in texts])
    assert np.allclose(together, alone)
    batches = [body['input'] for body in fake.embedding_requests[:3]]
    assert batches == [['ok', 'hi'], ['a mid-sized note', 'penguins swim fast'], [texts[0]]]


async def test_vectors_of_another_model_never_mix(kb: KnowledgeBase, tmp_path: Path, fake: FakeOpenAI) -> None:
    docs = write_tree(tmp_path / 'docs', {'a.md': 'Zebras graze.'})
    await Ingestor(kb, embedder=openai_embedder('tiny-embed', base_url=fake.url)).ingest([str(docs)])
    other = openai_embedder('other-embed', base_url=fake.url)

    with pytest.raises(EmbeddingModelMismatch, match='openai:tiny-embed'):
        await Ingestor(kb, embedder=other).ingest([str(docs)])
    assert await DenseRetriever([kb], other).search('zebras', 3) == []  # skipped, not compared with wrong vectors
    hybrid = HybridRetriever([Bm25Retriever([kb]), DenseRetriever([kb], other)])
    assert Path((await hybrid.search('zebras', 3))[0].source).name == 'a.md'


async def test_hybrid_search_survives_an_embedding_server_that_is_down(
    kb: KnowledgeBase, tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    await Ingestor(kb, embedder=openai_embedder('tiny-embed', base_url=fake.url)).ingest(
        [str(write_tree(tmp_path / 'docs', {'a.md': 'Zebras graze.'}))]
    )
    with refused_port() as closed, caplog.at_level(logging.WARNING, logger='tandem.retrieval'):
        down = openai_embedder('tiny-embed', base_url=f'http://127.0.0.1:{closed}/v1', max_retries=0)
        hybrid = HybridRetriever([Bm25Retriever([kb]), DenseRetriever([kb], down)])
        hits = await hybrid.search('zebras graze on grass', 3)

    assert Path(hits[0].source).name == 'a.md'
    [event] = [cast(dict[str, Any], record.msg) for record in caplog.records if record.name == 'tandem.retrieval']
    assert (event['event'], event['retriever'], event['fallback']) == (
        'retrieval.retriever_failed',
        'dense',
        'the others',
    )


def test_exact_vector_search_matches_brute_force_through_adds_and_removes() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(16)
    for n, vector in enumerate(vectors):
        index.add(f'c{n}', vector)
    removed = set(range(0, 500, 3))
    index.remove(f'c{n}' for n in removed)
    index.add('c1', -vectors[1])  # a replaced chunk keeps one row, the new one
    vectors[1] = -vectors[1]

    query = vectors[7]
    expected = sorted(((float(vectors[n] @ query), f'c{n}') for n in range(500) if n not in removed), reverse=True)
    got = index.search(query, 10)
    assert [chunk_id for chunk_id, _ in got] == [chunk_id for _, chunk_id in expected[:10]]
    assert len(index) == 500 - len(removed)


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    fused = reciprocal_rank_fusion([['a', 'b', 'c'], ['b', 'd', 'a']], k=60)
    assert [item for item, _ in fused] == ['b', 'a', 'd', 'c']
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


async def test_vector_search_redis_without_the_query_engine_is_a_clear_error(
    kb: KnowledgeBase, tmp_path: Path, fake: FakeOpenAI
) -> None:
    if await query_engine_available(kb.redis):
        pytest.skip('this server has the Query Engine')
    embedder = openai_embedder('tiny-embed', base_url=fake.url)
    await Ingestor(kb, embedder=embedder).ingest([str(write_tree(tmp_path / 'docs', {'a.md': 'Zebras.'}))])
    with pytest.raises(retrieval.TandemError, match='no Query Engine'):
        await DenseRetriever([kb], embedder, vector_search='redis').search('zebras', 1)
