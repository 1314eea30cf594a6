"""A long run through the HTTP service leaves memory flat: a turn, once answered, leaves nothing behind.

The service runs under a real uvicorn server, so a stream the client cuts is a real disconnect.
The mix is the soak's (bench/soak.py): plain chats, streamed chats, and streams cut after the
first event, over reused sessions. Every cache gets a tiny bound, so the warm-up fills them all;
2,000 more turns may then add neither live objects (gc) nor allocated blocks (any object, strings
and bytes included) beyond a small allowance: a turn that left one object behind would fail it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import sys
from collections.abc import AsyncIterator

import httpx
import pydantic_core
import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tandem.agent.core import tokens
from tandem.memory import conversations
from tests.service.conftest import AUTH_A, MakeApp, live

WARM_UP = 300
TURNS = 2_000
SESSIONS = 60
CLIENTS = 8


def _prompt(messages: list[ModelMessage]) -> str:
    request = messages[-1]
    assert isinstance(request, ModelRequest)
    return next(str(part.content) for part in request.parts if isinstance(part, UserPromptPart))


async def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart(f'You said: {_prompt(messages)}')])


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for piece in ('You ', 'said: ', _prompt(messages)):
        yield piece


async def _load(http: httpx.AsyncClient, turns: int, rng: random.Random) -> int:
    """`turns` turns from `CLIENTS` clients: 45% plain, 45% streamed to the end, 10% streams cut early."""
    answered = 0
    numbers = iter(range(turns))

    async def client() -> None:
        nonlocal answered
        for n in numbers:
            done = await _turn(http, n, rng)
            answered += done

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return answered


async def _turn(http: httpx.AsyncClient, n: int, rng: random.Random) -> int:
    """One turn; 1 when it was answered in full."""
    body = {'model': 'scripted', 'messages': [{'role': 'user', 'content': f'hello {n}'}]}
    headers = {**AUTH_A, 'X-Tandem-Session': f'soak-{rng.randrange(SESSIONS)}'}
    kind = rng.random()
    if kind < 0.45:
        response = await http.post('/chat/completions', json=body, headers=headers)
        assert response.status_code == 200, response.text
        return 1
    async with http.stream('POST', '/chat/completions', json={**body, 'stream': True}, headers=headers) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if kind >= 0.9 and line.startswith('data:'):
                break  # the client goes away mid-answer
            if line == 'data: [DONE]':
                return 1
    return 0


def _live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.slow
@pytest.mark.timeout(300)  # 2,300 turns: about 60 s alone, far longer on a loaded machine
async def test_two_thousand_turns_leave_neither_live_objects_nor_allocated_blocks_behind(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # pytest keeps every captured log record of a test: per-turn INFO lines would be growth of its own.
    caplog.set_level(logging.WARNING)
    caplog.set_level(logging.WARNING, logger='tandem')
    # Tiny bounds, so the warm-up fills every cache: what is measured is growth past them.
    monkeypatch.setattr(tokens, 'COUNTS_KEPT', 16)
    monkeypatch.setattr(conversations, '_ENTRY_CACHE_SIZE', 16)
    monkeypatch.setattr(conversations, '_KNOWN_RECORDS', 16)
    app = make_app(
        FunctionModel(_answer, stream_function=_stream),
        overrides={'memory': {'history_cache_mb': 0.01}},
        rate_limit_requests=1_000_000,
    )
    rng = random.Random(12)
    with live(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            await _load(http, WARM_UP, rng)
            # pydantic-core keeps short strings it parsed in a fixed-size process-wide table, and each
            # request body has a new one: fill it first, so that strings replace strings while we measure.
            pydantic_core.from_json(json.dumps([f'filler {n}' for n in range(100_000)]), cache_strings=True)
            objects_before, blocks_before = _live_objects(), sys.getallocatedblocks()
            answered = await _load(http, TURNS, rng)
            objects_grown = _live_objects() - objects_before
            blocks_grown = sys.getallocatedblocks() - blocks_before

    assert answered >= TURNS * 0.85
    # A turn that left anything behind (a task, a message, a record) fails these: keeping one request
    # message per turn grows 3,122 objects. Blocks get more room: a full suite's other caches still settle.
    assert objects_grown < TURNS, f'{objects_grown} more live objects after {TURNS} turns'
    assert blocks_grown < 3 * TURNS, f'{blocks_grown} more allocated blocks after {TURNS} turns'
