"""Ids are validated once, before any key is built; every key of a session shares one hash tag."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import ConversationRecord
from redis.crc import key_slot

from tandem.agent.core.errors import InvalidIdError, TandemError
from tandem.memory.conversations import RedisConversationStore
from tandem.memory.keys import SessionKeys, session_key, sessions_index_key, tenant_key, user_key, validate_id

REJECTED = [
    pytest.param('', id='empty'),
    pytest.param('*', id='glob-star'),
    pytest.param('a*b', id='inner-star'),
    pytest.param('a?', id='glob-question'),
    pytest.param('[ab]', id='glob-brackets'),
    pytest.param('a:b', id='colon'),
    pytest.param('{a}', id='hash-tag'),
    pytest.param('a{', id='open-brace'),
    pytest.param('a}', id='close-brace'),
    pytest.param('a b', id='space'),
    pytest.param('a\tb', id='tab'),
    pytest.param('a\nb', id='newline'),
    pytest.param('abc\n', id='trailing-newline'),
    pytest.param('a\x00b', id='nul'),
    pytest.param('a\x7f', id='del'),
    pytest.param('caf\u00e9', id='non-ascii'),
    pytest.param('a/b', id='slash'),
    pytest.param('x' * 129, id='129-chars'),
]

ACCEPTED = ['a', '0', 'alice', 'alice@example.com', 'sess-01_2.3', 'A-Z.a_z@0-9', 'x' * 128]


@pytest.mark.parametrize('value', REJECTED)
def test_unsafe_ids_are_rejected_with_an_actionable_one_line_message(value: str) -> None:
    with pytest.raises(InvalidIdError) as caught:
        validate_id('session', value)
    message = str(caught.value)
    assert message.startswith(f'invalid session id {value!r}: use 1-128 letters, digits')
    assert '\n' not in message
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TandemError)


@pytest.mark.parametrize('value', ACCEPTED)
def test_ordinary_ids_are_accepted_unchanged(value: str) -> None:
    assert validate_id('user', value) == value


def test_session_keys_share_one_hash_tag_and_cluster_slot() -> None:
    keys = SessionKeys('acme', 'chat-1')
    assert keys.conv == 'tandem:{acme:chat-1}:conv'
    assert keys.entries == 'tandem:{acme:chat-1}:entries'
    assert keys.parents == 'tandem:{acme:chat-1}:parents'
    assert set(keys.all) >= {keys.conv, keys.entries, keys.parents, keys.depths, keys.count}
    assert all(key.startswith('tandem:{acme:chat-1}:') for key in keys.all)
    assert len({key_slot(key.encode()) for key in keys.all}) == 1


def test_tenant_user_and_session_layouts() -> None:
    assert tenant_key('acme', 'sessions') == 'tandem:{acme}:sessions'
    assert sessions_index_key('acme') == 'tandem:{acme}:sessions'
    assert SessionKeys('acme', 's1').index == 'tandem:{acme}:sessions'
    assert user_key('acme', 'alice', 'facts') == 'tandem:{acme:user:alice}:facts'
    assert session_key('acme', 's1', 'conv') == 'tandem:{acme:s1}:conv'
    # A session named like a user can't collide with that user's keys.
    assert session_key('acme', 'user', 'conv') != user_key('acme', 'user', 'conv')


@pytest.mark.parametrize(
    'build',
    [
        lambda: tenant_key('ac:me', 'sessions'),
        lambda: user_key('acme', 'al ice'),
        lambda: session_key('acme', 's*'),
        lambda: SessionKeys('acme', '{s1}'),
        lambda: SessionKeys('', 's1'),
    ],
)
def test_no_key_is_built_from_an_unsafe_id(build: Callable[[], object]) -> None:
    with pytest.raises(InvalidIdError):
        build()


def test_key_parts_are_checked_too() -> None:
    with pytest.raises(ValueError, match='invalid key part'):
        session_key('acme', 's1', 'conv:x')


class _UntouchableRedis:
    """Stands in for a client: any use at all fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f'Redis was touched ({name}) before the ids were validated')


def _store() -> RedisConversationStore:
    return RedisConversationStore(cast(Any, _UntouchableRedis()), tenant='acme')


_Call = Callable[[RedisConversationStore], Awaitable[object]]


def _case(call: _Call, name: str) -> Any:
    return pytest.param(call, id=name)


BAD_CALLS: list[Any] = [
    _case(lambda s: s.load('a:b'), 'load-session'),
    _case(lambda s: s.load('ok', scope='bad user'), 'load-scope'),
    _case(lambda s: s.load_entries('a*'), 'load-entries'),
    _case(lambda s: s.save(Conversation(conversation_id='{x}')), 'save-session'),
    _case(lambda s: s.save(Conversation(conversation_id='ok'), scope='a:b'), 'save-scope'),
    _case(lambda s: s.read_record('a b'), 'read-record'),
    _case(
        lambda s: s.write_record(ConversationRecord(conversation_id='a\n', head_id=None), expected_revision=None),
        'write-record-session',
    ),
    _case(
        lambda s: s.write_record(
            ConversationRecord(conversation_id='ok', head_id=None, scope='a*'), expected_revision=None
        ),
        'write-record-scope',
    ),
    _case(lambda s: s.delete_record('*', expected_revision='r'), 'delete-record'),
    _case(lambda s: s.delete('a?'), 'delete'),
    _case(lambda s: s.read_records(scope='x y'), 'read-records'),
    _case(lambda s: s.list_conversations(scope='x:y'), 'list-conversations'),
    _case(lambda s: s.list_sessions(user='\x00'), 'list-sessions'),
    _case(lambda s: s.export_messages('x' * 129), 'export'),
    _case(lambda s: s.message_count(''), 'message-count'),
]


@pytest.mark.parametrize('call', BAD_CALLS)
async def test_the_store_rejects_bad_ids_before_touching_redis(
    call: Callable[[RedisConversationStore], Awaitable[object]],
) -> None:
    with pytest.raises(InvalidIdError):
        await call(_store())


def test_the_store_rejects_a_bad_tenant() -> None:
    with pytest.raises(InvalidIdError, match='invalid tenant id'):
        RedisConversationStore(cast(Any, _UntouchableRedis()), tenant='ac:me')
