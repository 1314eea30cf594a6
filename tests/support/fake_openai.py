"""A loopback OpenAI-compatible server for tests: scripted replies, every request recorded.

It speaks enough of `/v1/models` and `/v1/chat/completions` (plain and SSE streaming, with tool
calls and usage) for the openai SDK and pydantic-ai's `openai-chat:` models to talk to it as they
would to vLLM, Ollama or llama.cpp; and `/v1/embeddings` (floats or base64), with deterministic
bag-of-words vectors (`fake_embedding`), for the remote-embeddings path of the knowledge base.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Text:
    """Answer with text, finished with `finish`: `None` breaks the answer off, as a cut connection does
    (in a stream: no finish chunk and no `[DONE]`)."""

    text: str
    finish: str | None = 'stop'


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
    """Answer with an HTTP error in OpenAI's error shape, with a `Retry-After` header when `retry_after` is set."""

    status: int
    message: str = 'error'
    retry_after: float | None = None


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


def example_of(schema: dict[str, Any]) -> Any:
    """A value that fits a JSON Schema of the kinds typed answers use: every required property, filled in."""
    if 'enum' in schema:
        return schema['enum'][0]
    if 'const' in schema:
        return schema['const']
    for key in ('anyOf', 'oneOf'):
        if key in schema:
            return example_of(schema[key][0])
    kind = schema.get('type', 'object')
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == 'object':
        properties: dict[str, Any] = schema.get('properties', {})
        return {name: example_of(properties[name]) for name in schema.get('required', properties)}
    if kind == 'array':
        return [example_of(schema.get('items', {'type': 'string'}))]
    return {'string': 'example', 'integer': 1, 'number': 1.5, 'boolean': True, 'null': None}.get(kind, 'example')


def _typed_answer(body: dict[str, Any]) -> Reply | None:
    """A typed answer, when the request asks for one: a call of its output tool, or JSON in the text."""
    for tool in body.get('tools') or []:
        function = tool.get('function', {})
        if function.get('name', '').startswith('final_result'):
            return ToolCall(((function['name'], example_of(function.get('parameters', {}))),))
    response_format = body.get('response_format') or {}
    if response_format.get('type') == 'json_schema':
        return Text(json.dumps(example_of(response_format['json_schema'].get('schema', {}))))
    if response_format.get('type') == 'json_object':
        return Text('{}')
    return None


def echo_script(body: dict[str, Any]) -> Reply:
    """Default behaviour: a typed answer that fits, when one is asked for (`example_of`); after a tool
    result, report it; otherwise echo the last user message."""
    typed = _typed_answer(body)
    if typed is not None:
        return typed
    result = last_tool_result(body)
    if result is not None:
        return Text(f'The tool said: {result}')
    texts = user_texts(body)
    return Text(f'You said: {texts[-1] if texts else ""}')


class _JsonHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler that answers JSON."""

    protocol_version = 'HTTP/1.1'

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class _Loopback:
    """Serving a handler on a free loopback port, in a daemon thread."""

    _server: ThreadingHTTPServer | None

    @property
    def url(self) -> str:
        """The base URL to give as `base_url` / `OPENAI_BASE_URL`."""
        assert self._server is not None, 'start() the server first'
        host, port = self._server.server_address[:2]
        return f'http://{host!s}:{port}/v1'

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class FakeOpenAI(_Loopback):
    """A scripted OpenAI-compatible server on a free loopback port."""

    script: Script | list[Reply] = echo_script
    models: list[str] = field(default_factory=lambda: ['tiny-chat'])
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    request_times: list[float] = field(default_factory=list[float])
    """When each request arrived (`time.monotonic()`), in order."""
    embedding_models: list[str] = field(default_factory=lambda: ['tiny-embed'])
    """Models `/v1/embeddings` serves; their vectors come from `fake_embedding`."""
    embedding_dims: int = 64
    _server: ThreadingHTTPServer | None = None

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The bodies of the chat-completion requests received so far."""
        return [body for body in self.requests if 'messages' in body]

    @property
    def embedding_requests(self) -> list[dict[str, Any]]:
        """The bodies of the `/v1/embeddings` requests received so far."""
        return [body for body in self.requests if 'input' in body and 'messages' not in body]

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        if callable(self.script):
            return self.script(body)
        if not self.script:
            return Error(500, 'the test script has no more replies')
        return self.script.pop(0)

    def start(self) -> FakeOpenAI:
        """Serve in a background thread."""
        fake = self

        class Handler(_JsonHandler):
            def do_GET(self) -> None:
                if self.path.rstrip('/').endswith('/models'):
                    self._json(200, {'object': 'list', 'data': [{'id': m, 'object': 'model'} for m in fake.models]})
                else:
                    self._json(404, {'error': {'message': 'not found', 'type': 'invalid_request_error'}})

            def do_POST(self) -> None:
                length = int(self.headers.get('Content-Length') or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(length) or b'{}')
                fake.requests.append(body)
                fake.request_times.append(time.monotonic())
                if self.path.rstrip('/').endswith('/embeddings'):
                    self._json(*_embeddings(fake, body))
                    return
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
                    headers = {'Retry-After': f'{reply.retry_after:g}'} if reply.retry_after is not None else {}
                    body = {'error': {'message': reply.message, 'type': 'error', 'code': None}}
                    self._json(reply.status, body, headers)
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
                if not isinstance(reply, Text) or reply.finish is not None:
                    self.wfile.write(b'data: [DONE]\n\n')
                    self.wfile.flush()
                self.close_connection = True

        self._serve(Handler)
        return self

    def __enter__(self) -> FakeOpenAI:
        return self.start()


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
        finish = reply.finish
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
        if reply.finish is None:
            return  # cut: no finish chunk, no usage
        yield chunk({}, reply.finish)
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


# -- files and fine-tuning ------------------------------------------------------------------------


@dataclass
class FakeFineTuning(_Loopback):
    """A loopback fake of OpenAI's files and fine-tuning endpoints, on its own free port.

    It speaks `POST /v1/files` (multipart upload), `GET /v1/files/ID`, `POST /v1/fine_tuning/jobs`,
    `GET /v1/fine_tuning/jobs[/ID[/events]]` and `POST /v1/fine_tuning/jobs/ID/cancel`, enough for
    the openai SDK. A job moves one state per `GET` of it: `validating_files`, `queued`, then
    `running` for `steps` polls (a `metrics` event each), then `outcome`. Like OpenAI, it fails a
    job whose training file has fewer than 10 lines. Once a job succeeded, its model is listed by
    `/v1/models` and answers `/v1/chat/completions` (echoing, like `FakeOpenAI`), so the
    registered backbone can be used end to end.
    """

    outcome: str = 'succeeded'
    steps: int = 2
    organization: str = 'acme'
    api_key: str | None = None
    """When set, requests without `Authorization: Bearer <api_key>` get a 401."""
    base_models: list[str] = field(default_factory=lambda: ['gpt-4.1-mini-2025-04-14', 'gpt-4o-mini-2024-07-18'])
    files: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])
    file_contents: dict[str, bytes] = field(default_factory=dict[str, bytes])
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict[str, list[dict[str, Any]]])
    requests: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    """`(method, path)` of every request, in order."""
    _polls: dict[str, int] = field(default_factory=dict[str, int])
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def tuned_models(self) -> list[str]:
        """The models of the jobs that succeeded."""
        return [job['fine_tuned_model'] for job in self.jobs.values() if job.get('fine_tuned_model')]

    def start(self) -> FakeFineTuning:
        """Serve in a background thread."""
        fake = self

        class Handler(_JsonHandler):
            def _authorised(self) -> bool:
                if fake.api_key is None or self.headers.get('Authorization') == f'Bearer {fake.api_key}':
                    return True
                self._json(401, {'error': {'message': 'Incorrect API key provided', 'code': 'invalid_api_key'}})
                return False

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                split = urlsplit(self.path)
                with fake._lock:
                    fake.requests.append(('GET', split.path))
                if not self._authorised():
                    return
                status, payload = fake._get(split.path.rstrip('/'), parse_qs(split.query))
                self._json(status, payload)

            def do_POST(self) -> None:
                length = int(self.headers.get('Content-Length') or 0)
                raw = self.rfile.read(length)
                with fake._lock:
                    fake.requests.append(('POST', self.path))
                if not self._authorised():
                    return
                status, payload = fake._post(self.path.rstrip('/'), self.headers.get('Content-Type', ''), raw)
                if status == 200 and payload.get('object') == 'chat.completion' and json.loads(raw).get('stream'):
                    self._sse(json.loads(raw))
                    return
                self._json(status, payload)

            def _sse(self, body: dict[str, Any]) -> None:
                reply = echo_script(body)
                assert isinstance(reply, Text)
                self.send_response(200)
                self.send_header('Content-Type', 'text/event-stream')
                self.send_header('Connection', 'close')
                self.end_headers()
                include_usage = bool((body.get('stream_options') or {}).get('include_usage'))
                for chunk in _chunks(body, reply, include_usage):
                    self.wfile.write(f'data: {json.dumps(chunk)}\n\n'.encode())
                self.wfile.write(b'data: [DONE]\n\n')
                self.wfile.flush()
                self.close_connection = True

        self._serve(Handler)
        return self

    def __enter__(self) -> FakeFineTuning:
        return self.start()

    # -- routes --

    def _get(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        parts = path.split('/')[2:]  # drop '' and 'v1'
        with self._lock:
            if parts == ['models']:
                ids = [*self.base_models, *self.tuned_models]
                return 200, {'object': 'list', 'data': [{'id': i, 'object': 'model'} for i in ids]}
            if len(parts) == 2 and parts[0] == 'files' and parts[1] in self.files:
                return 200, self.files[parts[1]]
            if parts == ['fine_tuning', 'jobs']:
                data = sorted(self.jobs.values(), key=lambda job: job['created_at'], reverse=True)
                return 200, {'object': 'list', 'data': data, 'has_more': False}
            if len(parts) >= 3 and parts[:2] == ['fine_tuning', 'jobs']:
                job = self.jobs.get(parts[2])
                if job is None:
                    return 404, {'error': {'message': f'Could not find fine-tune: {parts[2]}', 'code': None}}
                if len(parts) == 3:
                    self._advance(job)
                    return 200, job
                if parts[3:] == ['events']:
                    return 200, self._event_page(parts[2], query)
        return 404, {'error': {'message': f'no route {path}', 'type': 'invalid_request_error'}}

    def _post(self, path: str, content_type: str, raw: bytes) -> tuple[int, Any]:
        parts = path.split('/')[2:]
        if parts == ['files']:
            return self._upload(content_type, raw)
        if parts == ['chat', 'completions']:
            body: dict[str, Any] = json.loads(raw or b'{}')
            if body.get('model') not in self.tuned_models + self.base_models:
                return 404, {'error': {'message': f'model {body.get("model")} not found', 'code': 'model_not_found'}}
            reply = echo_script(body)
            assert isinstance(reply, Text)
            return 200, _completion(body, reply)
        body = json.loads(raw or b'{}')
        with self._lock:
            if parts == ['fine_tuning', 'jobs']:
                return self._create_job(body)
            if len(parts) == 4 and parts[:2] == ['fine_tuning', 'jobs'] and parts[3] == 'cancel':
                job = self.jobs.get(parts[2])
                if job is None:
                    return 404, {'error': {'message': f'Could not find fine-tune: {parts[2]}', 'code': None}}
                job['status'] = 'cancelled'
                self._event(job['id'], 'Fine-tuning job cancelled')
                return 200, job
        return 404, {'error': {'message': f'no route {path}', 'type': 'invalid_request_error'}}

    def _upload(self, content_type: str, raw: bytes) -> tuple[int, Any]:
        from email.parser import BytesParser
        from email.policy import HTTP

        message = BytesParser(policy=HTTP).parsebytes(f'Content-Type: {content_type}\r\n\r\n'.encode() + raw)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():  # type: ignore[attr-defined]
            name = part.get_param('name', header='content-disposition')
            payload: Any = part.get_payload(decode=True)
            fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b'')
        if 'file' not in fields or fields.get('purpose', (None, b''))[1] != b'fine-tune':
            return 400, {'error': {'message': 'expected a file with purpose fine-tune', 'param': 'file'}}
        with self._lock:
            file_id = f'file-{len(self.files) + 1:04d}'
            filename, data = fields['file']
            self.file_contents[file_id] = data
            self.files[file_id] = {
                'id': file_id,
                'object': 'file',
                'bytes': len(data),
                'created_at': int(time.time()),
                'filename': filename or 'upload.jsonl',
                'purpose': 'fine-tune',
                'status': 'processed',
            }
            return 200, self.files[file_id]

    def _create_job(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = body.get('model')
        if model not in self.base_models:
            return 400, {'error': {'message': f'Model {model} is not available for fine-tuning', 'param': 'model'}}
        if body.get('training_file') not in self.files:
            return 400, {'error': {'message': f'invalid training_file: {body.get("training_file")}', 'param': None}}
        job_id = f'ftjob-{len(self.jobs) + 1:04d}abcd'
        epochs = (((body.get('method') or {}).get('supervised') or {}).get('hyperparameters') or {}).get('n_epochs')
        self.jobs[job_id] = {
            'id': job_id,
            'object': 'fine_tuning.job',
            'created_at': int(time.time()),
            'error': None,
            'fine_tuned_model': None,
            'finished_at': None,
            'hyperparameters': {'n_epochs': epochs or 'auto', 'batch_size': 'auto', 'learning_rate_multiplier': 'auto'},
            'model': model,
            'organization_id': f'org-{self.organization}',
            'result_files': [],
            'seed': body.get('seed') or 42,
            'status': 'validating_files',
            'trained_tokens': None,
            'training_file': body['training_file'],
            'validation_file': body.get('validation_file'),
            'suffix': body.get('suffix'),
            'metadata': body.get('metadata'),
            'method': body.get('method'),
        }
        self.events[job_id] = []
        self._polls[job_id] = 0
        self._event(job_id, f'Created fine-tuning job: {job_id}')
        return 200, self.jobs[job_id]

    def _advance(self, job: dict[str, Any]) -> None:
        """One step of the job's life per poll (called with the lock held)."""
        if job['status'] in ('succeeded', 'failed', 'cancelled'):
            return
        job_id = job['id']
        self._polls[job_id] += 1
        poll = self._polls[job_id]
        lines = [line for line in self.file_contents[job['training_file']].splitlines() if line.strip()]
        if poll == 1:
            if len(lines) < 10:
                job.update(status='failed', finished_at=int(time.time()))
                job['error'] = {
                    'code': 'invalid_training_file',
                    'message': f'Training file has {len(lines)} example(s), but must have at least 10 examples',
                    'param': 'training_file',
                }
                self._event(job_id, job['error']['message'], level='error')
                return
            job['status'] = 'queued'
            self._event(job_id, 'Files validated, moving job to queued state')
        elif poll == 2:
            job['status'] = 'running'
            self._event(job_id, 'Fine-tuning job started')
        elif poll - 2 <= self.steps:
            step = poll - 2
            self._event(
                job_id,
                f'Step {step}/{self.steps}: training loss={1.0 / step:.3f}',
                kind='metrics',
                data={'step': step, 'total_steps': self.steps, 'train_loss': round(1.0 / step, 3)},
            )
        else:
            job['finished_at'] = int(time.time())
            if self.outcome == 'succeeded':
                suffix = job.get('suffix') or ''
                job['fine_tuned_model'] = f'ft:{job["model"]}:{self.organization}:{suffix}:{job_id[-8:]}'
                job['trained_tokens'] = sum(len(line) // 4 for line in lines)
                job['status'] = 'succeeded'
                self._event(job_id, f'New fine-tuned model created: {job["fine_tuned_model"]}')
                self._event(job_id, 'The job has successfully completed')
            else:
                job['status'] = self.outcome
                job['error'] = {'code': 'training_failed', 'message': 'The job failed during training', 'param': None}
                self._event(job_id, 'The job failed during training', level='error')

    def _event(
        self, job_id: str, message: str, *, level: str = 'info', kind: str = 'message', data: Any = None
    ) -> None:
        events = self.events[job_id]
        events.append(
            {
                'id': f'ftevent-{job_id[-8:]}-{len(events) + 1:03d}',
                'object': 'fine_tuning.job.event',
                'created_at': int(time.time()) + len(events),
                'level': level,
                'message': message,
                'type': kind,
                'data': data,
            }
        )

    def _event_page(self, job_id: str, query: dict[str, list[str]]) -> dict[str, Any]:
        newest_first = list(reversed(self.events.get(job_id, [])))
        after = (query.get('after') or [None])[0]
        if after is not None:
            ids = [event['id'] for event in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        limit = int((query.get('limit') or ['20'])[0])
        return {'object': 'list', 'data': newest_first[:limit], 'has_more': len(newest_first) > limit}


# --- /v1/embeddings --------------------------------------------------------------------------------


def fake_embedding(text: str, dims: int = 64) -> list[float]:
    """A deterministic unit vector for `text`: its lowercased words hashed into `dims` signed buckets,
    so texts sharing words point the same way (a lexical stand-in for a real embedding model)."""
    vector = [0.0] * dims
    for word in re.findall(r'\w+', text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], 'little') % dims] += 1.0 if digest[4] % 2 else -1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def _embeddings(fake: FakeOpenAI, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """An OpenAI embeddings response: floats, or base64 float32 as the openai SDK asks by default."""
    if body.get('model') not in fake.embedding_models:
        return 404, {'error': {'message': f'model {body.get("model")} not found', 'code': 'model_not_found'}}
    inputs = body.get('input')
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    data: list[dict[str, Any]] = []
    for index, text in enumerate(texts):
        vector = fake_embedding(str(text), fake.embedding_dims)
        encoded: Any = vector
        if body.get('encoding_format') == 'base64':
            encoded = base64.b64encode(struct.pack(f'<{len(vector)}f', *vector)).decode()
        data.append({'object': 'embedding', 'index': index, 'embedding': encoded})
    tokens = sum(len(str(text).split()) for text in texts)
    return 200, {
        'object': 'list',
        'data': data,
        'model': body['model'],
        'usage': {'prompt_tokens': tokens, 'total_tokens': tokens},
    }
