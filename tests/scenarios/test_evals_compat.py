"""pydantic-evals 2.62 on pydantic-ai 2.68 (a uv override): the pieces the scenario judge uses still work.

pydantic-evals pins pydantic-ai-slim==2.62; Tandem overrides it to 2.68. These tests exercise exactly
what `agent.scenarios.expectations.judge_answer` relies on, so an upgrade that breaks it fails here
first: `LLMJudge` (its prompt, its structured verdict, its reason), `EvaluatorContext` built by hand
with an empty `SpanTree`, `EvaluationReason`, and a judge model that is a `WrapperModel` (cassettes).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_evals import Case, Dataset
from pydantic_evals.evaluators import EvaluationReason, EvaluatorContext, LLMJudge
from pydantic_evals.otel import SpanTree

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig
from tandem.agent.scenarios.cassettes import Cassettes
from tandem.agent.scenarios.expectations import judge_answer
from tandem.agent.scenarios.schema import Judge


class _Judge:
    """A judge model that records what it was asked and answers with a fixed verdict."""

    def __init__(self, verdict: bool) -> None:
        self.verdict = verdict
        self.requests: list[tuple[list[ModelMessage], AgentInfo]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests.append((messages, info))
        arguments = {'reason': 'because', 'pass': self.verdict, 'score': float(self.verdict)}
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, arguments, tool_call_id='v1')])


def _context(output: str) -> EvaluatorContext[object, object, object]:
    return EvaluatorContext[object, object, object](
        name='case',
        inputs='What is 17 * 23?',
        metadata=None,
        expected_output=None,
        output=output,
        duration=0.5,
        _span_tree=SpanTree(),
        attributes={},
        metrics={},
    )


def test_the_installed_versions_are_the_overridden_pair() -> None:
    assert importlib.metadata.version('pydantic-evals').startswith('2.62')
    assert importlib.metadata.version('pydantic-ai-slim').startswith('2.68')


async def test_llm_judge_asks_for_a_structured_verdict_and_returns_it_with_its_reason() -> None:
    judge = _Judge(verdict=True)
    evaluator = LLMJudge(rubric='The answer is 391.', model=FunctionModel(judge), include_input=True)

    outcome = await evaluator.evaluate_async(_context('It is 391.'))

    assert outcome == {'LLMJudge': EvaluationReason(value=True, reason='because')}
    ((messages, info),) = judge.requests
    assert [tool.name for tool in info.output_tools] == ['final_result']
    assert set(info.output_tools[0].parameters_json_schema['properties']) == {'reason', 'pass', 'score'}
    assert not info.allow_text_output
    request = messages[0]
    assert isinstance(request, ModelRequest)
    system = [part.content for part in request.parts if isinstance(part, SystemPromptPart)]
    assert system and 'grading output according to a user-specified rubric' in system[0]
    prompt = next(part.content for part in request.parts if isinstance(part, UserPromptPart))
    assert isinstance(prompt, str)
    assert '<Input>\nWhat is 17 * 23?\n</Input>' in prompt
    assert '<Output>\nIt is 391.\n</Output>' in prompt and '<Rubric>\nThe answer is 391.\n</Rubric>' in prompt


async def test_judge_answer_turns_the_verdict_into_a_check() -> None:
    passing = await judge_answer(
        2, Judge(rubric='polite'), model=FunctionModel(_Judge(True)), user='hi', answer='Hello!', scenario='s'
    )
    failing = await judge_answer(
        2,
        Judge(rubric='polite', include_input=False),
        model=FunctionModel(_Judge(False)),
        user='hi',
        answer='Go.',
        scenario='s',
    )
    assert (passing.turn, passing.kind, passing.label, passing.passed, passing.detail) == (
        2,
        'judge',
        'judge: polite',
        True,
        'because',
    )
    assert (failing.passed, failing.detail) == (False, 'because')


async def test_a_judge_behind_a_cassette_records_then_replays(tmp_path: Path) -> None:
    judge = _Judge(verdict=True)
    backbone = Backbone(name='judge', config=BackboneConfig(model='test:judge'), model=FunctionModel(judge))
    recorded = await judge_answer(
        1,
        Judge(rubric='polite'),
        model=Cassettes(tmp_path, 'record').wrap(backbone, role='judge').model,
        user='hi',
        answer='Hello!',
        scenario='s',
    )
    replayed = await judge_answer(
        1,
        Judge(rubric='polite'),
        model=Cassettes(tmp_path, 'replay').wrap(backbone, role='judge').model,
        user='hi',
        answer='Hello!',
        scenario='s',
    )
    assert recorded == replayed and len(judge.requests) == 1


async def test_a_dataset_still_evaluates_with_an_llm_judge() -> None:
    dataset = Dataset[str, str, None](
        name='compat',
        cases=[Case(name='greeting', inputs='hi')],
        evaluators=[LLMJudge(rubric='The output greets.', model=FunctionModel(_Judge(True)))],
    )

    async def task(inputs: str) -> str:
        return f'Hello, you said {inputs}.'

    report = await dataset.evaluate(task, progress=False)
    (case,) = report.cases
    assert case.output == 'Hello, you said hi.'
    assert case.assertions['LLMJudge'].value is True and case.assertions['LLMJudge'].reason == 'because'


@pytest.mark.parametrize('verdict', [True, False])
async def test_the_verdict_follows_the_judge(verdict: bool) -> None:
    evaluator = LLMJudge(rubric='r', model=FunctionModel(_Judge(verdict)))
    outcome = await evaluator.evaluate_async(_context('x'))
    assert isinstance(outcome, dict) and outcome['LLMJudge'] == EvaluationReason(value=verdict, reason='because')
