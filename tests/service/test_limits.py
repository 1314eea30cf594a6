"""Limits: the per-key sliding-window rate limit, body and message sizes, CORS, refused request shapes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dirty_equals import IsStr
from redis.asyncio import Redis

from tandem.agent.cli.transcript import render_transcript
from tandem.memory.keys import rate_limit_key
from tests.service.conftest import AUTH_A, AUTH_B, KEY_A, KEY_B, MakeApp, asgi
from tests.support.scripted import scripted_model

CHAT = '/v1/chat/completions'


def _turn(text: str, **extra: Any) -> dict[str, Any]:
    return {'model': 'scripted', 'messages': [{'role': 'user', 'content': text}], **extra}


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after_and_only_that_key(
    make_app: MakeApp, redis: Redis
) -> None:
    model, _ = scripted_model(*['ok'] * 10)
    app = make_app(model, rate_limit_requests=3, rate_limit_window_seconds=30)
    async with asgi(app) as http:
        allowed = [(await http.post(CHAT, json=_turn('hi'), headers=AUTH_A)).status_code for _ in range(3)]
        refused = await http.post(CHAT, json=_turn('hi'), headers=AUTH_A)
        refused_models = await http.get('/v1/models', headers=AUTH_A)
        other_key = await http.post(CHAT, json=_turn('hi'), headers=AUTH_B)

    assert allowed == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()['error'] == {
        'message': IsStr(regex=r'rate limit reached: 3 requests per 30 s for this key; retry in \d+ s\.'),
        'type': 'rate_limit_error',
        'param': None,
        'code': 'rate_limit_exceeded',
    }
    assert 1 <= int(refused.headers['retry-after']) <= 30
    assert 0 < int(refused.headers['retry-after-ms']) <= 30_000
    assert refused_models.status_code == 429  # every endpoint counts
    assert other_key.status_code == 200
    # The window is a sorted set under the tenant's prefix, expiring with the window.
    keys = sorted([key.decode() async for key in redis.scan_iter('*ratelimit*')])
    digest = {key: hashlib.sha256(key.encode()).hexdigest()[:16] for key in (KEY_A, KEY_B)}
    assert keys == [rate_limit_key('acme', digest[KEY_A]), rate_limit_key('beta', digest[KEY_B])]
    assert [0 < await redis.pttl(key) <= 30_000 for key in keys] == [True, True]


async def test_the_window_slides_a_refused_key_gets_back_in_once_it_has_passed(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    app = make_app(model, rate_limit_requests=2, rate_limit_window_seconds=0.4)
    async with asgi(app) as http:
        first = [(await http.get('/v1/models', headers=AUTH_A)).status_code for _ in range(3)]
        wait_ms = int((await http.get('/v1/models', headers=AUTH_A)).headers['retry-after-ms'])
        await asyncio.sleep(wait_ms / 1000 + 0.05)
        later = (await http.get('/v1/models', headers=AUTH_A)).status_code

    assert first == [200, 200, 429]
    assert later == 200


async def test_oversized_bodies_and_messages_get_413(make_app: MakeApp) -> None:
    model, script = scripted_model()
    app = make_app(model, max_body_bytes=4_000, max_message_chars=500, max_messages=3)
    async with asgi(app) as http:
        body = await http.post(CHAT, json=_turn('x' * 5_000), headers=AUTH_A)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b'{"model": "scripted", ' + b' ' * 1_000

        streamed = await http.post(CHAT, content=chunks(), headers={**AUTH_A, 'Content-Type': 'application/json'})
        message = await http.post(CHAT, json=_turn('y' * 501), headers=AUTH_A)
        many = await http.post(
            CHAT, json={'model': 'scripted', 'messages': [{'role': 'user', 'content': 'hi'}] * 4}, headers=AUTH_A
        )

    assert (body.status_code, body.json()['error']['code']) == (413, 'request_too_large')
    assert body.json()['error']['message'] == 'request body over 4000 bytes: send less, or raise server.max_body_bytes.'
    assert (streamed.status_code, streamed.json()['error']['code']) == (413, 'request_too_large')
    assert (message.status_code, message.json()['error']) == (
        413,
        {
            'message': 'messages[0] is over 500 characters.',
            'type': 'invalid_request_error',
            'param': 'messages[0].content',
            'code': 'message_too_long',
        },
    )
    assert (many.status_code, many.json()['error']['code']) == (413, 'too_many_messages')
    assert script.seen == []


@pytest.mark.parametrize(
    ('body', 'param', 'message'),
    [
        (_turn('hi', n=2), 'n', 'n must be 1: Tandem runs one turn per request.'),
        (
            _turn('hi', tools=[{'type': 'function', 'function': {'name': 'f'}}]),
            'tools',
            'client-side tools are not supported: Tandem runs its own tools on the server.',
        ),
        (
            {'model': 'scripted', 'messages': [{'role': 'user', 'content': [{'type': 'image_url', 'image_url': {}}]}]},
            'messages[0].content',
            "messages[0].content[0]: content of type 'image_url' is not supported; send text.",
        ),
        (
            {
                'model': 'scripted',
                'messages': [
                    {'role': 'assistant', 'tool_calls': [{'id': 'c1', 'function': {'name': 'f', 'arguments': '{}'}}]},
                    {'role': 'user', 'content': 'and?'},
                ],
            },
            'messages',
            "tool call 'c1' has no tool message answering it.",
        ),
        ({'model': 'scripted'}, 'messages', 'messages: Field required'),
        ({'model': 'scripted', 'messages': [{'role': 'robot', 'content': 'x'}]}, 'messages.0.role', None),
    ],
)
async def test_malformed_requests_are_400s_naming_the_parameter(
    make_app: MakeApp, body: dict[str, Any], param: str, message: str | None
) -> None:
    model, script = scripted_model()
    async with asgi(make_app(model)) as http:
        response = await http.post(CHAT, json=body, headers=AUTH_A)

    assert response.status_code == 400
    error = response.json()['error']
    assert (error['type'], error['param']) == ('invalid_request_error', param)
    if message is not None:
        assert error['message'] == message
    assert script.seen == []


async def test_a_client_tool_exchange_in_a_stateless_history_is_passed_on(make_app: MakeApp) -> None:
    model, script = scripted_model('It was sunny.')
    body = {
        'model': 'scripted',
        'messages': [
            {'role': 'user', 'content': 'Weather?'},
            {'role': 'assistant', 'tool_calls': [{'id': 'c1', 'function': {'name': 'weather', 'arguments': '{}'}}]},
            {'role': 'tool', 'tool_call_id': 'c1', 'content': 'sunny'},
            {'role': 'assistant', 'content': 'Sunny.'},
            {'role': 'user', 'content': 'And yesterday?'},
        ],
    }
    async with asgi(make_app(model)) as http:
        response = await http.post(CHAT, json=body, headers=AUTH_A)

    assert response.json()['choices'][0]['message']['content'] == 'It was sunny.'
    assert list(render_transcript(script.seen[0][0])) == [
        'you: Weather?',
        '  → weather({})',
        '  ← weather: sunny',
        'assistant: Sunny.',
        'you: And yesterday?',
    ]


async def test_cors_answers_configured_origins_only(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    app = make_app(model, cors_origins=['https://chat.example.com'])
    preflight = {'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization'}
    async with asgi(app) as http:
        allowed = await http.options(CHAT, headers={'Origin': 'https://chat.example.com', **preflight})
        denied = await http.options(CHAT, headers={'Origin': 'https://evil.example', **preflight})
        simple = await http.get('/v1/models', headers={'Origin': 'https://chat.example.com', **AUTH_A})

    assert allowed.status_code == 200
    assert allowed.headers['access-control-allow-origin'] == 'https://chat.example.com'
    assert 'access-control-allow-origin' not in denied.headers
    assert simple.headers['access-control-allow-origin'] == 'https://chat.example.com'


async def test_a_body_that_is_not_json_is_a_400(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    async with asgi(make_app(model)) as http:
        response = await http.post(CHAT, content=b'{"model": ', headers={**AUTH_A, 'Content-Type': 'application/json'})

    assert response.status_code == 400
    assert response.json()['error']['message'].startswith('the body is not valid JSON')
    assert response.json()['error']['param'] is None


async def test_the_user_field_names_no_session_by_default(make_app: MakeApp, redis: Redis) -> None:
    model, script = scripted_model('first', 'second')
    app = make_app(model)
    history = [{'role': 'user', 'content': 'one'}, {'role': 'assistant', 'content': 'first'}]
    async with asgi(app) as http:
        await http.post(CHAT, json={**_turn('one'), 'user': 'lib-user'}, headers=AUTH_A)
        await http.post(
            CHAT,
            json={'model': 'scripted', 'messages': [*history, {'role': 'user', 'content': 'two'}], 'user': 'lib-user'},
            headers=AUTH_A,
        )

    # Stateless: the client's history is the history, nothing is stored.
    assert list(render_transcript(script.seen[1][0])) == ['you: one', 'assistant: first', 'you: two']
    assert [key async for key in redis.scan_iter('*sessions*')] == []
