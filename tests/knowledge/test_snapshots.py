"""Index snapshots in Redis: a new process restores the index instead of rebuilding it, catches up
with the changes since, and rebuilds (once) only when no usable snapshot is stored."""

from __future__ import annotations

import random
from pathlib import Path

import bm25s
import pytest
import Stemmer  # pyright: ignore[reportMissingTypeStubs]
from redis.asyncio import Redis

import tandem.memory.knowledge.index as index
from tandem.memory.knowledge.embeddings import openai_embedder
from tandem.memory.knowledge.index import Bm25Index, bm25_terms
from tandem.memory.knowledge.ingest import Ingestor
from tandem.memory.knowledge.retrieval import Bm25Retriever, DenseRetriever
from tandem.memory.knowledge.store import KnowledgeBase
from tests.knowledge.conftest import write_tree
from tests.support.fake_openai import FakeOpenAI


class _Reads:
    """Counts full builds, and which documents' stored terms or vectors a process reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.builds = 0
        self.documents: list[str] = []
        real_load = index._load
        real_fields = KnowledgeBase.document_fields

        async def load(*args: object, **kwargs: object) -> object:
            self.builds += 1
            return await real_load(*args, **kwargs)  # type: ignore[arg-type]

        async def fields(kb: KnowledgeBase, doc_ids: list[str], which: str) -> object:
            self.documents += doc_ids
            return await real_fields(kb, doc_ids, which)  # type: ignore[arg-type]

        monkeypatch.setattr(index, '_load', load)
        monkeypatch.setattr(KnowledgeBase, 'document_fields', fields)


async def _names(kb: KnowledgeBase, query: str) -> list[str]:
    return [Path(passage.source).name for passage in await Bm25Retriever([kb]).search(query, 3)]


async def _saved_gen(redis: Redis, kb: KnowledgeBase, kind: str = 'bm25') -> int:
    raw = await redis.hget(kb.keys.snapshots, f'{kind}:gen')
    return int(raw) if raw is not None else -1


async def test_a_snapshot_behind_the_knowledge_base_applies_only_the_documents_changed_since(
    kb: KnowledgeBase, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = write_tree(tmp_path / 'docs', {f'n{n}.txt': f'note {n} about topic{n}' for n in range(30)})
    await Ingestor(kb).ingest([str(docs)])
    old = await redis.hget(kb.keys.snapshots, 'bm25')
    old_gen = await _saved_gen(redis, kb)

    (docs / 'n3.txt').write_text('note 3 now about comets')
    await Ingestor(kb).ingest([str(docs)])
    # As if the process that ingested was killed before it stored the newer snapshot:
    await redis.hset(kb.keys.snapshots, mapping={'bm25': old, 'bm25:gen': old_gen})  # type: ignore[arg-type]
    reads = _Reads(monkeypatch)
    index.clear_index_cache()

    assert await _names(kb, 'comet') == ['n3.txt']
    assert await _names(kb, 'topic3') == []
    assert reads.builds == 0 and len(reads.documents) == 1  # the one changed document, not thirty
    info = await kb.info()
    assert info is not None and await _saved_gen(redis, kb) == info.gen  # caught up, and stored for the next


async def test_without_a_usable_snapshot_the_index_is_built_once_and_stored(
    kb: KnowledgeBase, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await Ingestor(kb).ingest([str(write_tree(tmp_path / 'docs', {'a.md': 'alpha words', 'b.md': 'beta words'}))])
    reads = _Reads(monkeypatch)

    await redis.delete(kb.keys.snapshots)  # a knowledge base from before snapshots
    index.clear_index_cache()
    assert await _names(kb, 'alpha') == ['a.md']
    assert reads.builds == 1

    await redis.hset(kb.keys.snapshots, 'bm25', b'TANDEM-INDEX-1\n\x05\x00\x00\x00{"pa')  # cut short
    index.clear_index_cache()
    assert await _names(kb, 'beta') == ['b.md']
    assert reads.builds == 2

    index.clear_index_cache()
    assert await _names(kb, 'alpha') == ['a.md']
    assert reads.builds == 2  # the rebuilt index was stored


async def test_a_recreated_knowledge_base_never_restores_the_old_one(
    kb: KnowledgeBase, redis: Redis, tmp_path: Path
) -> None:
    await Ingestor(kb).ingest([str(write_tree(tmp_path / 'one', {'a.txt': 'alpha bravo'}))])
    old = await redis.hgetall(kb.keys.snapshots)
    await kb.drop()
    assert await redis.exists(kb.keys.snapshots) == 0
    await Ingestor(kb).ingest([str(write_tree(tmp_path / 'two', {'b.txt': 'delta echo'}))])
    await redis.hset(kb.keys.snapshots, mapping=old)  # type: ignore[arg-type]  # another epoch's snapshot
    index.clear_index_cache()

    assert await _names(kb, 'bravo') == []
    assert await _names(kb, 'echo') == ['b.txt']


async def test_vectors_are_restored_too(kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(embedding_models=['tiny-embed']) as fake:
        embedder = openai_embedder('tiny-embed', base_url=fake.url)
        docs = write_tree(tmp_path / 'docs', {'a.md': 'Zebras graze on the savanna.', 'b.md': 'Penguins swim.'})
        await Ingestor(kb, embedder=embedder).ingest([str(docs)])
        reads = _Reads(monkeypatch)
        index.clear_index_cache()

        hits = await DenseRetriever([kb], embedder, vector_search='exact').search('zebras savanna', 1)
        assert Path(hits[0].source).name == 'a.md'
        assert reads.builds == 0


async def test_on_the_query_engine_a_vector_snapshot_is_kept_current_once_vectors_are_searched_in_process(
    search_redis: Redis, tmp_path: Path
) -> None:
    with FakeOpenAI(embedding_models=['tiny-embed']) as fake:
        embedder = openai_embedder('tiny-embed', base_url=fake.url)
        kb = KnowledgeBase(search_redis, tenant='acme', name='docs')
        docs = write_tree(tmp_path / 'docs', {'a.md': 'Zebras graze on the savanna.'})
        await Ingestor(kb, embedder=embedder).ingest([str(docs)])
        assert await _saved_gen(search_redis, kb, 'vectors') == -1  # the server searches them: no copy

        await DenseRetriever([kb], embedder, vector_search='exact').search('zebras', 1)  # stores one
        write_tree(docs, {'b.md': 'Penguins swim.'})
        await Ingestor(kb, embedder=embedder).ingest([str(docs)])

        state = await kb.state()
        assert state is not None
        assert await _saved_gen(search_redis, kb, 'vectors') == state.gen


def test_a_restored_index_scores_as_bm25s_through_further_adds_and_removes() -> None:
    rng = random.Random(11)
    words = [f'w{n}' for n in range(150)] + ['redis', 'clusters', 'cluster', 'shards']
    corpus = {f'c{n}': ' '.join(rng.choices(words, k=rng.randint(3, 50))) for n in range(300)}
    original = Bm25Index()
    for chunk_id, text in corpus.items():
        original.add(chunk_id, bm25_terms(text))
    for chunk_id in list(corpus)[::7]:
        original.remove([chunk_id])
        del corpus[chunk_id]

    header, parts = original.dump()
    restored = Bm25Index.restore(header, [memoryview(part) for part in parts])
    for chunk_id in list(corpus)[::5]:  # removing chunks folded into the restored block
        restored.remove([chunk_id])
        del corpus[chunk_id]
    for n in range(40):
        corpus[f'new{n}'] = ' '.join(rng.choices(words, k=20))
        restored.add(f'new{n}', bm25_terms(corpus[f'new{n}']))

    ids = list(corpus)
    reference = bm25s.BM25()
    stemmer = Stemmer.Stemmer('english')
    reference.index(
        bm25s.tokenize([corpus[i] for i in ids], stopwords='en', stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    for query in ('redis cluster w7', 'shards w3 w77', 'w1 w2 w3 w4'):
        terms = bm25_terms(query)
        expected = reference.get_scores([term for term in terms if term in reference.vocab_dict])
        ours = dict(restored.search(terms, len(ids)))
        for position, chunk_id in enumerate(ids):
            assert ours.get(chunk_id, 0.0) == pytest.approx(float(expected[position]), rel=1e-5, abs=1e-6)
