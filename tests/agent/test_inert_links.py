"""No zero-click leaks, at the runtime every front end shares: in a tainted turn the answer's URLs to
hosts the user never named are inert, streamed or not, and the stored history holds the text as sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset
from redis.asyncio import Redis

from tandem.agent.core.events import TextDelta, TurnEvent
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.run import run_turn
from tandem.tools.registry import SIDE_EFFECT_KEY, UNTRUSTED_OUTPUT_KEY, ToolsetPlugin
from tandem.tools.web import make_web_toolset
from tests.support.deps import make_deps
from tests.support.loopback_http import LoopbackHTTPServer, html_reply, text_reply
from tests.support.planted import CANARY_PATHS, SECRET, planted_page, steered_model
from tests.support.search import duckduckgo_page


def _deps(redis: Redis, tmp_path: Path, model: FunctionModel, notes: LoopbackHTTPServer, **settings: Any) -> Deps:
    web = ToolsetPlugin(name='web', description='web', build=make_web_toolset)
    return make_deps(
        redis, model, home=tmp_path, tools=(), plugins=[web], web={'allowed_hosts': [notes.netloc]}, **settings
    )


def _assert_inert(answer: str, canary: LoopbackHTTPServer) -> None:
    assert SECRET not in answer
    assert canary.netloc not in answer.replace(f'`{canary.netloc}/', '')  # only inside the inert quotes
    for path in CANARY_PATHS:
        assert f'{canary.netloc}{path}`' in answer  # each still shows where it pointed


async def test_a_fetched_page_cannot_plant_a_live_url_in_the_answer(
    redis: Redis, tmp_path: Path, notes: LoopbackHTTPServer, canary: LoopbackHTTPServer
) -> None:
    page = notes.url('/notes')
    deps = _deps(redis, tmp_path, steered_model(page), notes)

    result = await run_turn(deps, f'My PIN is {SECRET}. Fetch {page} and tell me what it says.')

    _assert_inert(result.answer, canary)
    assert result.answer.startswith(f'Here are the notes from [your page]({page}).')  # the user named it: live
    assert '\\[image removed: `' in result.answer and '\\[link removed: `' in result.answer
    stored = await deps.conversations.load_owned('s1', user='alice')
    assert stored is not None
    assert stored.messages[-1].parts == [TextPart(result.answer)]  # the history holds the text as sent


async def test_streamed_the_same_text_arrives_and_no_piece_shows_a_half_construct(
    redis: Redis, tmp_path: Path, notes: LoopbackHTTPServer, canary: LoopbackHTTPServer
) -> None:
    page = notes.url('/notes')
    deps = _deps(redis, tmp_path, steered_model(page), notes)
    pieces: list[str] = []

    def sink(event: TurnEvent) -> None:
        if isinstance(event, TextDelta):
            pieces.append(event.text)

    result = await run_turn(deps, f'My PIN is {SECRET}. Fetch {page} and tell me what it says.', on_event=sink)

    assert ''.join(pieces) == result.answer
    _assert_inert(result.answer, canary)
    shown = ''
    for piece in pieces:
        shown += piece
        assert 'http://127.0.0.1' not in shown.split(page, 1)[-1]  # no piece ever showed the canary's address
    assert len(pieces) > 10  # still streamed, in many pieces


async def test_an_untainted_turn_is_left_as_the_model_wrote_it(redis: Redis, tmp_path: Path) -> None:
    answer = '![chart](https://charts.example/pie.png?d=1) and <img src="https://img.example/x.png">'

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(answer)])

    deps = make_deps(redis, FunctionModel(respond), home=tmp_path, tools=())

    assert (await run_turn(deps, 'draw me a chart')).answer == answer


@pytest.mark.parametrize(
    ('security', 'live'),
    [({'output_urls': 'allow'}, True), ({'url_allowlist': ['127.0.0.1']}, True), ({}, False)],
    ids=['allow', 'allowlisted-host', 'default'],
)
async def test_the_security_settings_keep_urls_live(
    redis: Redis,
    tmp_path: Path,
    notes: LoopbackHTTPServer,
    canary: LoopbackHTTPServer,
    security: dict[str, object],
    live: bool,
) -> None:
    page = notes.url('/notes')
    deps = _deps(redis, tmp_path, steered_model(page), notes, security=security)

    result = await run_turn(deps, f'Fetch {page}.')

    assert (canary.url('/inline.png') in result.answer) is live


def _ticket_plugin(page: str, **metadata: object) -> ToolsetPlugin:
    """A third-party tool that returns an outside party's text: a ticket the attacker wrote."""

    def build() -> FunctionToolset[Any]:
        toolset: FunctionToolset[Any] = FunctionToolset()

        async def web_fetch(url: str) -> str:  # named as the steered model calls it
            """Read a ticket."""
            return page

        toolset.add_function(web_fetch, metadata={SIDE_EFFECT_KEY: False, **metadata})
        return toolset

    return ToolsetPlugin(name='tickets', description='tickets', build=build)


@pytest.mark.parametrize(('declared', 'inert'), [(True, True), (None, False)], ids=['untrusted', 'undeclared'])
async def test_a_plugin_that_declares_its_results_untrusted_taints_the_turn(
    redis: Redis, tmp_path: Path, declared: bool | None, inert: bool
) -> None:
    metadata = {} if declared is None else {UNTRUSTED_OUTPUT_KEY: declared}
    plugin = _ticket_plugin(planted_page('https://attacker.example'), **metadata)
    deps = make_deps(redis, steered_model('ticket-7'), home=tmp_path, tools=(), plugins=[plugin])

    result = await run_turn(deps, 'What does ticket-7 say?')

    assert (SECRET not in result.answer) is inert
    assert ('\\[image removed: `attacker.example/inline.png`\\]' in result.answer) is inert


async def test_a_search_then_read_answer_keeps_the_links_nobody_could_have_planted(
    redis: Redis, tmp_path: Path, canary: LoopbackHTTPServer
) -> None:
    guide = 'https://tea.example/guide'
    with LoopbackHTTPServer({'/article': text_reply('Brew green tea at 80 °C.')}) as site:
        article = site.url('/article')
        with LoopbackHTTPServer({'/html/': html_reply(duckduckgo_page(('Tea', article, 'Brewing.')))}) as ddg:
            steps = iter(
                [ToolCallPart('web_search', {'query': 'green tea'}), ToolCallPart('web_fetch', {'url': article})]
            )
            answer = (
                f'Brew at 80 °C, says [the article]({article}), as [your guide]({guide}) does.\n\n'
                f'![cup](https://tea.example/cup.png) ![article]({article}) ![tracker]({canary.url("/t.png")})'
            )

            def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
                return ModelResponse(parts=[next(steps, TextPart(answer))])

            web = ToolsetPlugin(
                name='web', description='web', build=lambda: make_web_toolset(search_url=ddg.url('/html/'))
            )
            deps = make_deps(
                redis,
                FunctionModel(respond),
                home=tmp_path,
                tools=(),
                plugins=[web],
                web={'allowed_hosts': [site.netloc]},
            )

            result = await run_turn(deps, f'How hot should green tea be? My guide is {guide}.')

    assert [record.name for record in result.tool_calls] == ['web_search', 'web_fetch']
    assert result.answer == (
        f'Brew at 80 °C, says [the article]({article}), as [your guide]({guide}) does.\n\n'  # both live
        '![cup](https://tea.example/cup.png) '  # on the host the user named: live
        f'\\[image removed: `{site.netloc}/article`\\] '  # a search result stays live as a link, not as an image
        f'\\[image removed: `{canary.netloc}/t.png`\\]'
    )
