"""A loopback OpenAI-compatible server for tests: scripted replies, every request recorded.

It speaks enough of `/v1/models` and `/v1/chat/completions` (plain and SSE streaming, with tool
calls and usage) for the openai SDK and pydantic-ai's `openai-chat:` models to talk to it as they
would to vLLM, Ollama or llama.cpp.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Text:
    """Answer with text."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """Answer with one or more tool calls: `(name, arguments)` pairs."""

    calls: tuple[tuple[str, dict[str, Any]], ...]

    @classmethod
    def one(cls, name: str, **arguments: Any) -> ToolCall:
        """A reply with a single tool call."""
        return cls(((name, arguments),))


@dataclass(frozen=True)
class Error:
    """Answer with an HTTP error in OpenAI's error shape."""

    status: int
    message: str = 'error'


Reply = Text | ToolCall | Error
Script = Callable[[dict[str, Any]], Reply]


def last_tool_result(body: dict[str, Any]) -> str | None:
    """The content of the last message when it is a tool result, else `None`."""
    messages = body.get('messages', [])
    if messages and messages[-1].get('role') == 'tool':
        return str(messages[-1].get('content'))
    return None


def user_texts(body: dict[str, Any]) -> list[str]:
    """Every user message's text in the request, oldest first."""
    texts: list[str] = []
    for message in body.get('messages', []):
        if message.get('role') == 'user':
            content = message.get('content')
            texts.append(content if isinstance(content, str) else json.dumps(content))
    return texts


def echo_script(body: dict[str, Any]) -> Reply:
    """Default behaviour: after a tool result, report it; otherwise echo the last user message."""
    result = last_tool_result(body)
    if result is not None:
        return Text(f'The tool said: {result}')
    texts = user_texts(body)
    return Text(f'You said: {texts[-1] if texts else ""}')


@dataclass
class FakeOpenAI:
    """A scripted OpenAI-compatible server on a free loopback port."""

    script: Script | list[Reply] = echo_script
    models: list[str] = field(default_factory=lambda: ['tiny-chat'])
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to give as `base_url` / `OPENAI_BASE_URL`."""
        assert self._server is not None, 'start() the server first'
        host, port = self._server.server_address[:2]
        return f'http://{host!s}:{port}/v1'

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The bodies of the chat-completion requests received so far."""
        return [body for body in self.requests if 'messages' in body]

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        if callable(self.script):
            return self.script(body)
        if not self.script:
            return Error(500, 'the test script has no more replies')
        return self.script.pop(0)

    def start(self) -> FakeOpenAI:
        """Serve in a background thread."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip('/').endswith('/models'):
                    self._json(200, {'object': 'list', 'data': [{'id': m, 'object': 'model'} for m in fake.models]})
                else:
                    self._json(404, {'error': {'message': 'not found', 'type': 'invalid_request_error'}})

            def do_POST(self) -> None:
                length = int(self.headers.get('Content-Length') or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(length) or b'{}')
                fake.requests.append(body)
                if not self.path.rstrip('/').endswith('/chat/completions'):
                    self._json(404, {'error': {'message': 'not found', 'type': 'invalid_request_error'}})
                    return
                if body.get('model') not in fake.models:
                    self._json(
                        404, {'error': {'message': f'model {body.get("model")} not found', 'code': 'model_not_found'}}
                    )
                    return
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                reply = fake._next_reply(body)
                if isinstance(reply, Error):
                    self._json(reply.status, {'error': {'message': reply.message, 'type': 'error', 'code': None}})
                elif body.get('stream'):
                    self._stream(body, reply)
                else:
                    self._json(200, _completion(body, reply))

            def _stream(self, body: dict[str, Any], reply: Text | ToolCall) -> None:
                self.send_response(200)
                self.send_header('Content-Type', 'text/event-stream')
                self.send_header('Cache-Control', 'no-cache')
                self.send_header('Connection', 'close')
                self.end_headers()
                include_usage = bool((body.get('stream_options') or {}).get('include_usage'))
                for chunk in _chunks(body, reply, include_usage):
                    self.wfile.write(f'data: {json.dumps(chunk)}\n\n'.encode())
                    self.wfile.flush()
                self.wfile.write(b'data: [DONE]\n\n')
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _usage(body: dict[str, Any], reply: Text | ToolCall) -> dict[str, int]:
    prompt_tokens = max(1, len(json.dumps(body.get('messages', []))) // 4)
    completion = reply.text if isinstance(reply, Text) else json.dumps(reply.calls)
    completion_tokens = max(1, len(completion) // 4)
    return {
        'prompt_tokens': prompt_tokens,
        'completion_tokens': completion_tokens,
        'total_tokens': prompt_tokens + completion_tokens,
    }


def _tool_calls(reply: ToolCall) -> list[dict[str, Any]]:
    return [
        {'id': f'call_{index}_{name}', 'type': 'function', 'function': {'name': name, 'arguments': json.dumps(args)}}
        for index, (name, args) in enumerate(reply.calls)
    ]


def _completion(body: dict[str, Any], reply: Text | ToolCall) -> dict[str, Any]:
    message: dict[str, Any] = {'role': 'assistant', 'content': None}
    if isinstance(reply, Text):
        message['content'] = reply.text
        finish = 'stop'
    else:
        message['tool_calls'] = _tool_calls(reply)
        finish = 'tool_calls'
    return {
        'id': 'chatcmpl-fake',
        'object': 'chat.completion',
        'created': int(time.time()),
        'model': body['model'],
        'choices': [{'index': 0, 'message': message, 'finish_reason': finish}],
        'usage': _usage(body, reply),
    }


def _chunks(body: dict[str, Any], reply: Text | ToolCall, include_usage: bool) -> Iterator[dict[str, Any]]:
    base = {
        'id': 'chatcmpl-fake',
        'object': 'chat.completion.chunk',
        'created': int(time.time()),
        'model': body['model'],
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]}

    yield chunk({'role': 'assistant', 'content': ''})
    if isinstance(reply, Text):
        words = reply.text.split(' ')
        for index, word in enumerate(words):
            yield chunk({'content': word if index == 0 else ' ' + word})
        yield chunk({}, 'stop')
    else:
        for index, call in enumerate(_tool_calls(reply)):
            arguments = call['function']['arguments']
            half = len(arguments) // 2
            yield chunk(
                {
                    'tool_calls': [
                        {
                            'index': index,
                            'id': call['id'],
                            'type': 'function',
                            'function': {'name': call['function']['name'], 'arguments': arguments[:half]},
                        }
                    ]
                }
            )
            yield chunk({'tool_calls': [{'index': index, 'function': {'arguments': arguments[half:]}}]})
        yield chunk({}, 'tool_calls')
    if include_usage:
        yield {**base, 'choices': [], 'usage': _usage(body, reply)}
