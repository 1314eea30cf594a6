"""A failing or misused tool never crashes the turn: the model gets a clear tool error and goes on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pydantic_ai import RunContext
from pydantic_ai.toolsets import FunctionToolset
from redis.asyncio import Redis

from tandem.agent.cli.transcript import render_transcript
from tandem.agent.core.errors import TandemError
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.run import run_turn
from tandem.tools.registry import ToolsetPlugin
from tests.support.deps import make_deps
from tests.support.scripted import call, scripted_model


def _recording_plugin(ran: list[str], *, delay: float = 0.0) -> ToolsetPlugin:
    def build() -> FunctionToolset[Deps]:
        toolset: FunctionToolset[Deps] = FunctionToolset()

        @toolset.tool(metadata={'side_effect': True})
        async def store_value(ctx: RunContext[Deps], value: int) -> str:
            """Store an integer."""
            await asyncio.sleep(delay)
            ran.append(str(value))
            return 'stored'

        return toolset

    return ToolsetPlugin(name='recorder', description='records calls', build=build)


async def test_malformed_arguments_unknown_tools_and_huge_arguments_are_tool_errors(
    redis: Redis, tmp_path: Path
) -> None:
    ran: list[str] = []
    model, script = scripted_model(
        call('store_value', value='not a number'),
        call('store_value'),
        call('no_such_tool', x=1),
        call('store_value', value=1, padding='x' * 1_000_000),
        'Gave up politely.',
    )
    deps = make_deps(redis, model, home=tmp_path, tools=(), plugins=[_recording_plugin(ran)])

    result = await run_turn(deps, 'store something')

    assert result.answer == 'Gave up politely.'
    assert ran == [], 'the tool must never run on invalid arguments'
    replies = [list(render_transcript(messages))[-1] for messages, _ in script.seen[1:]]
    assert replies[0].startswith('  ← store_value: retried:') and 'valid integer' in replies[0]
    assert replies[1].startswith('  ← store_value: retried:') and 'Field required' in replies[1]
    assert replies[2].startswith('  ← no_such_tool: retried:') and "Unknown tool name: 'no_such_tool'" in replies[2]
    assert replies[3].startswith('  ← store_value: retried: The arguments to store_value are 1000')
    assert 'the limit is 65536' in replies[3]


async def test_a_slow_tool_times_out_and_its_side_effect_never_lands(redis: Redis, tmp_path: Path) -> None:
    ran: list[str] = []
    model, script = scripted_model(call('store_value', value=7), 'It timed out.')
    deps = make_deps(
        redis,
        model,
        home=tmp_path,
        tools=(),
        plugins=[_recording_plugin(ran, delay=1.0)],
        limits={'tool_timeout_seconds': 0.2},
    )

    result = await run_turn(deps, 'store 7')
    await asyncio.sleep(1.2)  # longer than the tool would have taken

    assert result.answer == 'It timed out.'
    assert ran == []
    timeout_reply = list(render_transcript(script.seen[1][0]))[-1]
    assert timeout_reply.startswith('  ← store_value: retried:') and 'timed out' in timeout_reply.lower()


def _sync_plugin(finished: list[float], *, side_effect: bool, seconds: float) -> ToolsetPlugin:
    def build() -> FunctionToolset[Deps]:
        toolset: FunctionToolset[Deps] = FunctionToolset()

        @toolset.tool_plain(metadata={'side_effect': side_effect})
        def crunch(n: int) -> str:
            """Crunch a number, slowly (a blocking call: it runs in a worker thread)."""
            time.sleep(seconds)
            finished.append(time.perf_counter())
            return f'crunched {n}'

        return toolset

    return ToolsetPlugin(name='cruncher', description='a slow sync tool', build=build)


async def test_a_slow_sync_tool_times_out_on_time_and_its_late_result_never_reaches_the_model(
    redis: Redis, tmp_path: Path
) -> None:
    finished: list[float] = []
    model, script = scripted_model(call('crunch', n=7), 'It timed out.')
    deps = make_deps(
        redis,
        model,
        home=tmp_path,
        tools=(),
        plugins=[_sync_plugin(finished, side_effect=False, seconds=2.0)],
        limits={'tool_timeout_seconds': 0.5},
    )

    started = time.perf_counter()
    result = await run_turn(deps, 'crunch 7')
    took = time.perf_counter() - started

    assert result.answer == 'It timed out.'
    assert took < 1.5, 'the turn waited for the thread instead of the timeout'
    reply = list(render_transcript(script.seen[1][0]))[-1]
    assert reply.startswith('  ← crunch: retried:') and 'timed out after 0.5 seconds' in reply
    assert 'crunched' not in ''.join(render_transcript(script.seen[1][0]))
    assert result.tool_calls[0].ok is False


async def test_a_sync_tool_with_side_effects_is_refused_with_a_clear_message(redis: Redis, tmp_path: Path) -> None:
    finished: list[float] = []
    model, _ = scripted_model(call('crunch', n=7), 'done')
    deps = make_deps(
        redis, model, home=tmp_path, tools=(), plugins=[_sync_plugin(finished, side_effect=True, seconds=0.0)]
    )

    with pytest.raises(TandemError) as caught:
        await run_turn(deps, 'crunch 7')

    assert str(caught.value) == (
        "tool 'crunch' of plugin 'cruncher' is a plain (sync) function with side effects: Tandem cannot stop it "
        'at limits.tool_timeout_seconds, so its effect could land after the model was told it failed. '
        'Make it `async def`, or declare it side-effect free.'
    )
    assert finished == []
    assert await deps.conversations.read_record('s1') is None


async def test_a_result_that_comes_back_after_the_deadline_is_dropped(redis: Redis, tmp_path: Path) -> None:
    # An async tool that blocks the event loop can't be cancelled in time; its result still must not count.
    def build() -> FunctionToolset[Deps]:
        toolset: FunctionToolset[Deps] = FunctionToolset()

        @toolset.tool_plain(metadata={'side_effect': False})
        async def hog() -> str:
            """Block the event loop for a while."""
            time.sleep(0.6)  # noqa: ASYNC251 - the point: a tool that blocks the event loop
            return 'hogged'

        return toolset

    model, script = scripted_model(call('hog'), 'It timed out.')
    plugin = ToolsetPlugin(name='hog', description='blocks the loop', build=build)
    deps = make_deps(redis, model, home=tmp_path, tools=(), plugins=[plugin], limits={'tool_timeout_seconds': 0.2})

    result = await run_turn(deps, 'hog')

    assert result.answer == 'It timed out.'
    seen = ''.join(render_transcript(script.seen[1][0]))
    assert 'hogged' not in seen and 'timed out after 0.2 seconds' in seen
