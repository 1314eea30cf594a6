"""`response_format` on `POST /v1/chat/completions`: JSON that validates, plain and streamed, or an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
from fastapi import FastAPI
from pydantic import BaseModel
from pydantic_ai.profiles.openai import OpenAIModelProfile

from tandem.agent.core.config import BackboneConfig
from tandem.agent.server.app import create_app
from tests.service.conftest import AUTH_A, KEY_A, asgi, live, service_settings
from tests.support.fake_openai import FakeOpenAI, Text
from tests.typed.conftest import PROSE, answer, loopback_backbone

INVOICE = {
    'type': 'object',
    'properties': {
        'number': {'type': 'string', 'pattern': '^INV-[0-9]+$'},
        'total': {'type': 'number', 'minimum': 0},
    },
    'required': ['number', 'total'],
    'additionalProperties': False,
}
JSON_SCHEMA = {'type': 'json_schema', 'json_schema': {'name': 'invoice', 'schema': INVOICE, 'strict': True}}


def _app(tmp_path: Path, redis_url: str, server: FakeOpenAI, **backbone: Any) -> FastAPI:
    config = BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url, **backbone)
    settings = service_settings(tmp_path, redis_url, overrides={'backbones': {'loop': config}, 'backbone': 'loop'})
    return create_app(settings)


def _body(response_format: Any, *, stream: bool = False) -> dict[str, Any]:
    return {
        'model': 'loop',
        'messages': [{'role': 'user', 'content': 'Read invoice INV-7 for 12.50 EUR.'}],
        'response_format': response_format,
        'stream': stream,
    }


def _sse_data(response: httpx.Response) -> list[Any]:
    lines = [line.removeprefix('data: ') for line in response.text.splitlines() if line.startswith('data: ')]
    return [line if line == '[DONE]' else json.loads(line) for line in lines]


async def test_json_schema_answers_are_json_that_validates(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> None:
    server.script = [answer(number='7', total=12.5), answer(number='INV-7', total=12.5)]
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        response = await http.post('/v1/chat/completions', headers=AUTH_A, json=_body(JSON_SCHEMA))

    assert response.status_code == 200, response.text
    content = response.json()['choices'][0]['message']['content']
    assert json.loads(content) == {'number': 'INV-7', 'total': 12.5}
    tool = server.chat_requests[0]['tools'][-1]['function']
    assert tool['name'] == 'final_result' and tool['parameters']['properties'] == INVOICE['properties']
    assert tool['strict'] is True
    feedback = server.chat_requests[1]['messages'][-1]  # the schema's verdict went back to the model
    assert "number: '7' does not match '^INV-[0-9]+$'" in feedback['content']


async def test_strict_is_passed_on_to_the_output_tool(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> None:
    loose = {'type': 'json_schema', 'json_schema': {'name': 'invoice', 'schema': INVOICE, 'strict': False}}
    server.script = [answer(number='INV-7', total=12.5), answer(number='INV-8', total=3.0)]
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        for response_format in (JSON_SCHEMA, loose):
            response = await http.post('/v1/chat/completions', headers=AUTH_A, json=_body(response_format))
            assert response.status_code == 200, response.text

    strict, not_strict = (request['tools'][-1]['function'] for request in server.chat_requests)
    assert strict['strict'] is True
    assert 'strict' not in not_strict


async def test_json_object_answers_are_a_json_object(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> None:
    server.script = [answer(anything='goes', n=1)]
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        response = await http.post('/v1/chat/completions', headers=AUTH_A, json=_body({'type': 'json_object'}))

    assert response.status_code == 200, response.text
    assert json.loads(response.json()['choices'][0]['message']['content']) == {'anything': 'goes', 'n': 1}


async def test_a_streamed_answer_is_json_that_validates(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> None:
    server.script = [answer(number='7', total=-1), answer(number='INV-7', total=12.5)]
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        response = await http.post('/v1/chat/completions', headers=AUTH_A, json=_body(JSON_SCHEMA, stream=True))

    assert response.status_code == 200, response.text
    data = _sse_data(response)
    assert data[-1] == '[DONE]'
    content = ''.join(chunk['choices'][0]['delta'].get('content') or '' for chunk in data[:-1] if chunk['choices'])
    assert json.loads(content) == {'number': 'INV-7', 'total': 12.5}


async def test_a_model_that_answers_in_prose_gets_the_client_an_openai_error(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [PROSE, PROSE, PROSE]
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        response = await http.post('/v1/chat/completions', headers=AUTH_A, json=_body(JSON_SCHEMA))

    assert response.status_code == 502
    error = response.json()['error']
    assert error['code'] == 'invalid_output' and error['type'] == 'api_error'
    assert "backbone 'loop' gave no valid typed answer in 3 tries" in error['message']


async def test_a_streamed_turn_that_never_validates_ends_with_an_error_not_prose(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [PROSE, PROSE, PROSE]
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        response = await http.post('/v1/chat/completions', headers=AUTH_A, json=_body(JSON_SCHEMA, stream=True))

    assert response.status_code == 502  # it failed before the first event: a status of its own
    assert response.json()['error']['code'] == 'invalid_output'
    assert 'Ada' not in response.text


async def test_an_invalid_schema_is_a_400_naming_the_parameter(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    bad = {'type': 'json_schema', 'json_schema': {'name': 'x', 'schema': {'type': 'object', 'properties': 3}}}
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        invalid = await http.post('/v1/chat/completions', headers=AUTH_A, json=_body(bad))
        no_schema = await http.post(
            '/v1/chat/completions', headers=AUTH_A, json=_body({'type': 'json_schema', 'json_schema': {'name': 'x'}})
        )

    assert invalid.status_code == 400
    error = invalid.json()['error']
    assert error['param'] == 'response_format.json_schema.schema'
    assert error['message'].startswith('response_format: invalid JSON Schema at properties: ')
    assert no_schema.status_code == 400
    assert no_schema.json()['error']['param'] == 'response_format.json_schema.schema'
    assert server.chat_requests == []


async def test_response_format_on_a_backbone_that_cannot_follow_it_is_a_400(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    no_tools = loopback_backbone(server, 'plain', profile=OpenAIModelProfile(supports_tools=False), output_mode='tool')
    app = create_app(service_settings(tmp_path, redis_url), backbones={'plain': no_tools})
    async with asgi(app) as http:
        body = {**_body(JSON_SCHEMA), 'model': 'plain'}
        response = await http.post('/v1/chat/completions', headers=AUTH_A, json=body)

    assert response.status_code == 400, response.text
    error = response.json()['error']
    assert (error['param'], error['code']) == ('response_format', 'response_format_unsupported')
    assert "backbone 'plain' cannot give typed answers in output_mode 'tool'" in error['message']
    assert server.chat_requests == []


async def test_text_response_format_is_prose_as_before(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> None:
    server.script = [Text('Plain words.')]
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        response = await http.post('/v1/chat/completions', headers=AUTH_A, json=_body({'type': 'text'}))

    assert response.json()['choices'][0]['message']['content'] == 'Plain words.'


class Invoice(BaseModel):
    number: str
    total: float


def test_the_openai_sdks_parse_works_against_tandem_serve(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> None:
    server.script = [answer(number='INV-7', total=12.5)]
    with live(_app(tmp_path, redis_url, server)) as url:
        client = openai.OpenAI(base_url=url, api_key=KEY_A, max_retries=0, timeout=20)
        completion = client.chat.completions.parse(
            model='loop',
            messages=[{'role': 'user', 'content': 'Read invoice INV-7 for 12.50 EUR.'}],
            response_format=Invoice,
        )
        models = client.models.list()

    assert completion.choices[0].message.parsed == Invoice(number='INV-7', total=12.5)
    assert [model.id for model in models.data] == ['loop']
    sent = server.chat_requests[0]['tools'][-1]
    assert sent['function']['name'] == 'final_result'


async def test_a_sessions_history_shows_the_typed_answer_as_sent(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [PROSE, answer(number='7', total=1.0), answer(number='INV-7', total=12.5)]
    headers = {**AUTH_A, 'X-Tandem-Session': 'invoices'}
    async with asgi(_app(tmp_path, redis_url, server)) as http:
        reply = await http.post('/v1/chat/completions', headers=headers, json=_body(JSON_SCHEMA))
        history = await http.get('/v1/sessions/invoices/messages', headers=AUTH_A)
        lossless = await http.get('/v1/sessions/invoices/messages?format=pydantic-ai', headers=AUTH_A)

    content = reply.json()['choices'][0]['message']['content']
    assert history.json()['data'] == [
        {'role': 'user', 'content': 'Read invoice INV-7 for 12.50 EUR.'},
        {'role': 'assistant', 'content': content},
    ]
    assert len(lossless.json()['data']) == 7  # every attempt and the feedback it got, as it happened
