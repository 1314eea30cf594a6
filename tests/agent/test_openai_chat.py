"""The `openai-chat:` + base_url path end to end, against a loopback OpenAI-compatible server."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from tandem.agent.core.config import BackboneConfig
from tandem.agent.core.events import TextDelta, ToolCallFinished, TurnEvent
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.run import run_turn
from tests.support.deps import make_deps
from tests.support.fake_openai import Error, FakeOpenAI, Reply, Text, ToolCall, last_tool_result, user_texts


def colour_script(body: dict[str, Any]) -> Reply:
    """Remembers a colour only if the stored history is sent back."""
    texts = user_texts(body)
    if 'favourite colour is teal' in ' '.join(texts[:-1]):
        return Text('Your favourite colour is teal.')
    return Text('Nice to meet you.')


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(colour_script, models=['tiny-chat']) as server:
        yield server


def _ask(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, '-m', 'tandem.agent', 'ask', *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_process_sends_the_stored_history_instructions_and_tools(
    fake_server: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        'OPENAI_BASE_URL': fake_server.url,
        'TANDEM_REDIS_URL': redis_url,
        'TANDEM_HOME': str(tmp_path),
    }
    env.pop('OPENAI_API_KEY', None)
    env.pop('TANDEM_CONFIG', None)

    first = _ask('--model', 'openai-chat:tiny-chat', '--session', 's1', 'Hello, my favourite colour is teal.', env=env)
    assert first.returncode == 0, first.stderr
    second = _ask(
        '--model', 'openai-chat:tiny-chat', '--session', 's1', '--json', 'What is my favourite colour?', env=env
    )

    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)['answer'] == 'Your favourite colour is teal.'
    sent = fake_server.chat_requests[-1]
    roles = [message['role'] for message in sent['messages']]
    assert roles == ['system', 'user', 'assistant', 'user']
    assert 'Tandem' in sent['messages'][0]['content']
    assert sent['messages'][1]['content'] == 'Hello, my favourite colour is teal.'
    assert sorted(tool['function']['name'] for tool in sent['tools']) == [
        'calculate',
        'forget',
        'now',
        'recall',
        'remember',
        'search_knowledge',
        'web_fetch',
        'web_search',
    ]


def _openai_deps(redis: Redis, server: FakeOpenAI, home: Path) -> Deps:
    from tandem.agent.backbones.base import backbone_from_config

    backbone = backbone_from_config('local', BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url))
    deps = make_deps(redis, backbone.model, home=home)
    deps.backbone = backbone
    return deps


async def test_streaming_with_a_tool_call_over_http(redis: Redis, tmp_path: Path) -> None:
    def script(body: dict[str, Any]) -> Reply:
        result = last_tool_result(body)
        return ToolCall.one('calculate', expression='12*12') if result is None else Text(f'It is {result}.')

    with FakeOpenAI(script) as server:
        deps = _openai_deps(redis, server, tmp_path)
        events: list[TurnEvent] = []
        result = await run_turn(deps, 'What is 12 squared?', on_event=events.append)

    assert result.answer == 'It is 144.'
    assert all(body.get('stream') is True for body in server.chat_requests)
    assert [e.result for e in events if isinstance(e, ToolCallFinished)] == ['144']
    assert ''.join(e.text for e in events if isinstance(e, TextDelta)) == 'It is 144.'
    assert result.usage.input_tokens > 0 and result.usage.requests == 2


async def test_a_404_model_becomes_a_clear_error(redis: Redis, tmp_path: Path) -> None:
    from tandem.agent.backbones.base import backbone_from_config
    from tandem.agent.core.errors import BackboneError

    with FakeOpenAI(models=['other']) as server:
        deps = _openai_deps(redis, server, tmp_path)
        deps.backbone = backbone_from_config('local', BackboneConfig(model='openai-chat:missing', base_url=server.url))
        with pytest.raises(BackboneError, match=r'does not know model .*missing.*404'):
            await run_turn(deps, 'hi')
    assert await deps.conversations.read_record('s1') is None


async def test_a_server_without_the_responses_api_says_which_api_it_lacks(redis: Redis, tmp_path: Path) -> None:
    from tandem.agent.backbones.base import backbone_from_config
    from tandem.agent.core.errors import BackboneError

    with FakeOpenAI(models=['tiny-chat']) as server:  # like vLLM or Ollama: chat completions only
        deps = _openai_deps(redis, server, tmp_path)
        deps.backbone = backbone_from_config('local', BackboneConfig(model='openai:tiny-chat', base_url=server.url))
        with pytest.raises(BackboneError) as caught:
            await run_turn(deps, 'hi')
    assert str(caught.value) == (
        "backbone 'local': the server has no Responses API (POST /responses answered 404), which 'openai:' models "
        "use; OpenAI-compatible servers speak chat completions: use 'openai-chat:tiny-chat'."
    )


async def test_rate_limits_are_retried_with_backoff_honouring_retry_after_and_each_attempt_is_logged(
    redis: Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    replies: list[Reply] = [Error(429, 'slow down', retry_after=0.4), Error(429, 'slow down', retry_after=0.4)]
    with FakeOpenAI([*replies, Text('Third time lucky.')]) as server:
        deps = _openai_deps(redis, server, tmp_path)
        with caplog.at_level(logging.INFO, logger='tandem.backbones'):
            result = await run_turn(deps, 'hi')

    assert result.answer == 'Third time lucky.'
    times = server.request_times
    assert len(times) == 3
    assert all(later - earlier >= 0.38 for earlier, later in itertools.pairwise(times))  # Retry-After, not less
    events = [cast(dict[str, Any], record.msg) for record in caplog.records if isinstance(record.msg, dict)]
    retries = [event for event in events if event['event'] == 'model.retry']
    assert [(r['event'], r['attempt'], r['attempts'], r['status']) for r in retries] == [
        ('model.retry', 2, 3, 429),
        ('model.retry', 3, 3, 429),
    ]


async def test_the_number_of_attempts_is_the_backbones_to_set(redis: Redis, tmp_path: Path) -> None:
    from tandem.agent.backbones.base import backbone_from_config
    from tandem.agent.core.errors import BackboneError

    with FakeOpenAI([Error(503, 'busy'), Text('never sent')]) as server:
        deps = _openai_deps(redis, server, tmp_path)
        config = BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url, attempts=1)
        deps.backbone = backbone_from_config('local', config)
        with pytest.raises(BackboneError, match=r'answered HTTP 503'):
            await run_turn(deps, 'hi')

    assert len(server.chat_requests) == 1
