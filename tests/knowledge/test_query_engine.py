"""Search on the server: BM25 and KNN through the Redis Query Engine, against a real Valkey with
RediSearch loaded (the `search` extra), and the embedded server that loads it by itself."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

import tandem.memory.knowledge.ingest as ingest_module
import tandem.memory.knowledge.retrieval as retrieval
import tandem.memory.knowledge.store as store_module
from tandem.agent.core.errors import TandemError
from tandem.memory.connection import connect, query_engine_available
from tandem.memory.knowledge import query_engine
from tandem.memory.knowledge.embeddings import openai_embedder
from tandem.memory.knowledge.index import Analyzer
from tandem.memory.knowledge.ingest import IngestOptions, Ingestor
from tandem.memory.knowledge.retrieval import Bm25Retriever, DenseRetriever, HybridRetriever
from tandem.memory.knowledge.store import KnowledgeBase
from tandem.memory.redis_server import EmbeddedRedis, find_search_module
from tests.knowledge.conftest import write_tree
from tests.knowledge.labelled import DOCUMENTS, QUERIES
from tests.support.fake_openai import FakeOpenAI

T = TypeVar('T')

ENGLISH: dict[str, Any] = {'analyzer': Analyzer()}
"""How the retrievers ask for a default knowledge base's BM25 on the server."""


async def _built(search: Callable[[], Awaitable[T | None]]) -> T:
    """What `search` returns once the server has built its index (it builds in the background)."""
    for _ in range(100):
        found = await search()
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError('the Query Engine index was never built')


async def _two_kbs(redis: Redis, tmp_path: Path, text: str) -> tuple[KnowledgeBase, KnowledgeBase]:
    """`docs` and `docs2` of one tenant, each holding `a.md` with `text`."""
    kbs = (KnowledgeBase(redis, tenant='acme', name='docs'), KnowledgeBase(redis, tenant='acme', name='docs2'))
    for kb in kbs:
        await Ingestor(kb).ingest([str(write_tree(tmp_path / kb.name, {'a.md': text}))])
    return kbs


def _in_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError('searched in process')

    monkeypatch.setattr(retrieval, 'synced_index', refuse)


async def test_bm25_runs_on_the_server_stemmed_and_agrees_with_the_in_process_index(
    search_redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = KnowledgeBase(search_redis, tenant='acme', name='handbook')
    docs = write_tree(tmp_path / 'docs', {**DOCUMENTS, 'law.md': '# Law\n\nThe office holds two patents.'})
    await Ingestor(kb).ingest([str(docs)])
    await _built(lambda: query_engine.bm25_search(kb, 'patent', 5, **ENGLISH))

    server = Bm25Retriever([kb], bm25_search='redis')
    local = Bm25Retriever([kb], bm25_search='process')
    in_process = {query: [Path(p.source).name for p in await local.search(query, 5)] for query, _ in QUERIES}
    _in_process_only(monkeypatch)
    assert [Path(p.source).name for p in await server.search('patent', 3)] == ['law.md']
    on_server = {query: [Path(p.source).name for p in await server.search(query, 5)] for query, _ in QUERIES}

    hits_local = sum(answer in in_process[query] for query, answer in QUERIES)
    hits_server = sum(answer in on_server[query] for query, answer in QUERIES)
    top_agree = sum(on_server[query][:1] == in_process[query][:1] for query, _ in QUERIES)
    assert abs(hits_server - hits_local) <= 1, (on_server, in_process)
    assert top_agree >= len(QUERIES) - 2, (on_server, in_process)
    assert await server.search('the of and', 3) == []  # only stop words


async def test_dense_and_hybrid_search_run_on_the_server(
    search_redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(embedding_models=['tiny-embed']) as fake:
        embedder = openai_embedder('tiny-embed', base_url=fake.url)
        kb = KnowledgeBase(search_redis, tenant='acme', name='docs')
        docs = write_tree(tmp_path / 'docs', {'a.md': 'Zebras graze on the savanna.', 'b.md': 'Penguins swim.'})
        await Ingestor(kb, embedder=embedder, options=IngestOptions()).ingest([str(docs)])
        vector = await embedder.embed_query('zebras savanna')
        await _built(lambda: query_engine.vector_search(kb, vector, 2))
        await _built(lambda: query_engine.bm25_search(kb, 'zebras', 2, **ENGLISH))
        _in_process_only(monkeypatch)

        dense = DenseRetriever([kb], embedder, vector_search='redis')
        assert Path((await dense.search('zebras savanna', 1))[0].source).name == 'a.md'
        hybrid = HybridRetriever([Bm25Retriever([kb]), dense])
        assert Path((await hybrid.search('penguins', 1))[0].source).name == 'b.md'


async def test_an_index_dropped_behind_tandems_back_is_searched_in_process_then_made_again(
    search_redis: Redis, tmp_path: Path
) -> None:
    kb = KnowledgeBase(search_redis, tenant='acme', name='docs')
    await Ingestor(kb).ingest([str(write_tree(tmp_path / 'docs', {'a.md': 'Granite countertops.'}))])
    await _built(lambda: query_engine.bm25_search(kb, 'granite', 1, **ENGLISH))
    await search_redis.execute_command('FT.DROPINDEX', query_engine.text_index_name(kb, Analyzer()))

    assert [Path(p.source).name for p in await Bm25Retriever([kb]).search('granite', 1)] == ['a.md']
    assert await _built(lambda: query_engine.bm25_search(kb, 'granite', 1, **ENGLISH))


async def test_chunks_written_without_the_query_engine_are_searched_in_process_until_ingested_again(
    search_redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = KnowledgeBase(search_redis, tenant='acme', name='docs')
    docs = write_tree(tmp_path / 'docs', {'a.md': 'Granite countertops.', 'b.md': 'Marble floors.'})
    with monkeypatch.context() as before:  # the server had no Query Engine then: nothing for it in the chunks

        async def without(redis: Any) -> bool:
            return False

        before.setattr(store_module, 'query_engine_available', without)
        before.setattr(ingest_module, 'query_engine_available', without)
        await Ingestor(kb).ingest([str(docs)])
    await _built(lambda: query_engine.bm25_search(kb, 'granite', 5, **ENGLISH))  # an index of nothing

    bm25 = Bm25Retriever([kb], bm25_search='redis')
    assert [Path(p.source).name for p in await bm25.search('granite', 5)] == ['a.md']  # in process

    report = await Ingestor(kb).ingest([str(docs)])  # unchanged, but written again with the terms
    assert report.updated == 2
    _in_process_only(monkeypatch)
    for _ in range(100):
        if await query_engine.bm25_search(kb, 'granite', 5, **ENGLISH):
            break
        await asyncio.sleep(0.05)
    assert [Path(p.source).name for p in await bm25.search('granite', 5)] == ['a.md']


async def test_a_bm25_index_of_another_layout_is_dropped_when_its_successor_is_made(
    search_redis: Redis, tmp_path: Path
) -> None:
    kb, other = await _two_kbs(search_redis, tmp_path, 'Granite countertops.')
    french = query_engine.text_index_name(kb, Analyzer('french'))
    stale = [french, french.rsplit(':', 1)[0] + ':english:1a2b3c4d']  # another analyzer; the layout before
    for name in [*stale, query_engine.text_index_name(other, Analyzer('french'))]:
        await search_redis.execute_command(
            'FT.CREATE', name, 'ON', 'HASH', 'PREFIX', '1', 'nothing:', 'SCHEMA', 't', 'TEXT'
        )

    await _built(lambda: query_engine.bm25_search(kb, 'granite', 1, **ENGLISH))

    names = sorted(name.decode() for name in await search_redis.execute_command('FT._LIST') or [])
    assert names == sorted(
        [query_engine.text_index_name(kb, Analyzer()), query_engine.text_index_name(other, Analyzer('french'))]
    )


async def test_a_first_search_that_loses_the_race_to_create_the_index_is_no_error(
    search_redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = KnowledgeBase(search_redis, tenant='acme', name='docs')
    await Ingestor(kb).ingest([str(write_tree(tmp_path / 'docs', {'a.md': 'Obsidian blades.'}))])
    real = search_redis.execute_command

    async def another_process_creates_it_first(*args: Any, **kwargs: Any) -> Any:
        if args[0] == 'FT.CREATE':
            await real(*args, **kwargs)  # between our FT.INFO and our FT.CREATE
        return await real(*args, **kwargs)

    monkeypatch.setattr(search_redis, 'execute_command', another_process_creates_it_first)
    assert await query_engine.bm25_search(kb, 'obsidian', 1, **ENGLISH) is None  # building: search in process
    assert await _built(lambda: query_engine.bm25_search(kb, 'obsidian', 1, **ENGLISH))


async def test_removing_a_knowledge_base_drops_its_indexes_and_only_its_own(
    search_redis: Redis, tmp_path: Path
) -> None:
    mine, other = await _two_kbs(search_redis, tmp_path, 'Basalt columns.')
    for kb in (mine, other):
        await _built(lambda kb=kb: query_engine.bm25_search(kb, 'basalt', 1, **ENGLISH))

    await mine.drop()
    names = [name.decode() for name in await search_redis.execute_command('FT._LIST') or []]
    assert names == [query_engine.text_index_name(other, Analyzer())]


async def test_bm25_search_redis_without_the_query_engine_is_one_clear_error(kb: KnowledgeBase, tmp_path: Path) -> None:
    await Ingestor(kb).ingest([str(write_tree(tmp_path / 'docs', {'a.md': 'Basalt.'}))])
    with pytest.raises(
        TandemError, match=r'knowledge\.bm25_search is "redis", but this Redis server has no Query Engine'
    ):
        await Bm25Retriever([kb], bm25_search='redis').search('basalt', 1)


def test_a_module_file_without_the_execute_bit_is_served_from_an_executable_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = find_search_module(tmp_path)
    if installed is None:
        pytest.skip('the search extra (RediSearch) is not installed: `make test` installs it')
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: Path(path) != installed and real_access(path, mode))

    copy = find_search_module(tmp_path)
    assert copy is not None and copy == tmp_path / 'redis' / 'modules' / 'redisearch.so'
    assert real_access(copy, os.X_OK) and copy.read_bytes() == installed.read_bytes()
    assert find_search_module(tmp_path) == copy  # made once


async def test_the_embedded_server_loads_the_query_engine_when_the_search_extra_is_installed(tmp_path: Path) -> None:
    if find_search_module(tmp_path) is None:
        pytest.skip('the search extra (RediSearch) is not installed: `make test` installs it')
    server = EmbeddedRedis(tmp_path / 'home')
    client = await connect(server.ensure_running(), home=tmp_path / 'home')
    try:
        assert await query_engine_available(client)
    finally:
        await client.aclose()
        server.stop()
