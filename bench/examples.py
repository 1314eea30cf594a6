"""What choosing few-shot examples adds to a turn, at 10,000 stored examples, against the same turn without them.

Run: `uv run python bench/examples.py` (or `make bench`). Ends with one `bench:` line per target.

Both sides run the whole turn (`run_turn`: history, prompt, the agent, saving) on an instant model, on
the embedded Redis, in one process, alternating, after warm-up turns (the index of the set built and
cached, as in a long-running service). The value is the difference of the medians: what selection
(`examples.mode`) adds, including sending the examples' messages; the baseline is the turn without.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig, ExamplesConfig, Settings
from tandem.agent.turn.build import build_deps
from tandem.agent.turn.request import TurnRequest
from tandem.agent.turn.run import run_turn, with_session
from tandem.memory.connection import connect
from tandem.memory.examples import Example, ExampleSet
from tandem.memory.redis_server import EmbeddedRedis

STORED = 10_000
TURNS = 400
TARGET_MS = 2.0
_WORDS = [f'{a}{b}' for a in ('ka', 'lo', 'mi', 'ne', 'po', 'ru', 'sa', 'te', 'vu', 'zo') for b in range(300)]
_TOPICS = ['invoice', 'password', 'refund', 'shipping', 'account', 'upgrade', 'export', 'calendar', 'billing', 'login']


def line(name: str, value: float, baseline: float, ok: bool) -> str:
    ratio = value / baseline if baseline else float('inf')
    return (
        f'bench: {name} value={value:.3f}ms baseline={baseline:.3f}ms ratio={ratio:.2f} '
        f'target<={TARGET_MS:g}ms {"PASS" if ok else "FAIL"}'
    )


def _question(rng: random.Random, n: int) -> str:
    return (
        f'How do I {rng.choice(_WORDS)} my {rng.choice(_TOPICS)} with {rng.choice(_WORDS)} {rng.choice(_WORDS)} ({n})?'
    )


async def _fill(redis: Redis, settings: Settings, rng: random.Random) -> None:
    examples = [
        Example.of(
            {
                'messages': [
                    {'role': 'user', 'content': _question(rng, n)},
                    {
                        'role': 'assistant',
                        'content': f'Open {rng.choice(_TOPICS)} settings, then {rng.choice(_WORDS)}.',
                    },
                ]
            }
        )
        for n in range(STORED)
    ]
    await ExampleSet(redis, tenant='bench').add(examples, config=settings.knowledge)


def _instant(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart('ok')])


async def _turn_ms(redis: Redis, settings: Settings, text: str, session: str) -> float:
    backbone = Backbone(name='instant', config=BackboneConfig(model='test:instant'), model=FunctionModel(_instant))
    request = TurnRequest(tenant='bench', user='u', tools=[])
    deps = await build_deps(settings, redis, request, session=session, backbone=backbone)
    started = time.perf_counter()
    await run_turn(with_session(deps, session), text)
    return (time.perf_counter() - started) * 1000


async def bench(redis: Redis, home: Path) -> list[str]:
    rng = random.Random(11)
    base = Settings(home=home, tenant='bench', tools=[], memory={'enabled': False})  # pyright: ignore[reportArgumentType]
    await _fill(redis, base, rng)
    modes = {
        mode: base.model_copy(update={'examples': ExamplesConfig(mode=mode, k=3)})
        for mode in ('off', 'fixed', 'retrieved')
    }
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for n in range(TURNS + 20):  # the first 20 warm up: the set's index is loaded, schemas built
        text = _question(rng, n)
        order = list(modes.items())
        for mode, settings in order if n % 2 else order[::-1]:  # alternated, so drift falls on both sides
            elapsed = await _turn_ms(redis, settings, text, f'{mode}-{n}')
            if n >= 20:
                samples[mode].append(elapsed)
    off = statistics.median(samples['off'])
    lines: list[str] = []
    for mode in ('fixed', 'retrieved'):
        added = statistics.median(samples[mode]) - off
        lines.append(line(f'examples_{mode}_10k', max(added, 0.0), off, added <= TARGET_MS))
    return lines


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = EmbeddedRedis(home)
        url = server.ensure_running()
        try:
            redis = await connect(url, home=home)
            lines = await bench(redis, home)
            await redis.aclose()
        finally:
            server.stop()
    print('\n'.join(lines))


if __name__ == '__main__':
    asyncio.run(main())
