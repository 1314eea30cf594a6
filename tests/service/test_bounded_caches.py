"""Every in-process cache that grows with users, sessions, tenants or texts stops at its bound.

A service answers for as long as it runs: a cache keyed by something clients choose must forget,
or the workers grow until they are restarted.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from pydantic import SecretStr
from pydantic_ai.conversation import Conversation
from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart
from redis.asyncio import Redis

from tandem.agent import api
from tandem.agent.api import Assistant
from tandem.agent.core import tokens
from tandem.agent.core.config import MemoryConfig, Settings
from tandem.memory.conversations import HistoryCache, RedisConversationStore
from tandem.memory.knowledge import query_engine


def _exchange(n: int) -> list[ModelRequest | ModelResponse]:
    return [
        ModelRequest(parts=[UserPromptPart(content=f'question {n}')]),
        ModelResponse(parts=[TextPart(f'answer {n}')], model_name='test'),
    ]


async def test_ten_thousand_sessions_of_fifty_tenants_leave_their_shared_history_cache_within_budget(
    redis: Redis,
) -> None:
    budget = 64 * 1024
    shared = HistoryCache(budget)
    stores = [RedisConversationStore(redis, tenant=f't{n}', history_cache=shared) for n in range(50)]
    peak = 0
    for n in range(10_000):
        store = stores[n % len(stores)]
        await store.save(Conversation(conversation_id=f's{n}', messages=_exchange(n)))
        peak = max(peak, shared.size)

    assert peak <= budget
    assert shared.size > budget // 2  # full, not emptied
    assert 0 < len(shared) < 10_000
    # What is held still loads, from any tenant's store: the keys name the tenant.
    assert (await stores[9_999 % 50].load('s9999')) is not None


async def test_an_assistant_keeps_a_bounded_number_of_tenant_stores_sharing_one_history_budget(
    redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, redis_url=SecretStr(redis_url), memory=MemoryConfig(history_cache_mb=0.25))
    async with Assistant(settings) as assistant:
        for n in range(3 * api._TENANT_STORES):  # pyright: ignore[reportPrivateUsage]
            await assistant.create_session(f's{n}', tenant=f'tenant{n}')
        kept = assistant._stores  # pyright: ignore[reportPrivateUsage]
        histories = {id(store._histories) for store in kept.values()}  # pyright: ignore[reportPrivateUsage]

        assert len(kept) == api._TENANT_STORES  # pyright: ignore[reportPrivateUsage]
        assert list(kept)[-1] == f'tenant{3 * api._TENANT_STORES - 1}'  # pyright: ignore[reportPrivateUsage]
        assert histories == {id(assistant._histories)}  # pyright: ignore[reportPrivateUsage]
        assert assistant._histories.budget == 256 * 1024  # pyright: ignore[reportPrivateUsage]
        # A dropped tenant's sessions are all still there: only the in-process caches went.
        assert [info.id for info in await assistant.sessions(tenant='tenant0')] == ['s0']


def test_a_remembered_token_count_costs_the_same_however_long_its_text() -> None:
    counter = tokens.token_counter()
    counter.count('warm up')
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(40):
            counter.count(f'{n} ' + 'long text ' * 5_000)  # 40 texts of 50 KB: 2 MB if they were kept
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert grown < 64 * 1024
    assert counter.count('39 ' + 'long text ' * 5_000) == counter.count('39 ' + 'long text ' * 5_000)


def test_a_token_counter_remembers_at_most_its_bound_of_texts() -> None:
    counter = tokens.token_counter()
    for n in range(tokens.COUNTS_KEPT + 2_000):
        counter.count(f'text number {n}')

    assert len(counter._counts) == tokens.COUNTS_KEPT  # pyright: ignore[reportPrivateUsage]


def test_the_query_engine_readiness_memo_stays_within_its_bound() -> None:
    ready = query_engine._READY  # pyright: ignore[reportPrivateUsage]
    ready.clear()
    for n in range(10_000):
        query_engine._note_ready(f'idx{n}')  # pyright: ignore[reportPrivateUsage]

    assert 0 < len(ready) <= query_engine._READY_KEPT  # pyright: ignore[reportPrivateUsage]
    ready.clear()
