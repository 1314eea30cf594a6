"""The OpenAI-compatible HTTP service: `tandem serve`, or `create_app(settings)` under any ASGI server.

Because it speaks OpenAI's chat-completions wire format, the openai SDKs, Open WebUI and LibreChat
work as clients unchanged. Every turn goes through `agent.api.Assistant`, and so through
`build_deps` and `run_turn`, like every other front end.

- `POST /v1/chat/completions`: `model` is a backbone name from `GET /v1/models`. With a session,
  named by the `X-Tandem-Session` header or else the `user` field, the server keeps the memory and
  only the last (user) message is the new turn; the request's other messages, system ones included,
  are ignored. Without one the turn is stateless: the request's messages are the history and
  nothing is stored. Tandem's prompt template stays the instructions either way; in a stateless
  turn the client's system and developer messages are kept, in place, as system messages, so
  personas set in a client still apply. Tools run on the server; the client sees the final content.
  `stream: true` sends OpenAI's SSE chunks, then `data: [DONE]`.
- `GET /v1/models`, `POST|GET /v1/sessions`, `GET /v1/sessions/{id}/messages`,
  `DELETE /v1/sessions/{id}`, `POST /v1/knowledge?filename=NAME[&kb=KB]` (the document as the
  body), `GET /v1/knowledge`, `GET /v1/knowledge/{kb}`, `GET /healthz`, `GET /readyz`, and the
  OpenAPI docs at `/docs`.

Identity: the API key names the tenant. The user is the `X-Tandem-User` header, else the `user`
field, else the settings' `user`. Sessions of another tenant, or of another user, are 404s.

A worker holds no state but its caches: any number of workers and hosts can share one Redis (or a
Redis Cluster, through a `redis+cluster://` URL) behind a load balancer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import math
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

import httpx
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.agent.api import Assistant, SessionExistsError, TurnFinished, TurnStream
from tandem.agent.core.config import ApiKeyConfig, Settings, load_settings, parse_api_keys
from tandem.agent.core.errors import (
    BackboneError,
    ConfigError,
    InvalidIdError,
    PromptError,
    RedisUnavailableError,
    TandemError,
)
from tandem.agent.core.events import TextDelta
from tandem.agent.core.log import configure_logging, get_logger
from tandem.agent.turn.run import TurnResult, TurnUsage
from tandem.memory.conversations import SessionInfo, SessionNotFoundError
from tandem.memory.keys import rate_limit_key, validate_id

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from tandem.agent.backbones.base import Backbone
    from tandem.memory.knowledge.retrieval import TextEmbedder
    from tandem.memory.knowledge.store import KbInfo

__all__ = ['API_KEYS_ENV', 'Caller', 'create_app', 'is_loopback', 'load_api_keys', 'worker_app']

API_KEYS_ENV = 'TANDEM_API_KEYS'
"""`key1:tenant1,key2:tenant2`: API keys from the environment, added to the config's."""

SERVE_OPTIONS_ENV = 'TANDEM_SERVE_OPTIONS'
"""How `tandem serve` hands its flags to its worker processes (JSON); not meant to be set by hand."""

SESSION_HEADER = 'X-Tandem-Session'
USER_HEADER = 'X-Tandem-User'
KEEPALIVE_SECONDS = 15.0
"""An SSE comment goes out after this long without an event, so proxies keep a long tool call's stream open."""

_log = get_logger('tandem.server')
_T = TypeVar('_T')

# -- errors ------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = 'invalid_request_error',
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {'error': {'message': self.message, 'type': self.type, 'param': self.param, 'code': self.code}}

    def response(self) -> JSONResponse:
        """The error as an HTTP response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _from_tandem(error: TandemError) -> APIError:
    """The HTTP status and OpenAI error type for a user-facing Tandem failure."""
    message = str(error)
    if isinstance(error, InvalidIdError):
        return APIError(400, message, code='invalid_id')
    if isinstance(error, SessionNotFoundError):
        return APIError(404, message, code='session_not_found')
    if isinstance(error, SessionExistsError):
        return APIError(409, message, code='session_exists')
    if isinstance(error, RedisUnavailableError):
        return APIError(503, message, type='service_unavailable', code='redis_unavailable')
    if isinstance(error, BackboneError):
        return APIError(502, message, type='api_error', code='backbone_error')
    if isinstance(error, ConfigError | PromptError):
        return APIError(500, message, type='server_error', code='server_misconfigured')
    return APIError(500, message, type='server_error', code='turn_failed')


_INTERNAL = APIError(500, 'internal error: the server log has the details.', type='server_error', code='internal_error')


# -- auth and limits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who a request is from: the tenant its API key acts for, and a short digest naming the key."""

    tenant: str
    key_id: str
    """The first 16 hex digits of the key's SHA-256: safe to log, and the rate limit's name."""


ANONYMOUS_KEY_ID = 'anonymous'


def load_api_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> list[ApiKeyConfig]:
    """The config's `[server] api_keys`, plus `TANDEM_API_KEYS` from the environment.

    Raises:
        ConfigError: `TANDEM_API_KEYS` is malformed.
    """
    environ = os.environ if environ is None else environ
    keys = list(settings.server.api_keys)
    text = environ.get(API_KEYS_ENV, '').strip()
    if text:
        try:
            keys += parse_api_keys(text)
        except ValueError as error:
            raise ConfigError(f'{API_KEYS_ENV} is invalid: {error} (e.g. "key1:tenant1,key2:tenant2").') from None
    return keys


class _KeyRing:
    """API keys held as SHA-256 digests, matched in constant time."""

    def __init__(self, keys: Sequence[ApiKeyConfig]) -> None:
        self._entries: list[tuple[bytes, Caller]] = []
        seen: dict[bytes, str] = {}
        for config in keys:
            tenant = validate_id('tenant', config.tenant)
            if config.key is not None:
                digest = hashlib.sha256(config.key.get_secret_value().encode()).digest()
            else:
                digest = bytes.fromhex(cast(str, config.sha256))
            if seen.get(digest, tenant) != tenant:
                raise ConfigError('one API key is given for two tenants: give each tenant its own key.')
            seen[digest] = tenant
            self._entries.append((digest, Caller(tenant=tenant, key_id=digest.hex()[:16])))

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, presented: str) -> Caller | None:
        """The caller whose key is `presented`, comparing against every key so timing tells nothing."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: Caller | None = None
        for stored, caller in self._entries:
            if hmac.compare_digest(stored, digest):
                found = caller
        return found


_SLIDING_WINDOW = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window)
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""
"""A sliding-window log: one sorted-set member per allowed request, scored by the server's clock (ms).

The server's clock, not the worker's, so every worker agrees on the window. Refused requests are
not logged, so a client that keeps retrying still gets in as soon as the window allows."""


class _RateLimiter:
    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window_ms = max(1, round(window_seconds * 1000))
        self._script: AsyncScript | None = None

    async def retry_after(self, redis: Redis, caller: Caller) -> float | None:
        """Log a request by `caller`; `None` if it is allowed, else the seconds until it would be."""
        if self.limit <= 0:
            return None
        script = self._script
        if script is None or script.registered_client is not redis:
            script = self._script = redis.register_script(_SLIDING_WINDOW)
        reply = cast(
            list[int],
            await script(
                keys=[rate_limit_key(caller.tenant, caller.key_id)],
                args=[self.limit, self.window_ms, uuid.uuid4().hex],
            ),
        )
        allowed, _remaining, wait_ms = (int(value) for value in reply)
        return None if allowed else max(wait_ms, 1) / 1000


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) only reaches this machine."""
    if host.lower() == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


# -- request bodies ----------------------------------------------------------------------------------


class _ToolCallFunction(BaseModel):
    name: str
    arguments: str = '{}'


class _ToolCallIn(BaseModel):
    id: str
    type: Literal['function'] = 'function'
    function: _ToolCallFunction


class ChatMessage(BaseModel):
    """One message of a chat-completion request, as OpenAI defines it (text content only)."""

    model_config = ConfigDict(extra='allow')

    role: Literal['system', 'developer', 'user', 'assistant', 'tool']
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` adds a last chunk with the usage."""

    model_config = ConfigDict(extra='allow')

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """A chat-completion request. Sampling parameters are accepted and ignored: the backbone's config sets them."""

    model_config = ConfigDict(extra='allow')

    model: str = Field(description='A backbone name, as `GET /v1/models` lists them.')
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        default=None,
        description=f'Names the user, and the session when no `{SESSION_HEADER}` header is sent.',
    )
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None


class SessionCreate(BaseModel):
    """`POST /v1/sessions`."""

    id: str | None = Field(default=None, description='The session id; a fresh one when omitted.')
    user: str | None = Field(default=None, description="Who the session belongs to; the settings' user when omitted.")


# -- messages: OpenAI <-> pydantic-ai -----------------------------------------------------------------


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ''
    texts: list[str] = []
    for index, part in enumerate(content):
        kind = part.get('type')
        if kind != 'text' or not isinstance(part.get('text'), str):
            raise APIError(
                400,
                f'{where}.content[{index}]: content of type {kind!r} is not supported; send text.',
                param=f'{where}.content',
                code='unsupported_content',
            )
        texts.append(cast(str, part['text']))
    return '\n'.join(texts)


def openai_to_history(messages: Sequence[ChatMessage]) -> list[ModelMessage]:
    """The pydantic-ai history for OpenAI-format messages (the new user turn excluded).

    System and developer messages become system prompt parts, in place; an assistant's tool calls
    must each be answered by a `tool` message before the next other message.

    Raises:
        APIError: A message cannot be converted (400).
    """
    history: list[ModelMessage] = []
    pending: dict[str, str] = {}

    def request(part: ModelRequestPart) -> None:
        last = history[-1] if history else None
        if isinstance(last, ModelRequest):
            history[-1] = ModelRequest(parts=[*last.parts, part])
        else:
            history.append(ModelRequest(parts=[part]))

    for index, message in enumerate(messages):
        where = f'messages[{index}]'
        if message.role != 'tool' and pending:
            raise APIError(
                400,
                f'{where}: tool call {next(iter(pending))!r} has no tool message answering it.',
                param=where,
            )
        text = _text(message.content, where)
        if message.role in ('system', 'developer'):
            request(SystemPromptPart(text))
        elif message.role == 'user':
            request(UserPromptPart(text))
        elif message.role == 'assistant':
            parts: list[ModelResponsePart] = [TextPart(text)] if text else []
            for call in message.tool_calls or []:
                parts.append(ToolCallPart(call.function.name, call.function.arguments, tool_call_id=call.id))
                pending[call.id] = call.function.name
            history.append(ModelResponse(parts=parts))
        else:
            name = pending.pop(message.tool_call_id or '', None)
            if name is None:
                raise APIError(
                    400,
                    f'{where}: tool_call_id {message.tool_call_id!r} answers no earlier tool call.',
                    param=f'{where}.tool_call_id',
                )
            request(ToolReturnPart(name, text, tool_call_id=cast(str, message.tool_call_id)))
    if pending:
        raise APIError(400, f'tool call {next(iter(pending))!r} has no tool message answering it.', param='messages')
    return history


def history_to_openai(messages: Sequence[ModelMessage]) -> list[dict[str, Any]]:
    """Stored messages in OpenAI's message format (lossy: `?format=pydantic-ai` is lossless)."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    converted.append({'role': 'system', 'content': part.content})
                elif isinstance(part, UserPromptPart):
                    content = part.content if isinstance(part.content, str) else str(part.content)
                    converted.append({'role': 'user', 'content': content})
                elif isinstance(part, ToolReturnPart):
                    converted.append(
                        {'role': 'tool', 'tool_call_id': part.tool_call_id, 'content': part.model_response_str()}
                    )
        else:
            text = ''.join(part.content for part in message.parts if isinstance(part, TextPart))
            calls = [
                {
                    'id': part.tool_call_id,
                    'type': 'function',
                    'function': {'name': part.tool_name, 'arguments': part.args_as_json_str()},
                }
                for part in message.parts
                if isinstance(part, ToolCallPart)
            ]
            entry: dict[str, Any] = {'role': 'assistant', 'content': text or None}
            if calls:
                entry['tool_calls'] = calls
            converted.append(entry)
    return converted


def _usage(usage: TurnUsage) -> dict[str, int]:
    return {
        'prompt_tokens': usage.input_tokens,
        'completion_tokens': usage.output_tokens,
        'total_tokens': usage.total_tokens,
    }


def _session_json(info: SessionInfo) -> dict[str, Any]:
    return {
        'id': info.id,
        'object': 'session',
        'user': info.user,
        'message_count': info.message_count,
        'updated_at': int(info.updated_at.timestamp()),
        'usage': {
            'requests': info.usage.requests,
            'tool_calls': info.usage.tool_calls,
            'input_tokens': info.usage.input_tokens,
            'output_tokens': info.usage.output_tokens,
        },
    }


def _kb_json(info: KbInfo) -> dict[str, Any]:
    return {
        'id': info.label,
        'object': 'knowledge_base',
        'name': info.name,
        'user': info.user,
        'documents': info.docs,
        'chunks': info.chunks,
        'tokens': info.tokens,
        'embedding_model': info.embed_model,
        'created_at': info.created_at,
        'updated_at': info.updated_at,
    }


# -- middleware --------------------------------------------------------------------------------------


class _BodyLimit:
    """Answers 413 to a request body over its limit, before the app reads any of it.

    The body is read here whole (it is at most the limit), then replayed to the app; after it,
    `receive` is the server's again, so the app still sees a client disconnect.
    """

    def __init__(self, app: ASGIApp, *, limit: int, upload_limit: int, upload_path: str) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit
        self.upload_path = upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope['type'] != 'http' or scope['method'] in ('GET', 'HEAD', 'OPTIONS', 'DELETE'):
            await self.app(scope, receive, send)
            return
        upload = scope['path'].rstrip('/') == self.upload_path
        limit = self.upload_limit if upload else self.limit
        setting = 'server.max_upload_bytes' if upload else 'server.max_body_bytes'
        for name, value in scope['headers']:
            if name == b'content-length' and value.isdigit() and int(value) > limit:
                await self._too_large(scope, receive, send, limit, setting)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message['type'] == 'http.disconnect':
                return
            chunk: bytes = message.get('body', b'')
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, limit, setting)
                return
            chunks.append(chunk)
            if not message.get('more_body', False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {'type': 'http.request', 'body': b''.join(chunks), 'more_body': False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int, setting: str) -> None:
        error = APIError(
            413,
            f'request body over {limit} bytes: send less, or raise {setting}.',
            code='request_too_large',
        )
        await error.response()(scope, receive, send)


class _TurnResponse(StreamingResponse):
    """SSE whose turn is cancelled whenever the response ends early: a disconnect, a send that fails."""

    def __init__(self, content: AsyncIterator[bytes], turn: TurnStream, headers: Mapping[str, str]) -> None:
        super().__init__(content, media_type='text/event-stream', headers=headers)
        self._turn = turn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._turn.aclose()


# -- the service -------------------------------------------------------------------------------------


class _Service:
    """What one worker holds: the settings, the keys, and one `Assistant` (Redis client, agents, backbones)."""

    def __init__(
        self,
        settings: Settings,
        keys: _KeyRing,
        *,
        allow_anonymous: bool,
        backbones: Mapping[str, Backbone] | None,
        redis: Redis | None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.allow_anonymous = allow_anonymous
        self.limiter = _RateLimiter(settings.server.rate_limit_requests, settings.server.rate_limit_window_seconds)
        self._backbones = backbones
        self._redis = redis
        self._assistant: Assistant | None = None
        self._embedder: TextEmbedder | None = None
        self._embedder_made = False

    @property
    def assistant(self) -> Assistant:
        if self._assistant is None:
            raise APIError(503, 'the service is starting up: retry shortly.', type='service_unavailable')
        return self._assistant

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncGenerator[None]:
        assistant = Assistant(self.settings, redis=self._redis, backbones=self._backbones)
        self._assistant = assistant
        try:
            await assistant.redis()
        except TandemError as error:  # keep serving: /readyz says why, and the next request retries
            _log.warning('server.redis_unavailable', error=str(error))
        _log.info('server.start', keys=len(self.keys), anonymous=self.allow_anonymous, pid=os.getpid())
        try:
            yield
        finally:
            self._assistant = None
            await assistant.aclose()

    def embedder(self) -> TextEmbedder | None:
        """The embedder `knowledge.embeddings` configures, made once per worker (`None`: BM25 only)."""
        if not self._embedder_made:
            from tandem.memory.knowledge.retrieval import make_embedder

            self._embedder = make_embedder(self.settings.knowledge)
            self._embedder_made = True
        return self._embedder

    async def model_names(self) -> list[str]:
        """The backbones clients may name: the extra and configured ones, else the default one."""
        names = self.assistant.backbone_names()
        if names:
            return names
        try:
            return [(await self.assistant.backbone()).name]
        except BackboneError as error:
            _log.warning('server.no_backbone', error=str(error))
            raise APIError(
                503,
                'no backbone is configured on this server: configure [backbones.NAME] in tandem.toml '
                '(`tandem backbones` checks them).',
                type='service_unavailable',
                code='no_backbone',
            ) from None

    async def backbone_for(self, model: str) -> str:
        if model not in await self.model_names():
            raise APIError(
                404,
                f'the model {model!r} does not exist: GET /v1/models lists the backbones this server offers.',
                param='model',
                code='model_not_found',
            )
        return model

    async def authenticate(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
        presented = credentials.credentials if credentials is not None else ''
        found = self.keys.match(presented) if presented else None
        if found is not None:
            caller = found
        elif self.allow_anonymous:
            # Without auth, any key (the openai SDK insists on sending one) counts as none.
            client = request.client.host if request.client is not None else ''
            if not is_loopback(client):
                raise APIError(
                    403, 'this server runs without auth and answers only this machine.', type='permission_error'
                )
            caller = Caller(tenant=validate_id('tenant', self.settings.tenant), key_id=ANONYMOUS_KEY_ID)
        elif not presented:
            raise APIError(
                401,
                'missing API key: send the header "Authorization: Bearer YOUR_KEY".',
                code='missing_api_key',
                headers={'WWW-Authenticate': 'Bearer'},
            )
        else:
            _log.info('server.auth_failed', path=request.url.path)
            raise APIError(401, 'invalid API key.', code='invalid_api_key', headers={'WWW-Authenticate': 'Bearer'})
        redis = await self.assistant.redis()
        wait = await self.limiter.retry_after(redis, caller)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise APIError(
                429,
                f'rate limit reached: {self.limiter.limit} requests per '
                f'{self.settings.server.rate_limit_window_seconds:g} s for this key; retry in {seconds} s.',
                type='rate_limit_error',
                code='rate_limit_exceeded',
                headers={
                    'Retry-After': str(seconds),
                    'retry-after-ms': str(max(1, math.ceil(wait * 1000))),
                    'x-ratelimit-limit-requests': str(self.limiter.limit),
                    'x-ratelimit-remaining-requests': '0',
                },
            )
        return caller

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        timeout = self.settings.server.readiness_timeout_seconds
        report: dict[str, Any] = {}
        try:
            redis = await asyncio.wait_for(self.assistant.redis(), timeout)
            await asyncio.wait_for(redis.ping(), timeout)  # pyright: ignore[reportUnknownMemberType]
            report['redis'] = 'ok'
        except Exception as error:  # noqa: BLE001 - redis-py's errors, timeouts, Tandem's: not ready, and why
            _log.warning('server.not_ready', part='redis', error=str(error) or type(error).__name__)
            report['redis'] = 'unavailable'
        try:
            default = (await self.assistant.backbone()).name
            names = list(dict.fromkeys([default, *self.assistant.backbone_names()]))
            resolved = [await self.assistant.backbone(name) for name in names]
            checks = await asyncio.gather(*(_reachable(backbone, timeout) for backbone in resolved))
            report['backbones'] = {name: 'ok' if ok else 'unreachable' for name, ok in zip(names, checks, strict=True)}
            backbones_ok = report['backbones'][default] == 'ok'
        except TandemError as error:
            _log.warning('server.not_ready', part='backbone', error=str(error))
            report['backbones'] = {}
            backbones_ok = False
        ready = report['redis'] == 'ok' and backbones_ok
        return ready, {'status': 'ready' if ready else 'not ready', **report}


async def _reachable(backbone: Backbone, timeout: float) -> bool:
    """Whether an OpenAI-compatible backbone's server lists its models (`GET /models`) in time.

    Models that are not OpenAI-compatible (in-process ones, other providers) count as reachable.
    """
    config = backbone.config
    if not config.model.partition(':')[0].startswith('openai'):
        return True
    base_url = (config.base_url or os.environ.get('OPENAI_BASE_URL') or 'https://api.openai.com/v1').rstrip('/')
    key = os.environ.get(config.api_key_env or 'OPENAI_API_KEY')
    headers = {'Authorization': f'Bearer {key}'} if key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(f'{base_url}/models', headers=headers)
    except httpx.HTTPError as error:
        _log.warning('server.backbone_unreachable', backbone=backbone.name, error=type(error).__name__)
        return False
    if response.status_code != 200:
        _log.warning('server.backbone_unreachable', backbone=backbone.name, status=response.status_code)
        return False
    return True


# -- the app -----------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description='An API key: server.api_keys in tandem.toml, or TANDEM_API_KEYS.')


async def _caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    service = cast(_Service, request.app.state.tandem)
    return await service.authenticate(request, credentials)


CallerDep = Annotated[Caller, Depends(_caller)]
"""The authenticated (and rate-limited) caller of a request."""
UserHeader = Annotated[str | None, Header(alias=USER_HEADER, description='The user the request is for.')]
SessionHeader = Annotated[str | None, Header(alias=SESSION_HEADER, description='Keep the memory in this session.')]


def create_app(
    settings: Settings,
    *,
    backbones: Mapping[str, Backbone] | None = None,
    api_keys: Sequence[ApiKeyConfig] | None = None,
    allow_anonymous: bool = False,
    redis: Redis | None = None,
) -> FastAPI:
    """The HTTP service as an ASGI app, for uvicorn or any ASGI server (one per worker process).

    Args:
        settings: The configuration; `settings.server` holds the keys, limits and CORS origins.
        backbones: Extra backbones by name, offered ahead of the configured ones: how tests serve a
            scripted `FunctionModel`, and how an embedding program serves a model it builds itself.
        api_keys: The keys to accept; by default the config's plus `TANDEM_API_KEYS`.
        allow_anonymous: Serve requests without a key, as the settings' tenant, and then only to
            loopback clients. `tandem serve --no-auth` sets it, and only on a loopback address.
        redis: A Redis client to use (and leave open); by default each worker connects its own.

    Raises:
        ConfigError: There is no API key and `allow_anonymous` is off, or a key is invalid.
    """
    keys = _KeyRing(load_api_keys(settings) if api_keys is None else api_keys)
    if not len(keys) and not allow_anonymous:
        raise ConfigError(
            f'no API keys: set {API_KEYS_ENV}="KEY:TENANT" or server.api_keys in tandem.toml, '
            'or run `tandem serve --no-auth` on 127.0.0.1 for local use.'
        )
    service = _Service(settings, keys, allow_anonymous=allow_anonymous, backbones=backbones, redis=redis)
    app = FastAPI(
        title='Tandem',
        summary='An OpenAI-compatible chat-completions service with Redis-backed sessions and server-side tools.',
        version='1',
        lifespan=service.lifespan,
    )
    app.state.tandem = service
    _install_error_handlers(app)
    limits = settings.server
    app.add_middleware(
        _BodyLimit, limit=limits.max_body_bytes, upload_limit=limits.max_upload_bytes, upload_path='/v1/knowledge'
    )
    if limits.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=limits.cors_origins,
            allow_methods=['GET', 'POST', 'DELETE', 'OPTIONS'],
            allow_headers=['Authorization', 'Content-Type', SESSION_HEADER, USER_HEADER],
            expose_headers=['Retry-After', SESSION_HEADER],
        )

    @app.get('/healthz', tags=['health'])
    async def healthz() -> dict[str, str]:  # pyright: ignore[reportUnusedFunction]
        """Liveness: the process answers."""
        return {'status': 'ok'}

    @app.get('/readyz', tags=['health'], responses={503: {'description': 'Redis or the default backbone is down.'}})
    async def readyz() -> JSONResponse:  # pyright: ignore[reportUnusedFunction]
        """Readiness: Redis answers a PING and the default backbone's server lists its models."""
        ready, report = await service.readiness()
        return JSONResponse(report, status_code=200 if ready else 503)

    @app.get('/v1/models', tags=['models'])
    async def list_models(who: CallerDep) -> dict[str, Any]:  # pyright: ignore[reportUnusedFunction]
        """The backbones this server offers, as OpenAI model objects."""
        data: list[dict[str, Any]] = []
        for name in await service.model_names():
            backbone = await service.assistant.backbone(name)
            data.append({'id': name, 'object': 'model', 'created': 0, 'owned_by': 'tandem', 'kind': backbone.kind})
        return {'object': 'list', 'data': data}

    @app.post('/v1/chat/completions', tags=['chat'], response_model=None)
    async def chat_completions(  # pyright: ignore[reportUnusedFunction]
        body: ChatCompletionRequest,
        request: Request,
        who: CallerDep,
        user_header: UserHeader = None,
        session_header: SessionHeader = None,
    ) -> Response:
        """OpenAI's chat completions, with the session, tools and memory on the server."""
        return await _chat(service, body, request, who, user_header, session_header)

    @app.post('/v1/sessions', tags=['sessions'], status_code=201)
    async def create_session(body: SessionCreate, who: CallerDep, user_header: UserHeader = None) -> dict[str, Any]:  # pyright: ignore[reportUnusedFunction]
        """Create an empty session, to name in later chat completions."""
        user = body.user or user_header or service.settings.user
        session = await service.assistant.create_session(body.id, user=user, tenant=who.tenant)
        return {'id': session, 'object': 'session', 'user': user}

    @app.get('/v1/sessions', tags=['sessions'])
    async def list_sessions(  # pyright: ignore[reportUnusedFunction]
        who: CallerDep,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="Only this user's sessions.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The tenant's sessions (or one user's), most recently saved first."""
        infos = await service.assistant.sessions(user=user or user_header, tenant=who.tenant, limit=limit)
        return {'object': 'list', 'data': [_session_json(info) for info in infos]}

    @app.get('/v1/sessions/{session_id}/messages', tags=['sessions'])
    async def session_messages(  # pyright: ignore[reportUnusedFunction]
        session_id: str,
        who: CallerDep,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="404 unless the session is this user's.")] = None,
        format: Annotated[Literal['openai', 'pydantic-ai'], Query(description='`pydantic-ai` is lossless.')] = 'openai',
    ) -> dict[str, Any]:
        """A session's messages, oldest first."""
        messages = await service.assistant.messages(session_id, user=user or user_header, tenant=who.tenant)
        data: list[Any] = (
            history_to_openai(messages)
            if format == 'openai'
            else ModelMessagesTypeAdapter.dump_python(messages, mode='json')
        )
        return {'object': 'list', 'session': session_id, 'data': data}

    @app.delete('/v1/sessions/{session_id}', tags=['sessions'])
    async def delete_session(  # pyright: ignore[reportUnusedFunction]
        session_id: str,
        who: CallerDep,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="404 unless the session is this user's.")] = None,
    ) -> dict[str, Any]:
        """Delete a session and its messages."""
        await service.assistant.delete_session(session_id, user=user or user_header, tenant=who.tenant)
        return {'id': session_id, 'object': 'session.deleted', 'deleted': True}

    @app.post(
        '/v1/knowledge',
        tags=['knowledge'],
        status_code=201,
        response_model=None,
        responses={
            200: {'description': 'The same document was uploaded before: nothing changed.'},
            422: {'description': 'The document has no text Tandem can read.'},
        },
        openapi_extra={
            'requestBody': {
                'required': True,
                'description': 'The document itself, as the request body (not multipart).',
                'content': {'application/octet-stream': {'schema': {'type': 'string', 'format': 'binary'}}},
            }
        },
    )
    async def upload_knowledge(  # pyright: ignore[reportUnusedFunction]
        request: Request,
        who: CallerDep,
        filename: Annotated[
            str,
            Query(
                min_length=1,
                max_length=255,
                description="The document's name; its suffix says how to read it (.md .txt .html .pdf .json .csv). "
                'Uploading the same name again replaces the document.',
            ),
        ],
        kb: Annotated[str | None, Query(description='The knowledge base; `knowledge.default_kb` when omitted.')] = None,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="Into this user's own knowledge base.")] = None,
    ) -> Response:
        """Add (or replace) one document in one of the tenant's knowledge bases: chunked, indexed, searchable."""
        return await _upload(service, request, who, filename, kb, user or user_header)

    @app.get('/v1/knowledge', tags=['knowledge'])
    async def list_knowledge(  # pyright: ignore[reportUnusedFunction]
        who: CallerDep,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="Also this user's own knowledge bases.")] = None,
    ) -> dict[str, Any]:
        """The tenant's knowledge bases (and one user's own, when named)."""
        from tandem.memory.knowledge.store import list_knowledge_bases

        redis = await service.assistant.redis()
        infos = await list_knowledge_bases(redis, tenant=who.tenant, user=user or user_header)
        return {'object': 'list', 'data': [_kb_json(info) for info in infos]}

    @app.get('/v1/knowledge/{kb}', tags=['knowledge'])
    async def knowledge_base(  # pyright: ignore[reportUnusedFunction]
        kb: str,
        who: CallerDep,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="A user's own knowledge base, not the shared one.")] = None,
    ) -> dict[str, Any]:
        """One knowledge base's summary; 404 when the tenant has none of that name."""
        from tandem.memory.knowledge.store import KnowledgeBase

        redis = await service.assistant.redis()
        info = await KnowledgeBase(redis, tenant=who.tenant, name=kb, user=user or user_header).info()
        if info is None:
            raise APIError(404, f'no knowledge base {kb!r}: GET /v1/knowledge lists them.', code='kb_not_found')
        return _kb_json(info)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> Response:
        return cast(APIError, error).response()

    async def tandem_error(request: Request, error: Exception) -> Response:
        return _from_tandem(cast(TandemError, error)).response()

    async def invalid_request(request: Request, error: Exception) -> Response:
        problems = cast(RequestValidationError, error).errors()
        first: dict[str, Any] = dict(problems[0]) if problems else {}
        if first.get('type') == 'json_invalid':
            return APIError(
                400, f'the body is not valid JSON: {first.get("ctx", {}).get("error", "")}'.rstrip(': ')
            ).response()
        location = [str(part) for part in first.get('loc', ())][1:]  # without 'body', 'query', 'header' or 'path'
        param = '.'.join(location) or None
        message = f'{param}: {first.get("msg", "invalid")}' if param else str(first.get('msg', 'invalid request'))
        return APIError(400, message, param=param).response()

    async def http_error(request: Request, error: Exception) -> Response:
        http = cast(StarletteHTTPException, error)
        kind = 'not_found' if http.status_code == 404 else None
        return APIError(http.status_code, str(http.detail), code=kind, headers=http.headers).response()

    async def redis_down(request: Request, error: Exception) -> Response:
        _log.warning('server.redis_unavailable', path=request.url.path, error=str(error) or type(error).__name__)
        return APIError(
            503, 'Redis is unavailable: retry shortly.', type='service_unavailable', code='redis_unavailable'
        ).response()

    async def unexpected(request: Request, error: Exception) -> Response:
        _log.exception('server.error', path=request.url.path)
        return _INTERNAL.response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(TandemError, tandem_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)
    app.add_exception_handler(Exception, unexpected)


# -- knowledge uploads ---------------------------------------------------------------------------------


async def _upload(
    service: _Service, request: Request, caller: Caller, filename: str, kb: str | None, user: str | None
) -> Response:
    from tandem.memory.knowledge.ingest import IngestOptions, Ingestor
    from tandem.memory.knowledge.store import EmbeddingModelMismatch, KnowledgeBase

    name = filename.replace('\\', '/').rsplit('/', 1)[-1].strip()
    if not name or name in ('.', '..') or any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise APIError(400, f"invalid filename {filename!r}: give the document's file name.", param='filename')
    data = await request.body()
    if not data:
        raise APIError(400, 'the document is empty: send its bytes as the request body.', code='empty_document')
    config = service.settings.knowledge
    knowledge = KnowledgeBase(
        await service.assistant.redis(),
        tenant=caller.tenant,
        name=validate_id('knowledge base', kb or config.default_kb),
        user=validate_id('user', user) if user else None,
    )
    ingestor = Ingestor(
        knowledge,
        embedder=service.embedder(),
        options=IngestOptions(
            chunk_tokens=config.chunk_tokens, chunk_overlap=config.chunk_overlap, max_file_bytes=len(data)
        ),
    )
    source = f'upload:{name}'
    try:
        report = await _unless_disconnected(
            request, asyncio.ensure_future(ingestor.ingest_bytes(source, data, name=name))
        )
    except EmbeddingModelMismatch as error:
        raise APIError(409, str(error), code='embedding_model_mismatch') from None
    if report is None:
        return Response(status_code=499)
    if report.skipped:
        raise APIError(
            422, f'{name} was not ingested: {report.skipped[0].reason}.', param='filename', code='document_skipped'
        )
    outcome = 'added' if report.added else 'updated' if report.updated else 'unchanged'
    _log.info('server.document_uploaded', kb=knowledge.label, outcome=outcome, chunks=report.chunks, bytes=len(data))
    body = {
        'object': 'knowledge.document',
        'kb': knowledge.label,
        'source': source,
        'filename': name,
        'status': outcome,
        'chunks': report.chunks,
        'bytes': len(data),
    }
    return JSONResponse(body, status_code=200 if outcome == 'unchanged' else 201)


# -- chat completions --------------------------------------------------------------------------------


async def _chat(
    service: _Service,
    body: ChatCompletionRequest,
    request: Request,
    caller: Caller,
    user_header: str | None,
    session_header: str | None,
) -> Response:
    limits = service.settings.server
    if body.n not in (None, 1):
        raise APIError(400, 'n must be 1: Tandem runs one turn per request.', param='n')
    if body.tools or body.functions:
        raise APIError(
            400,
            'client-side tools are not supported: Tandem runs its own tools on the server.',
            param='tools' if body.tools else 'functions',
        )
    if len(body.messages) > limits.max_messages:
        raise APIError(
            413, f'over {limits.max_messages} messages in one request.', param='messages', code='too_many_messages'
        )
    for index, message in enumerate(body.messages):
        content = message.content
        if len(content if isinstance(content, str) else json.dumps(content)) > limits.max_message_chars:
            raise APIError(
                413,
                f'messages[{index}] is over {limits.max_message_chars} characters.',
                param=f'messages[{index}].content',
                code='message_too_long',
            )
    last = body.messages[-1]
    if last.role != 'user':
        raise APIError(400, "the last message must be the user's: it is the new turn.", param='messages')
    text = _text(last.content, f'messages[{len(body.messages) - 1}]')
    backbone = await service.backbone_for(body.model)
    user = user_header or body.user or None
    session = session_header or (body.user if limits.session_from_user_field else None) or None
    history = None if session is not None else openai_to_history(body.messages[:-1])
    options: dict[str, Any] = {
        'session': session,
        'user': user,
        'tenant': caller.tenant,
        'backbone': backbone,
        'history': history,
    }
    headers = {SESSION_HEADER: session} if session is not None else {}
    completion_id = f'chatcmpl-{uuid.uuid4().hex}'
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return await _stream(service, request, text, options, headers, completion_id, body.model, include_usage)
    turn = asyncio.ensure_future(service.assistant.chat(text, **options))
    result = await _unless_disconnected(request, turn)
    if result is None:
        return Response(status_code=499)
    return JSONResponse(_completion(result, completion_id, body.model), headers=headers)


def _completion(result: TurnResult, completion_id: str, model: str) -> dict[str, Any]:
    return {
        'id': completion_id,
        'object': 'chat.completion',
        'created': int(time.time()),
        'model': model,
        'system_fingerprint': None,
        'choices': [
            {
                'index': 0,
                'message': {'role': 'assistant', 'content': result.answer, 'refusal': None},
                'logprobs': None,
                'finish_reason': 'stop',
            }
        ],
        'usage': _usage(result.usage),
        'tandem': {
            'session': result.session,
            'backbone': result.backbone,
            'prompt': result.prompt,
            'run_id': result.run_id,
            'tool_calls': [
                {'name': call.name, 'args': call.args, 'ok': call.ok, 'duration_s': round(call.duration_s, 4)}
                for call in result.tool_calls
            ],
        },
    }


async def _unless_disconnected(request: Request, work: asyncio.Future[_T]) -> _T | None:
    """`work`'s result, or `None` (with `work` cancelled) if the client disconnects first."""

    async def disconnected() -> None:
        while (await request.receive())['type'] != 'http.disconnect':
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        _log.info('server.client_gone', path=request.url.path)
        return None
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})
            if not work.cancelled():
                work.exception()  # retrieved: the client is gone, nobody is left to report it to


async def _stream(
    service: _Service,
    request: Request,
    text: str,
    options: dict[str, Any],
    headers: dict[str, str],
    completion_id: str,
    model: str,
    include_usage: bool,
) -> Response:
    turn = service.assistant.stream(text, **options)
    # Wait for the first event before answering, so a turn that fails at once (an unknown session,
    # a backbone that is down) gets its own status code rather than a 200 with an error inside.
    try:
        first = await _unless_disconnected(request, asyncio.ensure_future(anext(turn)))
    except BaseException:
        await turn.aclose()
        raise
    if first is None:
        await turn.aclose()
        return Response(status_code=499)
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            'id': completion_id,
            'object': 'chat.completion.chunk',
            'created': created,
            'model': model,
            'system_fingerprint': None,
            'choices': [{'index': 0, 'delta': delta, 'logprobs': None, 'finish_reason': finish}],
        }
        if include_usage:
            payload['usage'] = None
        return _sse(payload)

    async def events() -> AsyncIterator[bytes]:
        yield chunk({'role': 'assistant', 'content': ''})
        event = first
        try:
            while not isinstance(event, TurnFinished):
                if isinstance(event, TextDelta) and event.text:
                    yield chunk({'content': event.text})
                pending = asyncio.ensure_future(anext(turn))
                try:
                    while not (await asyncio.wait({pending}, timeout=KEEPALIVE_SECONDS))[0]:
                        yield b': keep-alive\n\n'
                finally:
                    pending.cancel()
                event = pending.result()
            yield chunk({}, 'stop')
            if include_usage:
                usage: dict[str, Any] = {
                    'id': completion_id,
                    'object': 'chat.completion.chunk',
                    'created': created,
                    'model': model,
                    'system_fingerprint': None,
                    'choices': [],
                    'usage': _usage(event.usage),
                }
                yield _sse(usage)
        except TandemError as error:
            yield _sse(_from_tandem(error).body())
        except Exception:  # noqa: BLE001 - the client gets an error event; the log gets the traceback
            _log.exception('server.stream_error')
            yield _sse(_INTERNAL.body())
        finally:
            await turn.aclose()
        yield b'data: [DONE]\n\n'

    return _TurnResponse(events(), turn, {**headers, 'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no'})


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b'data: ' + json.dumps(payload, separators=(',', ':')).encode() + b'\n\n'


# -- worker processes --------------------------------------------------------------------------------


def worker_app(backbones: Mapping[str, Backbone] | None = None) -> FastAPI:
    """The app of one `tandem serve` worker process (a uvicorn factory): settings and flags from the environment.

    A program that serves models of its own wraps it, e.g. `def app(): return worker_app({'mine': backbone})`,
    and runs `agent.cli_serve.serve(factory='mypackage.module:app', workers=N)`.

    Raises:
        ConfigError: No keys and no `--no-auth`, or `--no-auth` on a non-loopback address.
    """
    options: MutableMapping[str, Any] = json.loads(os.environ.get(SERVE_OPTIONS_ENV) or '{}')
    settings = load_settings()
    configure_logging(settings.home, settings.log_level, options.get('log_format'))
    no_auth = bool(options.get('no_auth'))
    host = str(options.get('host', ''))
    if no_auth and not is_loopback(host):
        raise ConfigError(f'refusing to serve without auth on {host or "an unknown address"}: bind to 127.0.0.1.')
    return create_app(settings, backbones=backbones, allow_anonymous=no_auth)
