"""Server-sent events: a turn streamed as OpenAI's chunks, with keep-alives, cancelled when the client goes away.

The framing, keep-alive comments, disconnect detection and shutdown are sse-starlette's. With
`"tandem": {"progress": true}` in the request, each tool call also sends two chunks with no choices
and a `tandem` field (`tool_call.started`, `tool_call.finished`): clients that don't know it skip it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, TypeVar

from fastapi import Request, Response
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from tandem.agent.api import Assistant, TurnFinished, TurnStream
from tandem.agent.core.errors import TandemError
from tandem.agent.core.events import TextDelta, ToolCallFinished, ToolCallStarted, TurnEvent
from tandem.agent.core.log import get_logger
from tandem.agent.server.wire import INTERNAL_ERROR, api_error_from, chunk_json
from tandem.agent.turn.request import TurnRequest

_log = get_logger('tandem.server')
_T = TypeVar('_T')


KEEPALIVE_SECONDS = 15.0
"""An SSE comment goes out this often, so proxies with idle timeouts keep a long tool call's stream open."""


_SEP = '\n'
"""As OpenAI's streams (sse-starlette's default is CRLF): some clients split events on a blank "\n\n" only."""


class _TurnResponse(EventSourceResponse):
    """SSE whose turn is cancelled whenever the response ends early: a disconnect, a send that fails, a shutdown."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], turn: TurnStream, headers: Mapping[str, str]) -> None:
        super().__init__(  # pyright: ignore[reportUnknownMemberType] - sse-starlette types a dict event as dict[Unknown, Unknown]
            content,
            headers=headers,
            ping=KEEPALIVE_SECONDS,
            ping_message_factory=lambda: ServerSentEvent(comment='keep-alive', sep=_SEP),
            sep=_SEP,
        )
        self._turn = turn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._turn.aclose()


async def unless_disconnected(request: Request, work: asyncio.Future[_T]) -> _T | None:
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


async def stream_turn(
    assistant: Assistant,
    request: Request,
    turn_request: TurnRequest,
    headers: dict[str, str],
    completion_id: str,
    model: str,
    *,
    include_usage: bool,
    progress: bool,
) -> Response:
    turn = assistant.run_stream(turn_request)
    # Wait for the first event before answering, so a turn that fails at once (an unknown session,
    # a backbone that is down) gets its own status code rather than a 200 with an error inside.
    try:
        first = await unless_disconnected(request, asyncio.ensure_future(anext(turn)))
    except BaseException:
        await turn.aclose()
        raise
    if first is None:
        await turn.aclose()
        return Response(status_code=499)
    created = int(time.time())

    def chunk(delta: ChoiceDelta | None = None, finish: Literal['stop'] | None = None, **extra: Any) -> ServerSentEvent:
        return _sse(
            chunk_json(completion_id, created, model, delta=delta, finish=finish, include_usage=include_usage, **extra)
        )

    async def events() -> AsyncIterator[ServerSentEvent]:
        yield chunk(ChoiceDelta(role='assistant', content=''))
        event = first
        try:
            while not isinstance(event, TurnFinished):
                if isinstance(event, TextDelta) and event.text:
                    yield chunk(ChoiceDelta(content=event.text))
                elif progress and (note := _progress(event)) is not None:
                    yield chunk(tandem=note)
                event = await anext(turn)
            if turn_request.output_type is not None:
                # A typed answer goes out whole, once it validated: a failed attempt's text never reaches the client.
                yield chunk(ChoiceDelta(content=event.result.answer))
            yield chunk(ChoiceDelta(), 'stop')
            if include_usage:
                yield chunk(usage=event.usage)
        except TandemError as error:
            # The stream ends with the error, as OpenAI's does: no `[DONE]`, so no client takes it for an answer.
            yield _sse(api_error_from(error).body())
            return
        except Exception:  # noqa: BLE001 - the client gets an error event; the log gets the traceback
            _log.exception('server.stream_error')
            yield _sse(INTERNAL_ERROR.body())
            return
        finally:
            await turn.aclose()
        yield ServerSentEvent(data='[DONE]', sep=_SEP)

    return _TurnResponse(events(), turn, {**headers, 'Cache-Control': 'no-cache'})


def _progress(event: TurnEvent) -> dict[str, Any] | None:
    """A tool call's start or end, as a progress chunk's `tandem` field."""
    if isinstance(event, ToolCallStarted):
        return {'event': 'tool_call.started', 'id': event.call_id, 'name': event.name, 'args': event.args}
    if isinstance(event, ToolCallFinished):
        return {
            'event': 'tool_call.finished',
            'id': event.call_id,
            'name': event.name,
            'ok': event.ok,
            'duration_s': round(event.duration_s, 4),
            'result': event.result,
        }
    return None


def _sse(payload: Mapping[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(payload, separators=(',', ':')), sep=_SEP)
