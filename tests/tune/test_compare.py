"""`tandem tune compare`: two scripted backbones through the scenario runner, and the verdict's reasoning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolReturnPart, UserPromptPart
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
from tandem.agent.tune.compare import Arm, Comparison, compare, priced, render_markdown, verdict
from tandem.agent.tune.export import ExportOptions, build_examples, report_traces, write_jsonl
from tandem.agent.tune.validate import validate_file
from tests.scenarios.scripted_backbone import policy
from tests.support.browser import dump_dom, needs_chromium

SCENARIOS = [Path(__file__).parents[2] / 'scenarios' / name for name in ('calculator.yaml', 'clock.yaml')]
runner = CliRunner()


def _text(messages: list[ModelMessage]) -> int:
    size = 0
    for message in messages:
        for part in message.parts:
            if isinstance(part, UserPromptPart | ToolReturnPart | TextPart):
                size += len(str(part.content))
    return size


def _backbone(name: str, *, needs_the_full_prompt: bool, **config: Any) -> Backbone:
    """The scenario policy; a base model that only uses tools when the long prompt tells it to."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        instructions = info.instructions or ''
        fresh_question = isinstance(messages[-1], ModelRequest) and not any(
            isinstance(part, ToolReturnPart) for part in messages[-1].parts
        )
        if needs_the_full_prompt and 'calculator' not in instructions and fresh_question:
            response = ModelResponse(parts=[TextPart('Roughly 400, I think.')])
        else:
            response = policy(messages, info)
        out = sum(len(str(getattr(part, 'content', '') or getattr(part, 'args', ''))) for part in response.parts)
        response.usage = RequestUsage(
            input_tokens=(len(instructions) + _text(messages)) // 4, output_tokens=out // 4 + 1
        )
        return response

    priced = BackboneConfig(model=f'test:{name}', input_price_per_mtok=1.0, output_price_per_mtok=4.0, **config)
    return Backbone(name=name, config=priced, model=FunctionModel(respond, model_name=name))


def _settings(home: Path) -> Settings:
    return Settings(home=home, tenant='acme')


async def test_compare_runs_three_arms_and_the_fine_tune_saves_tokens_at_equal_quality(
    redis: Redis, tmp_path: Path
) -> None:
    base = _backbone('base', needs_the_full_prompt=True)
    tuned = _backbone('tuned', needs_the_full_prompt=False)
    comparison = await compare(
        load_scenarios(SCENARIOS), settings=_settings(tmp_path), redis=redis, base=base, tuned=tuned
    )

    prompting, short, fine_tune = comparison.arms
    assert [arm.cell.label for arm in comparison.arms] == [
        'base · scenario prompt · full',
        'base · short@1 · -rag',
        'tuned · short@1 · -rag',
    ]
    assert (prompting.pass_rate, short.pass_rate, fine_tune.pass_rate) == (1.0, 0.0, 1.0)
    assert prompting.tool_accuracy == 1.0 and fine_tune.tool_accuracy == 1.0 and short.tool_accuracy is not None
    assert short.tool_accuracy < 1.0
    assert fine_tune.tokens_per_turn < prompting.tokens_per_turn
    assert prompting.cost_per_1k_turns is not None and fine_tune.cost_per_1k_turns is not None
    assert fine_tune.cost_per_1k_turns < prompting.cost_per_1k_turns

    saving = 1 - fine_tune.tokens_per_turn / prompting.tokens_per_turn
    assert comparison.verdict.startswith(
        'prompting + RAG already passes these scenarios; the short prompt without RAG costs 100 points of pass '
        f'rate (100% → 0%); the fine-tune recovers all of it (100%) and saves {saving:.0%} tokens'
    )
    assert comparison.verdict.endswith('at equal quality')

    markdown = render_markdown(comparison)
    assert markdown.splitlines()[-1].startswith('**Verdict:** Prompting + RAG already passes these scenarios;')
    assert (
        '| pass rate | 100% [34–100%] (2/2) | 0% [0–66%] (0/2) | -100 pp [-100, -7] | 100% [34–100%] (2/2) | ±0 pp |'
        in markdown
    )
    assert f'{-saving:+.0%}' in markdown
    data = comparison.as_dict()
    assert data['arms'][2]['delta']['pass_rate_pp'] == 0 and data['arms'][1]['delta']['pass_rate_pp'] == -100
    assert data['arms'][2]['delta']['tokens_per_turn'] == pytest.approx(-saving, abs=1e-3)


async def test_the_compare_report_feeds_the_next_export(redis: Redis, tmp_path: Path) -> None:
    base = _backbone('base', needs_the_full_prompt=True)
    tuned = _backbone('tuned', needs_the_full_prompt=False)
    comparison = await compare(
        load_scenarios(SCENARIOS), settings=_settings(tmp_path), redis=redis, base=base, tuned=tuned
    )
    report_path = tmp_path / 'runs.json'
    report_path.write_text(comparison.report.model_dump_json())

    traces = report_traces(report_path, only_passing=True, backbone='base')
    assert sorted(trace.source.split(' · ')[0] for trace in traces) == ['scenario calculator', 'scenario clock']
    result = build_examples(traces, ExportOptions(system='short'))
    out = tmp_path / 'teacher.jsonl'
    write_jsonl(out, result.train)
    assert validate_file(out, min_examples=1).ok
    assert all(
        example['messages'][0]['content'].startswith('You are Tandem, a concise assistant.') for example in result.train
    )
    assert report_traces(report_path, only_passing=True, backbone='nope') == []


_CELLS = {
    'p': Cell(backbone='base', prompt=None),
    's': Cell(backbone='base', prompt='short@1', ablation=('rag',)),
    't': Cell(backbone='tuned', prompt='short@1', ablation=('rag',)),
}


def _arm(
    label: str,
    *,
    passed: int,
    tool_ok: int,
    tokens: int,
    cost: float | None = 1.0,
    runs: int = 40,
    tool_checks: int = 100,
) -> Arm:
    """An arm as a scenario run measures it: `passed` of `runs`, `tool_ok` of `tool_checks`."""
    summary = CellSummary(
        cell=_CELLS[label],
        scenarios=runs,
        passed=passed,
        failed=runs - passed,
        errors=0,
        tool_checks=tool_checks,
        tool_checks_passed=tool_ok,
        turns=10,
        total_tokens=tokens * 10,
        cost_usd=cost,
        latency_p50_s=1.0,
        latency_p95_s=2.0,
        latency_total_s=10.0,
    )
    return Arm(label, summary)


def test_the_verdict_blames_the_short_prompt_without_rag_not_the_fine_tune() -> None:
    """The misattribution a user met: tool-call accuracy 63% on prompting + RAG, 58% on the short prompt
    without RAG and 58% on the fine-tune. The loss is the short prompt's; the fine-tune recovers none of it."""
    prompting = _arm('p', passed=80, runs=100, tool_ok=630, tool_checks=1000, tokens=1000)
    short = _arm('s', passed=80, runs=100, tool_ok=580, tool_checks=1000, tokens=300)
    tuned = _arm('t', passed=80, runs=100, tool_ok=580, tool_checks=1000, tokens=300)
    assert verdict(prompting, short, tuned) == (
        'prompting + RAG passes 80% of these scenarios; the short prompt without RAG costs 5 points of tool-call '
        'accuracy (63% → 58%); the fine-tune recovers none of it (58%): keep prompting + RAG, or tune on more '
        '(or better) examples'
    )


def test_the_same_rates_on_few_trials_are_no_detectable_difference() -> None:
    prompting = _arm('p', passed=8, runs=10, tool_ok=63, tool_checks=100, tokens=1000)
    short = _arm('s', passed=8, runs=10, tool_ok=58, tool_checks=100, tokens=1000)
    tuned = _arm('t', passed=8, runs=10, tool_ok=58, tool_checks=100, tokens=1000)
    said = verdict(prompting, short, tuned)
    assert said.startswith(
        'prompting + RAG passes 80% of these scenarios; neither the short prompt without RAG nor the fine-tune '
        'makes a difference these trials can tell (no detectable difference at 100 tool checks; about '
    )
    assert said.endswith(' would tell 5 pp in tool-call accuracy): run more trials (-n) before deciding')


@pytest.mark.parametrize(
    ('short', 'tuned', 'expected'),
    [
        (
            _arm('s', passed=20, tool_ok=60, tokens=300, cost=0.5),
            _arm('t', passed=40, tool_ok=100, tokens=620, cost=0.6),
            'prompting + RAG already passes these scenarios; the short prompt without RAG costs 50 points of pass '
            'rate (100% → 50%); the fine-tune recovers all of it (100%) and saves 38% tokens and 40% of the cost '
            'per 1,000 turns at equal quality',
        ),
        (
            _arm('s', passed=40, tool_ok=100, tokens=300, cost=0.3),
            _arm('t', passed=40, tool_ok=100, tokens=290),
            'prompting + RAG already passes these scenarios; the short prompt without RAG does as well and saves '
            '70% tokens and 70% of the cost per 1,000 turns, so the fine-tune adds nothing here',
        ),
        (
            _arm('s', passed=10, tool_ok=50, tokens=300),
            _arm('t', passed=30, tool_ok=80, tokens=300),
            'prompting + RAG already passes these scenarios; the short prompt without RAG costs 75 points of pass '
            'rate (100% → 25%); the fine-tune recovers 50 of them (75%): keep prompting + RAG, or tune on more (or '
            'better) examples',
        ),
        (
            _arm('s', passed=10, tool_ok=50, tokens=300),
            _arm('t', passed=40, tool_ok=100, tokens=1200),
            'prompting + RAG already passes these scenarios; the short prompt without RAG costs 75 points of pass '
            'rate (100% → 25%); the fine-tune recovers all of it (100%) but uses 20% more tokens: keep prompting + RAG',
        ),
        (
            _arm('s', passed=40, tool_ok=60, tokens=300),
            _arm('t', passed=40, tool_ok=90, tokens=500),
            'prompting + RAG already passes these scenarios; the short prompt without RAG costs 40 points of '
            'tool-call accuracy (100% → 60%); the fine-tune recovers 30 of them (90%): keep prompting + RAG, or tune '
            'on more (or better) examples',
        ),
    ],
)
def test_the_verdict_says_what_the_numbers_say(short: Arm, tuned: Arm, expected: str) -> None:
    prompting = _arm('p', passed=40, tool_ok=100, tokens=1000)
    assert verdict(prompting, short, tuned) == expected


def test_a_fine_tune_that_beats_prompting_pays_off() -> None:
    prompting = _arm('p', passed=20, tool_ok=70, tokens=1000)
    short = _arm('s', passed=10, tool_ok=50, tokens=300)
    tuned = _arm('t', passed=40, tool_ok=100, tokens=400, cost=0.4)
    assert verdict(prompting, short, tuned) == (
        'prompting + RAG passes 50% of these scenarios; the short prompt without RAG costs 25 points of pass rate '
        '(50% → 25%); the fine-tune more than recovers it (100%) and saves 60% tokens and 60% of the cost per '
        '1,000 turns: it pays off'
    )


@pytest.fixture
def env(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a `tandem` command run in `tmp_path`, on the test's Redis."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('TANDEM_CONFIG', raising=False)
    return {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}


def _compare(env: dict[str, str], *args: str) -> Result:
    """`tandem tune compare` over the two scripted scenarios, base against tuned."""
    with injected_backbones(
        _backbone('base', needs_the_full_prompt=True), _backbone('tuned', needs_the_full_prompt=False)
    ):
        return runner.invoke(
            app, ['tune', 'compare', *map(str, SCENARIOS), '--base', 'base', '--tuned', 'tuned', *args], env=env
        )


def test_cli_compare_writes_the_decision_report(env: dict[str, str], tmp_path: Path) -> None:
    result = _compare(env, '--out', str(tmp_path / 'decision.md'), '--report', str(tmp_path / 'out'))
    assert result.exit_code == 0, result.stderr
    assert 'Verdict: Prompting + RAG already passes these scenarios; the short prompt without RAG costs' in ' '.join(
        result.stdout.split()
    )
    assert '6/6' in result.stderr
    markdown = (tmp_path / 'decision.md').read_text()
    assert markdown.rstrip().splitlines()[-1].startswith('**Verdict:**')
    report = SuiteReport.model_validate_json((tmp_path / 'out' / 'report.json').read_text())
    assert len(report.cells) == 3 and len(report.runs) == 6
    assert report.decision is not None and report.decision.recommendation == 'use the fine-tune'
    assert (tmp_path / 'out' / 'report.html').read_text().count('<h1>Tandem decision report</h1>') == 1

    a_file = tmp_path / 'decision.md'
    refused = runner.invoke(
        app, ['tune', 'compare', str(SCENARIOS[0]), '--base', 'base', '--tuned', 'x', '--report', str(a_file)], env=env
    )
    assert refused.exit_code == 1
    assert f'--report takes a directory, as tandem run does; {a_file} is a file.' in ' '.join(refused.stderr.split())

    with injected_backbones(_backbone('base', needs_the_full_prompt=True)):
        same = runner.invoke(app, ['tune', 'compare', str(SCENARIOS[0]), '--base', 'base', '--tuned', 'base'], env=env)
    assert same.exit_code == 1
    assert 'compare two different ones' in same.stderr
    unknown = runner.invoke(app, ['tune', 'compare', str(SCENARIOS[0]), '--base', 'nope', '--tuned', 'x'], env=env)
    assert unknown.exit_code == 1
    assert "unknown backbone 'nope' (known: none configured): add [backbones.nope] to tandem.toml" in unknown.stderr

    # The runs of the winning arm are the next training set.
    exported = runner.invoke(
        app,
        [
            'tune',
            'export',
            '--report',
            str(tmp_path / 'out' / 'report.json'),
            '--only-passing',
            '--backbone',
            'base',
            '--out',
            str(tmp_path / 'next.jsonl'),
        ],
        env=env,
    )
    assert exported.exit_code == 0, exported.stderr
    assert 'wrote 2 example(s)' in exported.stderr


TUNE = {'kind': 'fine-tuned', 'base_model': 'base'}


def test_compare_runs_the_other_tunes_of_the_base_model_for_the_learning_curve(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / 'tandem.toml'
    config.write_text(
        '[backbones.tuned-100]\nmodel = "test:tuned-100"\nkind = "fine-tuned"\nbase_model = "base"\n'
        'training_examples = 100\n'
        '[backbones.tuned-400]\nmodel = "test:tuned-400"\nkind = "fine-tuned"\nbase_model = "base"\n'
        'training_examples = 400\n'
        '[backbones.other-base]\nmodel = "test:o"\nkind = "fine-tuned"\nbase_model = "gpt"\ntraining_examples = 9\n'
    )
    tunes = (
        _backbone('tuned-100', needs_the_full_prompt=True, training_examples=100, **TUNE),  # too few examples
        _backbone('tuned-400', needs_the_full_prompt=False, training_examples=400, **TUNE),
    )
    with injected_backbones(_backbone('base', needs_the_full_prompt=True), *tunes):
        args = ['tune', 'compare', *map(str, SCENARIOS), '--base', 'base', '--tuned', 'tuned-400', '-n', '3']
        result = runner.invoke(app, [*args, '--report', 'out'], env={**env, 'TANDEM_CONFIG': str(config)})
        skipped = runner.invoke(app, [*args, '--no-curve'], env={**env, 'TANDEM_CONFIG': str(config)})

    assert result.exit_code == 0, result.stderr
    assert 'learning curve: also running tuned-100 as the fine-tune arm (--no-curve skips them)' in result.stderr
    assert '24/24' in result.stderr  # three arms and the curve's other tune, 2 scenarios × 3 trials each
    decision = SuiteReport.model_validate_json((tmp_path / 'out' / 'report.json').read_text()).decision
    assert decision is not None
    assert [(point.backbone, point.examples, point.pass_rate.value) for point in decision.curve] == [
        ('tuned-100', 100, 0.0),
        ('tuned-400', 400, 1.0),
    ]
    data = next(criterion for criterion in decision.criteria if criterion.name == 'data')
    assert data.measured and data.line.startswith('tuned-100: 100 examples; tuned-400: 400 examples. ')
    assert data.line.endswith('100 → 400 examples still gains +100 pp [+45, +100]: more examples should help')
    assert '<section id="learning-curve">' in (tmp_path / 'out' / 'report.html').read_text()
    assert skipped.exit_code == 0 and 'learning curve' not in skipped.stderr and '18/18' in skipped.stderr


@needs_chromium
def test_the_compare_decision_report_passes_its_browser_check(env: dict[str, str], tmp_path: Path) -> None:
    result = _compare(env, '-n', '3', '--report', 'out')
    assert result.exit_code == 0, result.stderr
    page = tmp_path / 'out' / 'report.html'
    dom, console = dump_dom(page.as_uri(), tmp_path / 'profile')
    assert console == []
    card = dom[dom.index('<section id="decision"') : dom.index('<section id="cells-compared"')]
    assert 'class="card confidence-medium"' in card  # chosen on cost at equal quality
    assert '<p class="recommendation">use the fine-tune</p>' in card
    assert 'the short prompt without RAG costs 100 points of pass rate (100% → 0%); the fine-tune recovers all' in card
    criteria = re.findall(r'data-criterion="([a-z]+)"', card)
    assert criteria == ['quality', 'consistency', 'cost', 'latency', 'freshness', 'data', 'examples']
    assert 'prompting + RAG: pass rate 100% [61–100%] (6/6)' in card  # 2 scenarios × 3 trials
    attribution = dom[dom.index('<section id="attribution">') : dom.index('<section id="grid">')]
    assert '<td>prompt and ingredients</td><td>scenario prompt · full → short@1 · -rag</td>' in attribution
    assert '<td>backbone</td><td>base → tuned</td><td>short@1 · -rag</td><td>pass rate</td>' in attribution
    assert dom.count('class="whisker"') >= 9  # three arms × pass rate, tool accuracy, tokens
    assert '✓ 3/3' in dom and '✗ 3/3' in dom  # the grid counts trials


def test_a_fine_tuned_openai_model_is_costed_at_its_own_rates_and_the_report_says_so() -> None:
    tuned = Backbone(
        name='support-ft',
        config=BackboneConfig(model='openai:ft:gpt-4.1-mini-2025-04-14:acme:support:abc123'),
        model=FunctionModel(policy),
    )
    costed, source = priced(tuned)
    assert (costed.config.input_price_per_mtok, costed.config.output_price_per_mtok) == (0.8, 3.2)
    assert source.startswith("$0.8 in, $3.2 out per Mtok: OpenAI's rates for fine-tuned gpt-4.1-mini (checked ")
    configured = _backbone('base', needs_the_full_prompt=True)
    assert priced(configured) == (configured, '$1 in, $4 out per Mtok (its config)')
    local = Backbone(name='local', config=BackboneConfig(model='openai-chat:qwen2.5'), model=FunctionModel(policy))
    assert priced(local)[1] == "pydantic-ai's price table (genai-prices), where it knows the model"


def test_the_training_cost_is_amortized_into_a_break_even_volume() -> None:
    prompting = _arm('p', passed=40, tool_ok=100, tokens=1000, cost=0.02)  # $0.002 a turn
    short = _arm('s', passed=10, tool_ok=50, tokens=300, cost=0.005)
    tuned = _arm('t', passed=40, tool_ok=100, tokens=400, cost=0.008)  # $0.0008 a turn
    report = SuiteReport.model_construct()
    comparison = Comparison(
        base='base', tuned='tuned', report=report, arms=(prompting, short, tuned), training_cost_usd=12.0
    )
    # $1 a month of training over 12 months, saved at $0.0012 a turn: from 834 turns a month.
    assert comparison.break_even() == (
        'training $12.00, amortized over 12 months ($1.00 a month): the fine-tune is cheaper above 834 turns a month'
    )
    unknown = Comparison(base='base', tuned='tuned', report=report, arms=(prompting, short, tuned))
    assert unknown.break_even().startswith('break-even unknown: set training_cost_usd on [backbones.tuned]')
    dearer = Comparison(
        base='base', tuned='tuned', report=report, arms=(tuned, short, prompting), training_cost_usd=12.0
    )
    assert dearer.break_even().endswith('so it never pays its training back')
    cost = next(c for c in comparison.decision().criteria if c.name == 'cost')
    assert cost.line.endswith('the fine-tune is cheaper above 834 turns a month')


def test_freshness_is_the_pass_rate_on_scenarios_whose_knowledge_changed_after_the_tune() -> None:
    from datetime import UTC, datetime

    from tandem.agent.scenarios.results import ScenarioRun
    from tandem.agent.tune.compare import comparison_of

    cells = [
        Cell(backbone='base'),
        Cell(backbone='base', prompt='short@1', ablation=('rag',)),
        Cell(backbone='tuned', prompt='short@1', ablation=('rag',)),
    ]
    outcomes: list[Literal['passed', 'failed']] = ['passed', 'failed', 'failed']  # only retrieval knows the new price
    runs = [
        run
        for index, cell in enumerate(cells)
        for trial in range(4)
        for run in (
            ScenarioRun(scenario=f'new-price-{trial}', tags=['freshness'], cell=cell, status=outcomes[index]),
            ScenarioRun(scenario=f'greeting-{trial}', cell=cell, status='passed'),
        )
    ]
    report = SuiteReport.of(cells, runs, started_at=datetime.now(UTC), duration_s=1.0)
    fresh = next(c for c in comparison_of(report, 'base', 'tuned').decision().criteria if c.name == 'freshness')
    assert fresh.measured
    assert fresh.line == (
        'on knowledge that changed after the tune: prompting + RAG 100% [51–100%], short prompt 0% [0–49%], '
        'fine-tune 0% [0–49%]'
    )
    untagged = SuiteReport.of(
        cells, [run for run in runs if not run.tags], started_at=datetime.now(UTC), duration_s=1.0
    )
    stale = next(c for c in comparison_of(untagged, 'base', 'tuned').decision().criteria if c.name == 'freshness')
    assert not stale.measured and 'tag scenarios whose documents changed after the tune `freshness`' in stale.line


async def test_the_built_in_freshness_scenario_shows_a_tune_without_rag_answering_from_stale_knowledge(
    redis: Redis, tmp_path: Path
) -> None:
    changed = load_scenarios([Path(__file__).parents[2] / 'scenarios' / 'changed_policy.yaml'])
    comparison = await compare(
        changed,
        settings=_settings(tmp_path),
        redis=redis,
        base=_backbone('base', needs_the_full_prompt=False),
        tuned=_backbone('tuned', needs_the_full_prompt=False),
        trials=3,
    )

    fresh = next(criterion for criterion in comparison.decision().criteria if criterion.name == 'freshness')
    assert fresh.line == (
        'on knowledge that changed after the tune: prompting + RAG 100% [44–100%], short prompt 0% [0–56%], '
        'fine-tune 0% [0–56%]'
    )
    (stale,) = {turn.answer for run in comparison.report.runs_of(comparison.arms[2].cell) for turn in run.turns}
    assert '45' not in stale
