"""Streams that survive proxies and report tools: SSE keep-alive comments and opt-in tool progress chunks."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tandem.agent.server import streaming
from tests.service.conftest import AUTH_A, KEY_A, MakeApp, live
from tests.service.test_disconnect import SlowToolModel
from tests.support.scripted import call, scripted_model


def _client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY_A, max_retries=0, timeout=20)


def _stream(client: openai.OpenAI, **extra: Any) -> list[Any]:
    return list(
        client.chat.completions.create(
            model='scripted',
            messages=[{'role': 'user', 'content': 'What is 6 times 7?'}],
            stream=True,
            stream_options={'include_usage': True},
            **extra,
        )
    )


def test_progress_chunks_report_each_tool_call_to_clients_that_ask(make_app: MakeApp) -> None:
    model, _ = scripted_model(
        call('calculate', expression='6*7'), 'It is 42.', call('calculate', expression='1+1'), '2.'
    )
    with live(make_app(model)) as url:
        client = _client(url)
        chunks = _stream(client, extra_body={'tandem': {'progress': True}})
        plain = _stream(client)

    progress = [chunk.model_extra['tandem'] for chunk in chunks if not chunk.choices and chunk.usage is None]
    assert progress == [
        {'event': 'tool_call.started', 'id': progress[0]['id'], 'name': 'calculate', 'args': {'expression': '6*7'}},
        {
            'event': 'tool_call.finished',
            'id': progress[0]['id'],
            'name': 'calculate',
            'ok': True,
            'duration_s': progress[1]['duration_s'],
            'result': progress[1]['result'],
        },
    ]
    assert '42' in progress[1]['result']
    assert ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices) == 'It is 42.'
    assert chunks[-1].usage is not None  # the usage chunk still comes last
    # Without the option, a client sees only OpenAI's own chunks.
    assert all(c.choices or c.usage is not None for c in plain)
    assert all('tandem' not in (c.model_extra or {}) for c in plain)


def test_a_slow_turn_sends_keep_alive_comments_that_clients_ignore(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, 'KEEPALIVE_SECONDS', 0.1)
    slow, quiet = SlowToolModel(), SlowToolModel()
    with live(make_app(slow.model)) as url:
        raw = httpx.post(
            f'{url}/chat/completions',
            json={'model': 'scripted', 'stream': True, 'messages': [{'role': 'user', 'content': 'What is 1+1?'}]},
            headers=AUTH_A,
            timeout=10,
        )
    with live(make_app(quiet.model)) as url:
        chunks = list(
            _client(url).chat.completions.create(
                model='scripted', messages=[{'role': 'user', 'content': 'What is 1+1?'}], stream=True
            )
        )

    assert raw.text.count(': keep-alive\n\n') >= 3  # the model thinks for 0.8 s
    assert raw.text.endswith('data: [DONE]\n\n')
    assert '\r' not in raw.text
    assert ''.join(c.choices[0].delta.content or '' for c in chunks) == 'CheckingIt is 2.'
