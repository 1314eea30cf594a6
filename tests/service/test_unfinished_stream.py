"""The HTTP stream of an answer the backbone did not finish ends with an error event, never a fake `stop`."""

from __future__ import annotations

import json

import httpx

from tandem.agent.backbones.base import backbone_from_config
from tandem.agent.core.config import BackboneConfig
from tests.service.conftest import AUTH_A, MakeApp, live
from tests.support.fake_openai import FakeOpenAI, Text


def test_the_http_stream_of_a_cut_answer_ends_with_an_error_event_not_a_stop(make_app: MakeApp) -> None:
    with FakeOpenAI([Text('Half an ans', finish=None)], models=['tiny-chat']) as server:
        model = backbone_from_config('local', BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url)).model
        with live(make_app(model)) as url, httpx.Client(timeout=30) as http:
            body = {'model': 'scripted', 'stream': True, 'messages': [{'role': 'user', 'content': 'Hi'}]}
            headers = {**AUTH_A, 'X-Tandem-Session': 'cut'}
            with http.stream('POST', f'{url}/chat/completions', json=body, headers=headers) as response:
                events = [line.removeprefix('data: ') for line in response.iter_lines() if line.startswith('data: ')]

    assert '[DONE]' not in events
    payloads = [json.loads(event) for event in events]
    assert all(choice['finish_reason'] is None for p in payloads[:-1] for choice in p.get('choices', []))
    assert payloads[-1]['error']['code'] == 'backbone_incomplete'
    assert 'stopped mid-answer' in payloads[-1]['error']['message']
