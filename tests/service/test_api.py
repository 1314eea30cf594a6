"""The Python API: `Assistant.chat`, `stream`, their sync wrappers, and session management."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dirty_equals import IsFloat, IsInstance, IsInt
from pydantic import SecretStr
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis

from tandem import agent
from tandem.agent import Assistant
from tandem.agent.api import SessionExistsError, TurnFinished
from tandem.agent.cli.transcript import render_transcript
from tandem.agent.core.config import LimitsConfig, Settings
from tandem.agent.core.errors import TandemError
from tandem.agent.core.events import TextDelta, ToolCallFinished, ToolCallStarted
from tandem.agent.turn.run import TurnUsage
from tandem.memory.conversations import SessionNotFoundError
from tests.support.deps import scripted_backbone
from tests.support.scripted import call, scripted_model


def _settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(home=tmp_path, redis_url=SecretStr(redis_url), tools=['calc', 'clock'])


async def test_chat_returns_the_answer_tool_calls_and_usage_and_keeps_the_session(
    tmp_path: Path, redis_url: str
) -> None:
    model, script = scripted_model(call('calculate', expression='2**10'), '1024.', 'You asked about 2**10.')
    async with Assistant.from_config(
        _settings(tmp_path, redis_url), backbones={'scripted': scripted_backbone(model)}
    ) as assistant:
        first = await assistant.chat('What is 2**10?', session='s1', user='alice')
        second = await assistant.chat('What did I ask?', session='s1', user='alice')
        stored = await assistant.messages('s1', user='alice')

    assert first.answer == '1024.'
    assert [(c.name, c.args, c.ok, c.result) for c in first.tool_calls] == [
        ('calculate', {'expression': '2**10'}, True, '1024')
    ]
    assert (first.usage.requests, first.usage.tool_calls, first.session, first.backbone) == (2, 1, 's1', 'scripted')
    assert first.usage.total_tokens > 0
    assert second.answer == 'You asked about 2**10.'
    assert list(render_transcript(script.seen[2][0]))[:2] == [
        'you: What is 2**10?',
        '  → calculate({"expression":"2**10"})',
    ]
    assert len(stored) == 6


async def _entry_reads(redis: Redis) -> int:
    """How many HGETs Redis served since the last reset: a session load's history walk makes them."""
    stats = await redis.info('commandstats')
    return int(stats.get('cmdstat_hget', {}).get('calls', 0))


async def test_an_assistants_later_turns_load_the_history_it_holds(
    tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    model, _ = scripted_model('One.', 'Two.', 'Three.')
    backbones = {'scripted': scripted_backbone(model)}
    async with Assistant(_settings(tmp_path, redis_url), backbones=backbones) as assistant:
        await assistant.chat('first', session='s1', user='alice')
        await redis.config_resetstat()
        second = await assistant.chat('second', session='s1', user='alice')
        held_reads = await _entry_reads(redis)
    async with Assistant(_settings(tmp_path, redis_url), backbones=backbones) as fresh:
        await redis.config_resetstat()
        third = await fresh.chat('third', session='s1', user='alice')
        fresh_reads = await _entry_reads(redis)

    assert (second.answer, third.answer) == ('Two.', 'Three.')
    # Only the save's lookup of the head's depth: the tenant's store kept the history it saved.
    assert held_reads == 1
    assert fresh_reads >= 1 + 4  # a new assistant walks the 4 stored messages as well


async def test_stream_yields_deltas_tool_events_then_the_result(tmp_path: Path, redis_url: str) -> None:
    model, _ = scripted_model(call('calculate', expression='6*7'), 'The answer is 42.', chunk=4)
    async with Assistant(_settings(tmp_path, redis_url), backbones={'scripted': scripted_backbone(model)}) as assistant:
        events = [event async for event in assistant.stream('6*7?', session='s2')]

    assert [type(e) for e in events[:2]] == [ToolCallStarted, ToolCallFinished]
    started, finished = events[0], events[1]
    assert isinstance(started, ToolCallStarted) and (started.name, started.args) == ('calculate', {'expression': '6*7'})
    assert isinstance(finished, ToolCallFinished) and (finished.ok, finished.result) == (True, '42')
    assert finished.duration_s == IsFloat(ge=0)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ['The ', 'answ', 'er i', 's 42', '.']
    last = events[-1]
    assert isinstance(last, TurnFinished)
    assert last.result.answer == ''.join(deltas)
    assert last.usage == IsInstance(TurnUsage) and last.usage.requests == 2


async def test_leaving_a_stream_early_cancels_the_turn_and_saves_nothing(tmp_path: Path, redis_url: str) -> None:
    calls: list[int] = []
    release = asyncio.Event()

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        calls.append(len(messages))
        yield 'Thinking'
        await release.wait()  # never set: only a cancellation ends this
        yield ' more'

    model = FunctionModel(stream_function=stream)
    async with Assistant(_settings(tmp_path, redis_url), backbones={'slow': scripted_backbone(model)}) as assistant:
        async with assistant.stream('hello', session='s3') as events:
            first = await anext(events)
        sessions = await assistant.sessions()

    assert first == TextDelta('Thinking')
    assert calls == [1]
    assert sessions == []


async def test_a_failed_turn_raises_from_the_stream(tmp_path: Path, redis_url: str) -> None:
    model, _ = scripted_model('never used')
    async with Assistant(_settings(tmp_path, redis_url), backbones={'scripted': scripted_backbone(model)}) as assistant:
        await assistant.chat('mine', session='private', user='alice')
        with pytest.raises(SessionNotFoundError, match='belongs to another user'):
            async for _ in assistant.stream('let me in', session='private', user='bob'):
                pass
        with pytest.raises(TandemError, match='invalid session id'):
            await assistant.chat('hi', session='not valid!')


async def test_stateless_history_is_used_and_not_saved(tmp_path: Path, redis_url: str) -> None:
    model, script = scripted_model('Blue.')
    history: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart('My colour is blue.')]),
        ModelResponse(parts=[TextPart('Noted.')]),
    ]
    async with Assistant(_settings(tmp_path, redis_url), backbones={'scripted': scripted_backbone(model)}) as assistant:
        result = await assistant.chat('My colour?', history=history)
        sessions = await assistant.sessions()

    assert result.answer == 'Blue.'
    assert list(render_transcript(script.seen[0][0])) == [
        'you: My colour is blue.',
        'assistant: Noted.',
        'you: My colour?',
    ]
    assert sessions == []


async def test_sessions_can_be_created_listed_and_deleted(tmp_path: Path, redis_url: str) -> None:
    model, _ = scripted_model('ok')
    async with Assistant(_settings(tmp_path, redis_url), backbones={'scripted': scripted_backbone(model)}) as assistant:
        created = await assistant.create_session('fresh', user='ann')
        with pytest.raises(SessionExistsError):
            await assistant.create_session('fresh', user='ann')
        generated = await assistant.create_session(user='ann')
        await assistant.chat('hello', session='fresh', user='ann')
        listed = [(info.id, info.user, info.message_count) for info in await assistant.sessions(user='ann')]
        with pytest.raises(SessionNotFoundError):
            await assistant.delete_session('fresh', user='bob')
        await assistant.delete_session('fresh', user='ann')
        with pytest.raises(SessionNotFoundError):
            await assistant.messages('fresh')
        remaining = [info.id for info in await assistant.sessions()]

    assert created == 'fresh'
    assert listed == [('fresh', 'ann', 2), (generated, 'ann', 0)]
    assert remaining == [generated]


def test_the_sync_wrappers_work_without_an_event_loop(tmp_path: Path, redis_url: str) -> None:
    model, _ = scripted_model('Hello there.', call('now', timezone='UTC'), 'It is now.', chunk=6)
    with Assistant.from_config(
        _settings(tmp_path, redis_url), backbones={'scripted': scripted_backbone(model)}
    ) as assistant:
        result = assistant.chat_sync('hi', session='sync')
        events = list(assistant.stream_sync('time?', session='sync'))
        thread_names = {thread.name for thread in threading.enumerate()}

    assert result.answer == 'Hello there.'
    assert [type(e).__name__ for e in events] == [
        'ToolCallStarted',
        'ToolCallFinished',
        'TextDelta',
        'TextDelta',
        'TurnFinished',
    ]
    assert any(name == 'tandem-assistant' for name in thread_names)
    assert not any(t.name == 'tandem-assistant' and t.is_alive() for t in threading.enumerate())


async def test_one_assistant_is_bound_to_one_event_loop(tmp_path: Path, redis_url: str) -> None:
    model, _ = scripted_model('ok')
    assistant = Assistant(_settings(tmp_path, redis_url), backbones={'scripted': scripted_backbone(model)})
    await assistant.chat('hi')
    with pytest.raises(TandemError, match='already used with await'):
        assistant.chat_sync('hi')

    def elsewhere() -> None:
        with pytest.raises(TandemError, match='bound to another event loop'):
            asyncio.run(assistant.chat('hi'))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    await assistant.aclose()
    with pytest.raises(TandemError, match='closed'):
        await assistant.chat('hi')


def test_the_api_is_exported_from_the_agent_package() -> None:
    assert agent.Assistant is Assistant
    assert 'Assistant' in agent.__all__


async def test_the_per_turn_limits_apply_to_each_turn_not_to_the_whole_session(tmp_path: Path, redis_url: str) -> None:
    steps = ['ok'] * 6 + [call('now'), call('now'), 'never reached']
    model, _ = scripted_model(*steps)
    settings = Settings(home=tmp_path, redis_url=SecretStr(redis_url), tools=['clock'], limits=LimitsConfig(requests=2))
    async with Assistant(settings, backbones={'scripted': scripted_backbone(model)}) as assistant:
        answers = [(await assistant.chat(f'turn {n}', session='long')).answer for n in range(6)]
        with pytest.raises(TandemError, match=r'exceed the request_limit of 2 per turn \(limits.requests\)'):
            await assistant.chat('loop', session='long')  # three requests in one turn
        stored = await assistant.messages('long')

    assert answers == ['ok'] * 6
    assert len(stored) == 12  # the stopped turn was not saved


async def test_the_readme_fastapi_example_works(tmp_path: Path, redis_url: str) -> None:
    from contextlib import asynccontextmanager

    import httpx
    from fastapi import FastAPI

    model, _ = scripted_model(call('calculate', expression='2**100'), '1267650600228229401496703205376')
    # As in the README, but with a scripted backbone instead of the configured one.
    assistant = Assistant.from_config(_settings(tmp_path, redis_url), backbones={'scripted': scripted_backbone(model)})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with assistant:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post('/ask')
    async def ask(question: str, session: str, user: str) -> dict[str, object]:
        result = await assistant.chat(question, session=session, user=user)
        return {
            'answer': result.answer,
            'tools': [c.name for c in result.tool_calls],
            'tokens': result.usage.total_tokens,
        }

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url='http://example.test') as http:
            response = await http.post('/ask', params={'question': '2**100?', 'session': 's1', 'user': 'ann'})

    assert response.json() == {
        'answer': '1267650600228229401496703205376',
        'tools': ['calculate'],
        'tokens': IsInt(gt=0),
    }
