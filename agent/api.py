"""The Python API: Tandem inside another program, with the same runtime as the CLI and the HTTP service.

```python
from tandem.agent import Assistant

async with Assistant.from_config() as assistant:
    result = await assistant.chat('What is 2**100?', session='s1', user='alice')
    print(result.answer, result.tool_calls, result.usage.total_tokens)
    async for event in assistant.stream('And divided by 3?', session='s1', user='alice'):
        ...  # TextDelta, ToolCallStarted, ToolCallFinished, then TurnFinished (the result, usage included)
    invoice = await assistant.chat('Read this invoice: ...', output_type=Invoice)
    print(invoice.output.total)  # an `Invoice`, validated; `invoice.answer` is its JSON
```

Scripts without an event loop use `chat_sync` and `stream_sync` (and `with`/`close()`), which run
the same coroutines on a private event-loop thread.

An `Assistant` keeps what a long-running program should make once: the Redis client, the resolved
backbones, the prompt templates and the tool plugins. Every turn still goes through `build_deps` and
`agent.turn.run.run_turn`, so it is loaded, run and saved exactly as a `tandem ask` turn is. It is
bound to the event loop it is first used on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

import anyio
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import ConversationConflict
from pydantic_ai.messages import ModelMessage

from tandem.agent.backbones import base as _backbones
from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import Settings, load_settings
from tandem.agent.core.errors import InvalidOutputError, TandemError
from tandem.agent.core.events import PartialOutput, TextDelta, ToolCallFinished, ToolCallStarted, TurnEvent
from tandem.agent.core.log import get_logger
from tandem.agent.core.prompts import PromptLibrary, PromptTemplate
from tandem.agent.turn.build import build_deps, selected_toolsets
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.output import OutputSchemaError
from tandem.agent.turn.request import TurnRequest, new_session_id
from tandem.agent.turn.run import EventSink, TurnResult, TurnUsage, run_turn
from tandem.memory.connection import connect
from tandem.memory.conversations import (
    HistoryCache,
    RedisConversationStore,
    SessionInfo,
    SessionMatch,
    SessionNotFoundError,
)
from tandem.memory.keys import validate_id

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal
    from pydantic_ai.output import OutputSpec
    from redis.asyncio import Redis

    from tandem.tools.registry import ToolsetPlugin

_log = get_logger('tandem.api')

T = TypeVar('T')

_TENANT_STORES = 64
"""How many tenants' conversation stores an assistant keeps, with their record and entry caches."""

__all__ = [
    'Assistant',
    'InvalidOutputError',
    'OutputSchemaError',
    'PartialOutput',
    'SessionExistsError',
    'StreamEvent',
    'TextDelta',
    'ToolCallFinished',
    'ToolCallStarted',
    'TurnFinished',
    'TurnStream',
]


class SessionExistsError(TandemError):
    """A session was to be created under an id that is already taken."""


@dataclass(frozen=True)
class TurnFinished:
    """The last event of a streamed turn: its whole result, usage included."""

    result: TurnResult[Any]

    @property
    def usage(self) -> TurnUsage:
        """What the turn spent."""
        return self.result.usage

    @property
    def output(self) -> Any:
        """The final answer: the text, or the whole validated object a typed turn asked for."""
        return self.result.output


StreamEvent = TextDelta | ToolCallStarted | ToolCallFinished | PartialOutput | TurnFinished
"""What `Assistant.stream` yields: the runtime's `TurnEvent`s, then one `TurnFinished`."""


async def _cancel(task: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
    """Cancel `task` and wait until it has stopped, without raising its outcome.

    Shielded from an AnyIO cancel scope (Starlette cancels a response's scope when its client goes
    away); a cancellation of the caller itself still propagates once the task has stopped.
    """
    task.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        _log.warning('turn.failed_while_cancelled', error=type(task.exception()).__name__)


class TurnStream:
    """One turn running in a task, its events read with `async for`.

    The turn starts on the first read. Closing the stream before the turn ends (`aclose()`, or
    leaving `async with`) cancels it: no further model or tool calls are made, and the turn is not
    saved. A stream that is merely abandoned lets the turn run to its end and be saved whole.
    """

    def __init__(self, run: Callable[[EventSink], Coroutine[Any, Any, TurnResult[Any]]]) -> None:
        self._run = run
        self._queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
        self._task: asyncio.Task[TurnResult[Any]] | None = None
        self._finished = False

    @property
    def result(self) -> TurnResult[Any] | None:
        """The turn's result once it has finished successfully, else `None`."""
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.create_task(self._run(self._queue.put_nowait), name='tandem-turn')
            self._task.add_done_callback(lambda _: self._queue.put_nowait(None))
        event = await self._queue.get()
        if event is not None:
            return event
        self._finished = True
        return TurnFinished(self._task.result())  # raises the turn's error, if it failed

    async def aclose(self) -> None:
        """Cancel the turn if it is still running, and wait until it has stopped."""
        self._finished = True
        task = self._task
        if task is None or task.done():
            return
        await _cancel(task)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Assistant:
    """Tandem as a library: chat and stream turns, and manage sessions, in any program.

    Args:
        settings: The configuration (see `from_config` to load it as the CLI does).
        redis: A client to use (and leave open); by default one is connected to `settings.redis_url`,
            or to the embedded server, on first use, and closed by `aclose()`.
        backbones: Extra backbones by name, ahead of the configured ones: a model object such as
            pydantic-ai's `FunctionModel`, or one built by your own code. With no `backbone` in the
            settings, the first of them is the default.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis | None = None,
        backbones: Mapping[str, Backbone] | None = None,
    ) -> None:
        self.settings = settings
        self._redis = redis
        self._owns_redis = redis is None
        self._extra = dict(backbones or {})
        self._resolved: dict[str | None, Backbone] = {}
        self._prompts: dict[str, PromptTemplate] = {}
        self._library: PromptLibrary | None = None
        self._toolsets: dict[tuple[str, ...] | None, list[ToolsetPlugin]] = {}
        # Per tenant, the least recently used dropped past `_TENANT_STORES`; one history budget for all of them.
        self._stores: OrderedDict[str, RedisConversationStore] = OrderedDict()
        self._histories = HistoryCache(settings.memory.history_cache_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        # One lock per lazily made resource; nothing awaited under a lock takes a lock (they are not reentrant).
        self._locks: dict[str, asyncio.Lock] = {}
        self._portal: BlockingPortal | None = None
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._closed = False

    @classmethod
    def from_config(
        cls,
        settings: Settings | None = None,
        *,
        redis: Redis | None = None,
        backbones: Mapping[str, Backbone] | None = None,
        **overrides: Any,
    ) -> Assistant:
        """An assistant configured as the CLI is: `overrides`, then `TANDEM_*`, then the TOML file, then defaults.

        Nothing is connected yet: that happens on first use.

        Args:
            settings: Use these settings instead of loading them; `overrides` must then be empty.
            redis: See the class.
            backbones: See the class.
            **overrides: Settings fields, e.g. `backbone='local'` or `redis_url='redis://...'`.

        Raises:
            ConfigError: The configuration is invalid; the message names the value.
        """
        if settings is not None and overrides:
            raise TypeError('pass either settings or setting overrides, not both')
        return cls(settings or load_settings(**overrides), redis=redis, backbones=backbones)

    # -- turns ------------------------------------------------------------------------------------------

    @overload
    async def chat(
        self,
        text: str,
        *,
        session: str | None = None,
        user: str | None = None,
        tenant: str | None = None,
        backbone: str | None = None,
        prompt: str | None = None,
        tools: Sequence[str] | None = None,
        history: Sequence[ModelMessage] | None = None,
        output_type: None = None,
    ) -> TurnResult[str]: ...

    @overload
    async def chat(
        self,
        text: str,
        *,
        session: str | None = None,
        user: str | None = None,
        tenant: str | None = None,
        backbone: str | None = None,
        prompt: str | None = None,
        tools: Sequence[str] | None = None,
        history: Sequence[ModelMessage] | None = None,
        output_type: OutputSpec[T],
    ) -> TurnResult[T]: ...

    async def chat(
        self,
        text: str,
        *,
        session: str | None = None,
        user: str | None = None,
        tenant: str | None = None,
        backbone: str | None = None,
        prompt: str | None = None,
        tools: Sequence[str] | None = None,
        history: Sequence[ModelMessage] | None = None,
        output_type: Any = None,
    ) -> TurnResult[Any]:
        """Run one turn and return its answer, tool calls and usage.

        Args:
            text: The user's message.
            session: The session to continue (or start); a new one when omitted, see `result.session`.
            user: Who is talking; the settings' `user` when omitted. A session belongs to one user.
            tenant: The tenant; the settings' `tenant` when omitted.
            backbone: A backbone name (or, in a trusted program, a model string); the default when omitted.
            prompt: `NAME` or `NAME@VERSION`; the settings' prompt when omitted.
            tools: Toolset names; the settings' when omitted.
            history: Run statelessly on these messages: nothing is loaded or saved.
            output_type: Ask for data, not prose: a pydantic model, a dataclass, a TypedDict or a union of them.
                `result.output` is then the validated object and `result.answer` its JSON. An answer that
                does not validate is sent back to the model, up to `limits.output_retries` times, each
                retry counted in `result.usage.output_retries`.

        Raises:
            SessionNotFoundError: The session belongs to another user.
            OutputSchemaError: `output_type` has no JSON Schema (an arbitrary class).
            InvalidOutputError: The model gave no valid answer of `output_type` in all its tries.
            TandemError: Any other user-facing failure (backbone, Redis, limits, invalid ids).
        """
        return await self.run(
            TurnRequest(
                text,
                session=session,
                user=user,
                tenant=tenant,
                backbone=backbone,
                prompt=prompt,
                tools=tools,
                history=history,
                output_type=output_type,
            )
        )

    def stream(
        self,
        text: str,
        *,
        session: str | None = None,
        user: str | None = None,
        tenant: str | None = None,
        backbone: str | None = None,
        prompt: str | None = None,
        tools: Sequence[str] | None = None,
        history: Sequence[ModelMessage] | None = None,
        output_type: Any = None,
    ) -> TurnStream:
        """Run one turn, yielding text deltas and tool-call events as they happen, then `TurnFinished`.

        The arguments are those of `chat`. Use `async with assistant.stream(...) as events:` when
        you may stop reading early: leaving the block cancels the turn, and nothing is saved.
        With `output_type`, the answer comes as `PartialOutput`s, each a validated object as far as the
        model has written it, in place of `TextDelta`s; `TurnFinished.output` is the final, whole one.
        """
        return self.run_stream(
            TurnRequest(
                text,
                session=session,
                user=user,
                tenant=tenant,
                backbone=backbone,
                prompt=prompt,
                tools=tools,
                history=history,
                output_type=output_type,
            )
        )

    async def run(self, request: TurnRequest, *, on_event: EventSink | None = None) -> TurnResult[Any]:
        """Run the turn `request` asks for: what `chat` does with its arguments, for a front end that has one.

        Raises:
            SessionNotFoundError: The session belongs to another user.
            TandemError: Any other user-facing failure (backbone, Redis, limits, invalid ids).
        """
        return await run_turn(
            await self._deps(request),
            request.text,
            on_event=on_event,
            history=request.history,
            output_type=request.output_type,
            strict=request.strict,
        )

    def run_stream(self, request: TurnRequest) -> TurnStream:
        """`stream` for a `TurnRequest`."""
        return TurnStream(lambda on_event: self.run(request, on_event=on_event))

    def chat_sync(self, text: str, **options: Any) -> TurnResult[Any]:
        """`chat` for programs without an event loop; the keyword arguments are the same."""
        return self._blocking_portal().call(lambda: self.chat(text, **options))

    def stream_sync(self, text: str, **options: Any) -> Iterator[StreamEvent]:
        """`stream` for programs without an event loop; closing the iterator early cancels the turn."""
        portal = self._blocking_portal()
        stream = self.stream(text, **options)

        async def next_event() -> StreamEvent | None:
            return await anext(stream, None)

        try:
            while (event := portal.call(next_event)) is not None:
                yield event
        finally:
            portal.call(stream.aclose)

    # -- sessions ---------------------------------------------------------------------------------------

    async def sessions(
        self, *, user: str | None = None, tenant: str | None = None, limit: int | None = None
    ) -> list[SessionInfo]:
        """The tenant's sessions, or one user's, most recently saved first."""
        return await (await self._store(tenant)).list_sessions(user=user, limit=limit)

    async def search_sessions(
        self, text: str, *, user: str | None = None, tenant: str | None = None, limit: int = 20
    ) -> list[SessionMatch]:
        """The sessions whose title or text contains `text`, newest first (see `RedisConversationStore.search_sessions`).

        Raises:
            ValueError: `text` is blank, or `limit` isn't positive.
        """
        return await (await self._store(tenant)).search_sessions(text, user=user, limit=limit)

    async def messages(self, session: str, *, user: str | None = None, tenant: str | None = None) -> list[ModelMessage]:
        """Every message of a session's current history, oldest first.

        Raises:
            SessionNotFoundError: No such session, or it belongs to another user than `user`.
        """
        return await (await self._store(tenant)).export_messages(session, user=user)

    async def create_session(
        self, session: str | None = None, *, user: str | None = None, tenant: str | None = None
    ) -> str:
        """Store a new, empty session for `user` (the settings' user when omitted) and return its id.

        Raises:
            SessionExistsError: `session` is already taken.
        """
        session = validate_id('session', session or new_session_id())
        owner = validate_id('user', user or self.settings.user)
        try:
            await (await self._store(tenant)).save(Conversation(conversation_id=session), scope=owner)
        except ConversationConflict:
            raise SessionExistsError(f'session {session!r} already exists: pick another id, or omit it.') from None
        return session

    async def delete_session(self, session: str, *, user: str | None = None, tenant: str | None = None) -> None:
        """Delete a session and every message it stored.

        Raises:
            SessionNotFoundError: No such session, or it belongs to another user than `user`.
        """
        store = await self._store(tenant)
        validate_id('session', session)
        record = await store.read_record(session)
        if record is None or (user is not None and record.scope != validate_id('user', user)):
            raise SessionNotFoundError(f'no session {session!r}: list the sessions to pick another.')
        await store.delete(session)

    # -- resources --------------------------------------------------------------------------------------

    def backbone_names(self) -> list[str]:
        """The extra backbones' names, then the configured ones' (no network calls)."""
        return list(dict.fromkeys([*self._extra, *self.settings.backbones]))

    async def backbone(self, name: str | None = None) -> Backbone:
        """The backbone called `name`, or the default one, resolved once and then reused.

        Raises:
            BackboneError: It is unknown, or (for the default) no model can be found.
        """
        # A configured default is that named backbone: one cache entry, and no call back into this method.
        if name is None:
            name = self.settings.backbone
        cached = self._resolved.get(name)
        if cached is not None:
            return cached
        async with self._guard('backbone'):
            cached = self._resolved.get(name)
            if cached is not None:
                return cached
            if name is not None:
                resolved = self._extra.get(name) or _backbones.configured(self.settings, name)
            elif self._extra:
                resolved = next(iter(self._extra.values()))
            else:
                resolved = await _backbones.resolve(self.settings)
            self._resolved[name] = resolved
            return resolved

    async def redis(self) -> Redis:
        """The Redis client, connected on first use.

        Raises:
            RedisUnavailableError: Redis does not answer.
            TandemError: The assistant is closed, or used from another event loop than its first one.
        """
        self._check_loop()
        if self._redis is None:
            async with self._guard('redis'):
                if self._redis is None:
                    url = self.settings.redis_url
                    self._redis = await connect(
                        url.get_secret_value() if url is not None else None, home=self.settings.home
                    )
        return self._redis

    async def aclose(self) -> None:
        """Close the Redis client this assistant connected (a client passed in is left open)."""
        self._closed = True
        client, self._redis = self._redis, None
        if client is not None:
            from tandem.agent.turn.background import wait_for_background

            await wait_for_background()  # facts and titles are written through this client
        if client is not None and self._owns_redis:
            with contextlib.suppress(Exception):  # closing a client whose server went away must not fail shutdown
                await client.aclose()

    def close(self) -> None:
        """`aclose` for programs without an event loop; also stops the private event-loop thread."""
        if self._portal is not None and self._portal_cm is not None:
            self._portal.call(self.aclose)
            portal_cm, self._portal, self._portal_cm = self._portal_cm, None, None
            portal_cm.__exit__(None, None, None)
        else:
            self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------

    def _check_loop(self) -> None:
        if self._closed:
            raise TandemError('this Assistant is closed: make a new one.')
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise TandemError(
                'this Assistant is bound to another event loop: use one Assistant per event loop, and either '
                'its async methods or its *_sync ones, not both.'
            )

    def _guard(self, resource: str) -> asyncio.Lock:
        self._check_loop()
        return self._locks.setdefault(resource, asyncio.Lock())

    def _blocking_portal(self) -> BlockingPortal:
        if self._loop is not None and self._portal is None:
            raise TandemError(
                'this Assistant is already used with await on an event loop: call its async methods there, '
                'or make another Assistant for synchronous code.'
            )
        if self._portal is None:
            portal_cm = anyio.from_thread.start_blocking_portal(name='tandem-assistant')
            self._portal = portal_cm.__enter__()
            self._portal_cm = portal_cm
        return self._portal

    def _prompt(self, ref: str | None) -> PromptTemplate:
        ref = ref or self.settings.prompt
        template = self._prompts.get(ref)
        if template is None:
            if self._library is None:
                self._library = PromptLibrary.default(self.settings.prompts_dir)
            template = self._prompts[ref] = self._library.get(ref)
        return template

    def _selected_toolsets(self, names: Sequence[str] | None) -> list[ToolsetPlugin]:
        key = None if names is None else tuple(names)
        selected = self._toolsets.get(key)
        if selected is None:
            selected = self._toolsets[key] = selected_toolsets(self.settings, names)
        return selected

    async def _store(self, tenant: str | None) -> RedisConversationStore:
        tenant = validate_id('tenant', tenant or self.settings.tenant)
        store = self._stores.get(tenant)
        if store is None:
            store = RedisConversationStore(
                await self.redis(),
                tenant=tenant,
                ttl_seconds=self.settings.session_ttl_seconds,
                history_cache=self._histories,
            )
            self._stores[tenant] = store
            if len(self._stores) > _TENANT_STORES:
                self._stores.popitem(last=False)  # a turn holding it keeps it; the next one makes another
        else:
            self._stores.move_to_end(tenant)
        return store

    async def _deps(self, request: TurnRequest) -> Deps:
        return await build_deps(
            self.settings,
            await self.redis(),
            request,
            backbone=await self.backbone(request.model or request.backbone),
            prompt=self._prompt(request.prompt),
            toolsets=self._selected_toolsets(request.tools),
            conversations=await self._store(request.tenant),
        )
