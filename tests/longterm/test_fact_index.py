"""Long-term memory's BM25 index in Redis: a new process recalls from the stored snapshot, brought up
to date by the change log, without parsing or re-tokenizing every fact."""

from __future__ import annotations

import random
from typing import cast

import pytest
from redis.asyncio import Redis

from tandem.memory import facts as facts_module
from tandem.memory.facts import Fact, FactStore, _UserCache
from tandem.memory.keys import UserFactKeys
from tandem.memory.knowledge.index import Bm25Index
from tests.longterm.test_facts import FakeClock

_KEYS = UserFactKeys('acme', 'alice')
_TOPICS = ['tea', 'jazz', 'rust', 'cats', 'hiking', 'chess', 'piano', 'berlin', 'metric', 'teal']


@pytest.fixture(autouse=True)
def small_index_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the index from 20 facts, so the tests stay small."""
    monkeypatch.setattr(facts_module, '_INDEX_MIN_FACTS', 20)


async def _seed(store: FactStore, count: int, *, start: int = 0) -> list[Fact]:
    rng = random.Random(start)
    stored: list[Fact] = []
    for n in range(start, start + count):
        text = f'The user likes {rng.choice(_TOPICS)} with friend{n} and {rng.choice(_TOPICS)} in town{n % 7}.'
        stored.append((await store.remember('acme', 'alice', text)).fact)
    return stored


def _cache(store: FactStore) -> _UserCache:
    return store._caches[('acme', 'alice')]  # pyright: ignore[reportPrivateUsage]


def _forbid_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError('the index was built from every fact')

    monkeypatch.setattr(Bm25Index, 'add_many', refuse)


async def _scores(store: FactStore, query: str) -> dict[str, float]:
    await store.snapshot('acme', 'alice')
    cache = _cache(store)
    return dict(cache.lexical.search(facts_module._terms(query), 1000))  # pyright: ignore[reportPrivateUsage]


async def test_a_write_leaves_the_cache_current_so_the_next_read_is_one_get(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FactStore(redis)
    await store.remember('acme', 'alice', 'The user likes teal.')
    await store.remember('acme', 'alice', 'The user plays chess.')

    async def no_reload(*_: object) -> None:
        raise AssertionError('the cache was read again')

    monkeypatch.setattr(store, '_load', no_reload)
    assert [fact.text for fact in await store.recall('acme', 'alice', 'chess')] == ['The user plays chess.']
    stored_version = cast(bytes, await redis.get(_KEYS.version))
    assert _cache(store).version == stored_version.decode()


async def test_a_new_process_recalls_from_the_snapshot_parsing_only_what_it_returns(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = FactStore(redis, similarity_threshold=1.0)  # the seeded facts look alike
    await _seed(writer, 40)
    await FactStore(redis).list_facts('acme', 'alice')  # the first reader builds the index and stores it
    assert await redis.hexists(_KEYS.index, 'bm25')
    expected = await FactStore(redis).recall('acme', 'alice', 'jazz in town3', limit=5)

    _forbid_building(monkeypatch)
    reader = FactStore(redis)
    snapshot = await reader.snapshot('acme', 'alice')

    assert snapshot.search('jazz in town3', 5) == expected
    assert len(snapshot) == 40
    assert snapshot.recent(3) == sorted(await writer.list_facts('acme', 'alice'), key=lambda f: f.updated_at)[:-4:-1]
    parsed = [entry for entry in _cache(reader)._entries.values() if isinstance(entry, Fact)]  # pyright: ignore[reportPrivateUsage]
    assert len(parsed) <= 8  # the five found and the three most recent, not all forty


async def test_a_restored_index_scores_like_one_built_from_every_fact(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = FactStore(redis, similarity_threshold=1.0)  # the seeded facts look alike
    seeded = await _seed(writer, 30)
    await FactStore(redis).list_facts('acme', 'alice')
    await _seed(writer, 5, start=100)
    await writer.forget_many('acme', 'alice', [fact.id for fact in seeded[:3]])
    await writer.remember('acme', 'alice', seeded[5].text.replace('with', 'along with'))
    assert await redis.zcard(_KEYS.changes) == 9  # five added, three removed, one restated

    with monkeypatch.context() as patched:
        _forbid_building(patched)
        replayed = await _scores(FactStore(redis), 'jazz cats friend101 town2 along')
    reference = FactStore(redis)
    await reference.snapshot('acme', 'alice')
    _cache(reference)._lexical = None  # pyright: ignore[reportPrivateUsage]
    rebuilt = dict(_cache(reference).lexical.search(facts_module._terms('jazz cats friend101 town2 along'), 1000))  # pyright: ignore[reportPrivateUsage]

    assert replayed == pytest.approx(rebuilt)
    assert seeded[5].id in replayed  # found by the word its restatement added
    assert seeded[0].id not in replayed


async def test_a_fact_that_expires_while_cached_is_left_out(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    writer = FactStore(redis, similarity_threshold=1.0, clock=clock)
    await _seed(writer, 25)
    brief = await writer.remember('acme', 'alice', 'The user is visiting Berlin this week.', ttl_seconds=60)
    await FactStore(redis, clock=clock).list_facts('acme', 'alice')
    _forbid_building(monkeypatch)
    reader = FactStore(redis, clock=clock)
    await reader.snapshot('acme', 'alice')
    clock.advance(61)  # nothing was written since: the reader keeps its cache, and must filter it

    snapshot = await reader.snapshot('acme', 'alice')

    assert brief.fact.id not in [fact.id for fact in snapshot.search('visiting berlin week', 5)]
    assert brief.fact not in snapshot.recent(5)
    assert brief.fact.id not in [fact.id for fact in snapshot.facts]
    assert len(snapshot) == 25


async def test_an_unusable_snapshot_is_rebuilt_and_replaced(redis: Redis) -> None:
    await _seed(FactStore(redis, similarity_threshold=1.0), 25)
    expected = await FactStore(redis).recall('acme', 'alice', 'chess piano', limit=5)
    await redis.hset(_KEYS.index, 'bm25', b'not a snapshot')

    assert await FactStore(redis).recall('acme', 'alice', 'chess piano', limit=5) == expected
    assert cast(bytes, await redis.hget(_KEYS.index, 'bm25')).startswith(b'TANDEM-INDEX-1')


async def test_facts_written_without_the_index_are_noticed(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = FactStore(redis, similarity_threshold=1.0)
    await _seed(writer, 25)
    await FactStore(redis).list_facts('acme', 'alice')
    # An older Tandem adds a fact: the hash and the version, no recency set and no change log.
    [planted] = await _seed(FactStore(redis, similarity_threshold=1.0), 1, start=500)
    await redis.zrem(_KEYS.updated, planted.id)
    await redis.delete(_KEYS.changes)

    found = await FactStore(redis).recall('acme', 'alice', 'friend500', limit=1)

    assert found == [planted]


async def test_forgetting_everything_drops_the_index(redis: Redis) -> None:
    store = FactStore(redis, similarity_threshold=1.0)
    await _seed(store, 25)
    await FactStore(redis).list_facts('acme', 'alice')
    await store.remember('acme', 'alice', 'The user collects stamps.')

    await store.forget_all('acme', 'alice')

    assert await redis.exists(_KEYS.facts, _KEYS.updated, _KEYS.index, _KEYS.changes) == 0
    assert await FactStore(redis).recall('acme', 'alice', 'stamps') == []


async def test_a_large_memory_is_read_in_pages_and_still_restored(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _seed(FactStore(redis, similarity_threshold=1.0), 30)
    expected = await FactStore(redis).recall('acme', 'alice', 'hiking friend7', limit=3)
    monkeypatch.setattr(facts_module, '_INLINE_LOAD_LIMIT', 10)
    monkeypatch.setattr(facts_module, '_SCAN_PAGE', 4)
    _forbid_building(monkeypatch)

    reader = FactStore(redis)

    assert await reader.recall('acme', 'alice', 'hiking friend7', limit=3) == expected
    assert len(await reader.list_facts('acme', 'alice')) == 30


async def test_recent_facts_beyond_those_read_with_the_index_are_still_found(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    writer = FactStore(redis, similarity_threshold=1.0, clock=clock)
    for n in range(25):
        clock.advance(1)
        await _seed(writer, 1, start=n)
    everything = await writer.list_facts('acme', 'alice')
    await FactStore(redis).list_facts('acme', 'alice')
    monkeypatch.setattr(facts_module, '_RECENT_READ', 4)

    recent = await FactStore(redis, clock=clock).snapshot('acme', 'alice')

    assert recent.recent(3) == everything[:-4:-1]
    assert recent.recent(10) == everything[:-11:-1]


async def test_a_reader_that_replays_many_changes_stores_a_fresh_snapshot(redis: Redis) -> None:
    writer = FactStore(redis, similarity_threshold=1.0)
    await _seed(writer, 25)
    await FactStore(redis).list_facts('acme', 'alice')
    await _seed(writer, 10, start=100)
    await FactStore(redis).list_facts('acme', 'alice')
    assert await redis.zcard(_KEYS.changes) == 10  # few: replayed, and the snapshot left as it is

    await _seed(writer, 15, start=200)  # 25 changes since the snapshot: more than the threshold (20)
    await FactStore(redis).list_facts('acme', 'alice')

    assert await redis.zcard(_KEYS.changes) == 0
    assert await redis.hget(_KEYS.index, 'version') == await redis.get(_KEYS.version)
