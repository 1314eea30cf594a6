"""The scenario keys a decision needs: a clean error that must stop a turn (`expect.error`), a turn that
must finish (`expect.completes`), a latency bound (`expect.max_latency_ms`), and tools named as
alternatives (`any_of`). A run that errs keeps its transcript up to the error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis

from tandem.agent.core.config import Settings
from tandem.agent.scenarios.report import render_html
from tandem.agent.scenarios.results import ScenarioRun
from tandem.agent.scenarios.runner import run_scenario
from tandem.agent.scenarios.schema import ScenarioFileError, load_scenario
from tandem.tools.registry import ToolsetPlugin
from tests.scenarios.conftest import WriteScenario
from tests.support.deps import scripted_backbone


def looping(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the calculator forever, unless asked to say hello."""
    if 'hello' in str(messages[-1]).lower() and len(messages) == 1:
        return ModelResponse(parts=[TextPart('Hello!')])
    return ModelResponse(parts=[ToolCallPart('calculate', {'expression': '1+1'})])


async def _run(path: Path, redis: Redis, settings: Settings, plugins: dict[str, ToolsetPlugin]) -> ScenarioRun:
    return await run_scenario(
        load_scenario(path), scripted_backbone(FunctionModel(looping)), settings=settings, redis=redis, plugins=plugins
    )


LIMITED = """
name: limited
setup: {tools: [calc], settings: {limits: {tool_calls: 3}}}
turns:
  - user: Add one and one, again and again.
    expect: {error: %s}
  - user: hello
    expect: {contains: Hello, completes: true}
"""


async def test_a_turn_that_must_stop_with_a_clean_error_passes_when_it_does_and_the_run_goes_on(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    run = await _run(write_scenario(LIMITED % "'limits.tool_calls'"), redis, settings, plugins)
    assert run.status == 'passed', run.failures
    first, second = run.turns
    assert first.error is not None and 'limits.tool_calls' in first.error
    assert [(check.kind, check.label, check.passed) for check in first.checks] == [
        ('error', "stops with an error containing 'limits.tool_calls'", True)
    ]
    assert second.answer == 'Hello!' and [check.kind for check in second.checks] == ['contains', 'completes']


async def test_an_error_that_reads_otherwise_fails_its_check_and_says_what_it_was(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    run = await _run(write_scenario(LIMITED % '{regex: "token budget"}'), redis, settings, plugins)
    assert run.status == 'failed'
    (check,) = run.failures
    assert check.label == 'stops with an error matching /token budget/'
    assert check.detail.startswith('it stopped with: ') and 'limits.tool_calls' in check.detail


async def test_an_expected_error_that_never_comes_fails(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario("name: polite\nturns: [{user: hello, expect: {error: 'limit'}}]\n")
    run = await _run(path, redis, settings, plugins)
    (check,) = run.failures
    assert check.kind == 'error' and check.detail == "it completed: the answer was 'Hello!'"


async def test_completes_turns_an_error_into_a_failed_check_of_that_turn(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        """
        name: must-finish
        setup: {tools: [calc], settings: {limits: {tool_calls: 2}}}
        turns:
          - {user: Add one and one forever., expect: {completes: true}}
          - {user: hello, expect: {contains: Hello}}
        """
    )
    run = await _run(path, redis, settings, plugins)
    assert run.status == 'failed' and run.error is None  # a failed expectation, and the next turn still ran
    (check,) = run.failures
    assert check.kind == 'completes' and 'limits.tool_calls' in check.detail
    assert run.turns[1].answer == 'Hello!'


async def test_an_unexpected_error_keeps_the_transcript_up_to_it(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        """
        name: unexpected
        setup: {tools: [calc], settings: {limits: {tool_calls: 2}}}
        turns:
          - {user: hello}
          - {user: Add one and one forever.}
          - {user: never sent}
        """
    )
    run = await _run(path, redis, settings, plugins)
    assert run.status == 'error' and run.error is not None and 'limits.tool_calls' in run.error
    assert [(turn.user, turn.error is None) for turn in run.turns] == [
        ('hello', True),
        ('Add one and one forever.', False),
    ]
    page = render_html_of(run)
    assert 'stopped: ' in page and 'limits.tool_calls' in page


def render_html_of(run: ScenarioRun) -> str:
    from datetime import UTC, datetime

    from tandem.agent.scenarios.results import SuiteReport

    return render_html(SuiteReport.of([run.cell], [run], started_at=datetime.now(UTC), duration_s=run.duration_s))


async def test_a_latency_bound_holds_or_says_how_long_the_turn_took(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart('Hello!')])

    async def slower(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await asyncio.sleep(0.3)
        return ModelResponse(parts=[TextPart('Hello!')])

    path = write_scenario('name: quick\nturns: [{user: hello, expect: {max_latency_ms: 250}}]\n')
    fast = await run_scenario(
        load_scenario(path), scripted_backbone(FunctionModel(slow)), settings=settings, redis=redis, plugins=plugins
    )
    assert fast.status == 'passed' and fast.checks[0].label == 'within 250 ms'
    late = await run_scenario(
        load_scenario(path), scripted_backbone(FunctionModel(slower)), settings=settings, redis=redis, plugins=plugins
    )
    (check,) = late.failures
    assert check.kind == 'max_latency' and check.detail.startswith('took 3')


async def test_any_of_accepts_either_tool(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        """
        name: either
        setup: {tools: [calc, clock]}
        turns:
          - user: hello
            expect:
              tools: [{any_of: [now, {name: calculate, args: {expression: '1+1'}}]}]
          - user: hello
            expect:
              tools: [{any_of: [now, {name: calculate, args: {expression: '2+2'}}]}]
        """
    )

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(part, ToolCallPart) for message in messages[-2:] for part in message.parts):
            return ModelResponse(parts=[TextPart('2')])
        return ModelResponse(parts=[ToolCallPart('calculate', {'expression': '1+1'})])

    run = await run_scenario(
        load_scenario(path), scripted_backbone(FunctionModel(answer)), settings=settings, redis=redis, plugins=plugins
    )
    assert [check.passed for check in run.checks] == [True, False]
    failed = run.failures[0]
    assert failed.label == "calls any of now, calculate(expression='2+2')"
    assert failed.detail == "called with other arguments: calculate(expression='1+1')"


@pytest.mark.parametrize(
    ('expect', 'message'),
    [
        ('{error: limit, completes: true}', 'cannot both stop with an error and complete'),
        ('{error: limit, contains: x}', 'has no answer to check'),
        ('{error: {contains: a, regex: b}}', 'give the error as contains or regex (one of them)'),
        ('{tools: [{any_of: [now], name: calculate}]}', 'name one tool, or give alternatives with any_of'),
        ('{max_latency_ms: 0}', 'greater than 0'),
    ],
)
def test_bad_new_keys_are_refused_with_their_line(write_scenario: WriteScenario, expect: str, message: str) -> None:
    path = write_scenario(f'name: bad\nturns:\n  - user: hi\n    expect: {expect}\n')
    with pytest.raises(ScenarioFileError) as caught:
        load_scenario(path)
    assert f'{path}:4:' in str(caught.value) and message in str(caught.value)


async def test_calls_to_unknown_tools_and_with_bad_arguments_are_recorded_counted_and_shown(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        'name: sloppy\nsetup: {tools: [calc]}\nturns: [{user: "What is 2+2?", expect: {max_tool_calls: 1}}]\n'
    )
    script = iter(
        [
            ModelResponse(parts=[ToolCallPart('teleport', {'to': 'Mars'})]),
            ModelResponse(parts=[ToolCallPart('calculate', {'formula': '2+2'})]),
            ModelResponse(parts=[ToolCallPart('calculate', {'expression': '2+2'})]),
            ModelResponse(parts=[TextPart('4')]),
        ]
    )

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return next(script)

    run = await run_scenario(
        load_scenario(path), scripted_backbone(FunctionModel(answer)), settings=settings, redis=redis, plugins=plugins
    )
    calls = run.turns[0].tool_calls
    assert [(call.name, call.ok) for call in calls] == [('teleport', False), ('calculate', False), ('calculate', True)]
    assert calls[0].result == "Unknown tool name: 'teleport'. Available tools: 'calculate'"
    assert calls[1].result == 'expression: Field required; formula: Extra inputs are not permitted'
    assert calls[1].args == {'formula': '2+2'}
    (budget,) = run.failures
    assert budget.detail.startswith("3 calls: teleport(to='Mars'), calculate(formula='2+2'), calculate(")
    assert 'teleport(to=&#x27;Mars&#x27;) → failed: Unknown tool name' in render_html_of(run)
