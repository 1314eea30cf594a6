"""`tandem tune compare --examples`: the fourth arm, the fine-tune's own training examples in the base model's prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage
from redis.asyncio import Redis
from typer.testing import CliRunner, Result

from tandem.agent.backbones.base import Backbone
from tandem.agent.cli.main import app
from tandem.agent.cli.run import injected_backbones
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.scenarios.results import Cell, CellSummary, SuiteReport
from tandem.agent.scenarios.schema import load_scenarios
from tandem.agent.tune.compare import Arm, Comparison, compare, render_markdown
from tandem.memory.examples import ExampleSet
from tests.scenarios.scripted_backbone import policy

SCENARIOS = [Path(__file__).parents[2] / 'scenarios' / name for name in ('calculator.yaml', 'clock.yaml')]
runner = CliRunner()


def _call(call_id: str, name: str, **args: str) -> dict[str, object]:
    return {'id': call_id, 'type': 'function', 'function': {'name': name, 'arguments': json.dumps(args)}}


TRAINING = [
    {
        'messages': [
            {'role': 'system', 'content': 'You are Tandem, a concise assistant.'},
            {'role': 'user', 'content': 'What is 12 * 12?'},
            {'role': 'assistant', 'tool_calls': [_call('call_1', 'calculate', expression='12 * 12')]},
            {'role': 'tool', 'tool_call_id': 'call_1', 'content': '144'},
            {'role': 'assistant', 'content': '12 * 12 is 144.'},
        ]
    },
    {
        'messages': [
            {'role': 'user', 'content': 'What time is it in Paris?'},
            {'role': 'assistant', 'tool_calls': [_call('call_1', 'now', timezone='Europe/Paris')]},
            {'role': 'tool', 'tool_call_id': 'call_1', 'content': '2026-12-08T10:00:00+01:00'},
            {'role': 'assistant', 'content': 'It is 10:00 in Paris (+01:00).'},
        ]
    },
]


def _training_file(folder: Path) -> Path:
    path = folder / 'train.jsonl'
    path.write_text(''.join(json.dumps(line) + '\n' for line in TRAINING), encoding='utf-8')
    return path


def _size(messages: list[ModelMessage]) -> int:
    return sum(
        len(str(getattr(part, 'content', '') or getattr(part, 'args', ''))) for m in messages for part in m.parts
    )


def _backbone(name: str, *, learns_from: str, training_file: Path | None = None) -> Backbone:
    """The scenario policy. `base` uses tools only when the full prompt says so, or when the conversation
    shows it a worked example of a tool call (few-shot); `tuned` always does."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        instructions = info.instructions or ''
        shown = any(
            isinstance(part, ToolCallPart) and part.tool_call_id.startswith('ex')
            for message in messages
            for part in message.parts
        )
        fresh = isinstance(messages[-1], ModelRequest) and not any(
            isinstance(part, ToolReturnPart) for part in messages[-1].parts
        )
        if learns_from == 'prompt' and 'calculator' not in instructions and not shown and fresh:
            response = ModelResponse(parts=[TextPart('Roughly 400, I think.')])
        else:
            response = policy(messages, info)
        response.usage = RequestUsage(input_tokens=(len(instructions) + _size(messages)) // 4, output_tokens=5)
        return response

    config = BackboneConfig(
        model=f'test:{name}',
        input_price_per_mtok=1.0,
        output_price_per_mtok=4.0,
        training_file=str(training_file) if training_file else None,
    )
    return Backbone(name=name, config=config, model=FunctionModel(respond, model_name=name))


async def test_the_fourth_arm_shows_the_training_examples_and_the_decision_weighs_them(
    redis: Redis, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, tenant='acme')
    comparison = await compare(
        load_scenarios(SCENARIOS),
        settings=settings,
        redis=redis,
        base=_backbone('base', learns_from='prompt'),
        tuned=_backbone('tuned', learns_from='weights'),
        examples=_training_file(tmp_path),
    )

    few_shot = comparison.few_shot
    assert few_shot is not None
    assert [arm.cell.label for arm in comparison.all_arms] == [
        'base · scenario prompt · full',
        'base · short@1 · -rag',
        'tuned · short@1 · -rag',
        'base · short@1 · -rag +examples',
    ]
    short, tuned = comparison.arms[1], comparison.arms[2]
    assert (short.pass_rate, tuned.pass_rate, few_shot.pass_rate) == (0.0, 1.0, 1.0)
    assert few_shot.tokens_per_turn > tuned.tokens_per_turn  # the examples ride along with every request

    decision = comparison.decision()
    (criterion,) = [c for c in decision.criteria if c.name == 'examples']
    assert criterion.measured
    assert criterion.line.startswith(
        'train.jsonl (2 examples, 3 a turn), in the prompt or in the weights: pass rate few-shot examples 100% '
    )
    assert 'no detectable difference' in criterion.line
    assert f'tokens per turn: few-shot examples {few_shot.tokens_per_turn:,.0f}, fine-tune' in criterion.line
    assert 'Few-shot prompting on the same examples does as well as the fine-tune on pass rate' in decision.why
    steps = {(row.factor, row.rate): row for row in decision.attribution}
    assert steps[('examples in the prompt', 'pass rate')].call == 'better'  # 0/2 → 2/2: the examples teach the tools
    assert steps[('examples: prompt → weights', 'pass rate')].change == 'base + examples → tuned'

    markdown = render_markdown(comparison)
    assert 'few-shot examples: base · short@1 · -rag +examples' in markdown
    assert '| scenario | prompting + RAG | short prompt | fine-tune | few-shot examples |' in markdown
    assert '**few-shot examples** shows examples from train.jsonl (2 examples, 3 a turn).' in markdown
    assert len(comparison.as_dict()['arms']) == 4
    # The examples were loaded into a set of the suite's tenant, named for their content.
    assert few_shot.cell.examples is not None
    assert await ExampleSet(redis, tenant='acme', name=few_shot.cell.examples).count() == 2


def _summary(cell: Cell, passed: int, tokens: int) -> CellSummary:
    return CellSummary(
        cell=cell,
        scenarios=40,
        passed=passed,
        failed=40 - passed,
        errors=0,
        tool_checks=0,
        tool_checks_passed=0,
        turns=10,
        total_tokens=tokens * 10,
        cost_usd=1.0,
        latency_p50_s=1.0,
        latency_p95_s=2.0,
        latency_total_s=10.0,
    )


@pytest.mark.parametrize(
    ('tuned_passed', 'few_shot_passed', 'recommendation', 'sentence'),
    [
        (
            20,
            38,
            'use the base model with few-shot examples: they beat the fine-tune on the same data',
            'The base model with few-shot examples from the same training data beats the fine-tune by 45 points of '
            'pass rate (95% against 50%) (900 tokens per turn against 300).',
        ),
        (
            38,
            20,
            'use the fine-tune',
            'The fine-tune beats few-shot prompting on the same examples by 45 points of pass rate (95% against 50%) '
            '(900 tokens per turn against 300).',
        ),
    ],
)
def test_the_decision_says_whether_the_fine_tune_beats_few_shot_prompting_on_the_same_data(
    tuned_passed: int, few_shot_passed: int, recommendation: str, sentence: str
) -> None:
    short = Cell(backbone='base', prompt='short@1', ablation=('rag',))
    cells = [
        _summary(Cell(backbone='base'), 40, 1000),
        _summary(short, 10, 300),
        _summary(Cell(backbone='tuned', prompt='short@1', ablation=('rag',)), tuned_passed, 300),
        _summary(short.model_copy(update={'examples': 'train-x'}), few_shot_passed, 900),
    ]
    report = SuiteReport.of([summary.cell for summary in cells], [], started_at=_NOW, duration_s=1.0, mode='live')
    arms = tuple(Arm(label, summary) for label, summary in zip(('p', 's', 't'), cells, strict=False))
    comparison = Comparison(
        base='base',
        tuned='tuned',
        report=report,
        arms=arms,  # pyright: ignore[reportArgumentType]
        few_shot=Arm('few-shot examples', cells[3]),
        examples_source='train.jsonl (40 examples, 3 a turn)',
    )

    decision = comparison.decision()

    assert decision.recommendation == recommendation
    assert decision.why.endswith(sentence)
    assert comparison.verdict.endswith(sentence.rstrip('.')[0].lower() + sentence.rstrip('.')[1:])


def test_without_examples_the_criterion_says_how_to_measure_it() -> None:
    cells = [
        _summary(Cell(backbone='base'), 40, 1000),
        _summary(Cell(backbone='base', prompt='short@1', ablation=('rag',)), 10, 300),
        _summary(Cell(backbone='tuned', prompt='short@1', ablation=('rag',)), 38, 300),
    ]
    report = SuiteReport.of([summary.cell for summary in cells], [], started_at=_NOW, duration_s=1.0, mode='live')
    arms = tuple(Arm(label, summary) for label, summary in zip(('p', 's', 't'), cells, strict=True))
    comparison = Comparison(base='base', tuned='tuned', report=report, arms=arms)  # pyright: ignore[reportArgumentType]

    (criterion,) = [c for c in comparison.decision().criteria if c.name == 'examples']

    assert not criterion.measured
    assert criterion.line.startswith('not measured: pass --examples TRAIN.jsonl')


def test_cli_compare_with_examples_runs_four_arms_into_the_report(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('TANDEM_CONFIG', raising=False)
    env = {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}
    args = ['--base', 'base', '--tuned', 'tuned', '--report', str(tmp_path / 'out')]
    with injected_backbones(_backbone('base', learns_from='prompt'), _backbone('tuned', learns_from='weights')):
        result = runner.invoke(
            app,
            ['tune', 'compare', *map(str, SCENARIOS), *args, '--examples', str(_training_file(tmp_path))],
            env=env,
        )
        missing = runner.invoke(
            app, ['tune', 'compare', *map(str, SCENARIOS), *args, '--examples', str(tmp_path / 'nope.jsonl')], env=env
        )

    assert result.exit_code == 0, result.stderr
    assert '8/8' in result.stderr and 'note: add --examples' not in result.stderr
    assert 'few-shot examples: base · short@1 · -rag +examples' in ' '.join(result.stdout.split())
    report = SuiteReport.model_validate_json((tmp_path / 'out' / 'report.json').read_text())
    assert len(report.cells) == 4 and report.decision is not None
    assert any(c.name == 'examples' and c.measured for c in report.decision.criteria)
    assert 'in the prompt or in the weights' in (tmp_path / 'out' / 'report.html').read_text()
    assert missing.exit_code == 1
    assert 'cannot read examples from' in missing.stderr and 'Traceback' not in missing.stderr


_NOW = __import__('datetime').datetime(2026, 12, 8, tzinfo=__import__('datetime').UTC)


def test_cli_compare_takes_the_training_file_the_tune_recorded(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('TANDEM_CONFIG', raising=False)
    env = {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}
    training = _training_file(tmp_path)
    args = ['tune', 'compare', *map(str, SCENARIOS), '--base', 'base', '--tuned', 'tuned']

    def invoke(*more: str, recorded: Path) -> Result:
        tuned = _backbone('tuned', learns_from='weights', training_file=recorded)
        with injected_backbones(_backbone('base', learns_from='prompt'), tuned):
            return runner.invoke(app, [*args, *more], env=env)

    recorded = invoke(recorded=training)
    skipped = invoke('--no-few-shot', recorded=training)
    gone = invoke(recorded=tmp_path / 'moved.jsonl')

    assert recorded.exit_code == 0, recorded.stderr
    assert f'few-shot arm: the examples of {training}, which tuned was trained on' in ' '.join(recorded.stderr.split())
    assert '8/8' in recorded.stderr
    assert skipped.exit_code == 0 and '6/6' in skipped.stderr and 'few-shot' not in skipped.stderr
    assert gone.exit_code == 0 and '6/6' in gone.stderr
    assert 'is not on this machine): add --examples TRAIN.jsonl' in ' '.join(gone.stderr.split())
