"""The knowledge base on a real Redis: ingest, search, re-ingest, update, remove, isolation, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import bm25s
import pytest
import Stemmer  # pyright: ignore[reportMissingTypeStubs]
from redis.asyncio import Redis

import tandem.memory.knowledge.index as index
from tandem.memory.connection import connect
from tandem.memory.knowledge.index import Bm25Index, bm25_terms
from tandem.memory.knowledge.ingest import IngestOptions, Ingestor
from tandem.memory.knowledge.retrieval import Bm25Retriever
from tandem.memory.knowledge.store import KnowledgeBase, document_id, list_knowledge_bases
from tests.conftest import RedisTestServer
from tests.knowledge.conftest import write_tree

GUIDE = """# Operations guide

## Backups

Snapshots of the database are taken every night at 02:00 UTC and kept for thirty days.
Restore one with `tandem restore --snapshot ID`.

## Rotating API keys

Generate a new key in the dashboard, deploy it, then revoke the old key within 24 hours.
"""
FAQ = """Frequently asked questions.

The office is in Lisbon, next to the river.

Support answers emails within one business day.
"""


async def _ingest(kb: KnowledgeBase, *targets: Path | str) -> Ingestor:
    ingestor = Ingestor(kb, options=IngestOptions(chunk_tokens=64, chunk_overlap=8))
    await ingestor.ingest([str(target) for target in targets])
    return ingestor


async def _top(kb: KnowledgeBase, query: str, k: int = 3) -> list[tuple[str, str]]:
    """`(file name, heading)` of the best `k` passages."""
    passages = await Bm25Retriever([kb]).search(query, k)
    return [(Path(passage.source).name, passage.heading) for passage in passages]


async def _chunk_keys(redis: Redis, kb: KnowledgeBase) -> set[str]:
    return {key.decode() async for key in redis.scan_iter(match=kb.keys.chunk_prefix + '*')}


async def test_ingest_then_search_finds_the_right_chunk_with_its_metadata(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = write_tree(tmp_path / 'docs', {'guide.md': GUIDE, 'faq.txt': FAQ})

    report = (await _ingest(kb, docs)).report

    assert (report.added, report.updated, report.unchanged, report.skipped_total) == (2, 0, 0, 0)
    passages = await Bm25Retriever([kb]).search('how do I rotate an API key', 3)
    best = passages[0]
    assert Path(best.source).name == 'guide.md'
    assert best.heading == 'Operations guide > Rotating API keys'
    assert 'revoke the old key' in best.text
    assert best.title == 'Operations guide'
    assert best.source == str((docs / 'guide.md').resolve())
    assert (await _top(kb, 'where is the office'))[0] == ('faq.txt', '')
    record = await kb.document(document_id(best.source))
    assert record is not None and record.hash and record.ingested_at and record.kind == 'markdown'
    info = await kb.info()
    assert info is not None and info.docs == 2 and info.chunks == len(record.chunks) + 1


async def test_reingesting_unchanged_files_is_a_no_op(kb: KnowledgeBase, redis: Redis, tmp_path: Path) -> None:
    docs = write_tree(tmp_path / 'docs', {'guide.md': GUIDE, 'faq.txt': FAQ})
    await _ingest(kb, docs)
    before = await redis.hgetall(kb.keys.meta)
    keys_before = await _chunk_keys(redis, kb)

    report = (await _ingest(kb, docs)).report

    assert (report.added, report.updated, report.unchanged, report.chunks) == (0, 0, 2, 0)
    assert await redis.hgetall(kb.keys.meta) == before  # not even the generation moved
    assert await _chunk_keys(redis, kb) == keys_before


async def test_a_changed_file_replaces_its_old_chunks(kb: KnowledgeBase, redis: Redis, tmp_path: Path) -> None:
    docs = write_tree(tmp_path / 'docs', {'guide.md': GUIDE, 'faq.txt': FAQ})
    await _ingest(kb, docs)
    assert (await _top(kb, 'office Lisbon river'))[0][0] == 'faq.txt'
    old = await kb.document(document_id(str((docs / 'faq.txt').resolve())))
    assert old is not None

    (docs / 'faq.txt').write_text('The office moved to Porto in 2025.\n')
    report = (await _ingest(kb, docs)).report

    assert (report.added, report.updated, report.unchanged) == (0, 1, 1)
    new = await kb.document(old.id)
    assert new is not None and new.rev != old.rev and new.hash != old.hash
    assert new.created_at == old.created_at and new.ingested_at >= old.ingested_at
    keys = await _chunk_keys(redis, kb)
    assert not any(kb.keys.chunk(chunk_id) in keys for chunk_id in old.chunks)  # the old version is gone
    assert all(kb.keys.chunk(chunk_id) in keys for chunk_id in new.chunks)
    assert (await _top(kb, 'Lisbon river')) == []  # not even a stale cached posting
    hits = await Bm25Retriever([kb]).search('where is the office', 1)
    assert 'Porto' in hits[0].text


async def test_a_reader_sees_the_old_or_the_new_version_never_a_mix(kb: KnowledgeBase, tmp_path: Path) -> None:
    long_doc = '\n\n'.join(f'Paragraph {n} about version ALPHA of the widget, part {n}.' * 8 for n in range(30))
    path = write_tree(tmp_path, {'w.md': long_doc}) / 'w.md'
    await _ingest(kb, path)
    doc_id = document_id(str(path.resolve()))
    versions: set[frozenset[str]] = set()
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            record = await kb.document(doc_id)
            assert record is not None
            chunks = await kb.chunks(record.chunks)
            if any(chunk is None for chunk in chunks):
                continue  # replaced between the two reads: read again
            words = {word for chunk in chunks if chunk for word in ('ALPHA', 'BETA') if word in chunk.text}
            versions.add(frozenset(words))
            await asyncio.sleep(0)

    reader = asyncio.ensure_future(read())
    for version in ('BETA', 'ALPHA', 'BETA'):
        path.write_text(long_doc.replace('ALPHA', version))
        await _ingest(kb, path)
    stop.set()
    await reader
    assert versions <= {frozenset({'ALPHA'}), frozenset({'BETA'})}


async def test_rm_removes_documents_and_whole_knowledge_bases(kb: KnowledgeBase, redis: Redis, tmp_path: Path) -> None:
    docs = write_tree(tmp_path / 'docs', {'guide.md': GUIDE, 'faq.txt': FAQ, 'sub/extra.md': '# Extra\n\nMore text.'})
    await _ingest(kb, docs)

    removed = await kb.remove_sources([str((docs / 'faq.txt').resolve())])
    assert removed == [str((docs / 'faq.txt').resolve())]
    assert (await _top(kb, 'office Lisbon')) == []
    removed = await kb.remove_sources([], prefixes=[str((docs / 'sub').resolve()) + '/'])
    assert [Path(source).name for source in removed] == ['extra.md']
    info = await kb.info()
    assert info is not None and info.docs == 1

    assert await kb.drop() == 1
    assert await kb.info() is None
    assert await _chunk_keys(redis, kb) == set()
    assert not [key async for key in redis.scan_iter(match='tandem:{acme:kb:docs}*')]
    assert await list_knowledge_bases(redis, tenant='acme') == []
    assert await Bm25Retriever([kb]).search('backups', 3) == []
    assert await Bm25Retriever([kb]).count() == 0


async def test_tenants_users_and_knowledge_bases_are_isolated(redis: Redis, tmp_path: Path) -> None:
    acme = KnowledgeBase(redis, tenant='acme', name='docs')
    other_kb = KnowledgeBase(redis, tenant='acme', name='legal')
    globex = KnowledgeBase(redis, tenant='globex', name='docs')
    alice = KnowledgeBase(redis, tenant='acme', name='docs', user='alice')
    await _ingest(acme, write_tree(tmp_path / 'a', {'guide.md': GUIDE}))
    await _ingest(other_kb, write_tree(tmp_path / 'b', {'nda.md': '# NDA\n\nConfidential terms of the NDA.'}))
    await _ingest(globex, write_tree(tmp_path / 'c', {'faq.txt': FAQ}))
    await _ingest(alice, write_tree(tmp_path / 'd', {'diary.md': '# Diary\n\nMy favourite colour is teal.'}))

    assert await _top(acme, 'office Lisbon') == []
    assert await _top(acme, 'NDA confidential') == []
    assert await _top(acme, 'teal colour') == []
    assert (await _top(globex, 'office Lisbon'))[0][0] == 'faq.txt'
    assert await _top(globex, 'snapshots backups') == []
    assert (await _top(alice, 'teal colour'))[0][0] == 'diary.md'
    assert [info.label for info in await list_knowledge_bases(redis, tenant='acme')] == ['docs', 'legal']
    assert [info.label for info in await list_knowledge_bases(redis, tenant='acme', user='alice')] == [
        'docs',
        'legal',
        'alice/docs',
    ]
    assert [info.label for info in await list_knowledge_bases(redis, tenant='globex', user='alice')] == ['docs']
    # Removing one KB leaves the others whole.
    await other_kb.drop()
    assert (await _top(globex, 'office Lisbon'))[0][0] == 'faq.txt'
    assert (await _top(acme, 'rotate keys'))[0][0] == 'guide.md'


async def test_the_index_updates_incrementally_and_a_new_process_starts_from_the_stored_snapshot(
    kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = write_tree(
        tmp_path / 'docs', {f'note{n}.txt': f'Note {n} mentions topic{n} and shared words.' for n in range(20)}
    )
    await _ingest(kb, docs)  # the ingest stores the index's snapshot
    builds = _count_builds(monkeypatch)

    index.clear_index_cache()  # a new process
    assert (await _top(kb, 'topic3'))[0][0] == 'note3.txt'
    for _ in range(3):
        await _top(kb, 'topic4')
    assert builds == []  # restored, never rebuilt from the chunks' terms

    (docs / 'note3.txt').write_text('Note 3 now talks about quasars.')
    (docs / 'new.txt').write_text('A new note about topic3 specifically: topic3 topic3.')
    await _ingest(kb, docs)
    assert [name for name, _ in await _top(kb, 'topic3')] == ['new.txt']
    assert (await _top(kb, 'quasars'))[0][0] == 'note3.txt'
    index.clear_index_cache()
    assert [name for name, _ in await _top(kb, 'topic3')] == ['new.txt']
    assert (await _top(kb, 'quasars'))[0][0] == 'note3.txt'
    assert builds == []


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    builds: list[str] = []
    real_load = index._load

    async def counting_load(*args: object, **kwargs: object) -> object:
        builds.append('build')
        return await real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(index, '_load', counting_load)
    return builds


async def test_a_recreated_knowledge_base_is_not_served_from_a_stale_index(kb: KnowledgeBase, tmp_path: Path) -> None:
    await _ingest(kb, write_tree(tmp_path / 'one', {'a.txt': 'alpha bravo charlie'}))
    assert (await _top(kb, 'bravo'))[0][0] == 'a.txt'
    await kb.drop()
    await _ingest(kb, write_tree(tmp_path / 'two', {'b.txt': 'delta echo foxtrot'}))
    assert await _top(kb, 'bravo') == []
    assert (await _top(kb, 'echo'))[0][0] == 'b.txt'


def test_incremental_bm25_scores_equal_a_bm25s_index_built_from_scratch() -> None:
    import random

    rng = random.Random(7)
    words = [f'w{n}' for n in range(200)] + ['redis', 'valkey', 'cluster', 'clusters', 'shard', 'shards']
    corpus = {f'c{n}': ' '.join(rng.choices(words, k=rng.randint(3, 60))) for n in range(400)}
    index = Bm25Index()
    first = list(corpus.items())[:150]
    index.add_many([chunk_id for chunk_id, _ in first], [' '.join(bm25_terms(text)) for _, text in first])
    index.finish()  # a bulk load, as from Redis; then chunk-by-chunk changes
    for chunk_id, text in list(corpus.items())[150:]:
        index.add(chunk_id, bm25_terms(text))
    for chunk_id in list(corpus)[::5]:
        index.remove([chunk_id])
        del corpus[chunk_id]
    for chunk_id in list(corpus)[::9]:
        corpus[chunk_id] = ' '.join(rng.choices(words, k=25))
        index.add(chunk_id, bm25_terms(corpus[chunk_id]))

    ids = list(corpus)
    stemmer = Stemmer.Stemmer('english')
    reference = bm25s.BM25()
    reference.index(
        bm25s.tokenize([corpus[i] for i in ids], stopwords='en', stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    for query in ('redis clusters w7', 'valkey shard shards', 'w150 w3 w77 w12'):
        terms = bm25_terms(query)
        tokenized = bm25s.tokenize([query], stopwords='en', stemmer=stemmer, return_ids=False, show_progress=False)
        assert terms == tokenized[0]  # bm25s's own tokenizer, with its Snowball stemmer
        expected = reference.get_scores([t for t in terms if t in reference.vocab_dict])
        ours = dict(index.search(terms, len(ids)))
        for position, chunk_id in enumerate(ids):
            assert ours.get(chunk_id, 0.0) == pytest.approx(float(expected[position]), rel=1e-5, abs=1e-6)


async def test_a_redis_cluster_takes_every_write_in_one_slot(
    redis_server_factory: Callable[..., RedisTestServer], tmp_path: Path
) -> None:
    server = redis_server_factory(cluster=True)
    client = await connect(server.url, home=tmp_path)
    try:
        kb = KnowledgeBase(client, tenant='acme', name='docs', user='bob')
        docs = write_tree(tmp_path / 'docs', {'guide.md': GUIDE, 'faq.txt': FAQ})
        report = (await _ingest(kb, docs)).report
        assert report.added == 2
        (docs / 'faq.txt').write_text('Changed.')
        assert (await _ingest(kb, docs)).report.updated == 1
        assert (await _top(kb, 'rotate API keys'))[0][0] == 'guide.md'
        assert await kb.drop() == 2
    finally:
        await client.aclose()
