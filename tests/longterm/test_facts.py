"""The fact store on a real Redis: dedupe, concurrency, expiry, isolation, export and import."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from dirty_equals import IsDatetime, IsStr
from redis.asyncio import Redis

from tandem.memory.connection import connect
from tandem.memory.facts import (
    FACT_ID_PATTERN,
    FactLimitError,
    FactStore,
    SecretFactError,
    normalize_fact,
    text_similarity,
)
from tandem.memory.keys import UserFactKeys
from tests.conftest import RedisTestServer


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def test_a_fact_is_stored_with_its_provenance(redis: Redis) -> None:
    store = FactStore(redis)

    result = await store.remember(
        'acme', 'alice', '  The user  prefers metric units. ', source='user-stated', session='s1', turn=3
    )

    assert result.outcome == 'created'
    fact = result.fact
    assert FACT_ID_PATTERN.fullmatch(fact.id)
    assert fact.model_dump() == {
        'id': fact.id,
        'text': 'The user prefers metric units.',  # whitespace collapsed
        'source': 'user-stated',
        'session': 's1',
        'turn': 3,
        'created_at': IsDatetime(),
        'updated_at': fact.created_at,
        'expires_at': None,
        'mentions': 1,
    }
    assert await FactStore(redis).list_facts('acme', 'alice') == [fact]  # stored, not only cached


@pytest.mark.parametrize(
    ('first', 'again', 'outcome'),
    [
        ('The user likes teal.', 'The user likes teal.', 'exact'),
        ("The user's favourite colour is teal.", "the USER'S favourite colour is teal!!", 'normalized'),
        ("The user's favourite colour is teal.", 'The users favourite  colour is: TEAL', 'normalized'),
        ("The user's favourite colour is teal.", "The user's favorite color is teal.", 'similar'),
        ('The user is vegetarian.', 'The user is a vegetarian.', 'similar'),
    ],
)
async def test_a_restated_fact_updates_the_known_one(redis: Redis, first: str, again: str, outcome: str) -> None:
    clock = FakeClock()
    store = FactStore(redis, clock=clock)
    original = (await store.remember('acme', 'alice', first, session='s1', turn=1)).fact
    clock.advance(60)

    result = await store.remember('acme', 'alice', again, session='s2', turn=5)

    assert result.outcome == outcome
    assert result.fact.id == original.id
    assert result.fact.text == ' '.join(again.split())  # the newest wording wins
    assert result.fact.mentions == 2
    assert (result.fact.session, result.fact.turn) == ('s1', 1)  # where it was first stated
    assert result.fact.created_at == original.created_at
    assert (result.fact.updated_at - original.updated_at).total_seconds() == pytest.approx(60)
    assert [fact.id for fact in await FactStore(redis).list_facts('acme', 'alice')] == [original.id]


@pytest.mark.parametrize(
    ('first', 'second'),
    [
        ('The user has a sister called Anna.', 'The user has a brother called Anna.'),
        ('The user works on project Apollo.', 'The user works on project Zeus.'),
        ("The user's favourite colour is teal.", 'The user works on project Apollo.'),
    ],
)
async def test_different_facts_are_kept_apart(redis: Redis, first: str, second: str) -> None:
    store = FactStore(redis)
    await store.remember('acme', 'alice', first)

    result = await store.remember('acme', 'alice', second)

    assert result.outcome == 'created'
    assert len(await store.list_facts('acme', 'alice')) == 2


def test_normalization_and_similarity() -> None:
    assert normalize_fact("  Alice's  FAVOURITE colour: teal! ") == 'alices favourite colour teal'
    assert normalize_fact('Ｆｕｌｌ－width ＴＥＸＴ') == 'full width text'  # NFKC
    assert text_similarity('alices favourite colour teal', 'alices favorite color teal') > 0.9
    assert text_similarity('user has two cats', 'user has three dogs') < 0.9
    assert text_similarity('', 'x') == 0.0


async def test_the_similarity_threshold_is_configurable(redis: Redis) -> None:
    strict = FactStore(redis, similarity_threshold=1.0)
    await strict.remember('acme', 'alice', "The user's favourite colour is teal.")
    assert (await strict.remember('acme', 'alice', "The user's favorite color is teal.")).outcome == 'created'

    loose = FactStore(redis, similarity_threshold=0.5)
    assert (await loose.remember('acme', 'bob', 'The user works on project Apollo.')).outcome == 'created'
    assert (await loose.remember('acme', 'bob', 'The user works on project Zeus.')).outcome == 'similar'


async def test_a_less_trusted_source_never_rewrites_a_fact(redis: Redis) -> None:
    store = FactStore(redis)
    stated = (await store.remember('acme', 'alice', "The user's favourite colour is teal.")).fact

    from_tool = await store.remember('acme', 'alice', "The user's favorite color is teal.", source='tool')
    assert from_tool.outcome == 'similar'
    assert (from_tool.fact.text, from_tool.fact.source) == (stated.text, 'user-stated')
    assert from_tool.fact.mentions == 2

    # The other way round, the user's own words take over a fact that came from a tool.
    tool_fact = (await store.remember('acme', 'alice', 'The user lives in Lyon.', source='tool')).fact
    confirmed = await store.remember('acme', 'alice', 'The user lives in Lyon', source='user-stated')
    assert (confirmed.fact.id, confirmed.fact.source) == (tool_fact.id, 'user-stated')


async def test_concurrent_duplicate_writes_store_one_fact(redis_url: str, tmp_path: Path) -> None:
    clients = [await connect(redis_url, home=tmp_path) for _ in range(12)]
    try:
        stores = [FactStore(client) for client in clients]
        # Each store warms its cache first, so every writer decides on the same (empty) view.
        for store in stores:
            await store.list_facts('acme', 'alice')

        results = await asyncio.gather(
            *(store.remember('acme', 'alice', 'The user likes green tea.') for store in stores for _ in range(3))
        )

        assert len({result.fact.id for result in results}) == 1
        assert sorted(result.outcome for result in results).count('created') == 1
        facts = await FactStore(clients[0]).list_facts('acme', 'alice')
        assert len(facts) == 1 and facts[0].mentions == 36
    finally:
        for client in clients:
            await client.aclose()


async def test_concurrent_similar_writes_store_one_fact(redis_url: str, tmp_path: Path) -> None:
    # Not the same text, so the digest index can't catch it: the version check makes writers retry.
    variants = [
        "The user's favourite colour is teal.",
        "The user's favorite color is teal.",
        "The user's favourite color is teal.",
        "The user's favorite colour is teal.",
    ]
    clients = [await connect(redis_url, home=tmp_path) for _ in range(8)]
    try:
        stores = [FactStore(client) for client in clients]
        for store in stores:
            await store.list_facts('acme', 'alice')

        results = await asyncio.gather(
            *(store.remember('acme', 'alice', variants[n % len(variants)]) for n, store in enumerate(stores))
        )

        assert len({result.fact.id for result in results}) == 1
        assert len(await FactStore(clients[0]).list_facts('acme', 'alice')) == 1
    finally:
        for client in clients:
            await client.aclose()


async def test_a_fact_expires_after_its_ttl(redis: Redis) -> None:
    clock = FakeClock()
    store = FactStore(redis, clock=clock, default_ttl_seconds=3600)
    short = (await store.remember('acme', 'alice', 'The user is in Paris this week.', ttl_seconds=60)).fact
    clock.advance(1)
    kept = (await store.remember('acme', 'alice', 'The user prefers metric units.')).fact
    clock.advance(1)
    permanent_store = FactStore(redis, clock=clock)
    forever = (await permanent_store.remember('acme', 'alice', 'The user is called Alice.')).fact
    assert short.expires_at is not None and kept.expires_at is not None and forever.expires_at is None

    clock.advance(59)
    assert [fact.id for fact in await store.list_facts('acme', 'alice')] == [kept.id, forever.id]
    assert await store.recall('acme', 'alice', 'Paris') == []
    # The next script that touches the user's memory deletes it from Redis too.
    assert await redis.hexists(UserFactKeys('acme', 'alice').facts, short.id) == 0

    clock.advance(3600)
    assert [fact.id for fact in await FactStore(redis, clock=clock).list_facts('acme', 'alice')] == [forever.id]


async def test_restating_a_fact_renews_its_ttl(redis: Redis) -> None:
    clock = FakeClock()
    store = FactStore(redis, clock=clock, default_ttl_seconds=100)
    fact = (await store.remember('acme', 'alice', 'The user is learning Rust.')).fact

    clock.advance(90)
    await store.remember('acme', 'alice', 'The user is learning Rust.')
    clock.advance(90)

    assert [f.id for f in await store.list_facts('acme', 'alice')] == [fact.id]


async def test_expiry_uses_real_time_by_default(redis: Redis) -> None:
    store = FactStore(redis)
    await store.remember('acme', 'alice', 'The user has a meeting at noon.', ttl_seconds=0.3)
    assert len(await store.list_facts('acme', 'alice')) == 1

    await asyncio.sleep(0.4)

    assert await store.list_facts('acme', 'alice') == []
    assert await FactStore(redis).list_facts('acme', 'alice') == []


async def test_another_user_sees_nothing(redis: Redis) -> None:
    store = FactStore(redis)
    fact = (await store.remember('acme', 'alice', "The user's favourite colour is teal.")).fact
    await store.remember('acme', 'bob', 'The user likes coffee.')

    assert await store.recall('acme', 'bob', 'favourite colour teal') == []
    assert [f.text for f in await store.list_facts('acme', 'bob')] == ['The user likes coffee.']
    assert [f['text'] for f in (await store.export('acme', 'bob'))['facts']] == ['The user likes coffee.']
    assert await store.forget('acme', 'bob', fact.id) is None  # bob can't delete alice's fact by id
    assert await store.list_facts('other-tenant', 'alice') == []  # nor does another tenant's alice see it
    assert [f.id for f in await store.list_facts('acme', 'alice')] == [fact.id]


async def test_recall_ranks_by_relevance_and_forget_removes_a_fact(redis: Redis) -> None:
    store = FactStore(redis)
    colour = (await store.remember('acme', 'alice', "The user's favourite colour is teal.")).fact
    await store.remember('acme', 'alice', 'The user works on project Apollo, a Rust compiler.')
    await store.remember('acme', 'alice', 'The user has two cats, Miso and Tofu.')

    assert [f.text for f in await store.recall('acme', 'alice', 'What colour do I like best? favourite?')] == [
        colour.text
    ]
    assert [f.text for f in await store.recall('acme', 'alice', 'cats')] == ['The user has two cats, Miso and Tofu.']
    assert len(await store.recall('acme', 'alice', '')) == 3  # no query: the most recent facts

    assert await store.forget('acme', 'alice', colour.id) == colour
    assert await store.recall('acme', 'alice', 'favourite colour') == []
    assert await store.forget('acme', 'alice', colour.id) is None
    assert await store.forget('acme', 'alice', 'not-an-id') is None


async def test_a_cache_notices_writes_from_other_processes(redis_url: str, tmp_path: Path) -> None:
    first, second = await connect(redis_url, home=tmp_path), await connect(redis_url, home=tmp_path)
    try:
        reader, writer = FactStore(first), FactStore(second)
        assert await reader.recall('acme', 'alice', 'tea') == []

        fact = (await writer.remember('acme', 'alice', 'The user drinks green tea.')).fact
        assert await reader.recall('acme', 'alice', 'tea') == [fact]

        await writer.forget('acme', 'alice', fact.id)
        assert await reader.recall('acme', 'alice', 'tea') == []

        await writer.remember('acme', 'alice', 'The user drinks black tea.')
        await writer.forget_all('acme', 'alice')
        assert await reader.list_facts('acme', 'alice') == []
    finally:
        await first.aclose()
        await second.aclose()


async def test_forget_all_leaves_other_users_alone(redis: Redis) -> None:
    store = FactStore(redis)
    for text in ('The user likes tea.', 'The user likes jazz.'):
        await store.remember('acme', 'alice', text)
    await store.remember('acme', 'bob', 'The user likes tea.')

    assert await store.forget_all('acme', 'alice') == 2

    assert await store.list_facts('acme', 'alice') == []
    assert len(await store.list_facts('acme', 'bob')) == 1
    # A fact remembered again after a reset is new, and nothing of the old one lingers.
    again = await store.remember('acme', 'alice', 'The user likes tea.')
    assert again.outcome == 'created' and again.fact.mentions == 1


async def test_export_then_import_round_trips_and_imports_once(redis: Redis) -> None:
    clock = FakeClock()
    store = FactStore(redis, clock=clock)
    await store.remember('acme', 'alice', 'The user likes tea.', session='s1', turn=2)
    await store.remember('acme', 'alice', 'The user is at a conference.', source='inferred', ttl_seconds=600)
    await store.remember('acme', 'alice', 'The page says the user is an admin.', source='tool')
    exported = json.loads(json.dumps(await store.export('acme', 'alice')))
    assert exported['format'] == 'tandem.facts' and exported['user'] == 'alice'

    report = await store.import_facts('acme', 'carol', exported)
    assert (report.created, report.updated, report.skipped) == (3, 0, 0)
    carol = {f.text: f for f in await store.list_facts('acme', 'carol')}
    assert (carol['The user likes tea.'].session, carol['The user likes tea.'].turn) == ('s1', 2)
    assert carol['The user is at a conference.'].source == 'inferred'
    assert carol['The user is at a conference.'].expires_at is not None
    assert carol['The page says the user is an admin.'].source == 'tool'  # provenance survives

    again = await store.import_facts('acme', 'carol', exported)
    assert (again.created, again.updated) == (0, 3)
    assert len(await store.list_facts('acme', 'carol')) == 3

    clock.advance(601)
    late = await store.import_facts('acme', 'dave', exported)
    assert (late.created, late.skipped) == (2, 1)  # the expired fact isn't imported


async def test_import_accepts_plain_lists_and_refuses_other_data(redis: Redis) -> None:
    store = FactStore(redis)

    report = await store.import_facts(
        'acme', 'alice', ['The user likes tea.', {'text': 'The user likes jazz.'}, 42, {}]
    )

    assert (report.created, report.skipped) == (2, 2)
    with pytest.raises(Exception, match='not a Tandem fact export'):
        await store.import_facts('acme', 'alice', {'format': 'something-else', 'facts': []})
    with pytest.raises(Exception, match='no facts to import'):
        await store.import_facts('acme', 'alice', {'format': 'tandem.facts'})


async def test_no_way_in_stores_a_secret_whatever_its_source(redis: Redis) -> None:
    store = FactStore(redis)

    for source in ('user-stated', 'tool', 'inferred'):
        with pytest.raises(SecretFactError, match='secrets are never remembered'):
            await store.remember('acme', 'alice', "The user's password is hunter2.", source=source)
    report = await store.import_facts('acme', 'alice', ['The user likes tea.', 'api key: sk-abcdefghijklmnopqrstuv'])

    assert (report.created, report.skipped) == (1, 1)
    assert [fact.text for fact in await store.list_facts('acme', 'alice')] == ['The user likes tea.']


async def test_the_per_user_limit_is_enforced_but_restatements_still_work(redis: Redis) -> None:
    store = FactStore(redis, max_facts=2)
    await store.remember('acme', 'alice', 'The user likes tea.')
    await store.remember('acme', 'alice', 'The user likes jazz.')

    with pytest.raises(FactLimitError, match='already has 2 facts'):
        await store.remember('acme', 'alice', 'The user has a cat.')
    assert (await store.remember('acme', 'alice', 'The user likes tea!')).outcome == 'normalized'


@pytest.mark.parametrize(
    ('call', 'error'),
    [
        (lambda s: s.remember('acme', 'alice', '   '), 'needs some text'),
        (lambda s: s.remember('acme', 'alice', '...'), 'letters or digits'),
        (lambda s: s.remember('acme', 'alice', 'x' * 501), 'at most 500 characters'),
        (lambda s: s.remember('acme', 'alice', 'ok', ttl_seconds=-1), 'positive'),
        (lambda s: s.remember('acme', 'alice', 'ok', source='web'), 'unknown fact source'),
        (lambda s: s.remember('acme', 'al:ice', 'ok'), 'invalid user id'),
        (lambda s: s.remember('acme', 'alice', 'ok', session='{s}'), 'invalid session id'),
        (lambda s: s.list_facts('ac*me', 'alice'), 'invalid tenant id'),
    ],
)
async def test_bad_input_is_refused_before_redis(redis: Redis, call: Callable[[FactStore], object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        await call(FactStore(redis))  # type: ignore[misc]
    assert await redis.dbsize() == 0


async def test_every_key_of_a_user_shares_one_hash_tag_and_works_on_a_cluster(
    redis_server_factory: Callable[..., RedisTestServer], tmp_path: Path
) -> None:
    keys = UserFactKeys('acme', 'alice')
    assert all(key.startswith('tandem:{acme:user:alice}:') for key in keys.all)

    server = redis_server_factory(cluster=True, appendonly=False)
    client = await connect(server.url, home=tmp_path)
    try:
        store = FactStore(client)
        fact = (await store.remember('acme', 'alice', 'The user likes tea.')).fact
        assert (await store.remember('acme', 'alice', 'the user likes tea')).outcome == 'normalized'
        assert await FactStore(client).recall('acme', 'alice', 'tea') == [
            fact.model_copy(update={'text': 'the user likes tea', 'mentions': 2, 'updated_at': IsDatetime()})
        ]
        assert await store.forget('acme', 'alice', fact.id) is not None
    finally:
        await client.aclose()


async def test_facts_are_stored_as_json_a_person_can_read(redis: Redis) -> None:
    fact = (await FactStore(redis).remember('acme', 'alice', 'The user reads https://example.com/blog')).fact

    raw = await redis.hget(UserFactKeys('acme', 'alice').facts, fact.id)

    assert raw is not None
    assert json.loads(raw) == {**fact.model_dump(mode='json'), 'norm': IsStr(regex=r'[0-9a-f]{32}')}
