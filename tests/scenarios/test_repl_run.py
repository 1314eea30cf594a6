"""`/run FILE` in the REPL: one scenario on the REPL's backbone, each step shown, the namespace deleted after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tandem.agent.turn.request import TurnRequest
from tests.agent.test_repl import _drive, _settings, script
from tests.scenarios.conftest import WriteScenario
from tests.support.fake_openai import FakeOpenAI


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(script, models=['base-model', 'tuned-model']) as fake:
        yield fake


async def test_run_shows_each_step_and_leaves_the_conversation_alone(
    tmp_path: Path, redis_url: str, redis: Redis, server: FakeOpenAI, write_scenario: WriteScenario
) -> None:
    path = write_scenario(
        """
        name: repl-debug
        description: Shown step by step.
        setup: {tools: [calc]}
        turns:
          - user: please compute this
            expect: {tools: [calculate], contains: '42'}
          - user: and again, fresh
            new_session: true
            expect: {contains: forty-two}
        """
    )
    settings = _settings(tmp_path, redis_url, server)

    screen = await _drive(settings, f'hello\r/run {path}\r/history\r', TurnRequest(session='mine'))

    assert f'▶ repl-debug ({path})' in screen
    assert 'Shown step by step.' in screen
    assert 'base · assistant@1 · tools: calc · namespace scn-' in screen
    assert '── turn 1/2 session s1' in screen and '── turn 2/2 session s2 (new session)' in screen
    assert 'you › please compute this' in screen
    assert "⚙ calculate(expression='7*6') …" in screen and '✓ calculate' in screen and '→ 42' in screen
    assert 'assistant › **Result:** 42' in screen
    assert '✓ calls calculate' in screen and "✓ contains '42'" in screen
    assert "✗ contains 'forty-two' — the answer was" in screen
    assert '✗ failed: 1 failing expectation' in screen
    # The REPL's own session is untouched, and the scenario's namespace is gone.
    history = screen[screen.rindex('you: hello') :]  # what /history printed, last
    assert 'please compute this' not in history
    assert [key async for key in redis.scan_iter(match='tandem:{scn-*')] == []


async def test_run_without_a_file_or_with_a_broken_one_is_a_one_line_error(
    tmp_path: Path, redis_url: str, server: FakeOpenAI, write_scenario: WriteScenario
) -> None:
    broken = write_scenario('name: b\nturns: []\n')
    settings = _settings(tmp_path, redis_url, server)

    screen = await _drive(settings, f'/run\r/run {tmp_path}/nope.yaml\r/run {broken}\r', TurnRequest(session='e'))

    flat = ' '.join(screen.split())  # the console wraps long lines
    assert 'error: usage: /run FILE, a scenario file such as scenarios/calculator.yaml' in flat
    assert f'error: {tmp_path}/nope.yaml:1:1: no such file' in flat
    assert f'error: {broken}:2:1: turns: List should have at least 1 item after validation, not 0' in flat
    assert 'Traceback' not in screen
