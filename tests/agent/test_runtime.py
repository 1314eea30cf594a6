"""The turn loop: FunctionModel at the model boundary, everything else real (Redis, store, tools)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from dirty_equals import IsFloat, IsStr
from inline_snapshot import snapshot
from pydantic_ai import FunctionToolset, ModelRetry
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, SystemPromptPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis

from tandem.agent.cli.transcript import render_transcript
from tandem.agent.core.config import Settings
from tandem.agent.core.errors import TandemError
from tandem.agent.core.events import TextDelta, ToolCallFinished, ToolCallStarted, TurnEvent
from tandem.agent.turn.build import build_deps
from tandem.agent.turn.request import TurnRequest
from tandem.agent.turn.run import run_turn
from tandem.memory.conversations import RedisConversationStore, SessionNotFoundError
from tandem.tools.registry import SIDE_EFFECT_KEY, ToolsetPlugin
from tests.support.deps import make_deps, scripted_backbone
from tests.support.scripted import call, scripted_model


async def test_a_tool_call_then_an_answer_is_run_and_saved(redis: Redis, tmp_path: Path) -> None:
    model, script = scripted_model(call('calculate', expression='6*7'), 'It is 42.')
    deps = make_deps(redis, model, home=tmp_path)

    result = await run_turn(deps, 'What is 6 times 7?')

    assert result.answer == 'It is 42.'
    assert [(c.name, c.args, c.ok, c.result) for c in result.tool_calls] == [
        ('calculate', {'expression': '6*7'}, True, '42')
    ]
    assert result.usage.requests == 2
    assert result.usage.tool_calls == 1
    assert result.prompt == 'assistant@1'
    stored = await deps.conversations.export_messages('s1')
    assert list(render_transcript(stored)) == snapshot(
        [
            'you: What is 6 times 7?',
            '  → calculate({"expression":"6*7"})',
            '  ← calculate: 42',
            'assistant: It is 42.',
        ]
    )
    # The model was given the rendered instructions and both built-in tools.
    _, info = script.seen[0]
    assert info.instructions is not None and 'calculate' in info.instructions
    assert sorted(tool.name for tool in info.function_tools) == ['calculate', 'now']


async def test_the_next_turn_sees_the_stored_history(redis: Redis, tmp_path: Path) -> None:
    model, script = scripted_model('Noted: teal.', 'Your favourite colour is teal.')
    deps = make_deps(redis, model, home=tmp_path)
    await run_turn(deps, 'My favourite colour is teal.')

    second = await run_turn(make_deps(redis, model, home=tmp_path), 'What is my favourite colour?')

    messages, _ = script.seen[1]
    assert list(render_transcript(messages)) == [
        'you: My favourite colour is teal.',
        'assistant: Noted: teal.',
        'you: What is my favourite colour?',
    ]
    assert second.answer == 'Your favourite colour is teal.'
    assert len(await deps.conversations.export_messages('s1')) == 4


async def test_events_stream_tool_calls_then_text(redis: Redis, tmp_path: Path) -> None:
    model, _ = scripted_model(call('calculate', expression='2**10'), 'The answer is 1024.')
    deps = make_deps(redis, model, home=tmp_path)
    events: list[TurnEvent] = []

    result = await run_turn(deps, 'What is 2 to the 10th?', on_event=events.append)

    tool_events = [(type(e), asdict(e)) for e in events if not isinstance(e, TextDelta)]
    assert tool_events == [
        (ToolCallStarted, {'call_id': IsStr(), 'name': 'calculate', 'args': {'expression': '2**10'}}),
        (
            ToolCallFinished,
            {'call_id': IsStr(), 'name': 'calculate', 'duration_s': IsFloat(ge=0), 'ok': True, 'result': '1024'},
        ),
    ]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1, 'the answer should arrive in several pieces'
    assert ''.join(deltas) == result.answer == 'The answer is 1024.'


async def test_a_failing_tool_reaches_the_model_and_the_turn_goes_on(redis: Redis, tmp_path: Path) -> None:
    model, script = scripted_model(call('calculate', expression='__import__("os")'), 'I cannot do that.')
    deps = make_deps(redis, model, home=tmp_path)

    result = await run_turn(deps, 'import os please')

    assert result.answer == 'I cannot do that.'
    assert [c.ok for c in result.tool_calls] == [False]
    retry_messages, _ = script.seen[1]
    assert list(render_transcript(retry_messages))[-1].startswith(
        "  ← calculate: retried: Unknown function '__import__'"
    )


async def test_a_cancelled_turn_saves_nothing(redis: Redis, tmp_path: Path) -> None:
    model, _ = scripted_model('First answer.')
    deps = make_deps(redis, model, home=tmp_path)
    await run_turn(deps, 'first')
    entered = asyncio.Event()

    async def hang(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        entered.set()
        await asyncio.sleep(3600)
        raise AssertionError('the turn should have been cancelled')

    deps = make_deps(redis, FunctionModel(hang), home=tmp_path)
    task = asyncio.ensure_future(run_turn(deps, 'second'))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    stored = await deps.conversations.export_messages('s1')
    assert list(render_transcript(stored)) == ['you: first', 'assistant: First answer.']


async def test_hitting_the_usage_limit_stops_the_turn_clearly_and_saves_nothing(redis: Redis, tmp_path: Path) -> None:
    model, _ = scripted_model(*[call('calculate', expression='1+1')] * 10)
    deps = make_deps(redis, model, home=tmp_path, limits={'requests': 3})

    with pytest.raises(TandemError) as caught:
        await run_turn(deps, 'loop forever')

    assert 'request_limit of 3' in str(caught.value)
    assert 'tandem.toml' in str(caught.value)
    assert await deps.conversations.read_record('s1') is None


async def test_instructions_are_not_stored_as_history(redis: Redis, tmp_path: Path) -> None:
    model, _ = scripted_model('hi')
    deps = make_deps(redis, model, home=tmp_path)
    await run_turn(deps, 'hello')

    stored = await deps.conversations.export_messages('s1')
    first = stored[0]
    assert isinstance(first, ModelRequest)
    assert not any(isinstance(part, SystemPromptPart) for part in first.parts)
    assert first.instructions is not None and 'Tandem' in first.instructions


def _retry_plugin(calls: list[str]) -> ToolsetPlugin:
    def build() -> FunctionToolset[Any]:
        toolset = FunctionToolset[Any](id='flaky')

        @toolset.tool_plain(metadata={SIDE_EFFECT_KEY: False})
        def flaky() -> str:  # pyright: ignore[reportUnusedFunction]
            """Always asks the model to try again."""
            calls.append('flaky')
            raise ModelRetry('try again')

        return toolset

    return ToolsetPlugin(name='flaky', description='always retries', build=build)


@pytest.mark.parametrize('order', [(1, 3), (3, 1)])
async def test_each_turn_runs_with_its_own_tool_retries(redis: Redis, tmp_path: Path, order: tuple[int, int]) -> None:
    def always_flaky(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart('flaky', {})])

    calls: list[str] = []
    plugin = _retry_plugin(calls)
    counted: dict[int, int] = {}
    for retries in order:
        calls.clear()
        deps = make_deps(
            redis,
            FunctionModel(always_flaky),
            home=tmp_path,
            session=f'retries-{retries}',
            tools=(),
            plugins=[plugin],
            limits={'tool_retries': retries},
        )
        with pytest.raises(TandemError, match='misbehaved'):
            await run_turn(deps, 'go')
        counted[retries] = len(calls)

    # The first call, then one per retry: the settings of one turn never leak into the next.
    assert counted == {1: 2, 3: 4}


async def test_another_users_session_is_refused_as_not_found_before_the_model_runs(
    redis: Redis, tmp_path: Path
) -> None:
    model, script = scripted_model('Mine.', 'Never sent.')
    await run_turn(make_deps(redis, model, home=tmp_path, user='alice'), 'Private note.')

    with pytest.raises(SessionNotFoundError, match="session 's1' belongs to another user"):
        await run_turn(make_deps(redis, model, home=tmp_path, user='bob'), 'Let me in.')

    assert len(script.seen) == 1


async def test_deps_refuse_a_conversation_store_of_another_tenant(tmp_path: Path, redis: Redis) -> None:
    model, _ = scripted_model('unused')
    with pytest.raises(ValueError, match="store is for tenant 'other', the turn for 'acme'"):
        await build_deps(
            Settings(home=tmp_path),
            redis,
            TurnRequest('hello', tenant='acme'),
            backbone=scripted_backbone(model),
            conversations=RedisConversationStore(redis, tenant='other'),
        )
