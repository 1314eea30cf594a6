"""Session titles and search: a session is named by its first user message, and found by its text."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic_ai.conversation import Conversation
from pydantic_ai.messages import (
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.usage import RunUsage
from redis.asyncio import Redis

from tandem.memory.conversations import (
    TITLE_LENGTH,
    RedisConversationStore,
    SessionNotFoundError,
    session_title,
)
from tandem.memory.keys import SessionKeys

TENANT = 'acme'
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _ask(text: str) -> ModelRequest:
    return ModelRequest(parts=[UserPromptPart(content=text, timestamp=T0)])


def _answer(text: str) -> ModelResponse:
    return ModelResponse(parts=[TextPart(text)], timestamp=T0)


def _turn(question: str, answer: str) -> list[ModelMessage]:
    return [_ask(question), _answer(answer)]


@pytest.fixture
def store(redis: Redis) -> RedisConversationStore:
    return RedisConversationStore(redis, tenant=TENANT)


async def _save(store: RedisConversationStore, session: str, messages: list[ModelMessage], user: str = 'alice') -> None:
    conversation = await store.load(session) or Conversation(conversation_id=session)
    conversation.messages.extend(messages)
    await store.save(conversation, scope=user)


# -- titles -----------------------------------------------------------------------------------------


def test_a_title_is_the_first_line_of_the_first_user_message() -> None:
    messages = [
        ModelRequest(
            parts=[UserPromptPart(content=['', ImageUrl('https://example.com/a.png'), '\n  Plan   my trip\nto Rome'])]
        ),
        _ask('second question'),
    ]

    assert session_title(messages) == 'Plan my trip'
    assert session_title([_answer('no user here')]) is None


def test_a_long_title_is_cut_at_a_word_with_an_ellipsis() -> None:
    words = 'summarize the quarterly report of the northern region and list every risk it names'

    title = session_title([_ask(words)])

    assert title is not None and len(title) <= TITLE_LENGTH
    assert title.endswith('…') and words.startswith(title[:-1])
    assert words[len(title) - 1] == ' '  # cut between two words
    one_word = 'x' * 100
    assert session_title([_ask(one_word)]) == 'x' * (TITLE_LENGTH - 1) + '…'


async def test_a_saved_session_is_titled_by_its_first_turn_and_keeps_it(store: RedisConversationStore) -> None:
    await _save(store, 'trip', _turn('Plan my trip to Rome', 'Here is a plan.'))
    await _save(store, 'trip', _turn('And to Paris?', 'Also.'))

    [info] = await store.list_sessions()

    assert info.title == 'Plan my trip to Rome'


async def test_an_appended_session_is_titled_too(store: RedisConversationStore) -> None:
    await store.append('s1', _turn('What is BM25?', 'A ranking function.'), usage=RunUsage(), scope='alice')
    await store.append('s1', _turn('And TF-IDF?', 'Its ancestor.'), usage=RunUsage(), scope='alice')

    assert [info.title for info in await store.list_sessions()] == ['What is BM25?']


async def test_a_session_without_user_text_yet_has_no_title(store: RedisConversationStore) -> None:
    await store.save(Conversation(conversation_id='empty'), scope='alice')

    assert [info.title for info in await store.list_sessions()] == [None]

    await _save(store, 'empty', _turn('first words', 'ok'))

    assert [info.title for info in await store.list_sessions()] == ['first words']


async def test_a_set_title_replaces_the_first_message_and_keeps_the_ttl(redis: Redis) -> None:
    store = RedisConversationStore(redis, tenant=TENANT, ttl_seconds=60)
    await _save(store, 'trip', _turn('Plan my trip to Rome', 'ok'))

    await store.set_title('trip', '  Rome,\n in three days ')
    await _save(store, 'trip', _turn('more', 'ok'))

    assert [info.title for info in await store.list_sessions()] == ['Rome, in three days']
    assert 0 < await redis.pttl(SessionKeys(TENANT, 'trip').title) <= 60_000


async def test_a_title_set_in_place_of_another_leaves_a_different_one(store: RedisConversationStore) -> None:
    await _save(store, 'trip', _turn('Plan my trip', 'ok'))

    assert await store.set_title('trip', 'Rome', replacing='Plan my trip') == 'Rome'
    assert await store.set_title('trip', 'Paris', replacing='Plan my trip') is None

    assert [info.title for info in await store.list_sessions()] == ['Rome']


async def test_a_title_for_a_missing_session_or_a_blank_one_is_refused(store: RedisConversationStore) -> None:
    with pytest.raises(SessionNotFoundError, match="no session 'nope'"):
        await store.set_title('nope', 'a title')
    await _save(store, 'trip', _turn('Plan my trip', 'ok'))
    with pytest.raises(ValueError, match='needs some text'):
        await store.set_title('trip', ' \n ')

    assert [info.title for info in await store.list_sessions()] == ['Plan my trip']


async def test_deleting_a_session_deletes_its_title(store: RedisConversationStore, redis: Redis) -> None:
    await _save(store, 'trip', _turn('Plan my trip', 'ok'))

    await store.delete('trip')

    assert await redis.exists(SessionKeys(TENANT, 'trip').title) == 0


# -- search -----------------------------------------------------------------------------------------


async def test_search_finds_sessions_by_what_the_user_or_the_assistant_wrote(store: RedisConversationStore) -> None:
    await _save(store, 'rome', _turn('Plan my trip', 'Start at the Colosseum, then the Forum.'))
    await _save(store, 'bm25', _turn('Explain BM25', 'It ranks documents by term frequency.'))
    await _save(store, 'tax', [*_turn('hello', 'hi'), *_turn('When is the tax   DEADLINE?', 'April.')])

    assert [m.session.id for m in await store.search_sessions('colosseum')] == ['rome']
    assert [m.session.id for m in await store.search_sessions('bm25')] == ['bm25']
    [tax] = await store.search_sessions('tax deadline')
    assert tax.session.id == 'tax' and tax.session.title == 'hello'
    assert tax.snippet == 'When is the tax DEADLINE?'
    assert await store.search_sessions('Paris') == []


async def test_search_matches_the_title_and_quotes_and_gives_the_words_around(store: RedisConversationStore) -> None:
    long_answer = 'Some preamble that goes on for a while before it says "the secret word" and then goes on for much longer still.'
    await _save(store, 'quoted', _turn('Tell me a secret', long_answer))
    await _save(store, 'named', _turn('hi', 'hello'))
    await store.set_title('named', 'Budget review')

    [quoted] = await store.search_sessions('"the secret word"')
    [named] = await store.search_sessions('budget')

    assert quoted.snippet == '…for a while before it says "the secret word" and then goes on for much…'
    assert named.snippet == 'Budget review'


async def test_search_leaves_tool_calls_and_their_results_out(store: RedisConversationStore) -> None:
    messages: list[ModelMessage] = [
        _ask('what is two plus two'),
        ModelResponse(parts=[ToolCallPart('calculator', {'expression': 'zanzibar'}, tool_call_id='c1')]),
        ModelRequest(parts=[ToolReturnPart('calculator', 'zanzibar result', tool_call_id='c1')]),
        _answer('4'),
    ]
    await _save(store, 'calc', messages)

    assert await store.search_sessions('zanzibar') == []
    assert [m.session.id for m in await store.search_sessions('two plus')] == ['calc']


async def test_search_is_newest_first_per_user_and_stops_at_the_limit(store: RedisConversationStore) -> None:
    for n in range(5):
        await _save(store, f's{n}', _turn(f'question {n} about llamas', 'ok'), user='alice' if n % 2 == 0 else 'bob')

    everyone = await store.search_sessions('LLAMAS')
    alices = await store.search_sessions('llamas', user='alice', limit=2)

    assert [m.session.id for m in everyone] == ['s4', 's3', 's2', 's1', 's0']
    assert [m.session.id for m in alices] == ['s4', 's2']


async def test_a_blank_search_is_refused(store: RedisConversationStore) -> None:
    with pytest.raises(ValueError, match='give some text'):
        await store.search_sessions('  \n')
