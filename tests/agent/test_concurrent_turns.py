"""Concurrent turns on one session: every answered turn is stored exactly once, whole, and none is refused.

Double submits, client retries, two tabs and several replicas all run turns on one session at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart, UserPromptPart

from tandem.memory.connection import connect
from tandem.memory.conversations import RedisConversationStore
from tests.support.processes import run_python

# One process of turns: `count` concurrent turns on session 'shared', each calling the calculator once
# and answering with its own prompt. The model sleeps a little, so the turns overlap in flight.
_TURNS = """
    import asyncio, random, sys
    from dataclasses import replace
    from pathlib import Path
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import FunctionModel
    from tandem.agent.turn.run import run_turn
    from tandem.memory.connection import connect
    from tandem.memory.conversations import RedisConversationStore
    from tests.support.deps import make_deps

    async def respond(messages, info):
        await asyncio.sleep(random.random() * 0.02)
        last = messages[-1].parts[-1]
        if isinstance(last, ToolReturnPart):
            return ModelResponse(parts=[TextPart(f'answer to {messages[-1].parts[-1].tool_call_id}')])
        prompt = last.content
        return ModelResponse(parts=[ToolCallPart('calculate', {'expression': '6*7'}, tool_call_id=prompt)])

    async def main(url, home, name, count):
        redis = await connect(url, home=Path(home))
        store = RedisConversationStore(redis, tenant='acme')
        base = make_deps(redis, FunctionModel(respond), home=Path(home), session='shared')
        refused = 0

        async def turn(n):
            nonlocal refused
            try:
                await run_turn(replace(base, conversations=store), f'{name}-{n}')
            except Exception as error:
                refused += 1
                print(type(error).__name__, error, file=sys.stderr)

        await asyncio.gather(*(turn(n) for n in range(int(count))))
        print(refused)

    asyncio.run(main(*sys.argv[1:]))
"""


async def _turns(redis_url: str, home: Path, name: str, count: int) -> int:
    """Run `count` concurrent turns in a fresh interpreter: how many were refused."""
    return int((await run_python(_TURNS, redis_url, str(home), name, str(count))).split()[-1])


async def test_two_processes_of_50_concurrent_turns_store_all_100_once_whole_and_refuse_none(
    redis_url: str, tmp_path: Path
) -> None:
    refused = await asyncio.gather(
        _turns(redis_url, tmp_path / 'p', 'p', 50), _turns(redis_url, tmp_path / 'q', 'q', 50)
    )

    assert refused == [0, 0]
    redis = await connect(redis_url, home=tmp_path)
    conversation = await RedisConversationStore(redis, tenant='acme').load('shared', scope='alice')
    await redis.aclose()
    assert conversation is not None
    messages = conversation.messages
    assert len(messages) == 100 * 4
    prompts: list[str] = []
    # Each turn is contiguous: the prompt, the tool call, its return, and the answer that names it.
    for start in range(0, len(messages), 4):
        request, call, result, answer = messages[start : start + 4]
        assert isinstance(request, ModelRequest) and isinstance(call, ModelResponse)
        assert isinstance(result, ModelRequest) and isinstance(answer, ModelResponse)
        prompt = next(part for part in request.parts if isinstance(part, UserPromptPart)).content
        assert isinstance(prompt, str)
        prompts.append(prompt)
        tool_call = call.parts[0]
        assert isinstance(tool_call, ToolCallPart) and tool_call.tool_call_id == prompt
        tool_return = result.parts[0]
        assert isinstance(tool_return, ToolReturnPart) and tool_return.tool_call_id == prompt
        assert tool_return.outcome == 'success' and '42' in str(tool_return.content)
        assert answer.parts == [TextPart(f'answer to {prompt}')]
    assert sorted(prompts) == sorted([*(f'p-{n}' for n in range(50)), *(f'q-{n}' for n in range(50))])
    assert conversation.usage.requests == 200
    assert conversation.usage.tool_calls == 100
