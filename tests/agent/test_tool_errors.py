"""A failing or misused tool never crashes the turn: the model gets a clear tool error and goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic_ai import RunContext
from pydantic_ai.toolsets import FunctionToolset
from redis.asyncio import Redis

from tandem.agent.cli.transcript import render_transcript
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
