"""Ingestion: formats, globs, chunking, bad input, interruption, memory, URLs."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tandem.agent.core.tokens import token_counter
from tandem.memory.knowledge.chunk import chunk_blocks
from tandem.memory.knowledge.ingest import IngestOptions, Ingestor, IngestProgress
from tandem.memory.knowledge.parse import Block, parse_document
from tandem.memory.knowledge.retrieval import Bm25Retriever
from tandem.memory.knowledge.store import KnowledgeBase
from tests.knowledge.conftest import make_pdf, write_tree
from tests.support.loopback_http import LoopbackHTTPServer, html_reply, text_reply


async def _search(kb: KnowledgeBase, query: str, k: int = 3) -> list[str]:
    return [Path(passage.source).name for passage in await Bm25Retriever([kb]).search(query, k)]


async def _check_whole(kb: KnowledgeBase, redis: Redis) -> int:
    """Every stored document has all its chunks, and no chunk belongs to no document; returns the doc count."""
    listed: set[str] = set()
    count = 0
    async for batch in kb.iter_documents():
        for record in batch:
            count += 1
            chunks = await kb.chunks(record.chunks)
            assert all(chunk is not None for chunk in chunks), f'{record.source} is half-written'
            listed.update(kb.keys.chunk(chunk_id) for chunk_id in record.chunks)
    stored = {key.decode() async for key in redis.scan_iter(match=kb.keys.chunk_prefix + '*', count=1000)}
    assert stored == listed, 'chunks without a document'
    info = await kb.info()
    assert (info.docs if info else 0) == count
    return count


# --- formats ---------------------------------------------------------------------------------------


async def test_every_supported_format_is_read_and_searchable(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = write_tree(
        tmp_path / 'docs',
        {
            'a.md': '# Alpha\n\nThe alpha reactor runs on molten salt.',
            'b.txt': 'Beta teams meet on Thursdays.',
            'c.html': '<html><head><title>Gamma page</title><script>evil()</script></head>'
            '<body><h1>Gamma</h1><p>Gamma rays are photons.</p></body></html>',
            'd.pdf': make_pdf(['Delta invoices are paid within thirty days.'], title='Delta terms'),
            'e.json': json.dumps({'epsilon': {'owner': 'Eve', 'budget': 1200}}),
            'f.csv': 'name,city\nFrank,Faro\nGrace,Guarda\n',
            'ignored.png': b'\x89PNG\r\n\x1a\n\x00\x00',
        },
    )
    report = (await _ingest(kb, docs)).report

    assert report.added == 6 and report.unsupported == {'.png': 1} and report.skipped_total == 1
    assert (await _search(kb, 'molten salt reactor'))[0] == 'a.md'
    assert (await _search(kb, 'Thursdays'))[0] == 'b.txt'
    assert (await _search(kb, 'photons'))[0] == 'c.html'
    assert await _search(kb, 'evil') == []  # scripts are not text
    assert (await _search(kb, 'invoices paid'))[0] == 'd.pdf'
    assert (await _search(kb, 'Eve budget'))[0] == 'e.json'
    assert (await _search(kb, 'Guarda'))[0] == 'f.csv'
    passages = await Bm25Retriever([kb]).search('invoices', 1)
    assert passages[0].title == 'Delta terms' and passages[0].page == 1
    assert (await Bm25Retriever([kb]).search('Gamma rays', 1))[0].title == 'Gamma page'


def test_markdown_chunks_follow_headings_and_keep_code_fences_whole() -> None:
    text = '# Guide\n\nIntro.\n\n## Install\n\n```sh\nuv sync\n\nuv run tandem\n```\n\nSetext\n------\n\nUnder it.'
    parsed = parse_document(text.encode(), name='g.md', kind='markdown')
    assert parsed.title == 'Guide'
    assert [(block.heading, block.text) for block in parsed.blocks] == [
        ('Guide', 'Intro.'),
        ('Guide > Install', '```sh\nuv sync\n\nuv run tandem\n```'),
        ('Guide > Setext', 'Under it.'),
    ]


def test_chunks_are_token_sized_with_overlap_and_a_csv_header_on_each() -> None:
    counter = token_counter()
    sentences = [f'Sentence number {n} talks about subject {n} in some detail.' for n in range(200)]
    blocks = [Block(' '.join(sentences[n : n + 5]), 'Doc > Part') for n in range(0, 200, 5)]
    chunks = chunk_blocks(blocks, counter, size=100, overlap=20)

    assert len(chunks) > 5
    assert all(len(counter.encode(chunk.text)) <= 100 + 2 for chunk in chunks)
    assert all(chunk.heading == 'Doc > Part' for chunk in chunks)
    for before, after in itertools.pairwise(chunks):
        tail = before.text[-40:]
        assert tail in after.text, 'each chunk starts with the end of the previous one'

    giant = Block('word ' * 1000)
    pieces = chunk_blocks([giant], counter, size=64, overlap=8)
    assert len(pieces) > 10 and all(len(counter.encode(p.text)) <= 66 for p in pieces)

    rows = [Block(f'row{n}, value{n}', separator='\n') for n in range(100)]
    csv_chunks = chunk_blocks(rows, counter, size=48, overlap=0, prefix='name, value')
    assert len(csv_chunks) > 3 and all(chunk.text.startswith('name, value\n') for chunk in csv_chunks)


def test_new_sections_start_new_chunks_unless_the_chunk_is_tiny() -> None:
    counter = token_counter()
    body = 'This section has enough text to stand alone as its own chunk of the document. ' * 3
    blocks = [Block(body, 'A'), Block(body, 'B'), Block('Tiny.', 'C'), Block('Also tiny.', 'D')]
    chunks = chunk_blocks(blocks, counter, size=200, overlap=10)
    assert [chunk.heading for chunk in chunks] == ['A', 'B', 'C']
    assert chunks[2].text == 'Tiny.\n\n## D\n\nAlso tiny.'


# --- globs -----------------------------------------------------------------------------------------


async def test_include_and_exclude_globs(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = write_tree(
        tmp_path / 'docs',
        {
            'keep.md': 'kept markdown',
            'drafts/draft.md': 'draft words',
            'notes/todo.txt': 'todo words',
            'logs/app.log': 'log words',
            '.hidden/secret.md': 'hidden words',
            'node_modules/pkg/readme.md': 'vendored words',
        },
    )
    report = (await _ingest(kb, docs, exclude=['drafts'])).report
    assert report.added == 2
    assert await _search(kb, 'draft') == [] and await _search(kb, 'hidden') == []
    assert await _search(kb, 'vendored') == [] and await _search(kb, 'log') == []

    other = KnowledgeBase(kb.redis, tenant='acme', name='logs')
    report = (await _ingest(other, docs, include=['*.log', 'notes/*'])).report
    assert report.added == 2  # an explicitly included .log is read as text
    assert sorted(await _search(other, 'words', 5)) == ['app.log', 'todo.txt']


async def test_files_without_an_extension_are_read_when_they_are_text_and_other_types_are_counted(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    docs = write_tree(
        tmp_path / 'docs',
        {
            'guide.md': 'guide words',
            'LICENSE': 'Permission is hereby granted, free of charge, to any person obtaining a copy.',
            'debian/copyright': 'Copyright 2024 Ada Lovelace. Licensed under the Apache licence.',
            'README': 'Café au lait: the readme speaks UTF-8.',
            'blob': b'\x7fELF\x02\x01\x01\x00\x00\x00',
            'main.py': 'print(1)',
            'logo.png': b'\x89PNG',
            'icon.png': b'\x89PNG',
        },
    )
    report = (await _ingest(kb, docs)).report

    assert report.added == 4
    assert (await _search(kb, 'permission granted charge'))[0] == 'LICENSE'
    assert (await _search(kb, 'Lovelace'))[0] == 'copyright'
    assert report.unsupported == {'.png': 2, '.py': 1, '(no extension)': 1}
    assert report.skipped_total == 4 and report.skipped == []  # counted by type, not listed one by one
    assert report.include_hint() == (
        "4 files of unsupported types (.png 2, .py 1, (no extension) 1): add --include '*.png' to read such files as text."
    )


async def test_relative_links_in_a_local_html_file_are_dropped_and_absolute_ones_kept(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    page = (
        '<html><body><h1>Chapter 1</h1><p>Read the <a href="ch2.html">next chapter</a>, '
        'the <a href="../index.html#top">contents</a> or <a href="https://example.org/errata">the errata</a>.</p>'
        '</body></html>'
    )
    docs = write_tree(tmp_path / 'book', {'ch1.html': page})
    await _ingest(kb, docs)

    text = (await Bm25Retriever([kb]).search('next chapter', 1))[0].text
    assert 'localhost' not in text and 'ch2.html' not in text and 'index.html' not in text
    assert 'Read the next chapter, the contents or [the errata](https://example.org/errata).' in text


async def test_a_file_reached_twice_through_a_symlink_is_read_once_and_reported_as_a_duplicate(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    docs = write_tree(tmp_path / 'docs', {'guide.md': 'the guide', 'other.md': 'other words'})
    (docs / 'alias.md').symlink_to(docs / 'guide.md')

    first = (await _ingest(kb, docs)).report
    assert (first.added, first.unchanged, first.duplicates) == (2, 0, 1)
    assert first.sources['duplicate'] == [f'{docs / "guide.md"}']  # 'alias.md' sorts first, so it was read
    again = (await _ingest(kb, docs, docs / 'alias.md')).report
    assert (again.added, again.unchanged, again.duplicates) == (0, 2, 2)
    assert f'{docs / "alias.md"} → {docs / "guide.md"}' in again.sources['duplicate']


# --- bad input -------------------------------------------------------------------------------------


async def test_binary_encrypted_unreadable_oversized_and_empty_files_are_skipped_with_reasons(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    docs = write_tree(
        tmp_path / 'docs',
        {
            'good.md': 'good words',
            'binary.txt': b'\x00\x01\x02\x03 not text',
            'locked.pdf': make_pdf(['secret'], password='pw'),
            'broken.pdf': b'%PDF-1.4\nthis is not a pdf',
            'scan.pdf': make_pdf(['']),
            'empty.md': '   \n\n  ',
            'huge.txt': 'x' * 5000,
            'unreadable.txt': 'no permission',
        },
    )
    os.chmod(docs / 'unreadable.txt', 0)
    try:
        report = (await _ingest(kb, docs, max_file_bytes=4000)).report
    finally:
        os.chmod(docs / 'unreadable.txt', 0o644)

    reasons = {Path(item.source).name: item.reason for item in report.skipped}
    assert report.added == (2 if os.geteuid() == 0 else 1)  # root reads anything
    assert reasons['binary.txt'] == 'binary file'
    assert reasons['locked.pdf'] == 'encrypted PDF (it needs a password)'
    assert reasons['broken.pdf'].startswith('unreadable PDF')
    assert reasons['scan.pdf'] == 'PDF without extractable text (scanned images?)'
    assert reasons['empty.md'] == 'no text'
    assert reasons['huge.txt'].startswith('too large')
    if os.geteuid() != 0:
        assert reasons['unreadable.txt'].startswith('cannot read')
    assert report.missing_targets == []


async def test_missing_targets_are_reported(kb: KnowledgeBase, tmp_path: Path) -> None:
    report = (await _ingest(kb, tmp_path / 'nope.md')).report
    assert report.missing_targets == [str(tmp_path / 'nope.md')]
    assert report.skipped[0].reason == 'not found'


# --- interruption ----------------------------------------------------------------------------------


async def test_cancelling_mid_ingest_leaves_every_document_whole(
    kb: KnowledgeBase, redis: Redis, tmp_path: Path
) -> None:
    docs = write_tree(
        tmp_path / 'docs',
        {f'doc{n:03}.md': f'# Doc {n}\n\n' + f'Paragraph of document {n}. ' * 80 for n in range(120)},
    )
    ingestor = Ingestor(kb, options=IngestOptions(chunk_tokens=64, chunk_overlap=8, batch_files=8))
    written = asyncio.Event()

    def progress(event: IngestProgress) -> None:
        if event.chunks > 100:
            written.set()

    task = asyncio.ensure_future(ingestor.ingest([str(docs)], on_progress=progress))
    await asyncio.wait_for(written.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stored = await _check_whole(kb, redis)
    assert ingestor.report.interrupted
    assert 0 < stored < 120
    assert ingestor.report.added == stored  # the report matches what is stored
    report = (await _ingest(kb, docs, chunk_tokens=64, chunk_overlap=8)).report  # running again finishes
    assert (report.added, report.unchanged) == (120 - stored, stored)
    assert await _check_whole(kb, redis) == 120


async def test_a_keyboard_interrupt_between_documents_leaves_each_fully_in_or_out(
    kb: KnowledgeBase, redis: Redis, tmp_path: Path
) -> None:
    docs = write_tree(tmp_path / 'docs', {f'doc{n:02}.txt': f'Document {n} ' * 300 for n in range(40)})
    ingestor = Ingestor(kb, options=IngestOptions(chunk_tokens=64, chunk_overlap=8, batch_files=4))

    def progress(event: IngestProgress) -> None:
        if event.files_done == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await ingestor.ingest([str(docs)], on_progress=progress)

    assert await _check_whole(kb, redis) == 12  # three whole batches; the fourth never started writing
    assert ingestor.report.interrupted


# --- scale -----------------------------------------------------------------------------------------


async def _peak_memory(kb: KnowledgeBase, docs: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        report = (await _ingest(kb, docs)).report
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return report.added, peak


def _tiny_files(root: Path, count: int) -> Path:
    root.mkdir(parents=True)
    for n in range(count):
        folder = root / f'part{n // 500:02}'
        folder.mkdir(exist_ok=True)
        (folder / f'note{n:05}.txt').write_text(f'Note {n}: the code word for this note is word{n}. ' * 4)
    return root


async def test_a_thousand_file_folder_ingests_with_bounded_memory(redis: Redis, tmp_path: Path) -> None:
    small = KnowledgeBase(redis, tenant='acme', name='small')
    large = KnowledgeBase(redis, tenant='acme', name='large')
    added_small, peak_small = await _peak_memory(small, _tiny_files(tmp_path / 'small', 100))
    added_large, peak_large = await _peak_memory(large, _tiny_files(tmp_path / 'large', 1000))

    assert (added_small, added_large) == (100, 1000)
    # Ten times the files, not ten times the memory: batches are processed and let go.
    assert peak_large < 2 * peak_small + 1_000_000, (peak_small, peak_large)
    assert (await _search(large, 'word777'))[0] == 'note00777.txt'


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get('TANDEM_SLOW_TESTS'), reason='10,000 files take about 20 s; set TANDEM_SLOW_TESTS=1 to run it'
)
async def test_a_ten_thousand_file_folder_ingests_with_bounded_memory(redis: Redis, tmp_path: Path) -> None:
    small = KnowledgeBase(redis, tenant='acme', name='small')
    large = KnowledgeBase(redis, tenant='acme', name='large')
    _, peak_small = await _peak_memory(small, _tiny_files(tmp_path / 'small', 1000))
    added, peak_large = await _peak_memory(large, _tiny_files(tmp_path / 'large', 10_000))
    assert added == 10_000
    assert peak_large < 2 * peak_small + 2_000_000, (peak_small, peak_large)


# --- URLs, uploads, pruning ------------------------------------------------------------------------


async def test_urls_are_fetched_safely_and_ingested(kb: KnowledgeBase, tmp_path: Path) -> None:
    page = '<html><head><title>Release notes</title></head><body><h2>v2</h2><p>Adds zebra mode.</p></body></html>'
    with LoopbackHTTPServer({'/notes': html_reply(page), '/plain': text_reply('Plain words about yaks.')}) as server:
        blocked = (await _ingest(kb, server.url('/notes'))).report
        assert blocked.added == 0 and 'private' in blocked.skipped[0].reason  # loopback is not public
        assert 'add its host to web.allowed_hosts' in blocked.skipped[0].reason

        report = (await _ingest(kb, server.url('/notes'), server.url('/plain'), allowed_hosts=['127.0.0.1'])).report
        assert report.added == 2
        passage = (await Bm25Retriever([kb]).search('zebra mode', 1))[0]
        assert passage.source == server.url('/notes') and passage.title == 'Release notes'
        assert passage.heading == 'Release notes > v2'
        assert (await _ingest(kb, server.url('/plain'), allowed_hosts=['127.0.0.1'])).report.unchanged == 1


async def test_uploaded_bytes_are_ingested_under_their_source(kb: KnowledgeBase) -> None:
    report = await Ingestor(kb).ingest_bytes('upload:report.pdf', make_pdf(['Quarterly revenue grew.']))
    assert report.added == 1
    passage = (await Bm25Retriever([kb]).search('revenue', 1))[0]
    assert passage.source == 'upload:report.pdf' and passage.page == 1
    assert (await Ingestor(kb).ingest_bytes('upload:report.pdf', make_pdf(['Quarterly revenue grew.']))).unchanged == 1


async def test_prune_removes_documents_whose_files_are_gone(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = write_tree(tmp_path / 'docs', {'a.md': 'apples', 'b.md': 'bananas'})
    await _ingest(kb, docs)
    (docs / 'b.md').unlink()
    assert (await _ingest(kb, docs)).report.removed == 0  # only with prune
    report = (await _ingest(kb, docs, prune=True)).report
    assert (report.unchanged, report.removed) == (1, 1)
    assert await _search(kb, 'bananas') == []


async def _ingest(kb: KnowledgeBase, *targets: Path | str, **options: object) -> Ingestor:
    ingestor = Ingestor(kb, options=IngestOptions(**options))  # type: ignore[arg-type]
    await ingestor.ingest([str(target) for target in targets])
    return ingestor
