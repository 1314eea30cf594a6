"""`tandem tune compare`: is prompting + RAG enough, or does the fine-tune pay off? Decided on your scenarios.

Three arms run the same scenarios through the scenario runner (`agent.scenarios.runner.run_suite`),
one after the other so that their latencies are measured alike:

1. **prompting + RAG**: the base backbone, the full prompt (each scenario's own, or `--full-prompt`),
   nothing turned off;
2. **short prompt**: the base backbone, the short prompt, retrieval off (`rag` ablated);
3. **fine-tune**: the tuned backbone, the short prompt, retrieval off.

The short arms drop retrieval because that is what a fine-tune is for: behaviour and knowledge
baked into the weights instead of sent with every request (`short_rag=True` keeps it). The
decision report gives, per arm, the pass rate, the tool-call accuracy, tokens per turn, latency
and the cost of 1,000 turns, each with its change from arm 1, and ends with a verdict in plain
words.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from tandem.agent.core.errors import TandemError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tandem.agent.backbones.base import Backbone
    from tandem.agent.core.config import Settings
    from tandem.agent.scenarios.results import Cell, CellSummary, ScenarioRun, SuiteReport
    from tandem.agent.scenarios.schema import Scenario

__all__ = ['ARM_LABELS', 'Arm', 'Comparison', 'compare', 'comparison_of', 'render_markdown', 'verdict']

ARM_LABELS = ('prompting + RAG', 'short prompt', 'fine-tune')
_EQUAL_ACCURACY = 0.005
_NOTABLE_SAVING = 0.05


@dataclass(frozen=True)
class Arm:
    """One arm's numbers."""

    label: str
    summary: CellSummary

    @property
    def cell(self) -> Cell:
        """The matrix cell the arm ran as."""
        return self.summary.cell

    @property
    def pass_rate(self) -> float:
        """Share of scenarios passed."""
        return self.summary.pass_rate

    @property
    def tool_accuracy(self) -> float | None:
        """Share of tool checks that held; `None` without any."""
        return self.summary.tool_accuracy

    @property
    def format_compliance(self) -> float | None:
        """Share of typed answers that fit their schema: the consistency criterion; `None` without any."""
        return self.summary.format_compliance

    @property
    def output_retries_per_turn(self) -> float:
        """Mean retries of answers that did not validate, per turn: what keeping the format costs."""
        return self.summary.output_retries_per_turn

    @property
    def tokens_per_turn(self) -> float:
        """Mean tokens (input and output) of a turn."""
        return self.summary.tokens_per_turn

    @property
    def latency_s(self) -> float:
        """Median latency of a turn."""
        return self.summary.latency_p50_s

    @property
    def cost_per_1k_turns(self) -> float | None:
        """USD for 1,000 turns like these; `None` when a price is unknown."""
        summary = self.summary
        if summary.cost_usd is None or not summary.turns:
            return None
        return summary.cost_usd / summary.turns * 1000


@dataclass(frozen=True)
class Comparison:
    """The three arms, the runs behind them, and the verdict."""

    base: str
    tuned: str
    report: SuiteReport
    arms: tuple[Arm, Arm, Arm]

    @property
    def verdict(self) -> str:
        """The decision, in one plain sentence."""
        return verdict(*self.arms)

    def as_dict(self) -> dict[str, Any]:
        """The numbers and the verdict, as JSON-ready data."""
        baseline = self.arms[0]
        return {
            'base': self.base,
            'tuned': self.tuned,
            'arms': [
                {
                    'label': arm.label,
                    'cell': arm.cell.label,
                    'scenarios': arm.summary.scenarios,
                    'passed': arm.summary.passed,
                    'pass_rate': arm.pass_rate,
                    'tool_accuracy': arm.tool_accuracy,
                    'format_compliance': arm.format_compliance,
                    'output_retries_per_turn': round(arm.output_retries_per_turn, 4),
                    'tokens_per_turn': round(arm.tokens_per_turn, 1),
                    'latency_p50_s': round(arm.latency_s, 4),
                    'cost_per_1k_turns_usd': None if arm.cost_per_1k_turns is None else round(arm.cost_per_1k_turns, 4),
                    'delta': None if arm is baseline else _deltas(arm, baseline),
                }
                for arm in self.arms
            ],
            'verdict': self.verdict,
        }


def _relative(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base - 1


def _deltas(arm: Arm, baseline: Arm) -> dict[str, float | None]:
    accuracy = (
        None
        if arm.tool_accuracy is None or baseline.tool_accuracy is None
        else arm.tool_accuracy - baseline.tool_accuracy
    )
    compliance = (
        None
        if arm.format_compliance is None or baseline.format_compliance is None
        else arm.format_compliance - baseline.format_compliance
    )
    return {
        'pass_rate_pp': round((arm.pass_rate - baseline.pass_rate) * 100, 1),
        'tool_accuracy_pp': None if accuracy is None else round(accuracy * 100, 1),
        'format_compliance_pp': None if compliance is None else round(compliance * 100, 1),
        'tokens_per_turn': _rounded(_relative(arm.tokens_per_turn, baseline.tokens_per_turn)),
        'latency': _rounded(_relative(arm.latency_s, baseline.latency_s)),
        'cost_per_1k_turns': _rounded(_relative(arm.cost_per_1k_turns, baseline.cost_per_1k_turns)),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# -- the verdict --------------------------------------------------------------------------------------


def _edge(arm: Arm, baseline: Arm) -> tuple[str, float, float] | None:
    """The first criterion on which `arm` and `baseline` differ: pass rate, then tool-call accuracy, then
    format compliance (the consistency criterion); `(name, arm's, baseline's)`, or `None` when they are equal."""
    if arm.pass_rate != baseline.pass_rate:
        return 'pass rate', arm.pass_rate, baseline.pass_rate
    for name, mine, theirs in (
        ('tool accuracy', arm.tool_accuracy, baseline.tool_accuracy),
        ('format', arm.format_compliance, baseline.format_compliance),
    ):
        if mine is not None and theirs is not None and abs(mine - theirs) > _EQUAL_ACCURACY:
            return name, mine, theirs
    return None


def _quality(arm: Arm, baseline: Arm) -> Literal['better', 'equal', 'worse']:
    edge = _edge(arm, baseline)
    if edge is None:
        return 'equal'
    return 'better' if edge[1] > edge[2] else 'worse'


_EDGE_WORDS = {
    'tool accuracy': ('makes more accurate tool calls', 'makes less accurate tool calls'),
    'format': ('keeps the answer format more consistently', 'keeps the answer format less consistently'),
}


def _savings(arm: Arm, baseline: Arm) -> str:
    """`saves 38% tokens and 41% cost per 1,000 turns`, or `uses 12% more tokens`, or ``."""
    tokens = _relative(arm.tokens_per_turn, baseline.tokens_per_turn)
    cost = _relative(arm.cost_per_1k_turns, baseline.cost_per_1k_turns)
    if tokens is None or abs(tokens) < _NOTABLE_SAVING:
        return ''
    if tokens < 0:
        text = f'saves {-tokens:.0%} tokens'
        if cost is not None and cost < -_NOTABLE_SAVING:
            text += f' and {-cost:.0%} of the cost per 1,000 turns'
        return text
    return f'uses {tokens:.0%} more tokens'


def _rate(arm: Arm) -> str:
    return f'{arm.pass_rate:.0%}'


def verdict(prompting: Arm, short: Arm, tuned: Arm) -> str:
    """The decision in plain words, e.g. `prompting + RAG already passes these scenarios; the fine-tune
    saves 38% tokens at equal quality`."""
    if prompting.summary.scenarios == 0:
        return 'no scenario ran, so there is nothing to decide'
    if prompting.pass_rate == 1:
        lead = 'prompting + RAG already passes these scenarios'
    elif prompting.pass_rate == 0:
        lead = 'prompting + RAG passes none of these scenarios'
    else:
        lead = f'prompting + RAG passes {_rate(prompting)} of these scenarios'
    tuned_quality = _quality(tuned, prompting)
    tuned_saving = _savings(tuned, prompting)
    short_quality = _quality(short, prompting)
    if short_quality != 'worse' and tuned_quality != 'better':
        saving = _savings(short, prompting)
        extra = f' and {saving}' if saving.startswith('saves') else ''
        return f'{lead}; the short prompt alone does as well{extra}, so the fine-tune adds nothing here'
    if tuned_quality == 'better':
        clause = f'the fine-tune does better ({_rate(tuned)} vs {_rate(prompting)})'
        edge = _edge(tuned, prompting)
        if edge is not None and edge[0] in _EDGE_WORDS:
            clause = f'the fine-tune {_EDGE_WORDS[edge[0]][0]} ({edge[1]:.0%} vs {edge[2]:.0%})'
        return (
            f'{lead}; {clause}' + (f' and {tuned_saving}' if tuned_saving.startswith('saves') else '') + ': it pays off'
        )
    if tuned_quality == 'equal':
        if tuned_saving.startswith('saves'):
            return f'{lead}; the fine-tune {tuned_saving} at equal quality'
        if tuned_saving:
            return f'{lead}; the fine-tune matches it but {tuned_saving}: keep prompting + RAG'
        return (
            f'{lead}; the fine-tune matches it at about the same cost: keep prompting + RAG, which is easier to change'
        )
    shortfall = f'the fine-tune falls short ({_rate(tuned)} vs {_rate(prompting)})'
    edge = _edge(tuned, prompting)
    if edge is not None and edge[0] in _EDGE_WORDS:
        shortfall = f'the fine-tune {_EDGE_WORDS[edge[0]][1]} ({edge[1]:.0%} vs {edge[2]:.0%})'
    if short.pass_rate < tuned.pass_rate < prompting.pass_rate:
        shortfall += f', though it recovers part of what the short prompt alone loses ({_rate(short)})'
    return f'{lead}; {shortfall}: keep prompting + RAG, or tune on more (or better) examples'


# -- running ------------------------------------------------------------------------------------------


def _arm_cells(base: str, tuned: str, full_prompt: str | None, short_prompt: str, short_rag: bool) -> list[Cell]:
    from tandem.agent.scenarios.results import Cell

    ablation: tuple[str, ...] = () if short_rag else ('rag',)
    return [
        Cell(backbone=base, prompt=full_prompt, ablation=()),
        Cell(backbone=base, prompt=short_prompt, ablation=ablation),
        Cell(backbone=tuned, prompt=short_prompt, ablation=ablation),
    ]


def comparison_of(report: SuiteReport, base: str, tuned: str) -> Comparison:
    """The comparison of a report holding the three arms' cells, in arm order.

    Raises:
        TandemError: The report does not hold three cells.
    """
    if len(report.cells) != 3:
        raise TandemError(f'a comparison needs the three arms; this report has {len(report.cells)} cell(s).')
    first, second, third = (Arm(label, summary) for label, summary in zip(ARM_LABELS, report.cells, strict=True))
    return Comparison(base=base, tuned=tuned, report=report, arms=(first, second, third))


async def compare(
    scenarios: Sequence[Scenario],
    *,
    settings: Settings,
    redis: Redis,
    base: Backbone,
    tuned: Backbone,
    full_prompt: str | None = None,
    short_prompt: str = 'short',
    short_rag: bool = False,
    concurrency: int = 4,
    judge: Backbone | None = None,
    on_run: Callable[[ScenarioRun], None] | None = None,
) -> Comparison:
    """Run the three arms on `scenarios` and compare them (see the module docs).

    Raises:
        TandemError: The two backbones share a name, a prompt does not exist, or no scenario was given.
        ScenarioFileError: A scenario names a prompt, toolset or judge that does not exist.
    """
    from tandem.agent.core.prompts import PromptLibrary
    from tandem.agent.scenarios.results import SuiteReport
    from tandem.agent.scenarios.runner import run_suite

    if not scenarios:
        raise TandemError('no scenarios to compare on: give scenario files or folders.')
    if base.name == tuned.name:
        raise TandemError(f'--base and --tuned are the same backbone ({base.name}): compare two different ones.')
    library = PromptLibrary.default(settings.prompts_dir)
    short_ref = library.get(short_prompt).ref
    full_ref = library.get(full_prompt).ref if full_prompt is not None else None
    cells = _arm_cells(base.name, tuned.name, full_ref, short_ref, short_rag)
    await _warm_up(scenarios[0], settings=settings, redis=redis)
    started_at: datetime | None = None
    mode: Literal['live', 'record', 'replay'] = 'live'
    runs: list[ScenarioRun] = []
    started = time.perf_counter()
    for cell in cells:  # one arm at a time, so latencies are measured under the same load
        part = await run_suite(
            scenarios,
            settings=settings,
            redis=redis,
            backbones=[base if cell.backbone == base.name else tuned],
            prompts=[cell.prompt],
            ablations=[cell.ablation],
            concurrency=concurrency,
            judge=judge,
            on_run=on_run,
        )
        started_at = started_at or part.started_at
        mode = part.mode
        runs += part.runs
    assert started_at is not None
    report = SuiteReport.of(cells, runs, started_at=started_at, duration_s=time.perf_counter() - started, mode=mode)
    return comparison_of(report, base.name, tuned.name)


async def _warm_up(scenario: Scenario, *, settings: Settings, redis: Redis) -> None:
    """Run one scenario on a local stand-in model that answers "ok", and throw the run away.

    The first turn of a process pays one-off costs (schemas built, templates compiled, scripts
    loaded) that would otherwise all land in the first arm's latency. The stand-in costs nothing.
    """
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from tandem.agent.backbones.base import Backbone
    from tandem.agent.core.config import BackboneConfig
    from tandem.agent.scenarios.runner import run_suite

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart('ok')])

    from tandem.agent.scenarios.schema import Expectations

    stand_in = Backbone(name='warm-up', config=BackboneConfig(model='test:warm-up'), model=FunctionModel(answer))
    # Its first turn only, expecting nothing: no judge is ever asked, so no model but the stand-in runs.
    first = scenario.turns[0].model_copy(update={'expect': Expectations()})
    quiet = scenario.model_copy(update={'turns': [first]})
    await run_suite([quiet], settings=settings, redis=redis, backbones=[stand_in], concurrency=1)


# -- the report ---------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return '—' if value is None else f'{value:.0%}'


def _points(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return '—'
    points = round((value - base) * 100)
    return f'{points:+d} pp' if points else '±0 pp'


def _change(value: float | None, base: float | None) -> str:
    change = _relative(value, base)
    if change is None:
        return '—'
    return '±0%' if round(change * 100) == 0 else f'{change:+.0%}'


def _money(value: float | None) -> str:
    if value is None:
        return '—'
    return f'${value:,.2f}' if value >= 1 else f'${value:.4f}'


def _seconds(value: float) -> str:
    return f'{value * 1000:.0f} ms' if value < 1 else f'{value:.2f} s'


def metric_rows(comparison: Comparison) -> list[list[str]]:
    """`[metric, arm 1, arm 2, Δ, arm 3, Δ]` rows, as the terminal and Markdown reports show them."""
    one, two, three = comparison.arms

    def row(name: str, show: Callable[[Arm], str], delta: Callable[[Arm, Arm], str]) -> list[str]:
        return [name, show(one), show(two), delta(two, one), show(three), delta(three, one)]

    return [
        row(
            'pass rate',
            lambda arm: f'{_percent(arm.pass_rate)} ({arm.summary.passed}/{arm.summary.scenarios})',
            lambda arm, base: _points(arm.pass_rate, base.pass_rate),
        ),
        row(
            'tool-call accuracy',
            lambda arm: _percent(arm.tool_accuracy),
            lambda arm, base: _points(arm.tool_accuracy, base.tool_accuracy),
        ),
        *(
            [
                row(
                    'format compliance',
                    lambda arm: _percent(arm.format_compliance),
                    lambda arm, base: _points(arm.format_compliance, base.format_compliance),
                ),
                row(
                    'output retries per turn',
                    lambda arm: f'{arm.output_retries_per_turn:.2f}',
                    lambda arm, base: _change(arm.output_retries_per_turn, base.output_retries_per_turn),
                ),
            ]
            if any(arm.summary.typed_turns for arm in comparison.arms)
            else []
        ),
        row(
            'tokens per turn',
            lambda arm: f'{arm.tokens_per_turn:,.0f}',
            lambda arm, base: _change(arm.tokens_per_turn, base.tokens_per_turn),
        ),
        row(
            'latency (median turn)',
            lambda arm: _seconds(arm.latency_s),
            lambda arm, base: _change(arm.latency_s, base.latency_s),
        ),
        row(
            'cost per 1,000 turns',
            lambda arm: _money(arm.cost_per_1k_turns),
            lambda arm, base: _change(arm.cost_per_1k_turns, base.cost_per_1k_turns),
        ),
    ]


def arm_headers(comparison: Comparison) -> list[str]:
    """The column headers: each arm's label and cell."""
    one, two, three = comparison.arms
    return [
        'metric',
        *(f'{arm.label}: {arm.cell.label}' for arm in (one, two)),
        'Δ',
        f'{three.label}: {three.cell.label}',
        'Δ',
    ]


def _scenario_mark(run: ScenarioRun | None) -> str:
    if run is None:
        return '—'
    if run.status == 'passed':
        return '✓'
    if run.status == 'error':
        return f'error: {run.error or ""}'.replace('|', '\\|')[:120]
    failures = '; '.join(check.describe() for check in run.failures)
    return f'✗ {failures}'.replace('|', '\\|')[:160]


def render_markdown(comparison: Comparison) -> str:
    """The decision report as Markdown, ending with the verdict."""
    report = comparison.report
    scenarios = sorted({run.scenario for run in report.runs})
    headers = arm_headers(comparison)
    lines = [
        f'# Prompting vs fine-tuning: `{comparison.base}` vs `{comparison.tuned}`',
        '',
        f'{len(scenarios)} scenario(s), run {report.started_at:%Y-%m-%d %H:%M} UTC ({report.mode}), '
        f'{report.duration_s:.1f} s in all. Δ is the change from **{ARM_LABELS[0]}**: percentage points '
        'for rates, percent for the rest.',
        '',
        '| ' + ' | '.join(headers) + ' |',
        '| ' + ' | '.join(['---'] * len(headers)) + ' |',
    ]
    lines += ['| ' + ' | '.join(row) + ' |' for row in metric_rows(comparison)]
    if any(arm.cost_per_1k_turns is None for arm in comparison.arms):
        lines += [
            '',
            'Cost is `—` where a backbone has no known price: set `input_price_per_mtok` and '
            '`output_price_per_mtok` on it in the config.',
        ]
    lines += ['', '## Scenarios', '', '| scenario | ' + ' | '.join(ARM_LABELS) + ' |', '| --- | --- | --- | --- |']
    for name in scenarios:
        marks = [
            _scenario_mark(next((run for run in report.runs_of(arm.cell) if run.scenario == name), None))
            for arm in comparison.arms
        ]
        lines.append(f'| {name} | ' + ' | '.join(marks) + ' |')
    sentence = comparison.verdict
    lines += ['', f'**Verdict:** {sentence[0].upper()}{sentence[1:]}.', '']
    return '\n'.join(lines)
