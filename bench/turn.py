"""Per-turn cost, history-load round trips, and import time, each against a baseline measured in this run.

Run: `uv run python bench/turn.py` (or `make bench`). Ends with one `bench:` line per target.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic_ai import Agent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.conversation import Conversation
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits
from redis.asyncio import Redis

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.prompts import PromptLibrary
from tandem.agent.turn.agent import plugin_toolsets
from tandem.agent.turn.deps import Deps, Identity
from tandem.agent.turn.prepare import render_instructions
from tandem.agent.turn.run import run_turn
from tandem.memory.connection import connect
from tandem.memory.conversations import RedisConversationStore
from tandem.memory.redis_server import EmbeddedRedis
from tandem.tools.registry import discover_plugins, select


@dataclass
class _NoOp(AbstractCapability[Any]):
    """A capability that changes nothing: what pydantic-ai charges a run for having one."""


def _instant(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart('ok')])


MODEL = FunctionModel(_instant, model_name='instant')


def _history(n: int) -> list[ModelMessage]:
    history: list[ModelMessage] = []
    for i in range(n // 2):
        history.append(ModelRequest(parts=[UserPromptPart(f'question {i}')]))
        history.append(ModelResponse(parts=[TextPart(f'answer {i}')]))
    return history


def line(
    name: str, value: float, baseline: float, target: float, unit: str = '', *, higher_is_worse: bool = True
) -> str:
    ratio = value / baseline if baseline else float('inf')
    ok = ratio <= target if higher_is_worse else ratio >= target
    return (
        f'bench: {name} value={value:.3f}{unit} baseline={baseline:.3f}{unit} ratio={ratio:.2f} '
        f'target={"<=" if higher_is_worse else ">="}{target} {"PASS" if ok else "FAIL"}'
    )


async def _timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    samples: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return samples


async def bench_turn(redis: Redis, home: Path, repeat: int = 300) -> list[str]:
    settings = Settings(home=home)
    store = RedisConversationStore(redis, tenant='bench')
    prompt = PromptLibrary.default().get('assistant')
    toolsets = select(['calc', 'clock'], discover_plugins())
    backbone = Backbone(name='instant', config=BackboneConfig(model='test:instant'), model=MODEL)
    history = _history(20)
    sessions = [f'turn-{i}' for i in range(repeat * 2)]
    for session in sessions:  # seed every session with the same 20 messages, outside the timing
        await store.save(Conversation(conversation_id=session, messages=list(history)), scope='u')

    queue = iter(sessions)

    async def tandem_turn() -> None:
        deps = Deps(
            settings=settings,
            identity=Identity(tenant='bench', user='u', session=next(queue)),
            backbone=backbone,
            prompt=prompt,
            redis=redis,
            conversations=store,
            toolsets=toolsets,
        )
        await run_turn(deps, 'hello')

    # Both baselines do the same agent work (same model, tools and instructions). The bare one holds
    # the history in memory; the do-it-yourself one is what a user would write instead of Tandem:
    # `Agent.run` between a GET and a SET of the session's history as JSON in Redis.
    built = [plugin.build() for plugin in toolsets]
    bare = Agent(MODEL, toolsets=built)
    # The very instructions a Tandem turn sends (its prompt lists the tools): the model's work grows with them.
    sample = Deps(
        settings=settings,
        identity=Identity(tenant='bench', user='u', session='sample'),
        backbone=backbone,
        prompt=prompt,
        redis=redis,
        conversations=store,
        toolsets=toolsets,
    )
    instructions = await render_instructions(sample, plugin_toolsets(toolsets), 'hello')
    seeded = ModelMessagesTypeAdapter.dump_json(history)
    diy_keys = [f'diy:{i}' for i in range(repeat * 2)]
    for key in diy_keys:
        await redis.set(key, seeded)
    diy_queue = iter(diy_keys)

    async def bare_run() -> None:
        await bare.run('hello', message_history=history, instructions=instructions)

    async def diy_turn() -> None:
        key = next(diy_queue)
        stored = ModelMessagesTypeAdapter.validate_json(await redis.get(key) or b'[]')
        result = await bare.run('hello', message_history=stored, instructions=instructions)
        await redis.set(key, result.all_messages_json())

    # The same by hand, in the shape Tandem runs: one agent for every turn, with the model, tools and
    # usage limits passed per run, and one capability that does nothing. What pydantic-ai charges for
    # that shape, before any Tandem code runs, is the part of the ratio Tandem cannot remove.
    shaped = Agent(None, capabilities=[_NoOp()])
    limits = UsageLimits(request_limit=50, tool_calls_limit=50, total_tokens_limit=1_000_000)
    shaped_keys = [f'shaped:{i}' for i in range(repeat * 2)]
    for key in shaped_keys:
        await redis.set(key, seeded)
    shaped_queue = iter(shaped_keys)

    async def shaped_turn() -> None:
        key = next(shaped_queue)
        stored = ModelMessagesTypeAdapter.validate_json(await redis.get(key) or b'[]')
        result = await shaped.run(
            'hello',
            message_history=stored,
            instructions=instructions,
            model=MODEL,
            toolsets=built,
            usage_limits=limits,
        )
        await redis.set(key, result.all_messages_json())

    # Warm every path, then interleave rounds so machine noise hits all alike.
    await tandem_turn()
    await bare_run()
    await diy_turn()
    await shaped_turn()
    tandem: list[float] = []
    baseline: list[float] = []
    diy: list[float] = []
    shaped_samples: list[float] = []
    for _ in range(repeat // 50):
        tandem += await _timed(tandem_turn, 50)
        diy += await _timed(diy_turn, 50)
        baseline += await _timed(bare_run, 50)
        shaped_samples += await _timed(shaped_turn, 50)
    value = statistics.median(tandem) * 1000
    base, by_hand = statistics.median(baseline) * 1000, statistics.median(diy) * 1000
    floor = statistics.median(shaped_samples) * 1000
    print(
        f'note: by hand in the shape Tandem runs (one agent, per-run model, tools and limits, one no-op '
        f'capability) takes {floor:.3f}ms, {floor / by_hand:.2f}x by hand; Tandem is {value / floor:.2f}x that'
    )
    return [
        line('turn_vs_by_hand_20msg', value, by_hand, 1.1, 'ms'),
        line('turn_overhead_20msg', value, base, 1.3, 'ms'),
    ]


class _CountingRedis:
    """Counts round trips: each command, and each pipeline execution, is one."""

    def __init__(self, redis: Redis) -> None:
        self.count = 0
        original = redis.execute_command

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        redis.execute_command = counted  # type: ignore[method-assign]


async def bench_history_load(redis: Redis) -> list[str]:
    store = RedisConversationStore(redis, tenant='bench')
    lines: list[str] = []
    ping = await _timed(redis.ping, 200)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    get_samples: list[float] = []
    await redis.set('bench:one', b'x' * 100)
    for _ in range(200):
        started = time.perf_counter()
        await redis.get('bench:one')
        get_samples.append(time.perf_counter() - started)
    one_get = statistics.median(get_samples) * 1000
    del ping
    for size in (10, 100, 1000):
        session = f'load-{size}'
        await store.save(Conversation(conversation_id=session, messages=_history(size)), scope='u')
        await store.load(session)
        counter = _CountingRedis(redis)
        await store.load(session)
        trips = counter.count
        del redis.execute_command  # restore the class method
        samples = await _timed(lambda session=session: store.load(session), 30)
        ms = statistics.median(samples) * 1000
        lines.append(
            f'bench: history_load_{size}msg value={trips}roundtrips time={ms:.3f}ms baseline=1roundtrip '
            f'get={one_get:.3f}ms ratio={trips / 1:.2f} target<=3roundtrips {"PASS" if trips <= 3 else "FAIL"}'
        )
    return lines


def _import_time(module: str, repeat: int = 7) -> float:
    samples: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, '-c', f'import {module}'], check=True)
        samples.append(time.perf_counter() - started)
    return min(samples)


def bench_import() -> list[str]:
    baseline = _import_time('pydantic_ai')
    return [
        line('import_agent', _import_time('tandem.agent'), baseline, 1.2, 's'),
        line('import_agent_runtime', _import_time('tandem.agent.turn.run'), baseline, 1.2, 's'),
    ]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = EmbeddedRedis(home)
        url = server.ensure_running()
        try:
            redis = await connect(url, home=home)
            lines = await bench_turn(redis, home)
            lines += await bench_history_load(redis)
            await redis.aclose()
        finally:
            server.stop()
    lines += bench_import()
    print('\n'.join(lines))


if __name__ == '__main__':
    asyncio.run(main())
