"""Server-sent events: a turn streamed as OpenAI's chunks, with keep-alives, cancelled when the client goes away."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tandem.agent.api import Assistant, TurnFinished, TurnStream
from tandem.agent.core.errors import TandemError
from tandem.agent.core.events import TextDelta
from tandem.agent.core.log import get_logger
from tandem.agent.server.wire import INTERNAL_ERROR, api_error_from, usage_json
from tandem.agent.turn.request import TurnRequest

_log = get_logger('tandem.server')
_T = TypeVar('_T')


KEEPALIVE_SECONDS = 15.0
"""An SSE comment goes out after this long without an event, so proxies keep a long tool call's stream open."""


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
    include_usage: bool,
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
                    'usage': usage_json(event.usage),
                }
                yield _sse(usage)
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
        yield b'data: [DONE]\n\n'

    return _TurnResponse(events(), turn, {**headers, 'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no'})


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b'data: ' + json.dumps(payload, separators=(',', ':')).encode() + b'\n\n'
