"""The wire shapes are OpenAI's own types: exactly the fields OpenAI's responses carry, plus Tandem's `tandem`."""

from __future__ import annotations

import json

from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.service.conftest import AUTH_A, MakeApp, asgi
from tests.support.scripted import scripted_model

CHAT = '/v1/chat/completions'
ASK = [{'role': 'user', 'content': 'Hello'}]


def _events(text: str) -> list[dict[str, object]]:
    datas = [line.removeprefix('data: ') for line in text.split('\n') if line.startswith('data: ')]
    assert datas[-1] == '[DONE]'
    return [json.loads(data) for data in datas[:-1]]


async def test_a_completion_has_openais_fields_and_the_tandem_extension(make_app: MakeApp) -> None:
    model, _ = scripted_model('Hi there.')
    async with asgi(make_app(model)) as http:
        body = (await http.post(CHAT, json={'model': 'scripted', 'messages': ASK}, headers=AUTH_A)).json()
        models = (await http.get('/v1/models', headers=AUTH_A)).json()

    assert set(body) == {'id', 'object', 'created', 'model', 'system_fingerprint', 'choices', 'usage', 'tandem'}
    assert body['choices'] == [
        {
            'index': 0,
            'message': {'role': 'assistant', 'content': 'Hi there.', 'refusal': None},
            'logprobs': None,
            'finish_reason': 'stop',
        }
    ]
    assert set(body['usage']) == {'prompt_tokens', 'completion_tokens', 'total_tokens'}
    assert ChatCompletion.model_validate(body).choices[0].message.content == 'Hi there.'
    assert models['data'] == [{'id': 'scripted', 'object': 'model', 'created': 0, 'owned_by': 'tandem', 'kind': 'base'}]
    assert Model.model_validate(models['data'][0]).owned_by == 'tandem'


async def test_chunks_carry_usage_only_when_asked_and_validate_as_openais(make_app: MakeApp) -> None:
    model, _ = scripted_model('Hi there.', 'Again.')
    stream = {'model': 'scripted', 'messages': ASK, 'stream': True}
    async with asgi(make_app(model)) as http:
        with_usage = _events(
            (await http.post(CHAT, json={**stream, 'stream_options': {'include_usage': True}}, headers=AUTH_A)).text
        )
        without = _events((await http.post(CHAT, json=stream, headers=AUTH_A)).text)

    for chunk in (*with_usage, *without):
        ChatCompletionChunk.model_validate(chunk)
    assert all('usage' not in chunk for chunk in without)
    assert [chunk['usage'] for chunk in with_usage[:-1]] == [None] * (len(with_usage) - 1)
    assert with_usage[-1]['choices'] == [] and set(with_usage[-1]['usage']) == {  # type: ignore[arg-type]
        'prompt_tokens',
        'completion_tokens',
        'total_tokens',
    }
    assert without[0]['choices'] == [
        {'index': 0, 'delta': {'role': 'assistant', 'content': ''}, 'logprobs': None, 'finish_reason': None}
    ]
    assert without[-1]['choices'] == [{'index': 0, 'delta': {}, 'logprobs': None, 'finish_reason': 'stop'}]
