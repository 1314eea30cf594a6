"""Long-term memory costs: recall and save latency by memory size, and what compaction adds to a turn.

Run: `uv run python bench/memory.py` (or `make bench`). Ends with one `bench:` line per measurement.
Everything runs against the embedded Redis server, on a Unix socket, as a local install does.

- `recall_N`: `FactStore.recall` for a user with N facts, cache warm (the steady state: one GET of
  the user's version counter, then BM25 in memory), against one Redis round trip (a GET).
- `recall_unindexed_N`: the first recall ever of a memory that has no BM25 snapshot in Redis yet
  (written by an older Tandem, or by hand as here): every fact read and parsed, the index built
  and stored. Once per memory.
- `recall_cold_N`: the first recall in a new process (every `tandem ask`): one script returns the
  facts unparsed (in pages above 20,000 facts) with the stored snapshot, the snapshot is restored
  without tokenizing anything, and only the facts returned are parsed. Target: 50 ms up to 10,000
  facts, and linear above (every fact is still read, unparsed: 500 ms at 100,000). The one-time import of numpy and bm25s (every front end pays it for the knowledge base)
  is paid before it.
- `save_N`: `FactStore.remember` of a new fact into a memory of N facts (two round trips: the
  version check and the write script, plus the similarity check in memory).
- `compaction_check`: what the compaction capability adds to each model request of a long session
  whose stored summary is current (count tokens, read the summary), against loading the history.
- `compaction_summaries_per_turn`: summarizing calls per turn over a long conversation (bursts).
- `append_N`: `RedisConversationStore.append` of a turn (two messages) to a session of N messages,
  the path a turn takes when another turn saved the session since it was loaded: one script that
  chains the turn after the stored head. Against one round trip (a GET), and, for the longest
  session, against the same append to a 10-message session: it must not grow with the history.
"""

from __future__ import annotations

import asyncio
import functools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic_ai.conversation import Conversation
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RunUsage
from redis.asyncio import Redis

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.prompts import PromptLibrary
from tandem.agent.core.tokens import token_counter
from tandem.agent.turn.compaction import HistoryCompactor
from tandem.agent.turn.deps import Deps, Identity
from tandem.agent.turn.run import run_turn
from tandem.memory.connection import connect
from tandem.memory.conversations import RedisConversationStore
from tandem.memory.facts import Fact, FactStore, _digest, normalize_fact
from tandem.memory.keys import UserFactKeys
from tandem.memory.redis_server import EmbeddedRedis

_WORDS = [f'{a}{b}' for a in ('ka', 'lo', 'mi', 'ne', 'po', 'ru', 'sa', 'te', 'vu', 'zo') for b in range(500)]
_TOPICS = ['tea', 'jazz', 'rust', 'cats', 'hiking', 'chess', 'piano', 'berlin', 'metric', 'teal']


def line(name: str, value: float, baseline: float, target: str, ok: bool, unit: str = 'ms') -> str:
    ratio = value / baseline if baseline else float('inf')
    return (
        f'bench: {name} value={value:.3f}{unit} baseline={baseline:.3f}{unit} ratio={ratio:.2f} '
        f'target={target} {"PASS" if ok else "FAIL"}'
    )


async def _median_ms(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    samples: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


async def _round_trip_ms(redis: Redis) -> float:
    await redis.set('bench:one', b'x' * 100)
    return await _median_ms(lambda: redis.get('bench:one'), 500)


async def _seed(redis: Redis, user: str, count: int, rng: random.Random) -> None:
    """`count` distinct facts for `user`, written in the store's own format through pipelines."""
    keys = UserFactKeys('bench', user)
    now = datetime.now(UTC)
    batch = 2_000
    for start in range(0, count, batch):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(count, start + batch)):
            text = (
                f'The user {rng.choice(_WORDS)} {rng.choice(_TOPICS)} with {rng.choice(_WORDS)} '
                f'and {rng.choice(_WORDS)} number {n}.'
            )
            fact = Fact(id=f'f-{n:012x}', text=text, source='user-stated', created_at=now, updated_at=now)
            digest = _digest(normalize_fact(text))
            pipe.hset(keys.facts, fact.id, fact.model_dump_json()[:-1] + f',"norm":"{digest}"}}')
            pipe.hset(keys.norms, digest, fact.id)
        await pipe.execute()
    await redis.set(keys.version, 1_000)


async def bench_recall_and_save(redis: Redis) -> list[str]:
    import tandem.memory.knowledge.retrieval  # noqa: F401  # pyright: ignore[reportUnusedImport] -- numpy and bm25s: once per process, not per load

    rng = random.Random(7)
    trip = await _round_trip_ms(redis)
    lines: list[str] = []
    targets = {100: 2.0, 10_000: 2.0, 100_000: 10.0}
    for size, target in targets.items():
        user = f'u{size}'
        await _seed(redis, user, size, rng)
        started = time.perf_counter()
        await FactStore(redis, max_facts=200_000).recall('bench', user, 'what tea do I like')
        unindexed = (time.perf_counter() - started) * 1000
        store = FactStore(redis, max_facts=200_000)
        started = time.perf_counter()
        await store.recall('bench', user, 'what tea do I like')
        cold = (time.perf_counter() - started) * 1000
        queries = [f'{rng.choice(_TOPICS)} {rng.choice(_WORDS)}' for _ in range(200)]
        pending = iter(queries * 3)
        warm = await _median_ms(
            lambda store=store, user=user, pending=pending: store.recall('bench', user, next(pending)), 300
        )
        label = f'{size // 1000}k' if size >= 1000 else str(size)
        lines.append(line(f'recall_{label}', warm, trip, f'<={target:g}ms', warm <= target))
        first_target = max(50.0, size * 0.1)  # 100 µs a fact: read, parse, analyze, index and store it
        lines.append(
            line(f'recall_unindexed_{label}', unindexed, trip, f'<={first_target:g}ms', unindexed <= first_target)
        )
        cold_target = max(50.0, size * 0.005)  # 50 ms at 10k; linear above: every fact is still read, unparsed
        lines.append(line(f'recall_cold_{label}', cold, trip, f'<={cold_target:g}ms', cold <= cold_target))
        counter = iter(range(10**6))
        save = await _median_ms(
            lambda store=store, user=user, counter=counter: store.remember(
                'bench', user, f'The user {rng.choice(_WORDS)} saved fact {next(counter)} {rng.choice(_WORDS)}.'
            ),
            100,
        )
        lines.append(line(f'save_{label}', save, trip, f'<={max(3.0, 4 * trip):.3g}ms', save <= max(3.0, 4 * trip)))
    return lines


def _turns(n: int) -> list[ModelMessage]:
    filler = 'The quick brown fox jumps over the lazy dog near the riverbank at dawn. ' * 6
    history: list[ModelMessage] = []
    for i in range(n):
        history.append(ModelRequest(parts=[UserPromptPart(f'question {i}: {filler}')]))
        history.append(ModelResponse(parts=[TextPart(f'answer {i}: {filler}')]))
    return history


class _Model:
    """Answers at length; writes short summaries."""

    def __init__(self) -> None:
        self.summaries = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if (info.instructions or '').startswith('You keep the running summary'):
            self.summaries += 1
            return ModelResponse(parts=[TextPart(f'Summary {self.summaries}: the user asked many questions.')])
        return ModelResponse(parts=[TextPart('answer: ' + 'lorem ipsum dolor sit amet ' * 20)])


def _deps(redis: Redis, home: Path, model: _Model, session: str, **memory: Any) -> Deps:
    settings = Settings(home=home, memory={'compaction_tokens': 4000, 'summary_tokens': 300, **memory})  # type: ignore[arg-type]
    fn = FunctionModel(model, model_name='bench')
    return Deps(
        settings=settings,
        identity=Identity(tenant='bench', user='u', session=session),
        backbone=Backbone(name='bench', config=BackboneConfig(model='test:bench'), model=fn),
        prompt=PromptLibrary.default().get('assistant'),
        redis=redis,
        conversations=RedisConversationStore(redis, tenant='bench'),
    )


async def bench_compaction(redis: Redis, home: Path) -> list[str]:
    model = _Model()
    deps = _deps(redis, home, model, 'long')
    for n in range(40):
        await run_turn(deps, f'question {n}')
    per_turn = model.summaries / 40
    conversation = await deps.conversations.load('long')
    assert conversation is not None
    messages = [*conversation.messages, ModelRequest(parts=[UserPromptPart('one more question')])]

    async def check() -> None:
        # A fresh capability per call, as per run: no summary read cached from before. Token counts are
        # remembered per text for the process, as they are from one turn of a long session to the next.
        await HistoryCompactor().compact(deps, deps.backbone.model, list(messages))

    await check()
    summaries_before = model.summaries
    cost = await _median_ms(check, 50)
    assert model.summaries == summaries_before, 'the steady state must not summarize'
    store = deps.conversations
    await store.save(Conversation(conversation_id='plain', messages=list(messages)), scope='u')
    load = await _median_ms(lambda: store.load('plain'), 50)
    tokens = token_counter().name
    return [
        line(f'compaction_check_{len(messages)}msg[{tokens}]', cost, load, '<=1.0x', cost <= load),
        line('compaction_summaries_per_turn', per_turn, 1.0, '<=0.5', per_turn <= 0.5, unit=''),
    ]


async def bench_append(redis: Redis) -> list[str]:
    store = RedisConversationStore(redis, tenant='bench')
    trip = await _round_trip_ms(redis)
    turn = _turns(1)
    usage = RunUsage(requests=1, input_tokens=100, output_tokens=20)
    costs: dict[int, float] = {}
    for length in (10, 1_000, 10_000):
        session = f'append-{length}'
        await store.save(Conversation(conversation_id=session, messages=_turns(length // 2)), scope='u')
        await store.append(session, turn, usage=usage, scope='u')
        costs[length] = await _median_ms(functools.partial(store.append, session, turn, usage=usage, scope='u'), 200)
    shortest, longest = costs[10], costs[10_000]
    return [
        line('append_10msg', shortest, trip, f'<={max(1.0, 4 * trip):.3g}ms', shortest <= max(1.0, 4 * trip)),
        line('append_1000msg', costs[1_000], shortest, '<=1.5x', costs[1_000] <= 1.5 * shortest),
        line('append_10000msg', longest, shortest, '<=1.5x', longest <= 1.5 * shortest),
    ]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = EmbeddedRedis(home)
        url = server.ensure_running()
        try:
            redis = await connect(url, home=home)
            lines = await bench_recall_and_save(redis)
            lines += await bench_compaction(redis, home)
            lines += await bench_append(redis)
            await redis.aclose()
        finally:
            server.stop()
    print('\n'.join(lines))


if __name__ == '__main__':
    asyncio.run(main())
