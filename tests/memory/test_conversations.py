"""`RedisConversationStore` against a real Redis server: what it stores, how, and what survives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import ConversationConflict, ConversationEntry, ConversationRecord
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    BinaryImage,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.tools import DeferredToolRequests
from pydantic_ai.usage import RequestUsage, RunUsage
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from tandem.agent.core.errors import RedisUnavailableError
from tandem.memory.connection import connect
from tandem.memory.conversations import HistoryCache, RedisConversationStore, SessionNotFoundError
from tandem.memory.keys import SessionKeys, sessions_index_key
from tests.conftest import RedisTestServer
from tests.support.messages import user_prompts
from tests.support.processes import run_python

TENANT = 'acme'
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _turn(n: int, *, at: datetime = T0) -> list[ModelMessage]:
    """One turn with a tool call: prompt, call, result, answer."""
    at = at + timedelta(seconds=n)
    return [
        ModelRequest(parts=[UserPromptPart(content=f'what is {n} + 1?', timestamp=at)]),
        ModelResponse(
            parts=[ToolCallPart('calculator', {'expression': f'{n} + 1'}, tool_call_id=f'call-{n}')],
            usage=RequestUsage(input_tokens=10 + n, output_tokens=3),
            model_name='test-model',
            timestamp=at,
        ),
        ModelRequest(parts=[ToolReturnPart('calculator', {'value': n + 1}, tool_call_id=f'call-{n}', timestamp=at)]),
        ModelResponse(
            parts=[TextPart(f'{n} + 1 = {n + 1}')],
            usage=RequestUsage(input_tokens=20 + n, output_tokens=5),
            model_name='test-model',
            timestamp=at,
        ),
    ]


def _history(messages: int) -> list[ModelMessage]:
    turns = [message for n in range(messages // 4 + 1) for message in _turn(n)]
    return turns[:messages]


def _prompt(text: str) -> ModelRequest:
    return ModelRequest(parts=[UserPromptPart(content=text, timestamp=T0)])


@pytest.fixture
def store(redis: Redis) -> RedisConversationStore:
    return RedisConversationStore(redis, tenant=TENANT)


async def _append_with_retry(store: RedisConversationStore, session: str, message: ModelMessage) -> None:
    """What a writer does: load, append, save; on a conflict, load again and retry."""
    while True:
        conversation = await store.load(session, scope='alice') or Conversation(conversation_id=session)
        conversation.messages.append(message)
        try:
            await store.save(conversation, scope='alice')
            return
        except ConversationConflict:
            await asyncio.sleep(0)


_texts = user_prompts


# -- round trips ------------------------------------------------------------------------------------


async def test_a_saved_conversation_loads_back_equal(store: RedisConversationStore) -> None:
    deferred = DeferredToolRequests(
        approvals=[ToolCallPart('delete_file', {'path': 'x'}, tool_call_id='approve-1')],
        metadata={'approve-1': {'reason': 'destructive'}},
    )
    usage = RunUsage(requests=2, tool_calls=1, input_tokens=33, output_tokens=8, details={'reasoning': 4})
    messages = [
        *_turn(1),
        ModelRequest(parts=[UserPromptPart(content=['look', BinaryImage(b'\x89PNG\x00\xff', media_type='image/png')])]),
    ]
    conversation = Conversation(
        conversation_id='chat-1', messages=messages, usage=usage, deferred_tool_requests=deferred
    )

    saved = await store.save(conversation, scope='alice')
    loaded = await RedisConversationStore(store._redis, tenant=TENANT).load('chat-1', scope='alice')

    assert loaded is not None
    assert loaded.messages == messages
    assert loaded.usage == usage
    assert loaded.deferred_tool_requests == deferred
    assert loaded.revision == conversation.revision is not None
    assert [entry.message for entry in saved] == messages
    assert await store.message_count('chat-1') == len(messages)


async def test_history_reloads_in_a_fresh_process(store: RedisConversationStore, redis_url: str) -> None:
    messages = _history(9)
    await store.save(Conversation(conversation_id='chat-1', messages=messages), scope='alice')

    printed = await run_python(
        """
        import asyncio, sys
        from pathlib import Path
        from pydantic_ai.messages import ModelMessagesTypeAdapter
        from tandem.memory.connection import connect
        from tandem.memory.conversations import RedisConversationStore

        async def main():
            redis = await connect(sys.argv[1], home=Path('.'))
            conversation = await RedisConversationStore(redis, tenant='acme').load('chat-1', scope='alice')
            sys.stdout.write(ModelMessagesTypeAdapter.dump_json(conversation.messages).decode())
            await redis.aclose()

        asyncio.run(main())
        """,
        redis_url,
    )

    assert ModelMessagesTypeAdapter.validate_json(printed) == messages


async def test_a_limited_load_returns_the_last_messages(store: RedisConversationStore) -> None:
    messages = _history(10)
    await store.save(Conversation(conversation_id='chat-1', messages=messages))

    loaded = await store.load('chat-1', limit=3)
    nothing = await store.load('chat-1', limit=0)

    assert loaded is not None and loaded.messages == messages[-3:]
    assert nothing is not None and nothing.messages == []


async def test_a_load_from_a_start_walks_only_what_it_returns_and_saves_after_the_whole(redis: Redis) -> None:
    messages = _history(50)
    writer = RedisConversationStore(redis, tenant=TENANT)
    await writer.save(Conversation(conversation_id='chat', messages=messages), scope='alice')
    held = HistoryCache(1024 * 1024)
    store = RedisConversationStore(redis, tenant=TENANT, history_cache=held)
    await store.load_owned('chat', user='alice')  # held now: a window must still come from Redis
    start = len(messages) - 6

    reads = await _history_reads(redis, lambda: store.load_owned('chat', user='alice', start=start))
    window = await store.load_owned('chat', user='alice', start=start)

    assert window is not None and window.messages == messages[start:]
    assert reads <= 2 * 6  # a parent and an entry per message returned, however long the history
    assert len(held) == 0  # loaded from a start from now on: the whole history would only take room
    window.messages.extend(_turn(99))
    await store.save(window, scope='alice')
    assert await store.export_messages('chat', user='alice') == [*messages, *_turn(99)]
    past = await store.load_owned('chat', user='alice', start=10_000)
    assert past is not None and past.messages == []
    with pytest.raises(UserError, match='`start` must not be negative'):
        await store.load_owned('chat', user='alice', start=-1)


# -- writes -----------------------------------------------------------------------------------------


async def test_a_save_stores_only_the_new_messages(store: RedisConversationStore, redis: Redis) -> None:
    keys = SessionKeys(TENANT, 'chat-1')
    await store.save(Conversation(conversation_id='chat-1', messages=_turn(1)))
    assert await redis.hlen(keys.entries) == 4

    conversation = await store.load('chat-1')
    assert conversation is not None
    conversation.messages.extend(_turn(2)[:2])
    stored = await store.save(conversation)

    assert [entry.message for entry in stored] == _turn(2)[:2]
    assert await redis.hlen(keys.entries) == 6
    reloaded = await store.load('chat-1')
    assert reloaded is not None and reloaded.messages == _turn(1) + _turn(2)[:2]


async def test_saving_from_a_stale_load_is_a_conflict(store: RedisConversationStore) -> None:
    await store.save(Conversation(conversation_id='chat-1', messages=[_prompt('first')]))
    mine = await store.load('chat-1')
    theirs = await store.load('chat-1')
    assert mine is not None and theirs is not None
    mine.messages.append(_prompt('mine'))
    theirs.messages.append(_prompt('theirs'))

    await store.save(mine)
    with pytest.raises(ConversationConflict):
        await store.save(theirs)

    stored = await store.load('chat-1')
    assert stored is not None and _texts(stored.messages) == ['first', 'mine']


async def test_creating_a_session_that_exists_is_a_conflict(store: RedisConversationStore) -> None:
    await store.save(Conversation(conversation_id='chat-1', messages=[_prompt('first')]))

    with pytest.raises(ConversationConflict):
        await store.save(Conversation(conversation_id='chat-1', messages=[_prompt('second')]))


async def test_a_retried_write_whose_reply_was_lost_is_not_a_conflict(store: RedisConversationStore) -> None:
    # redis-py retries a command after a dropped connection; the first attempt may have landed.
    entry = ConversationEntry(parent_id=None, message=_prompt('once'))
    record = ConversationRecord(conversation_id='chat-1', head_id=entry.id)

    await store.write_record(record, new_entries=[entry], expected_revision=None)
    await store.write_record(record, new_entries=[entry], expected_revision=None)

    loaded = await store.load('chat-1')
    assert loaded is not None and _texts(loaded.messages) == ['once']


async def test_a_head_that_is_not_stored_is_a_conflict_and_writes_nothing(redis: Redis) -> None:
    orphan = ConversationEntry(parent_id='missing', message=_prompt('orphan'))
    store = RedisConversationStore(redis, tenant=TENANT)

    with pytest.raises(ConversationConflict):
        await store.write_record(
            ConversationRecord(conversation_id='chat-1', head_id='missing'), expected_revision=None
        )
    with pytest.raises(ConversationConflict):
        await store.write_record(
            ConversationRecord(conversation_id='chat-1', head_id=orphan.id),
            new_entries=[orphan],
            expected_revision=None,
        )

    assert await redis.exists(*SessionKeys(TENANT, 'chat-1').all) == 0


async def test_concurrent_writers_with_their_own_clients_lose_nothing(redis_url: str, tmp_path: Path) -> None:
    writers, appends = 4, 8
    clients = [await connect(redis_url, home=tmp_path) for _ in range(writers)]
    stores = [RedisConversationStore(client, tenant=TENANT) for client in clients]

    async def writer(index: int) -> None:
        for n in range(appends):
            await _append_with_retry(stores[index], 'shared', _prompt(f'w{index}-{n}'))

    await asyncio.gather(*(writer(index) for index in range(writers)))

    loaded = await stores[0].load('shared')
    assert loaded is not None
    texts = _texts(loaded.messages)
    assert sorted(texts) == sorted(f'w{i}-{n}' for i in range(writers) for n in range(appends))
    for index in range(writers):
        assert [t for t in texts if t.startswith(f'w{index}-')] == [f'w{index}-{n}' for n in range(appends)]
    for client in clients:
        await client.aclose()


async def test_two_processes_appending_to_one_session_lose_nothing(
    store: RedisConversationStore, redis_url: str
) -> None:
    code = """
        import asyncio, sys
        from pathlib import Path
        from pydantic_ai.conversation import Conversation
        from pydantic_ai.conversation_store import ConversationConflict, ConversationEntry, ConversationRecord
        from pydantic_ai.messages import ModelRequest
        from tandem.memory.connection import connect
        from tandem.memory.conversations import RedisConversationStore

        async def main(url, name):
            store = RedisConversationStore(await connect(url, home=Path('.')), tenant='acme')
            for n in range(10):
                while True:
                    conversation = await store.load('shared') or Conversation(conversation_id='shared')
                    conversation.messages.append(ModelRequest.user_text_prompt(f'{name}-{n}'))
                    try:
                        await store.save(conversation)
                        break
                    except ConversationConflict:
                        pass

        asyncio.run(main(*sys.argv[1:]))
        """
    await asyncio.gather(run_python(code, redis_url, 'p'), run_python(code, redis_url, 'q'))

    loaded = await store.load('shared')
    assert loaded is not None
    texts = _texts(loaded.messages)
    assert [t for t in texts if t.startswith('p-')] == [f'p-{n}' for n in range(10)]
    assert [t for t in texts if t.startswith('q-')] == [f'q-{n}' for n in range(10)]
    assert len(texts) == 20


# -- appends: a turn after whatever the history ends with now --------------------------------------


async def test_an_append_joins_the_newest_history_where_a_stale_save_is_refused(
    store: RedisConversationStore,
) -> None:
    stale = Conversation(conversation_id='chat-1', messages=_turn(1))
    await store.save(stale, scope='alice')
    other = await RedisConversationStore(store._redis, tenant=TENANT).load('chat-1')  # pyright: ignore[reportPrivateUsage]
    assert other is not None
    other.messages.extend(_turn(2))
    await store.save(other)  # another process saved a turn since `stale` was loaded
    stale.messages.extend(_turn(3))
    with pytest.raises(ConversationConflict):
        await store.save(stale)

    entries = await store.append(
        'chat-1', _turn(3), usage=RunUsage(requests=2, tool_calls=1, input_tokens=5, details={'r': 2}), scope='alice'
    )

    loaded = await store.load('chat-1', scope='alice')
    assert loaded is not None
    assert loaded.messages == _turn(1) + _turn(2) + _turn(3)
    assert [entry.message for entry in entries] == _turn(3)
    assert entries[0].parent_id == (await store.load_entries('chat-1'))[7].id  # type: ignore[index]
    assert loaded.usage.requests == 2 and loaded.usage.tool_calls == 1
    assert loaded.usage.input_tokens == 5 and loaded.usage.details == {'r': 2}
    assert [s.message_count for s in await store.list_sessions()] == [12]


async def test_an_append_adds_its_usage_and_cost_to_the_sessions(store: RedisConversationStore) -> None:
    usage = RunUsage(requests=1, input_tokens=10, output_tokens=3, details={'reasoning': 4})
    usage.cost = Decimal('0.000125')
    await store.save(Conversation(conversation_id='chat-1', messages=_turn(1), usage=usage), scope='alice')

    await store.append('chat-1', _turn(2), usage=usage, scope='alice')
    await store.append('chat-1', _turn(3), usage=RunUsage(requests=1), scope='alice')

    loaded = await store.load('chat-1')
    assert loaded is not None
    assert (loaded.usage.requests, loaded.usage.input_tokens, loaded.usage.output_tokens) == (3, 20, 6)
    assert loaded.usage.details == {'reasoning': 8}
    assert loaded.usage.cost == Decimal('0.00025')


async def test_an_append_creates_a_new_session_with_its_user_and_keeps_branches(store: RedisConversationStore) -> None:
    await store.append('fresh', _turn(1), usage=RunUsage(requests=2), scope='alice')
    fresh = await store.load('fresh', scope='alice')
    assert fresh is not None and fresh.messages == _turn(1) and fresh.usage.requests == 2

    rewritten = Conversation(conversation_id='fresh', messages=_turn(5), revision=fresh.revision)
    await store.save(rewritten)  # a rewrite leaves the old history as a branch
    record = await store.read_record('fresh')
    assert record is not None and len(record.branches) == 1
    await store.append('fresh', _turn(6), usage=RunUsage(), scope='alice')

    after = await store.read_record('fresh')
    assert after is not None and after.branches == record.branches and after.scope == 'alice'
    reloaded = await store.load('fresh')
    assert reloaded is not None and reloaded.messages == _turn(5) + _turn(6)


async def test_an_append_to_another_users_session_is_refused_and_stores_nothing(
    store: RedisConversationStore, redis: Redis
) -> None:
    await store.save(Conversation(conversation_id='chat-1', messages=_turn(1)), scope='alice')

    with pytest.raises(ConversationConflict):
        await store.append('chat-1', _turn(2), usage=RunUsage(), scope='mallory')

    assert await redis.hlen(SessionKeys(TENANT, 'chat-1').entries) == 4
    loaded = await store.load('chat-1', scope='alice')
    assert loaded is not None and loaded.messages == _turn(1)


async def test_an_append_retried_after_its_reply_was_lost_is_stored_once(
    store: RedisConversationStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save(Conversation(conversation_id='chat-1', messages=_turn(1)), scope='alice')
    await store.append('warm', _turn(1), usage=RunUsage())  # the script's first call also loads it
    original = cast(Callable[..., Awaitable[Any]], redis.execute_command)

    async def reply_lost_then_retried(*args: Any, **options: Any) -> Any:
        if args[0] == 'EVALSHA':
            await original(*args, **options)  # it ran, but its reply never came back
        return await original(*args, **options)

    monkeypatch.setattr(redis, 'execute_command', reply_lost_then_retried)
    entries = await store.append('chat-1', _turn(2), usage=RunUsage(requests=1), scope='alice')
    monkeypatch.undo()

    loaded = await store.load('chat-1')
    assert loaded is not None and loaded.messages == _turn(1) + _turn(2)
    assert loaded.usage.requests == 1
    stored = await store.load_entries('chat-1')
    assert stored is not None and entries[0].parent_id == stored[3].id


async def test_an_appended_session_keeps_the_stores_ttl(redis: Redis) -> None:
    store = RedisConversationStore(redis, tenant=TENANT, ttl_seconds=60)
    await store.append('brief', _turn(1), usage=RunUsage(), scope='alice')

    for key in SessionKeys(TENANT, 'brief').all:
        assert 0 < await redis.pttl(key) <= 60_000, key


async def test_an_append_costs_one_round_trip_and_the_held_history_stays_whole(
    store: RedisConversationStore, commands: list[str]
) -> None:
    await store.save(Conversation(conversation_id='chat-1', messages=_turn(1)), scope='alice')
    loaded = await store.load('chat-1')
    await store.append('warm', _turn(1), usage=RunUsage())  # the script's first call also loads it
    commands.clear()

    await store.append('chat-1', _turn(2), usage=RunUsage(), scope='alice')

    assert commands == ['EVALSHA']
    reloaded = await store.load('chat-1')
    assert reloaded is not None and loaded is not None
    assert reloaded.messages == _turn(1) + _turn(2)


async def test_every_session_key_expires_with_the_ttl(redis: Redis) -> None:
    store = RedisConversationStore(redis, tenant=TENANT, ttl_seconds=1)
    keys = SessionKeys(TENANT, 'brief')
    await store.save(Conversation(conversation_id='brief', messages=_turn(1)))
    for key in keys.all:
        assert 0 < await redis.pttl(key) <= 1000, key

    await asyncio.sleep(1.2)

    assert await store.load('brief') is None
    assert await store.list_sessions() == []
    assert await redis.zcard(sessions_index_key(TENANT)) == 0  # listing pruned the expired member


async def test_a_save_without_ttl_makes_the_session_permanent_again(redis: Redis) -> None:
    await RedisConversationStore(redis, tenant=TENANT, ttl_seconds=60).save(
        Conversation(conversation_id='chat-1', messages=[_prompt('hi')])
    )
    permanent = RedisConversationStore(redis, tenant=TENANT)
    conversation = await permanent.load('chat-1')
    assert conversation is not None
    conversation.messages.append(_prompt('again'))

    await permanent.save(conversation)

    keys = SessionKeys(TENANT, 'chat-1').all
    assert [await redis.pttl(key) for key in keys] == [-1] * len(keys)


# -- round trips per call ---------------------------------------------------------------------------


@pytest.fixture
def commands(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The round trips the `redis` client makes: a command, or a pipeline's commands joined by `+`."""
    sent: list[str] = []
    original = cast(Callable[..., Awaitable[Any]], redis.execute_command)
    original_pipeline = Pipeline.execute

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return await original(*args, **options)

    async def counting_pipeline(pipe: Pipeline, raise_on_error: bool = True) -> list[Any]:
        sent.append(' + '.join(str(command[0][0]) for command in pipe.command_stack))
        return await original_pipeline(pipe, raise_on_error)

    monkeypatch.setattr(redis, 'execute_command', counting)
    monkeypatch.setattr(Pipeline, 'execute', counting_pipeline)
    yield sent


@pytest.mark.parametrize('length', [10, 100, 1000])
async def test_loading_takes_one_round_trip_whatever_the_length(redis: Redis, commands: list[str], length: int) -> None:
    messages = _history(length)
    writer = RedisConversationStore(redis, tenant=TENANT)
    await writer.save(Conversation(conversation_id='long', messages=messages))
    await writer.load('long')  # the first call of a script also loads it into the server

    commands.clear()
    loaded = await RedisConversationStore(redis, tenant=TENANT).load('long')

    assert loaded is not None and loaded.messages == messages
    assert commands == ['EVALSHA']  # the record and its history, in one script


async def test_saving_a_turn_takes_one_round_trip(redis: Redis, commands: list[str]) -> None:
    store = RedisConversationStore(redis, tenant=TENANT)
    await store.save(Conversation(conversation_id='chat-1', messages=_history(40)))
    conversation = await store.load('chat-1')
    assert conversation is not None
    conversation.messages.extend(_turn(99))

    commands.clear()
    await store.save(conversation)

    assert commands == ['EVALSHA']  # the record is the one loaded; one atomic write, the index with it

    commands.clear()
    await store.save(conversation)  # saved again unchanged: still no re-read

    assert commands == ['EVALSHA']


async def test_loading_a_users_session_takes_one_round_trip_whether_or_not_it_exists(
    redis: Redis, commands: list[str]
) -> None:
    store = RedisConversationStore(redis, tenant=TENANT)
    await store.save(Conversation(conversation_id='theirs', messages=_turn(1)), scope='alice')
    await store.save(Conversation(conversation_id='gone', messages=_turn(2)), scope='alice')
    await store.read_record('gone')  # the store now remembers alice's record...
    await redis.delete(*SessionKeys(TENANT, 'gone').all)  # ...which another process deletes
    await RedisConversationStore(redis, tenant=TENANT).load('theirs')  # loads the script into the server

    commands.clear()
    assert await store.load_owned('new', user='bob') is None
    assert await store.load_owned('gone', user='bob') is None
    with pytest.raises(SessionNotFoundError, match="session 'theirs' belongs to another user"):
        await store.load_owned('theirs', user='bob')
    loaded = await store.load_owned('theirs', user='alice')

    assert loaded is not None and loaded.messages == _turn(1)
    assert commands == ['EVALSHA'] * 4  # one script each: none reads the record again


# -- the history a store holds ----------------------------------------------------------------------


async def _history_reads(redis: Redis, load: Callable[[], Awaitable[Conversation | None]]) -> int:
    """How many entries Redis read (HGET, also from scripts) while `load` ran."""
    await redis.config_resetstat()
    await load()
    stats = await redis.info('commandstats')
    return int(stats.get('cmdstat_hget', {}).get('calls', 0))


async def test_a_session_this_store_wrote_loads_without_walking_its_history(redis: Redis) -> None:
    store = RedisConversationStore(redis, tenant=TENANT)
    await store.save(Conversation(conversation_id='chat', messages=_history(40)))
    conversation = await store.load('chat')
    assert conversation is not None
    conversation.messages.extend(_turn(99))
    await store.save(conversation)
    await store.save(conversation)  # again, unchanged

    assert await _history_reads(redis, lambda: store.load('chat')) == 0
    reloaded = await store.load('chat')
    assert reloaded is not None and reloaded.messages == [*_history(40), *_turn(99)]
    # A store that holds nothing walks the 44 entries (and their parents) server-side.
    assert await _history_reads(redis, lambda: RedisConversationStore(redis, tenant=TENANT).load('chat')) >= 44


async def test_a_held_history_follows_what_another_process_stored(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    mine = RedisConversationStore(redis, tenant=TENANT)
    await mine.save(Conversation(conversation_id='chat', messages=_history(8)), scope='alice')
    other_client = await connect(redis_url, home=tmp_path)
    theirs = RedisConversationStore(other_client, tenant=TENANT)
    try:
        await _append_with_retry(theirs, 'chat', _prompt('from the other process'))
        loaded = await mine.load('chat', scope='alice')
        assert loaded is not None and _texts(loaded.messages)[-1] == 'from the other process'

        rewritten = await theirs.load('chat', scope='alice')
        assert rewritten is not None
        rewritten.messages[:] = [*_history(4), _prompt('a branch')]
        await theirs.save(rewritten, scope='alice')
        loaded = await mine.load('chat', scope='alice')
        assert loaded is not None and loaded.messages == [*_history(4), _prompt('a branch')]

        await theirs.delete('chat', scope='alice')
        assert await mine.load('chat', scope='alice') is None
    finally:
        await other_client.aclose()


async def test_two_loads_never_share_a_message(store: RedisConversationStore) -> None:
    await store.save(Conversation(conversation_id='chat', messages=_history(8)))
    first = await store.load('chat')
    assert first is not None
    first_request = first.messages[0]
    assert isinstance(first_request, ModelRequest)
    first_request.parts = [UserPromptPart('changed in memory only')]

    second = await store.load('chat')

    assert second is not None and second.messages == _history(8)


async def test_the_held_histories_stay_within_their_byte_budget(redis: Redis) -> None:
    one_history = len(ModelMessagesTypeAdapter.dump_json(_history(40))) * 2  # entries carry ids as well
    store = RedisConversationStore(redis, tenant=TENANT, history_cache_bytes=one_history)
    await store.save(Conversation(conversation_id='older', messages=_history(40)))
    await store.save(Conversation(conversation_id='newer', messages=_history(40)))

    assert await _history_reads(redis, lambda: store.load('newer')) == 0
    assert await _history_reads(redis, lambda: store.load('older')) >= 40  # pushed out by the newer one

    off = RedisConversationStore(redis, tenant=TENANT, history_cache_bytes=0)
    await off.save(Conversation(conversation_id='uncached', messages=_history(4)))
    assert await _history_reads(redis, lambda: off.load('uncached')) >= 4
    with pytest.raises(ValueError, match='history_cache_bytes'):
        RedisConversationStore(redis, tenant=TENANT, history_cache_bytes=-1)


# -- listing, deleting, scopes ----------------------------------------------------------------------


async def test_sessions_list_newest_first_with_counts_and_by_user(store: RedisConversationStore) -> None:
    await store.save(Conversation(conversation_id='s1', messages=_history(2)), scope='alice')
    await store.save(Conversation(conversation_id='s2', messages=_history(4), usage=RunUsage(requests=3)), scope='bob')
    await store.save(Conversation(conversation_id='s3', messages=_history(6)), scope='alice')

    everyone = await store.list_sessions()
    alice = await store.list_sessions(user='alice')
    newest = await store.list_sessions(limit=1)
    records = await store.list_conversations(scope='bob')

    assert [(s.id, s.user, s.message_count) for s in everyone] == [
        ('s3', 'alice', 6),
        ('s2', 'bob', 4),
        ('s1', 'alice', 2),
    ]
    assert everyone[1].usage == RunUsage(requests=3)
    assert everyone[0].updated_at > everyone[1].updated_at > everyone[2].updated_at
    assert [s.id for s in alice] == ['s3', 's1']
    assert [s.id for s in newest] == ['s3']
    assert [r.conversation_id for r in records] == ['s2']


async def test_listing_pages_through_many_sessions(store: RedisConversationStore) -> None:
    for n in range(130):  # more than one page of the index
        await store.save(
            Conversation(conversation_id=f's{n:03}', messages=[_prompt('x')]), scope='alice' if n % 2 else 'bob'
        )

    alice = await store.list_sessions(user='alice')
    latest_bob = await store.list_sessions(user='bob', limit=3)

    assert len(alice) == 65
    assert [s.id for s in latest_bob] == ['s128', 's126', 's124']


async def test_listing_skips_and_removes_index_members_without_a_record(
    store: RedisConversationStore, redis: Redis
) -> None:
    # What a crash between a cluster's index update and its write script leaves behind.
    await redis.zadd(sessions_index_key(TENANT), {'ghost': 1.0})
    await store.save(Conversation(conversation_id='real', messages=[_prompt('hi')]))

    assert [s.id for s in await store.list_sessions()] == ['real']
    assert await redis.zscore(sessions_index_key(TENANT), 'ghost') is None


async def test_delete_removes_the_record_its_entries_and_its_listing(
    store: RedisConversationStore, redis: Redis
) -> None:
    await store.save(Conversation(conversation_id='doomed', messages=_turn(1)), scope='alice')
    await store.save(Conversation(conversation_id='kept', messages=_turn(2)), scope='alice')

    await store.delete('doomed', scope='alice')

    assert await store.load('doomed') is None
    assert await redis.exists(*SessionKeys(TENANT, 'doomed').all) == 0
    assert [s.id for s in await store.list_sessions()] == ['kept']
    assert await store.message_count('doomed') == 0


async def test_another_users_scope_can_neither_load_save_nor_delete(store: RedisConversationStore) -> None:
    await store.save(Conversation(conversation_id='private', messages=[_prompt('secret')]), scope='alice')

    assert await store.load('private', scope='bob') is None
    with pytest.raises(ConversationConflict):
        await store.save(Conversation(conversation_id='private', messages=[_prompt('hijack')]), scope='bob')
    await store.delete('private', scope='bob')
    with pytest.raises(SessionNotFoundError, match="no session 'private'"):
        await store.export_messages('private', user='bob')

    assert _texts(await store.export_messages('private', user='alice')) == ['secret']


async def test_tenants_do_not_see_each_others_sessions(redis: Redis) -> None:
    acme = RedisConversationStore(redis, tenant='acme')
    globex = RedisConversationStore(redis, tenant='globex')
    await acme.save(Conversation(conversation_id='chat-1', messages=[_prompt('acme')]))

    assert await globex.load('chat-1') is None
    assert await globex.list_sessions() == []


async def test_branching_back_and_forth_keeps_every_branch(store: RedisConversationStore) -> None:
    await store.save(Conversation(conversation_id='chat-1', messages=[_prompt('a'), _prompt('b'), _prompt('c')]))
    loaded = await store.load('chat-1')
    assert loaded is not None

    edited = await store.branch('chat-1', at=1, expected_revision=loaded.revision)
    edited.messages.append(_prompt('b2'))
    await store.save(edited)
    record = await store.read_record('chat-1')
    assert record is not None and len(record.branches) == 1

    back = await store.branch('chat-1', from_entry=record.branches[0], expected_revision=record.revision)

    assert _texts(back.messages) == ['a', 'b', 'c']
    current = await store.load('chat-1')
    assert current is not None and _texts(current.messages) == ['a', 'b', 'c']
    assert await store.message_count('chat-1') == 3


async def test_a_fork_that_keeps_history_is_refused(store: RedisConversationStore) -> None:
    # The fork's entries would live in another session's slot: see the store's docs.
    await store.save(Conversation(conversation_id='chat-1', messages=[_prompt('a')]))

    with pytest.raises(ConversationConflict):
        await store.fork('chat-1', new_conversation_id='chat-2')
    empty = await store.fork('chat-1', at=0, new_conversation_id='chat-3')

    assert empty.messages == []
    assert await store.load('chat-2') is None


async def test_the_store_works_unchanged_on_redis_cluster(
    redis_server_factory: Callable[..., RedisTestServer], tmp_path: Path
) -> None:
    # A cluster refuses a script or transaction whose keys span slots, so this proves every
    # write, read and listing keeps to one hash tag (or splits per node, for the listing).
    server = redis_server_factory(appendonly=False, cluster=True)
    client = await connect(server.url, home=tmp_path)
    store = RedisConversationStore(client, tenant=TENANT)
    for n in range(3):
        await store.save(Conversation(conversation_id=f's{n}', messages=_turn(n)), scope='alice')
    conversation = await store.load('s1', scope='alice')
    assert conversation is not None
    conversation.messages.extend(_turn(9))
    await store.save(conversation)
    await store.delete('s0')
    await store.append('s2', _turn(7), usage=RunUsage(), scope='alice')

    reloaded = await store.load('s1')
    assert reloaded is not None and reloaded.messages == _turn(1) + _turn(9)
    appended = await RedisConversationStore(client, tenant=TENANT).load('s2')
    assert appended is not None and appended.messages == _turn(2) + _turn(7)
    assert [(s.id, s.message_count) for s in await store.list_sessions(user='alice')] == [('s2', 8), ('s1', 8)]
    await client.aclose()


# -- a server that dies mid-save --------------------------------------------------------------------


async def test_redis_killed_mid_save_raises_a_clear_error_and_leaves_history_whole(
    redis_server_factory: Callable[..., RedisTestServer], tmp_path: Path
) -> None:
    server = redis_server_factory(appendonly=True)
    redis = await connect(server.url, home=tmp_path, retries=1)
    store = RedisConversationStore(redis, tenant=TENANT)
    await store.save(Conversation(conversation_id='chat-1', messages=_turn(1)), scope='alice')
    conversation = await store.load('chat-1', scope='alice')
    assert conversation is not None
    conversation.messages.extend(_turn(2))

    # Kill the server as the save's write script is sent: mid-save.
    original = cast(Callable[..., Awaitable[Any]], redis.execute_command)

    async def dying(*args: Any, **options: Any) -> Any:
        if args[0] == 'EVALSHA':
            server.kill()
        return await original(*args, **options)

    with (
        pytest.MonkeyPatch.context() as patch,
        pytest.raises(RedisUnavailableError, match='lost the connection to Redis while saving a session'),
    ):
        patch.setattr(redis, 'execute_command', dying)
        await store.save(conversation, scope='alice')
    await redis.aclose()

    server.restart()  # same port, same append-only file
    revived = await connect(server.url, home=tmp_path)
    after = RedisConversationStore(revived, tenant=TENANT)
    reloaded = await after.load('chat-1', scope='alice')

    assert reloaded is not None and reloaded.messages == _turn(1)
    assert await revived.hlen(SessionKeys(TENANT, 'chat-1').entries) == 4  # no orphaned entries
    assert [s.message_count for s in await after.list_sessions()] == [4]
    await revived.aclose()


async def test_the_record_is_plain_inspectable_json(store: RedisConversationStore, redis: Redis) -> None:
    # Operators read sessions with redis-cli: the record must be ordinary JSON.
    await store.save(Conversation(conversation_id='chat-1', messages=[_prompt('hi')]), scope='alice')

    record = json.loads(cast(bytes, await redis.get(SessionKeys(TENANT, 'chat-1').conv)))

    assert record['conversation_id'] == 'chat-1'
    assert record['scope'] == 'alice'
    assert record['format_version'] == 1


async def test_stores_of_two_tenants_share_one_history_cache_without_taking_each_others_place(redis: Redis) -> None:
    shared = HistoryCache(1024 * 1024)
    acme = RedisConversationStore(redis, tenant='acme', history_cache=shared)
    beta = RedisConversationStore(redis, tenant='beta', history_cache=shared)
    await acme.save(Conversation(conversation_id='chat', messages=_history(8)))
    await beta.save(Conversation(conversation_id='chat', messages=_history(12)))

    assert len(shared) == 2
    assert await _history_reads(redis, lambda: acme.load('chat')) == 0
    assert await _history_reads(redis, lambda: beta.load('chat')) == 0
    loaded = await acme.load('chat')
    assert loaded is not None and loaded.messages == _history(8)
