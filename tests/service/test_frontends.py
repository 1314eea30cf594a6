"""Frontends as they really call `tandem serve`: Open WebUI's identity headers and request sequence, a proxy's user header."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from tandem.agent.cli.transcript import render_transcript
from tests.service.conftest import AUTH_A, MakeApp, asgi
from tests.support.scripted import scripted_model

CHAT = '/v1/chat/completions'
USER_ID = 'b1946ac9-2c5d-4f1e-9f0a-1b2c3d4e5f60'
CHAT_ID = '7c9e6679-7425-40de-944b-e07fc1f90ae7'
OPEN_WEBUI_HEADERS = {
    **AUTH_A,
    # What Open WebUI forwards with ENABLE_FORWARD_USER_INFO_HEADERS=true.
    'X-OpenWebUI-User-Name': 'Ada Lovelace',
    'X-OpenWebUI-User-Id': USER_ID,
    'X-OpenWebUI-User-Email': 'ada@example.com',
    'X-OpenWebUI-User-Role': 'user',
    'X-OpenWebUI-Chat-Id': CHAT_ID,
}
TITLE_PROMPT = (
    '### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n'
    '### Output:\nJSON format: { "title": "your concise title here" }\n'
    '### Chat History:\n<chat_history>\nUSER: I am Ada.\nASSISTANT: Hello Ada.\n</chat_history>'
)


def chat(messages: list[dict[str, str]], *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {'model': 'scripted', 'messages': messages, 'stream': stream}
    if stream:
        body['stream_options'] = {'include_usage': True}
    return body


async def test_open_webuis_requests_keep_one_session_per_chat_and_titles_out_of_it(make_app: MakeApp) -> None:
    model, script = scripted_model('Hello Ada.', 'You are Ada.', '{"title": "👋 Meeting Ada"}')
    first_turn = [{'role': 'system', 'content': 'You are helpful.'}, {'role': 'user', 'content': 'I am Ada.'}]
    second_turn = [
        *first_turn,
        {'role': 'assistant', 'content': 'Hello Ada.'},
        {'role': 'user', 'content': 'Who am I?'},
    ]
    async with asgi(make_app(model, frontend='open-webui')) as http:
        models = await http.get('/v1/models', headers=AUTH_A)
        first = await http.post(CHAT, json=chat(first_turn, stream=True), headers=OPEN_WEBUI_HEADERS)
        second = await http.post(CHAT, json=chat(second_turn, stream=True), headers=OPEN_WEBUI_HEADERS)
        title = await http.post(
            CHAT, json=chat([{'role': 'user', 'content': TITLE_PROMPT}], stream=False), headers=OPEN_WEBUI_HEADERS
        )
        stored = await http.get(f'/v1/sessions/{CHAT_ID}/messages', headers={**AUTH_A, 'X-Tandem-User': USER_ID})
        listed = await http.get('/v1/sessions', headers={**AUTH_A, 'X-Tandem-User': USER_ID})

    assert [entry['id'] for entry in models.json()['data']] == ['scripted']
    assert [(s['id'], s['title']) for s in listed.json()['data']] == [(CHAT_ID, 'I am Ada.')]
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers['x-tandem-session'] == CHAT_ID
    assert second.text.endswith('data: [DONE]\n\n')
    assert list(render_transcript(script.seen[1][0])) == ['you: I am Ada.', 'assistant: Hello Ada.', 'you: Who am I?']
    assert title.json()['choices'][0]['message']['content'] == '{"title": "👋 Meeting Ada"}'
    assert title.json()['tandem']['session'] is None and 'x-tandem-session' not in title.headers
    assert [(m['role'], m['content']) for m in stored.json()['data']] == [
        ('user', 'I am Ada.'),
        ('assistant', 'Hello Ada.'),
        ('user', 'Who am I?'),
        ('assistant', 'You are Ada.'),
    ]


async def test_without_the_preset_open_webuis_headers_name_nothing(make_app: MakeApp, redis: Redis) -> None:
    model, _ = scripted_model('Hello.')
    async with asgi(make_app(model)) as http:
        reply = await http.post(
            CHAT, json=chat([{'role': 'user', 'content': 'Hi'}], stream=False), headers=OPEN_WEBUI_HEADERS
        )

    assert reply.json()['tandem']['session'] is None
    assert [key async for key in redis.scan_iter('*sessions*')] == []


async def test_a_proxys_user_header_can_name_the_user(make_app: MakeApp) -> None:
    model, _ = scripted_model('Hello.')
    async with asgi(make_app(model, user_header='X-Forwarded-User', session_header='X-Conversation')) as http:
        await http.post(
            CHAT,
            json=chat([{'role': 'user', 'content': 'Hi'}], stream=False),
            headers={**AUTH_A, 'X-Forwarded-User': 'grace', 'X-Conversation': 'c-1'},
        )
        mine = await http.get('/v1/sessions/c-1/messages', headers={**AUTH_A, 'X-Tandem-User': 'grace'})
        others = await http.get('/v1/sessions/c-1/messages', headers={**AUTH_A, 'X-Tandem-User': 'ada'})

    assert mine.status_code == 200 and len(mine.json()['data']) == 2
    assert others.status_code == 404


async def test_sessions_are_listed_with_titles_and_searched_by_text(make_app: MakeApp) -> None:
    model, _ = scripted_model('Start at the Colosseum.', 'April 15.')
    async with asgi(make_app(model)) as http:
        for session, text in (('trip', 'Plan my trip to Rome'), ('tax', 'When is the tax deadline?')):
            await http.post(
                CHAT,
                json=chat([{'role': 'user', 'content': text}], stream=False),
                headers={
                    **AUTH_A,
                    'X-Tandem-Session': session,
                },
            )
        listed = await http.get('/v1/sessions', headers=AUTH_A)
        found = await http.get('/v1/sessions', params={'search': 'colosseum'}, headers=AUTH_A)
        blank = await http.get('/v1/sessions', params={'search': '  '}, headers=AUTH_A)

    assert [(s['id'], s['title']) for s in listed.json()['data']] == [
        ('tax', 'When is the tax deadline?'),
        ('trip', 'Plan my trip to Rome'),
    ]
    assert [(s['id'], s['title'], s['match']) for s in found.json()['data']] == [
        ('trip', 'Plan my trip to Rome', 'Start at the Colosseum.')
    ]
    assert blank.status_code == 400
