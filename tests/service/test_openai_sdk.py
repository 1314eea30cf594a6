"""The real openai SDK against `tandem serve`'s app under uvicorn: what Open WebUI and LibreChat rely on."""

from __future__ import annotations

import openai
import pytest
import redis as sync_redis
from dirty_equals import IsInt, IsStr
from pydantic_ai.messages import ModelRequest, ModelResponse, SystemPromptPart, ToolReturnPart, UserPromptPart

from tandem.agent.cli.transcript import render_transcript
from tests.service.conftest import KEY_A, MakeApp, live
from tests.support.scripted import call, scripted_model


def _client(base_url: str, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)


def test_models_lists_the_backbones(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    with live(make_app(model)) as url:
        models = _client(url).models.list()

    assert [(m.id, m.object, m.owned_by) for m in models.data] == [('scripted', 'model', 'tandem')]


def test_a_named_session_keeps_the_memory_on_the_server(make_app: MakeApp) -> None:
    model, script = scripted_model('Noted: teal.', 'Your favourite colour is teal.')
    with live(make_app(model)) as url:
        client = _client(url)
        first = client.chat.completions.create(
            model='scripted',
            messages=[{'role': 'user', 'content': 'My favourite colour is teal.'}],
            extra_headers={'X-Tandem-Session': 'colours'},
        )
        # The client sends only the new message: the server holds the rest.
        raw = client.chat.completions.with_raw_response.create(
            model='scripted',
            messages=[{'role': 'user', 'content': 'What is my favourite colour?'}],
            extra_headers={'X-Tandem-Session': 'colours'},
        )
        second = raw.parse()

    assert first.choices[0].message.content == 'Noted: teal.'
    assert second.choices[0].message.content == 'Your favourite colour is teal.'
    assert second.choices[0].finish_reason == 'stop'
    assert second.model == 'scripted'
    assert second.id == IsStr(regex=r'chatcmpl-[0-9a-f]{32}')
    assert second.usage is not None and second.usage.total_tokens == IsInt(gt=0)
    assert raw.headers['x-tandem-session'] == 'colours'
    messages, _ = script.seen[1]
    assert list(render_transcript(messages)) == [
        'you: My favourite colour is teal.',
        'assistant: Noted: teal.',
        'you: What is my favourite colour?',
    ]


def test_the_user_field_names_the_user_and_no_session_by_default(make_app: MakeApp) -> None:
    model, script = scripted_model('Hello Ann.', 'Who?')
    with live(make_app(model)) as url:
        client = _client(url)
        replies = [
            client.chat.completions.with_raw_response.create(
                model='scripted', messages=[{'role': 'user', 'content': text}], user='ann'
            )
            for text in ('I am Ann.', 'Who am I?')
        ]
        sessions = client.get('/sessions', cast_to=object, options={'params': {'user': 'ann'}})

    assert len(script.seen[1][0]) == 1  # stateless: the second turn saw only itself
    assert sessions['data'] == []  # type: ignore[index]
    for reply in replies:  # and no session id is reported that does not exist
        assert 'x-tandem-session' not in reply.headers
        assert reply.parse().model_extra['tandem']['session'] is None  # type: ignore[index]


def test_the_user_field_may_be_let_name_the_session(make_app: MakeApp) -> None:
    model, script = scripted_model('Hello Ann.', 'Still here.')
    with live(make_app(model, session_from_user_field=True)) as url:
        client = _client(url)
        for text in ('I am Ann.', 'Who am I?'):
            client.chat.completions.create(model='scripted', messages=[{'role': 'user', 'content': text}], user='ann')
        sessions = client.get('/sessions', cast_to=object)

    assert len(script.seen[1][0]) == 3  # the second turn saw the first
    assert [(s['id'], s['user'], s['message_count']) for s in sessions['data']] == [('ann', 'ann', 4)]  # type: ignore[index]


def test_streaming_sends_openai_chunks_then_the_usage(make_app: MakeApp) -> None:
    model, _ = scripted_model('A streamed answer, in pieces.', 'Again, without usage.', chunk=5)
    with live(make_app(model)) as url:
        client = _client(url)
        chunks = list(
            client.chat.completions.create(
                model='scripted',
                messages=[{'role': 'user', 'content': 'Stream, please.'}],
                stream=True,
                stream_options={'include_usage': True},
                extra_headers={'X-Tandem-Session': 'streamed'},
            )
        )
        plain = list(
            client.chat.completions.create(
                model='scripted',
                messages=[{'role': 'user', 'content': 'Once more.'}],
                stream=True,
                extra_headers={'X-Tandem-Session': 'streamed'},
            )
        )

    text = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)
    assert text == 'A streamed answer, in pieces.'
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 6  # streamed, not one blob
    assert chunks[0].choices[0].delta.role == 'assistant'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == 'stop'
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == IsInt(gt=0)
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.id == chunks[0].id for c in chunks)
    assert ''.join(c.choices[0].delta.content or '' for c in plain) == 'Again, without usage.'
    assert all(c.usage is None and c.choices for c in plain)


def test_tools_run_on_the_server_and_the_client_sees_the_final_answer(make_app: MakeApp) -> None:
    model, script = scripted_model(call('calculate', expression='6*7'), 'It is 42.', call('now'), 'Done.')
    with live(make_app(model)) as url:
        client = _client(url)
        answer = client.chat.completions.create(
            model='scripted',
            messages=[{'role': 'user', 'content': 'What is 6 times 7?'}],
            extra_headers={'X-Tandem-Session': 'maths'},
        )
        streamed = list(
            client.chat.completions.create(
                model='scripted',
                messages=[{'role': 'user', 'content': 'What time is it?'}],
                stream=True,
                extra_headers={'X-Tandem-Session': 'maths'},
            )
        )
        stored = client.get('/sessions/maths/messages', cast_to=object)

    assert answer.choices[0].message.content == 'It is 42.'
    assert answer.choices[0].message.tool_calls is None
    assert ''.join(c.choices[0].delta.content or '' for c in streamed) == 'Done.'
    assert all(c.choices[0].delta.tool_calls is None for c in streamed)
    # The model got the tool's result, computed on the server.
    returned = [p for m in script.seen[1][0] if isinstance(m, ModelRequest) for p in m.parts]
    assert [p.content for p in returned if isinstance(p, ToolReturnPart)] == ['42']
    roles = [(m['role'], m.get('content')) for m in stored['data']]  # type: ignore[index]
    assert roles[:4] == [
        ('user', 'What is 6 times 7?'),
        ('assistant', None),
        ('tool', '42'),
        ('assistant', 'It is 42.'),
    ]


def test_without_a_session_the_request_is_the_history_and_nothing_is_stored(make_app: MakeApp, redis_url: str) -> None:
    model, script = scripted_model('Arr, 4.')
    with live(make_app(model)) as url:
        answer = _client(url).chat.completions.create(
            model='scripted',
            messages=[
                {'role': 'system', 'content': 'Talk like a pirate.'},
                {'role': 'user', 'content': 'What is 2+2?'},
                {'role': 'assistant', 'content': 'Let me think.'},
                {'role': 'user', 'content': [{'type': 'text', 'text': 'Well?'}]},
            ],
        )

    assert answer.choices[0].message.content == 'Arr, 4.'
    messages, info = script.seen[0]
    assert [type(m) for m in messages] == [ModelRequest, ModelResponse, ModelRequest]
    first = messages[0]
    assert isinstance(first, ModelRequest)
    system, user = first.parts
    assert isinstance(system, SystemPromptPart) and system.content == 'Talk like a pirate.'
    assert isinstance(user, UserPromptPart) and user.content == 'What is 2+2?'
    assert info.instructions is not None and 'Tandem' in info.instructions  # Tandem's prompt stays
    client = sync_redis.Redis.from_url(redis_url)
    try:
        keys = sorted(key.decode() for key in client.scan_iter('*'))
    finally:
        client.close()
    assert all(':ratelimit:' in key for key in keys), keys  # no session, no index: only the limiter's log


def test_errors_come_in_openai_shape_and_the_sdk_raises_its_own_exceptions(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    with live(make_app(model)) as url:
        with pytest.raises(openai.AuthenticationError) as no_auth:
            _client(url, key='sk-wrong').models.list()
        with pytest.raises(openai.NotFoundError) as unknown:
            _client(url).chat.completions.create(model='gpt-9', messages=[{'role': 'user', 'content': 'hi'}])
        with pytest.raises(openai.BadRequestError) as bad:
            _client(url).chat.completions.create(model='scripted', messages=[{'role': 'assistant', 'content': 'hi'}])

    assert no_auth.value.status_code == 401 and no_auth.value.code == 'invalid_api_key'
    assert unknown.value.code == 'model_not_found' and unknown.value.param == 'model'
    assert bad.value.body == {
        'message': "the last message must be the user's: it is the new turn.",
        'type': 'invalid_request_error',
        'param': 'messages',
        'code': None,
    }
