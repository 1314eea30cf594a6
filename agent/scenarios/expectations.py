"""Checking a turn against its expectations: tools (with arguments), texts, budgets, and an LLM judge.

Every expectation becomes one `CheckResult`, so a report can say exactly which one failed and why.
The LLM judge is pydantic-evals' `LLMJudge`, run on a model the caller chooses (a backbone of its
own, recorded and replayed like any other).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from pydantic_ai.models import Model
from pydantic_evals.evaluators import EvaluationReason, EvaluatorContext, LLMJudge
from pydantic_evals.otel import SpanTree

from tandem.agent.core.events import short
from tandem.agent.scenarios.results import CheckResult, ToolCallResult
from tandem.agent.scenarios.schema import ArgMatch, Expectations, FieldMatch, Judge, OutputExpectation, ToolCall

__all__ = ['check_stopped_turn', 'check_turn', 'judge_answer', 'matches_call']


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _arg_matches(match: ArgMatch, present: bool, value: Any) -> bool:
    if not present:
        return False
    if match.regex is not None:
        return match.regex.search(_text_of(value)) is not None
    if match.contains is not None:
        return match.contains.lower() in _text_of(value).lower()
    expected = match.equals
    if value == expected:
        return True
    scalars = (str, int, float, bool)
    return isinstance(value, scalars) and isinstance(expected, scalars) and str(value).strip() == str(expected).strip()


def matches_call(expected: ToolCall, call: ToolCallResult) -> bool:
    """Whether `call` is the tool `expected` names (or one of its alternatives), with every argument it
    constrains matching."""
    if expected.any_of:
        return any(matches_call(option, call) for option in expected.any_of)
    if call.name != expected.name:
        return False
    return all(_arg_matches(match, name in call.args, call.args.get(name)) for name, match in expected.args.items())


def _calls(calls: Sequence[ToolCallResult]) -> str:
    return ', '.join(short(call.describe(), 80) for call in calls) or 'no tool calls'


def _tool_check(turn: int, expected: ToolCall, calls: Sequence[ToolCallResult]) -> CheckResult:
    label = f'calls {expected.describe()}'
    if any(matches_call(expected, call) for call in calls):
        return CheckResult(turn=turn, kind='tool', label=label, passed=True)
    same_name = [call for call in calls if call.name in expected.names]
    if same_name:
        detail = f'called with other arguments: {_calls(same_name)}'
    else:
        detail = f'not called; the calls were: {_calls(calls)}'
    return CheckResult(turn=turn, kind='tool', label=label, passed=False, detail=detail)


def _quote(answer: str) -> str:
    return f'the answer was {short(answer, 120)!r}'


def _field(value: Any, path: str) -> tuple[bool, Any]:
    """The value at a dotted path (`lines.0.sku`), and whether it is there."""
    for key in path.split('.'):
        if isinstance(value, dict) and key in value:
            value = cast(dict[str, Any], value)[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(cast(list[Any], value)):
            value = cast(list[Any], value)[int(key)]
        else:
            return False, None
    return True, value


def _field_matches(match: FieldMatch, present: bool, value: Any) -> bool:
    if match.min is None and match.max is None:
        return _arg_matches(match, present, value)
    if not present or isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return (match.min is None or value >= match.min) and (match.max is None or value <= match.max)


def _output_checks(turn: int, spec: OutputExpectation, answer: str, error: str | None) -> list[CheckResult]:
    checks = [
        CheckResult(turn=turn, kind='output', label='answers in its schema', passed=error is None, detail=error or '')
    ]
    value = json.loads(answer) if error is None else None
    for path, match in spec.fields.items():
        present, found = _field(value, path)
        passed = error is None and _field_matches(match, present, found)
        if passed:
            detail = ''
        elif error is not None:
            detail = 'no valid answer to check'
        else:
            detail = f'{path} was {found!r}' if present else f'{path} is missing'
        checks.append(
            CheckResult(turn=turn, kind='output_field', label=f'{path}{match.describe()}', passed=passed, detail=detail)
        )
    return checks


def check_turn(
    turn: int,
    expect: Expectations,
    answer: str,
    calls: Sequence[ToolCallResult],
    tokens: int,
    *,
    output_error: str | None = None,
    latency_s: float = 0.0,
) -> list[CheckResult]:
    """The checks of one turn, except the judge's (see `judge_answer`), in the order of the schema.

    Args:
        turn: The turn's number, 1 for the first.
        expect: What must hold.
        answer: The assistant's final answer.
        calls: Every tool call of the turn, including failed and denied ones.
        tokens: Input plus output tokens of the turn.
        output_error: Why a turn that asked for a typed answer (`expect.output`) got none; `None` when it did.
        latency_s: Wall time of the turn.
    """
    checks = [_tool_check(turn, expected, calls) for expected in expect.tools]
    for name in expect.tools_not_called:
        made = [call for call in calls if call.name == name]
        denied = (
            ' (attempted; the approval policy denied it)' if made and all(c.result == 'denied' for c in made) else ''
        )
        checks.append(
            CheckResult(
                turn=turn,
                kind='tool_not_called',
                label=f'does not call {name}',
                passed=not made,
                detail=f'called: {_calls(made)}{denied}' if made else '',
            )
        )
    lowered = answer.lower()
    for text in expect.contains:
        found = text.lower() in lowered
        checks.append(
            CheckResult(
                turn=turn,
                kind='contains',
                label=f'contains {text!r}',
                passed=found,
                detail='' if found else _quote(answer),
            )
        )
    for text in expect.not_contains:
        index = lowered.find(text.lower())
        detail = '' if index < 0 else f'found in {short(answer[max(0, index - 40) : index + len(text) + 40], 120)!r}'
        checks.append(
            CheckResult(
                turn=turn, kind='not_contains', label=f'does not contain {text!r}', passed=index < 0, detail=detail
            )
        )
    for pattern in expect.regex:
        found = pattern.search(answer) is not None
        checks.append(
            CheckResult(
                turn=turn,
                kind='regex',
                label=f'matches /{pattern.pattern}/',
                passed=found,
                detail='' if found else _quote(answer),
            )
        )
    if expect.max_tool_calls is not None:
        count = len(calls)
        checks.append(
            CheckResult(
                turn=turn,
                kind='max_tool_calls',
                label=f'at most {expect.max_tool_calls} tool calls',
                passed=count <= expect.max_tool_calls,
                detail=''
                if count <= expect.max_tool_calls
                else f'{count} call{"s" if count != 1 else ""}: {_calls(calls)}',
            )
        )
    if expect.max_tokens is not None:
        checks.append(
            CheckResult(
                turn=turn,
                kind='max_tokens',
                label=f'at most {expect.max_tokens} tokens',
                passed=tokens <= expect.max_tokens,
                detail='' if tokens <= expect.max_tokens else f'{tokens} tokens',
            )
        )
    if expect.output is not None:
        checks.extend(_output_checks(turn, expect.output, answer, output_error))
    checks.extend(_ending_checks(turn, expect, None, latency_s, answer))
    return checks


def check_stopped_turn(turn: int, expect: Expectations, error: str, latency_s: float = 0.0) -> list[CheckResult]:
    """The checks of a turn that stopped with `error`: whether it was meant to, and its other budgets."""
    checks = [
        CheckResult(turn=turn, kind='tool_not_called', label=f'does not call {name}', passed=True)
        for name in expect.tools_not_called
    ]
    return checks + _ending_checks(turn, expect, error, latency_s, '')


def _ending_checks(
    turn: int, expect: Expectations, error: str | None, latency_s: float, answer: str
) -> list[CheckResult]:
    """`error`, `completes` and `max_latency_ms`: how the turn ended, and when."""
    checks: list[CheckResult] = []
    if expect.error is not None:
        label = expect.error.describe()
        if error is None:
            checks.append(
                CheckResult(
                    turn=turn, kind='error', label=label, passed=False, detail=f'it completed: {_quote(answer)}'
                )
            )
        else:
            held = expect.error.matches(error)
            checks.append(
                CheckResult(
                    turn=turn,
                    kind='error',
                    label=label,
                    passed=held,
                    detail='' if held else f'it stopped with: {short(error, 200)}',
                )
            )
    if expect.completes:
        checks.append(
            CheckResult(
                turn=turn,
                kind='completes',
                label='completes',
                passed=error is None,
                detail='' if error is None else f'it stopped with: {short(error, 200)}',
            )
        )
    if expect.max_latency_ms is not None:
        took = latency_s * 1000
        checks.append(
            CheckResult(
                turn=turn,
                kind='max_latency',
                label=f'within {expect.max_latency_ms:g} ms',
                passed=took <= expect.max_latency_ms,
                detail='' if took <= expect.max_latency_ms else f'took {took:.0f} ms',
            )
        )
    return checks


async def judge_answer(
    turn: int,
    spec: Judge,
    *,
    model: Model,
    user: str,
    answer: str,
    scenario: str,
    duration_s: float = 0.0,
) -> CheckResult:
    """Ask pydantic-evals' `LLMJudge` whether the rubric holds for the answer.

    Args:
        turn: The turn's number.
        spec: The rubric, and whether the judge sees the user's message.
        model: The judge's model.
        user: The user's message (the judge's input).
        answer: The assistant's answer (the judge's output).
        scenario: The scenario's name (the evaluation case's name).
        duration_s: The turn's latency, for the evaluation context.

    Raises:
        Exception: Whatever the judge's model raised (unreachable, replay miss, ...): a judge that
            cannot answer is an error of the run, not a failed expectation.
    """
    evaluator = LLMJudge(rubric=spec.rubric, model=model, include_input=spec.include_input)
    context = EvaluatorContext[object, object, object](
        name=scenario,
        inputs=user,
        metadata=None,
        expected_output=None,
        output=answer,
        duration=duration_s,
        _span_tree=SpanTree(),
        attributes={},
        metrics={},
    )
    outcome = await evaluator.evaluate_async(context)
    verdict: Any = outcome
    if isinstance(outcome, dict):
        values = list(cast(dict[str, Any], outcome).values())
        verdict = values[0] if values else None
    reason = ''
    if isinstance(verdict, EvaluationReason):
        reason = verdict.reason or ''
        verdict = verdict.value
    passed = verdict is True
    label = f'judge: {short(spec.rubric, 80)}'
    return CheckResult(turn=turn, kind='judge', label=label, passed=passed, detail=short(reason, 300))
