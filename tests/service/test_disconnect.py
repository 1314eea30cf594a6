"""A client that goes away mid-turn: no further model calls, and nothing of the turn is saved.

The model streams a first piece of text, then takes a while before calling a tool; after the tool
it would be called a second time. A client that disconnects during that while must stop the turn.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from tests.service.conftest import AUTH_A, MakeApp, live

PAUSE = 0.8
"""How long the model thinks before its tool call: the window in which the client disconnects."""


class SlowToolModel:
    """First call: text, a pause, then a tool call. Second call: the answer. Records calls and cancellation."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        """Set when the model starts thinking: from then on a disconnect must cancel it."""
        self.cancelled = threading.Event()
        self.model = FunctionModel(self._respond, stream_function=self._stream, model_name='slow')

    async def _pause(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(PAUSE)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def _respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        if self.calls == 1:
            await self._pause()
            return ModelResponse(parts=[ToolCallPart('calculate', {'expression': '1+1'}, tool_call_id='c1')])
        return ModelResponse(parts=[TextPart('It is 2.')])

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        self.calls += 1
        if self.calls == 1:
            yield 'Checking'
            await self._pause()
            yield {0: DeltaToolCall(name='calculate', json_args='{"expression": "1+1"}', tool_call_id='c1')}
            return
        yield 'It is 2.'


def _body(stream: bool) -> dict[str, object]:
    return {'model': 'scripted', 'stream': stream, 'messages': [{'role': 'user', 'content': 'What is 1+1?'}]}


def _stored(url: str, session: str) -> httpx.Response:
    return httpx.get(f'{url}/sessions/{session}/messages', headers=AUTH_A)


def test_an_uninterrupted_streamed_turn_calls_the_model_twice_and_is_saved(make_app: MakeApp) -> None:
    slow = SlowToolModel()
    with live(make_app(slow.model)) as url:
        response = httpx.post(
            f'{url}/chat/completions', json=_body(True), headers={**AUTH_A, 'X-Tandem-Session': 'whole'}, timeout=10
        )
        stored = _stored(url, 'whole')

    assert 'Checking' in response.text and 'It is 2.' in response.text
    assert slow.calls == 2
    assert len(stored.json()['data']) == 4


def test_a_disconnect_mid_stream_stops_the_turn_and_saves_nothing(make_app: MakeApp) -> None:
    slow = SlowToolModel()
    with live(make_app(slow.model)) as url:
        with (
            httpx.Client(timeout=10) as http,
            http.stream(
                'POST', f'{url}/chat/completions', json=_body(True), headers={**AUTH_A, 'X-Tandem-Session': 'cut'}
            ) as response,
        ):
            for line in response.iter_lines():
                if '"content":"Checking"' in line:
                    break  # leaving both blocks closes the connection mid-stream
        assert slow.cancelled.wait(5), 'the turn was not cancelled'
        time.sleep(PAUSE + 0.4)  # by now an uncancelled turn would have run the tool and called the model again
        stored = _stored(url, 'cut')

    assert slow.calls == 1
    assert (stored.status_code, stored.json()['error']['code']) == (404, 'session_not_found')


def test_a_disconnect_before_a_plain_answer_stops_the_turn_and_saves_nothing(make_app: MakeApp) -> None:
    slow = SlowToolModel()
    with live(make_app(slow.model)) as url:
        # A raw socket, so the client hangs up exactly while the model thinks, however slow the machine:
        # a client read timeout could fire before the turn reached the model at all.
        address = httpx.URL(url)
        body = json.dumps(_body(False)).encode()
        head = (
            f'POST {address.path}/chat/completions HTTP/1.1\r\nHost: {address.host}\r\n'
            f'Authorization: {AUTH_A["Authorization"]}\r\nX-Tandem-Session: gone\r\n'
            f'Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n'
        )
        with socket.create_connection((address.host, address.port)) as client:
            client.sendall(head.encode() + body)
            assert slow.started.wait(5), 'the turn never reached the model'
            client.setblocking(False)
            with pytest.raises(BlockingIOError):  # no answer yet: the client gives up, and closes the connection
                client.recv(1)
        assert slow.cancelled.wait(5), 'the turn was not cancelled'
        time.sleep(PAUSE + 0.4)
        stored = _stored(url, 'gone')

    assert slow.calls == 1
    assert stored.status_code == 404
