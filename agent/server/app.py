"""The OpenAI-compatible HTTP service: `tandem serve`, or `create_app(settings)` under any ASGI server.

Because it speaks OpenAI's chat-completions wire format, the openai SDKs, Open WebUI and LibreChat
work as clients unchanged. Every turn goes through `agent.api.Assistant`, and so through
`build_deps` and `run_turn`, like every other front end.

- `POST /v1/chat/completions`: `model` is a backbone name from `GET /v1/models`. With a session,
  named by the `X-Tandem-Session` header (or a frontend's, `server.frontend`), the server keeps the memory and
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

Identity: the API key names the tenant. The user is the `X-Tandem-User` header, else a frontend's
user header, else the `user` field, else the settings' `user`. Sessions of another tenant, or of another user, are 404s.

A worker holds no state but its caches: any number of workers and hosts can share one Redis (or a
Redis Cluster, through a `redis+cluster://` URL) behind a load balancer.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncGenerator, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import httpx
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic_ai.messages import ModelMessagesTypeAdapter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.agent.api import Assistant
from tandem.agent.core.config import ApiKeyConfig, ServerConfig, Settings, load_settings
from tandem.agent.core.errors import (
    BackboneError,
    ConfigError,
    TandemError,
)
from tandem.agent.core.log import configure_logging, get_logger
from tandem.agent.server.auth import (
    API_KEYS_ENV,
    Caller,
    KeyRing,
    RateLimiter,
    Refusal,
    acting_user,
    identify,
    is_loopback,
    load_api_keys,
)
from tandem.agent.server.streaming import stream_turn, unless_disconnected
from tandem.agent.server.wire import (
    INTERNAL_ERROR,
    SESSION_HEADER,
    USER_HEADER,
    APIError,
    ChatCompletionRequest,
    SessionCreate,
    api_error_from,
    completion_json,
    history_to_openai,
    kb_json,
    message_text,
    model_json,
    open_webui_task,
    openai_to_history,
    requested_output,
    session_json,
)
from tandem.agent.turn.request import TurnRequest
from tandem.memory.keys import validate_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tandem.agent.backbones.base import Backbone
    from tandem.memory.knowledge.embeddings import TextEmbedder

__all__ = ['SERVE_OPTIONS_ENV', 'create_app', 'worker_app']


SERVE_OPTIONS_ENV = 'TANDEM_SERVE_OPTIONS'
"""How `tandem serve` hands its flags to its worker processes (JSON); not meant to be set by hand."""


_log = get_logger('tandem.server')

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


# -- the service -------------------------------------------------------------------------------------


class _Service:
    """What one worker holds: the settings, the keys, and one `Assistant` (Redis client, agents, backbones)."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyRing,
        *,
        allow_anonymous: bool,
        backbones: Mapping[str, Backbone] | None,
        redis: Redis | None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.allow_anonymous = allow_anonymous
        self.limiter = RateLimiter(settings.server.rate_limit_requests, settings.server.rate_limit_window_seconds)
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
            from tandem.memory.knowledge.embeddings import make_embedder

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
        client = request.client.host if request.client is not None else ''
        try:
            caller = identify(
                self.keys, presented, client, allow_anonymous=self.allow_anonymous, tenant=self.settings.tenant
            )
        except Refusal as refusal:
            if refusal.code == 'invalid_api_key':
                _log.info('server.auth_failed', path=request.url.path)
            raise
        await self.limiter.admit(await self.assistant.redis(), caller)
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


def _frontend_identity(limits: ServerConfig, request: Request) -> tuple[str | None, str | None]:
    """The user and session a frontend's own headers name (`server.frontend`, `user_header`, `session_header`)."""
    user_header, session_header = limits.identity_headers
    user = request.headers.get(user_header) if user_header else None
    session = request.headers.get(session_header) if session_header else None
    return user or None, session or None


CallerDep = Annotated[Caller, Depends(_caller)]
"""The authenticated (and rate-limited) caller of a request."""
# An empty id is refused (400), not taken for an absent one: `X-Tandem-Session: ""` must not turn a
# turn the client meant to keep into a stateless one, nor an empty user into the default user.
UserHeader = Annotated[str | None, Header(alias=USER_HEADER, min_length=1, description='The user the request is for.')]
SessionHeader = Annotated[
    str | None, Header(alias=SESSION_HEADER, min_length=1, description='Keep the memory in this session.')
]


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
    keys = KeyRing(load_api_keys(settings) if api_keys is None else api_keys)
    if not len(keys) and not allow_anonymous:
        raise ConfigError(
            f'no API keys: set {API_KEYS_ENV}="KEY:TENANT" or server.api_keys in tandem.toml, '
            'or run `tandem serve --no-auth` on 127.0.0.1 for local use.'
        )
    service = _Service(settings, keys, allow_anonymous=allow_anonymous, backbones=backbones, redis=redis)
    app = FastAPIOffline(  # /docs and /redoc with their assets served here, not from a CDN
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
            allow_headers=[
                'Authorization',
                'Content-Type',
                SESSION_HEADER,
                USER_HEADER,
                *(name for name in limits.identity_headers if name),
            ],
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
            data.append(model_json(name, (await service.assistant.backbone(name)).kind))
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
        user = acting_user(who, body.user, user_header) or service.settings.user
        session = await service.assistant.create_session(body.id, user=user, tenant=who.tenant)
        return {'id': session, 'object': 'session', 'user': user}

    @app.get('/v1/sessions', tags=['sessions'])
    async def list_sessions(  # pyright: ignore[reportUnusedFunction]
        who: CallerDep,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="Only this user's sessions.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        search: Annotated[
            str | None,
            Query(
                min_length=1,
                pattern=r'\S',
                description="Only sessions whose title, or whose user's or assistant's text, has these words "
                '(in any case); each then carries `match`, the words around them.',
            ),
        ] = None,
    ) -> dict[str, Any]:
        """The tenant's sessions (or one user's), most recently saved first, each with its title."""
        acting = acting_user(who, user, user_header)
        if search is None:
            infos = await service.assistant.sessions(user=acting, tenant=who.tenant, limit=limit)
            return {'object': 'list', 'data': [session_json(info) for info in infos]}
        matches = await service.assistant.search_sessions(search, user=acting, tenant=who.tenant, limit=limit)
        return {'object': 'list', 'data': [{**session_json(m.session), 'match': m.snippet} for m in matches]}

    @app.get('/v1/sessions/{session_id}/messages', tags=['sessions'])
    async def session_messages(  # pyright: ignore[reportUnusedFunction]
        session_id: str,
        who: CallerDep,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="404 unless the session is this user's.")] = None,
        format: Annotated[Literal['openai', 'pydantic-ai'], Query(description='`pydantic-ai` is lossless.')] = 'openai',
    ) -> dict[str, Any]:
        """A session's messages, oldest first."""
        messages = await service.assistant.messages(
            session_id, user=acting_user(who, user, user_header), tenant=who.tenant
        )
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
        await service.assistant.delete_session(session_id, user=acting_user(who, user, user_header), tenant=who.tenant)
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
        return await _upload(service, request, who, filename, kb, acting_user(who, user, user_header))

    @app.get('/v1/knowledge', tags=['knowledge'])
    async def list_knowledge(  # pyright: ignore[reportUnusedFunction]
        who: CallerDep,
        user_header: UserHeader = None,
        user: Annotated[str | None, Query(description="Also this user's own knowledge bases.")] = None,
    ) -> dict[str, Any]:
        """The tenant's knowledge bases (and one user's own, when named)."""
        from tandem.memory.knowledge.store import list_knowledge_bases

        redis = await service.assistant.redis()
        infos = await list_knowledge_bases(redis, tenant=who.tenant, user=acting_user(who, user, user_header))
        return {'object': 'list', 'data': [kb_json(info) for info in infos]}

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
        info = await KnowledgeBase(redis, tenant=who.tenant, name=kb, user=acting_user(who, user, user_header)).info()
        if info is None:
            raise APIError(404, f'no knowledge base {kb!r}: GET /v1/knowledge lists them.', code='kb_not_found')
        return kb_json(info)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> Response:
        return APIError.refusing(cast(Refusal, error)).response()

    async def tandem_error(request: Request, error: Exception) -> Response:
        return api_error_from(cast(TandemError, error)).response()

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
        return INTERNAL_ERROR.response()

    app.add_exception_handler(Refusal, api_error)  # APIError too
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
            chunk_tokens=config.chunk_tokens,
            chunk_overlap=config.chunk_overlap,
            max_file_bytes=len(data),
            language=config.language,
        ),
    )
    source = f'upload:{name}'
    try:
        report = await unless_disconnected(
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
    text = message_text(last.content, f'messages[{len(body.messages) - 1}]')
    backbone = await service.backbone_for(body.model)
    frontend_user, frontend_session = _frontend_identity(limits, request)
    user = acting_user(caller, user_header, frontend_user, body.user)
    session = session_header or frontend_session or (body.user if limits.session_from_user_field else None) or None
    if session is not None and limits.frontend == 'open-webui' and open_webui_task(text):
        session = None  # a title or tags for the chat: not a turn of it
    history = None if session is not None else openai_to_history(body.messages[:-1])
    output_type, strict = requested_output(body.response_format)
    turn_request = TurnRequest(
        text,
        session=session,
        user=user,
        tenant=caller.tenant,
        backbone=backbone,
        history=history,
        output_type=output_type,
        strict=strict,
    )
    headers = {SESSION_HEADER: session} if session is not None else {}
    completion_id = f'chatcmpl-{uuid.uuid4().hex}'
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return await stream_turn(
            service.assistant,
            request,
            turn_request,
            headers,
            completion_id,
            body.model,
            include_usage=include_usage,
            progress=body.tandem is not None and body.tandem.progress,
        )
    turn = asyncio.ensure_future(service.assistant.run(turn_request))
    result = await unless_disconnected(request, turn)
    if result is None:
        return Response(status_code=499)
    return JSONResponse(completion_json(result, completion_id, body.model, stored=session is not None), headers=headers)


# -- worker processes --------------------------------------------------------------------------------


def worker_app(backbones: Mapping[str, Backbone] | None = None) -> FastAPI:
    """The app of one `tandem serve` worker process (a uvicorn factory): settings and flags from the environment.

    A program that serves models of its own wraps it, e.g. `def app(): return worker_app({'mine': backbone})`,
    and runs `agent.cli.serve.serve(factory='mypackage.module:app', workers=N)`.

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
