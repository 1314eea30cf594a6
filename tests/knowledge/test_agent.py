"""The knowledge base in a turn: the `search_knowledge` tool, automatic retrieval, citations, `/sources`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models.function import AgentInfo
from redis.asyncio import Redis

from tandem.agent.core.config import KnowledgeConfig, Settings
from tandem.agent.turn.build import build_deps
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.providers.knowledge import KnowledgeContextProvider, cited_numbers, sources_table
from tandem.agent.turn.request import TurnRequest
from tandem.agent.turn.run import run_turn
from tandem.memory.knowledge.ingest import Ingestor
from tandem.memory.knowledge.retrieval import Bm25Retriever, Retriever, build_retriever
from tandem.memory.knowledge.store import KnowledgeBase
from tandem.tools.knowledge import EMPTY_KB, plugin
from tests.knowledge.conftest import write_tree
from tests.support.deps import make_deps, scripted_backbone
from tests.support.fake_openai import FakeOpenAI, Reply, Text
from tests.support.repl import drive_repl
from tests.support.scripted import call, scripted_model

FAQ = 'Frequently asked questions.\n\nThe office is in Lisbon, next to the river.\n\nSupport answers within a day.'
GUIDE = '# Guide\n\n## Keys\n\nRevoke the old API key within 24 hours of deploying the new one.'


async def _fill(redis: Redis, tmp_path: Path, *, tenant: str = 'acme', name: str = 'default') -> Path:
    docs = write_tree(tmp_path / 'docs', {'faq.txt': FAQ, 'guide.md': GUIDE})
    await Ingestor(KnowledgeBase(redis, tenant=tenant, name=name)).ingest([str(docs)])
    return docs


def _deps(redis: Redis, model: Any, tmp_path: Path, **settings: Any) -> Deps:
    deps = make_deps(redis, model, home=tmp_path, tools=(), plugins=[plugin], **settings)
    retriever = build_retriever(deps.settings.knowledge, redis, tenant='acme', user='alice')
    return replace(deps, retriever=retriever, context_providers=(KnowledgeContextProvider(),))


def _tool_results(messages: list[ModelMessage]) -> list[str]:
    return [
        str(part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]


async def test_the_model_searches_the_knowledge_base_and_cites_the_passage(redis: Redis, tmp_path: Path) -> None:
    docs = await _fill(redis, tmp_path)

    def answer(messages: list[ModelMessage], info: AgentInfo) -> str:
        result = _tool_results(messages)[-1]
        number = result.split('] ', 1)[0].rsplit('[', 1)[-1]  # the number the tool gave the passage
        return f'The office is in Lisbon [{number}].'

    model, script = scripted_model(call('search_knowledge', query='where is the office', k=2), answer)
    deps = _deps(redis, model, tmp_path)

    result = await run_turn(deps, 'Where is our office?')

    assert result.answer == 'The office is in Lisbon [1].'
    returned = _tool_results(script.seen[1][0])[0]
    assert returned.startswith('<untrusted source="search_knowledge" query="where is the office">\n[1] faq.txt')
    assert 'The office is in Lisbon' in returned and returned.endswith('with the numbers above.')
    assert deps.turn.tainted  # documents are untrusted: side-effect tools now need approval
    citation = result.citations[1]
    assert citation.source == str((docs / 'faq.txt').resolve()) and citation.kb == 'default'
    assert 'Lisbon' in citation.snippet
    assert cited_numbers(result.answer) == [1]
    headline, table = sources_table(result.citations, result.answer)
    assert headline.startswith('The last answer cites 1 of the')
    assert table is not None and table.row_count == 1
    tool = next(tool for tool in script.seen[0][1].function_tools if tool.name == 'search_knowledge')
    assert tool.metadata == {'side_effect': False}


async def test_citation_numbers_continue_across_calls_and_repeat_for_the_same_passage(
    redis: Redis, tmp_path: Path
) -> None:
    await _fill(redis, tmp_path)
    model, script = scripted_model(
        call('search_knowledge', query='office Lisbon', k=1),
        call('search_knowledge', query='revoke API key', k=1),
        call('search_knowledge', query='office Lisbon', k=1),
        'Done [1][2].',
    )
    deps = _deps(redis, model, tmp_path)
    result = await run_turn(deps, 'Tell me things.')

    results = _tool_results(script.seen[3][0])
    assert '[1] faq.txt' in results[0] and '[2] Guide' in results[1] and '[1] faq.txt' in results[2]
    assert sorted(result.citations) == [1, 2]


async def test_an_empty_or_missing_knowledge_base_gives_a_clear_tool_result(redis: Redis, tmp_path: Path) -> None:
    model, script = scripted_model(call('search_knowledge', query='anything at all'), 'Nothing found.')
    deps = _deps(redis, model, tmp_path)

    result = await run_turn(deps, 'Search my documents.')

    assert _tool_results(script.seen[1][0]) == [EMPTY_KB]
    assert not deps.turn.tainted and result.citations == {}


async def test_no_match_and_bad_arguments(redis: Redis, tmp_path: Path) -> None:
    await _fill(redis, tmp_path)
    model, script = scripted_model(
        call('search_knowledge', query='xylophone quartet'),
        call('search_knowledge', query='office', k=99),
        'ok',
    )
    deps = _deps(redis, model, tmp_path)
    await run_turn(deps, 'Search.')
    results = _tool_results(script.seen[2][0])
    assert results[0].startswith('search_knowledge: no passage matches "xylophone quartet"')
    assert 'k must be between 1 and 20' in results[1]  # the model is told how to call it right


async def test_with_retrieval_off_the_tool_is_not_offered(redis: Redis, tmp_path: Path) -> None:
    model, script = scripted_model('Fine.')
    deps = replace(_deps(redis, model, tmp_path, retrieval='off'), retriever=None)
    await run_turn(deps, 'Hi')
    assert [tool.name for tool in script.seen[0][1].function_tools] == []


async def test_automatic_retrieval_puts_cited_passages_in_the_prompt(redis: Redis, tmp_path: Path) -> None:
    await _fill(redis, tmp_path)
    model, script = scripted_model('The office is in Lisbon [1].')
    deps = _deps(redis, model, tmp_path, retrieval='auto')

    result = await run_turn(deps, 'where is the office?')

    instructions = script.seen[0][1].instructions or ''
    assert 'Passages retrieved for this question' in instructions
    assert '<untrusted source="retrieval">\n[1] faq.txt' in instructions
    assert deps.turn.tainted and result.citations[1].snippet.startswith('Frequently asked questions.')
    assert cited_numbers(result.answer) == [1]


async def test_automatic_retrieval_stays_out_of_tool_mode_and_of_empty_results(redis: Redis, tmp_path: Path) -> None:
    await _fill(redis, tmp_path)
    for settings, text in (({'retrieval': 'tool'}, 'where is the office?'), ({'retrieval': 'auto'}, 'zzz qqq')):
        model, script = scripted_model('ok')
        deps = _deps(redis, model, tmp_path, **settings)
        await run_turn(deps, text)
        assert 'Passages retrieved' not in (script.seen[0][1].instructions or '')
        assert deps.turn.citations == {}


async def test_build_deps_wires_the_retriever_and_the_provider(
    redis: Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path, redis_url=redis_url)  # type: ignore[arg-type]
    backbone = scripted_backbone(scripted_model('ok')[0])

    async def build(**changes: Any) -> Deps:
        changed = settings.model_copy(update=changes)
        return await build_deps(changed, redis, TurnRequest(tools=[]), session='s1', backbone=backbone)

    deps = await build()
    assert isinstance(deps.retriever, Retriever) and deps.retriever.name == 'bm25'
    assert any(isinstance(provider, KnowledgeContextProvider) for provider in deps.context_providers)
    assert (await build(retrieval='off')).retriever is None
    # Embeddings that can't work (no API key here) fall back to BM25 rather than stopping the chat.
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    fallback = await build(knowledge=KnowledgeConfig(embeddings='openai:text-embedding-3-small'))
    assert isinstance(fallback.retriever, Bm25Retriever)


# --- /sources in the REPL --------------------------------------------------------------------------


def _answer_from_prompt(body: dict[str, Any]) -> Reply:
    system = ' '.join(str(message.get('content')) for message in body['messages'] if message['role'] != 'user')
    if '[1] faq.txt' in system:
        return Text('The office is in Lisbon [1].')
    return Text('I do not know.')


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(_answer_from_prompt, models=['base-model']) as fake:
        yield fake


async def test_sources_shows_what_the_last_answer_cited(
    redis: Redis, redis_url: str, tmp_path: Path, server: FakeOpenAI
) -> None:
    docs = await _fill(redis, tmp_path, tenant='default')
    settings = Settings(
        home=tmp_path / 'home',
        redis_url=redis_url,  # type: ignore[arg-type]
        backbones={'base': {'model': 'openai-chat:base-model', 'base_url': server.url}},  # type: ignore[dict-item]
        backbone='base',
        retrieval='auto',
        tools=[],
    )
    screen = await _drive(settings, ['/sources', 'where is the office?', '/sources'])

    first, _, rest = screen.partition('The office is in Lisbon [1].')
    assert 'The last answer used no passages from the knowledge base.' in first
    assert 'The last answer cites 1 of the' in rest
    assert str((docs / 'faq.txt').resolve()) in rest and 'Lisbon' in rest


async def _drive(settings: Settings, lines: list[str]) -> str:
    return await drive_repl(settings, lines, width=400)
