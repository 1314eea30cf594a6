"""Record and replay: a suite recorded against a loopback OpenAI-compatible server replays with the server gone."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import ModelRequestParameters
from redis.asyncio import Redis

from tandem.agent.backbones.base import Backbone, backbone_from_config
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.errors import TandemError
from tandem.agent.core.events import TextDelta
from tandem.agent.scenarios.cassettes import CASSETTE_FORMAT, Cassettes, normalize_request, request_key
from tandem.agent.scenarios.results import SuiteReport
from tandem.agent.scenarios.runner import run_scenario, run_suite
from tandem.agent.scenarios.schema import load_scenario
from tandem.tools.registry import ToolsetPlugin
from tests.scenarios.conftest import WriteScenario
from tests.support.fake_openai import FakeOpenAI, Reply, Text, ToolCall, last_tool_result, user_texts


def _script(body: dict[str, Any]) -> Reply:
    tools = [tool['function']['name'] for tool in body.get('tools') or []]
    if 'final_result' in tools:  # the LLM judge asks for a structured verdict
        return ToolCall((('final_result', {'reason': 'it repeats it', 'pass': True, 'score': 1.0}),))
    result = last_tool_result(body)
    if result is not None:
        return Text(f'The tool said: {result}')
    last = user_texts(body)[-1]
    if '*' in last:
        return ToolCall.one('calculate', expression=last.removeprefix('What is ').rstrip('?'))
    if 'time' in last:
        return ToolCall.one('now', timezone='UTC')
    return Text(f'You said: {last}')


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(_script, models=['tiny']) as fake:
        yield fake


def _backbone(server: FakeOpenAI, name: str = 'fake') -> Backbone:
    return backbone_from_config(name, BackboneConfig(model='openai-chat:tiny', base_url=server.url))


_SCENARIO = """
name: recorded
setup: {tools: [calc, clock]}
turns:
  - user: What is 17 * 23?
    expect: {tools: [calculate], contains: '391'}
  - user: What time is it?
    expect: {tools: [now], regex: '\\+00:00'}
  - user: Thanks!
    new_session: true
    expect:
      contains: thanks
      judge: The answer repeats 'Thanks'.
"""


def _essence(report: SuiteReport) -> list[Any]:
    """What must be the same whether the models answered live or from cassettes."""
    return [
        (
            run.scenario,
            run.status,
            [
                (
                    turn.answer if 'tool said: 20' not in turn.answer else 'a time',
                    [(call.name, call.args) for call in turn.tool_calls],
                    turn.input_tokens,
                    turn.output_tokens,
                    turn.cost_usd,
                    [(check.label, check.passed, check.detail) for check in turn.checks],
                )
                for turn in run.turns
            ],
        )
        for run in report.runs
    ]


async def test_a_recorded_suite_replays_the_same_with_the_server_stopped(
    redis: Redis,
    settings: Settings,
    server: FakeOpenAI,
    tmp_path: Path,
    write_scenario: WriteScenario,
    plugins: dict[str, ToolsetPlugin],
) -> None:
    scenario = load_scenario(write_scenario(_SCENARIO))
    cassettes = tmp_path / 'cassettes'

    recording = Cassettes(cassettes, 'record')
    recorded = await run_suite(
        [scenario],
        settings=settings,
        redis=redis,
        backbones=[_backbone(server)],
        judge=_backbone(server, 'judge'),
        cassettes=recording,
        plugins=plugins,
    )
    assert recorded.passed and recorded.mode == 'record'
    live_requests = len(server.chat_requests)
    assert recording.written == live_requests == 6  # 2 + 2 + 1 turns' requests, and the judge's
    files = sorted(cassettes.glob('*.json'))
    assert len(files) == 6
    stored = json.loads(files[0].read_text())
    assert stored['format'] == CASSETTE_FORMAT and stored['key'] == files[0].stem
    assert {json.loads(path.read_text())['role'] for path in files} == {'backbone', 'judge'}
    server.stop()

    replaying = Cassettes(cassettes, 'replay')
    assert [(b.name, b.config.model, b.role) for b in replaying.recorded_backbones()] == [
        ('fake', 'openai-chat:tiny', 'backbone'),
        ('judge', 'openai-chat:tiny', 'judge'),
    ]
    replayed = await run_suite(
        [scenario],
        settings=settings,
        redis=redis,
        backbones=[replaying.offline_backbone('fake', BackboneConfig(model='openai-chat:tiny'))],
        judge=replaying.offline_backbone('judge', BackboneConfig(model='openai-chat:tiny'), role='judge'),
        cassettes=replaying,
        plugins=plugins,
    )
    assert replayed.mode == 'replay'
    assert _essence(replayed) == _essence(recorded)
    assert replaying.hits == 6 and replaying.misses == 0
    assert len(server.chat_requests) == live_requests
    # Replayed turns report the latency the model had when recorded, not the replay's few milliseconds.
    cassette_data = [json.loads(path.read_text()) for path in files]
    recorded_latency = sum(data['latency_s'] for data in cassette_data if data['role'] == 'backbone')
    assert sum(turn.latency_s for run in replayed.runs for turn in run.turns) >= recorded_latency * 0.9


async def test_streamed_and_unstreamed_requests_share_cassettes(
    redis: Redis,
    settings: Settings,
    server: FakeOpenAI,
    tmp_path: Path,
    write_scenario: WriteScenario,
    plugins: dict[str, ToolsetPlugin],
) -> None:
    scenario = load_scenario(write_scenario('name: s\nsetup: {tools: [calc]}\nturns: [{user: "What is 6 * 7?"}]\n'))
    steps: list[object] = []
    backbone = _backbone(server)
    recording = Cassettes(tmp_path / 'c', 'record')
    live = await run_scenario(
        scenario, backbone, settings=settings, redis=redis, cassettes=recording, plugins=plugins, on_step=steps.append
    )
    assert live.status == 'passed' and server.chat_requests[0]['stream'] is True
    server.stop()
    replayed = await run_scenario(
        scenario,
        backbone,
        settings=settings,
        redis=redis,
        cassettes=Cassettes(tmp_path / 'c', 'replay'),
        plugins=plugins,
    )
    assert replayed.turns[0].answer == live.turns[0].answer == 'The tool said: 42'
    streamed: list[object] = []
    again = await run_scenario(
        scenario,
        backbone,
        settings=settings,
        redis=redis,
        cassettes=Cassettes(tmp_path / 'c', 'replay'),
        plugins=plugins,
        on_step=streamed.append,
    )
    assert again.turns[0].answer == 'The tool said: 42'
    assert ''.join(step.text for step in streamed if isinstance(step, TextDelta)) == 'The tool said: 42'


async def test_a_replay_miss_fails_loudly_naming_the_request_and_what_changed(
    redis: Redis,
    settings: Settings,
    server: FakeOpenAI,
    tmp_path: Path,
    write_scenario: WriteScenario,
    plugins: dict[str, ToolsetPlugin],
) -> None:
    recorded = load_scenario(write_scenario('name: m\nsetup: {tools: [calc]}\nturns: [{user: "What is 17 * 23?"}]\n'))
    backbone = _backbone(server)
    await run_scenario(
        recorded,
        backbone,
        settings=settings,
        redis=redis,
        cassettes=Cassettes(tmp_path / 'c', 'record'),
        plugins=plugins,
    )
    server.stop()
    changed = load_scenario(
        write_scenario('name: m\nsetup: {tools: [calc]}\nturns: [{user: "What is 17 * 24?"}]\n', name='changed.yaml')
    )
    replaying = Cassettes(tmp_path / 'c', 'replay')
    run = await run_scenario(changed, backbone, settings=settings, redis=redis, cassettes=replaying, plugins=plugins)
    assert run.status == 'error' and replaying.misses == 1
    assert run.error is not None
    message = run.error.replace(str(tmp_path / 'c'), 'DIR')
    assert re.fullmatch(
        r'replay miss: no cassette [0-9a-f]{32} in DIR for a request to openai-chat:tiny '
        r"\(1 message, last user: 'What is 17 \* 24\?'\)\. "
        r'The closest recorded request \([0-9a-f]{32}\) differs at messages\[0\]\.parts\[0\]\.content: '
        r'What is 17 \* 24\? here, What is 17 \* 23\? recorded\. Record it again with --record DIR\.',
        message,
    ), message
    assert [key async for key in redis.scan_iter(match='tandem:*')] == []


def test_replaying_from_nothing_says_how_to_record(tmp_path: Path) -> None:
    with pytest.raises(TandemError, match=re.escape(f'no cassettes in {tmp_path}: record them first')):
        Cassettes(tmp_path, 'replay')


def _conversation(*, when: datetime, run_id: str, call_id: str, fact_id: str, text: str) -> list[ModelMessage]:
    instructions = (
        f'You are Tandem. Today is {when:%Y-%m-%d}.\n- The user likes tea. [{fact_id} · stated {when:%Y-%m-%d}]'
    )
    return [
        ModelRequest(parts=[UserPromptPart(text, timestamp=when)], instructions=instructions, run_id=run_id),
        ModelResponse(
            parts=[ToolCallPart('now', {'timezone': 'UTC'}, tool_call_id=call_id)],
            timestamp=when,
            provider_response_id=f'resp-{run_id}',
            run_id=run_id,
        ),
        ModelRequest(
            parts=[
                ToolReturnPart(
                    'now',
                    f'{when.isoformat(timespec="seconds")} ({when:%A}, UTC)',
                    tool_call_id=call_id,
                    timestamp=when,
                )
            ],
            instructions=instructions,
            run_id=run_id,
        ),
    ]


def test_the_key_ignores_what_varies_between_runs_and_keeps_what_the_model_is_asked() -> None:
    parameters = ModelRequestParameters()
    monday = datetime(2025, 3, 10, 9, 30, 1, tzinfo=UTC)
    friday = datetime(2025, 3, 14, 17, 2, 59, 123456, tzinfo=UTC)
    first = _conversation(
        when=monday, run_id='r-1', call_id='call_abc', fact_id='f-0123456789ab', text='What time is it?'
    )
    second = _conversation(
        when=friday, run_id='r-2', call_id='call_xyz', fact_id='f-ba9876543210', text='What time is it?'
    )
    key = request_key(normalize_request('openai:gpt-4.1-mini', first, None, parameters))
    assert request_key(normalize_request('openai:gpt-4.1-mini', second, None, parameters)) == key
    other_text = _conversation(
        when=monday, run_id='r-1', call_id='call_abc', fact_id='f-0123456789ab', text='What date is it?'
    )
    assert request_key(normalize_request('openai:gpt-4.1-mini', other_text, None, parameters)) != key
    assert request_key(normalize_request('openai:gpt-4.1', first, None, parameters)) != key
    assert request_key(normalize_request('openai:gpt-4.1-mini', first, {'temperature': 0.5}, parameters)) != key
    normalized = normalize_request('openai:gpt-4.1-mini', first, None, parameters)
    assert normalized['messages'][2]['parts'][0]['content'] == '<datetime> (<weekday>, UTC)'
    assert normalized['messages'][1]['parts'][0]['tool_call_id'] == 'call-1'
    assert 'Today is <date>.' in normalized['messages'][0]['instructions']
    assert '<fact>' in normalized['messages'][0]['instructions']


def test_a_damaged_cassette_is_reported_not_served(tmp_path: Path) -> None:
    (tmp_path / 'abc.json').write_text(json.dumps({'format': CASSETTE_FORMAT, 'key': 'abc', 'response': {'x': 1}}))
    cassettes = Cassettes(tmp_path, 'replay')
    with pytest.raises(TandemError, match=re.escape('is damaged (ValidationError): re-record with --record')):
        cassettes.load('abc', {'model': 'm', 'messages': []})
