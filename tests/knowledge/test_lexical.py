"""BM25's analysis: stemming, titles and headings in the index, the documents' language, and KBs from before stemming."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.agent.core.config import KnowledgeConfig
from tandem.agent.core.errors import TandemError
from tandem.memory.knowledge.index import LEGACY_ANALYZER, Analyzer
from tandem.memory.knowledge.ingest import IngestOptions, Ingestor
from tandem.memory.knowledge.retrieval import Bm25Retriever
from tandem.memory.knowledge.store import ChunkData, KnowledgeBase
from tests.knowledge.conftest import write_tree


async def _names(kb: KnowledgeBase, query: str) -> list[str]:
    return [Path(passage.source).name for passage in await Bm25Retriever([kb]).search(query, 3)]


async def _ingest(kb: KnowledgeBase, docs: Path, **options: object) -> Ingestor:
    ingestor = Ingestor(kb, options=IngestOptions(**options))  # type: ignore[arg-type]
    await ingestor.ingest([str(docs)])
    return ingestor


async def test_a_word_matches_its_other_forms(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = write_tree(
        tmp_path / 'docs',
        {'law.md': 'The office granted two patents for running engines.', 'other.md': 'A pattern of pats.'},
    )
    await _ingest(kb, docs)
    assert await _names(kb, 'patent') == ['law.md']
    assert await _names(kb, 'engine runs') == ['law.md']


async def test_titles_and_section_headings_are_searched_with_the_text(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = write_tree(
        tmp_path / 'docs',
        {
            'a.md': '# Lighthouse keeping\n\n## Lamps\n\nTrim the wick at dusk.',
            'b.md': '# Gardening\n\nWater the roses at dusk.',
        },
    )
    await _ingest(kb, docs)
    assert await _names(kb, 'lighthouse') == ['a.md']  # only in the title
    assert await _names(kb, 'lamp') == ['a.md']  # only in a heading, stemmed


async def test_the_documents_language_decides_stop_words_and_stems(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = write_tree(tmp_path / 'docs', {'haus.md': 'Die Häuser der Stadt sind alt.'})
    await _ingest(kb, docs, language='german')
    state = await kb.state()
    assert state is not None and state.analyzer == 'bm25s-german-stem-v2'
    assert await _names(kb, 'Häusern') == ['haus.md']  # the KB's analyzer reads the query too
    assert await _names(kb, 'die der') == []  # German stop words

    again = await _ingest(kb, docs, language='english')
    assert again.report.updated == 1  # another analyzer re-indexes
    assert await _names(kb, 'Häuser') == ['haus.md']


async def test_a_knowledge_base_indexed_before_stemming_is_queried_as_it_was_indexed(kb: KnowledgeBase) -> None:
    record = kb.new_record(
        source='/old/notes.md', title='Notes', kind='markdown', content_hash='h', sig='old', chunks=[], size=1,
        previous=None,
    )  # fmt: skip
    text = 'Redis clusters keep running.'
    chunk = ChunkData(position=0, text=text, heading='', page=None, tokens=5, terms=LEGACY_ANALYZER.terms(text))
    record = kb.new_record(
        source=record.source, title=record.title, kind=record.kind, content_hash='h', sig='old', chunks=[chunk],
        size=1, previous=None,
    )  # fmt: skip
    await kb.put_document(record, [chunk], None)  # as 0.1 wrote it: unstemmed, no analyzer recorded

    state = await kb.state()
    assert state is not None and state.analyzer is None
    assert await _names(kb, 'clusters running') == ['notes.md']


def test_an_unknown_language_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"knowledge.language 'klingon' is not one of arabic, armenian"):
        KnowledgeConfig(language='klingon')
    assert KnowledgeConfig(language=' German ').language == 'german'


def test_an_analyzer_name_from_a_newer_tandem_is_refused_by_name() -> None:
    assert Analyzer.named('bm25s-french-stem-v2') == Analyzer('french')
    assert Analyzer.named(None) is LEGACY_ANALYZER
    with pytest.raises(TandemError, match='bm25s-english-stem-v3'):
        Analyzer.named('bm25s-english-stem-v3')
