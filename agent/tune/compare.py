"""`tandem tune compare`: is prompting + RAG enough, or does the fine-tune pay off? Decided on your scenarios.

Three arms run the same scenarios through the scenario runner (`agent.scenarios.runner.run_suite`),
one after the other so that their latencies are measured alike:

1. **prompting + RAG**: the base backbone, the full prompt (each scenario's own, or `--full-prompt`),
   nothing turned off;
2. **short prompt**: the base backbone, the short prompt, retrieval off (`rag` ablated);
3. **fine-tune**: the tuned backbone, the short prompt, retrieval off;
4. **few-shot examples** (with `examples=TRAINING_FILE`): the base backbone, the short prompt, retrieval
   off, and the `examples.k` examples of the fine-tune's own training file most like each question in
   the prompt. The fair question is "the same examples in the prompt, or in the weights?"; the
   decision states which wins, with the same statistics, and what each costs in tokens per turn.

The short arms drop retrieval because that is what a fine-tune is for: behaviour and knowledge
baked into the weights instead of sent with every request (`short_rag=True` keeps it). The
decision report gives, per arm, the pass rate, the tool-call accuracy, tokens per turn, latency
and the cost of 1,000 turns, each with its change from arm 1, and ends with a verdict in plain
words.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tandem.agent.core.config import BackboneConfig
from tandem.agent.core.errors import TandemError
from tandem.agent.scenarios.attribution import (
    RATES,
    UNITS,
    attribution_row,
    consistency_criterion,
    cost_criterion,
    data_criterion,
    difference,
    latency_criterion,
    rate_interval,
)
from tandem.agent.scenarios.decision import AttributionRow, Confidence, Criterion, Decision
from tandem.agent.scenarios.stats import Difference, wilson

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tandem.agent.backbones.base import Backbone
    from tandem.agent.core.config import Settings
    from tandem.agent.scenarios.results import Cell, CellSummary, ScenarioRun, SuiteReport
    from tandem.agent.scenarios.schema import Scenario

__all__ = [
    'ARM_LABELS',
    'FEW_SHOT_LABEL',
    'RECOMMENDATIONS',
    'Arm',
    'Choice',
    'Comparison',
    'compare',
    'comparison_of',
    'curve_tunes',
    'decide_arms',
    'render_markdown',
    'verdict',
]

ARM_LABELS = ('prompting + RAG', 'short prompt', 'fine-tune')
FEW_SHOT_LABEL = 'few-shot examples'
FRESHNESS_TAG = 'freshness'
"""Scenarios whose documents hold what changed after the tune: the freshness criterion's runs."""
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
    prices: dict[str, str] = field(default_factory=dict[str, str])
    """Per backbone, the prices its costs assume and where they come from."""
    training_cost_usd: float | None = None
    """What training the fine-tune cost (its backbone's `training_cost_usd`)."""
    amortize_months: int = 12
    configs: dict[str, BackboneConfig] = field(default_factory=dict[str, BackboneConfig])
    """The configs of the tuned backbone and the other tunes on its learning curve."""
    curve_cells: tuple[CellSummary, ...] = ()
    """Other tunes of the same base model (other numbers of examples), each run as the tuned arm is."""
    few_shot: Arm | None = None
    """Arm 4: the base backbone with the short prompt and retrieved examples from the training file."""
    examples_source: str = ''
    """The training file the few-shot arm's examples come from, and how many it holds."""

    @property
    def all_arms(self) -> tuple[Arm, ...]:
        """The three arms, and the few-shot arm when it ran."""
        return (*self.arms, self.few_shot) if self.few_shot is not None else self.arms

    def break_even(self) -> str:
        """The training cost amortized, and the monthly volume from which the fine-tune is the cheaper choice."""
        prompting, _, tuned = self.arms
        mine, theirs = _per_turn(tuned), _per_turn(prompting)
        if mine is None or theirs is None:
            return 'break-even unknown: a price is missing'
        if self.training_cost_usd is None:
            return (
                f'break-even unknown: set training_cost_usd on [backbones.{self.tuned}] (tandem tune status sets it '
                'for the tunes it registers)'
            )
        saving = theirs - mine
        monthly = self.training_cost_usd / self.amortize_months
        paid = f'training ${self.training_cost_usd:,.2f}, amortized over {self.amortize_months} months'
        if saving <= 0:
            return f'{paid}: the fine-tune costs as much or more per turn, so it never pays its training back'
        return f'{paid} (${monthly:,.2f} a month): the fine-tune is cheaper above {math.ceil(monthly / saving):,} turns a month'

    @property
    def verdict(self) -> str:
        """The decision in plain words: one sentence, and one more on the few-shot arm when it ran."""
        return '. '.join(self._decided()[2])

    def _decided(self) -> tuple[Choice, Confidence, list[str]]:
        """The choice, its confidence and the sentences saying why: the three arms', then the few-shot arm's."""
        choice, confidence, sentence = decide_arms(*self.arms)
        if self.few_shot is None:
            return choice, confidence, [sentence]
        choice, confidence, against = _against_examples(choice, confidence, self.arms[2], self.few_shot)
        return choice, confidence, [sentence, against]

    @property
    def decided_report(self) -> SuiteReport:
        """The runs with this comparison's decision: what `--report DIR` writes as JSON and HTML."""
        return self.report.model_copy(update={'decision': self.decision()})

    def decision(self) -> Decision:
        """The card at the top of the decision report: the choice, its confidence, a line per criterion,
        and each step's effect, named by the factor it changes."""
        choice, confidence, sentences = self._decided()
        why = ' '.join(f'{sentence[0].upper()}{sentence[1:]}.' for sentence in sentences)
        summaries = [arm.summary for arm in self.all_arms]
        data, curve = data_criterion([self.arms[2].summary, *self.curve_cells], self.configs)
        labels = [arm.label for arm in self.all_arms]
        quality = '; '.join(
            f'{arm.label}: pass rate {_with_interval(arm, "pass rate")}'
            + (
                f', tool-call accuracy {_with_interval(arm, "tool-call accuracy")}'
                if arm.tool_accuracy is not None
                else ''
            )
            + (f', format {_with_interval(arm, "format compliance")}' if arm.format_compliance is not None else '')
            for arm in self.all_arms
        )
        return Decision(
            recommendation=RECOMMENDATIONS[choice],
            confidence=confidence,
            why=why,
            criteria=[
                Criterion(name='quality', line=quality),
                consistency_criterion(summaries, labels),
                _with_prices(cost_criterion(summaries, labels), self),
                latency_criterion(summaries, labels),
                self._freshness(),
                data,
                self._examples(),
            ],
            attribution=self._steps(),
            curve=curve,
        )

    def _freshness(self) -> Criterion:
        """Pass rates on the scenarios tagged `freshness`: their documents say what changed after the tune,
        so an arm without retrieval answers from what the model learned before."""
        rates: list[str] = []
        for arm in self.all_arms:
            runs = [run for run in self.report.runs_of(arm.cell) if FRESHNESS_TAG in run.tags]
            interval = wilson(sum(run.status == 'passed' for run in runs), len(runs))
            if interval is not None:
                rates.append(f'{arm.label} {interval.percent()}')
        if not rates:
            return Criterion(
                name='freshness',
                line=f'not measured: tag scenarios whose documents changed after the tune `{FRESHNESS_TAG}`, and '
                'a tune that answers from stale knowledge shows here',
                measured=False,
            )
        return Criterion(name='freshness', line=f'on knowledge that changed after the tune: {", ".join(rates)}')

    def _examples(self) -> Criterion:
        """The same examples in the prompt (arm 4) or in the weights (arm 3): which wins, and the tokens each costs."""
        few_shot, tuned = self.few_shot, self.arms[2]
        if few_shot is None:
            return Criterion(
                name='examples',
                line='not measured: pass --examples TRAIN.jsonl (the file the fine-tune trained on), and the base '
                'model runs with the same examples in the prompt',
                measured=False,
            )
        found = _tune_vs_examples(tuned, few_shot)
        tokens = (
            f'tokens per turn: {few_shot.label} {few_shot.tokens_per_turn:,.0f}, '
            f'{tuned.label} {tuned.tokens_per_turn:,.0f}'
        )
        if found is None:
            return Criterion(name='examples', line=f'{self.examples_source}: no rate measured in both arms; {tokens}')
        rate, measured = found
        reading = {
            'better': f'the fine-tune beats few-shot prompting by {measured.describe(UNITS[rate])}',
            'worse': f'few-shot prompting beats the fine-tune by {-measured.points} pp '
            f'[{-measured.delta.high * 100:+.0f}, {-measured.delta.low * 100:+.0f}]',
            'none': f'no detectable difference ({measured.describe(UNITS[rate])})',
        }[measured.call]
        line = (
            f'{self.examples_source}, in the prompt or in the weights: {rate} {few_shot.label} '
            f'{_with_interval(few_shot, rate)}, {tuned.label} {_with_interval(tuned, rate)}: {reading}; {tokens}'
        )
        return Criterion(name='examples', line=line)

    def _steps(self) -> list[AttributionRow]:
        """Arm 1 → 2 (the prompt, and RAG unless kept) and arm 2 → 3 (the backbone), per rate; with the
        few-shot arm, arm 2 → 4 (examples in the prompt) and arm 4 → 3 (the examples moved into the weights)."""
        prompting, short, tuned = self.arms
        changed = 'prompt and ingredients' if short.cell.ablation != prompting.cell.ablation else 'prompt'
        steps = [
            (
                changed,
                f'{prompting.cell.prompt or "scenario prompt"} · {prompting.cell.ablation_label} → '
                f'{short.cell.prompt} · {short.cell.ablation_label}',
                prompting.cell.backbone,
                prompting,
                short,
            ),
            (
                'backbone',
                f'{short.cell.backbone} → {tuned.cell.backbone}',
                f'{short.cell.prompt} · {short.cell.ablation_label}',
                short,
                tuned,
            ),
        ]
        if self.few_shot is not None:
            few_shot = self.few_shot
            held = f'{short.cell.prompt} · {short.cell.ablation_label}'
            steps += [
                ('examples in the prompt', 'none → retrieved examples', short.cell.backbone, short, few_shot),
                (
                    'examples: prompt → weights',
                    f'{few_shot.cell.backbone} + examples → {tuned.cell.backbone}',
                    held,
                    few_shot,
                    tuned,
                ),
            ]
        rows: list[AttributionRow] = []
        for factor, change, held, before, after in steps:
            for rate in RATES:
                row = attribution_row(factor, change, held, before.summary, after.summary, rate)
                if row is not None:
                    rows.append(row)
        return rows

    def as_dict(self) -> dict[str, Any]:
        """The numbers and the verdict, as JSON-ready data."""
        baseline = self.arms[0]
        return {
            'base': self.base,
            'tuned': self.tuned,
            'examples': self.examples_source or None,
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
                    'intervals': _intervals(arm),
                    'differences': None if arm is baseline else _differences(arm, baseline),
                }
                for arm in self.all_arms
            ],
            'verdict': self.verdict,
            'prices': self.prices,
            'break_even': self.break_even(),
            'decision': self.decision().model_dump(mode='json'),
        }


def _per_turn(arm: Arm) -> float | None:
    summary = arm.summary
    return None if summary.cost_usd is None or not summary.turns else summary.cost_usd / summary.turns


def _with_prices(criterion: Criterion, comparison: Comparison) -> Criterion:
    """The cost line, with the prices it assumes and the fine-tune's break-even volume."""
    assumed = '; '.join(f'{name}: {source}' for name, source in comparison.prices.items())
    line = criterion.line + (f'. Prices assumed: {assumed}' if assumed else '') + f'. {comparison.break_even()}'
    return criterion.model_copy(update={'line': line})


def priced(backbone: Backbone) -> tuple[Backbone, str]:
    """The backbone with a price to cost its turns, and where that price comes from.

    A fine-tuned OpenAI model (`ft:...`) with no price in its config gets OpenAI's rates for fine-tunes
    of its base model (`agent.tune.pricing`): pydantic-ai's price table does not know tuned models.
    """
    from tandem.agent.tune.pricing import PRICES_CHECKED, price_for

    config = backbone.config
    if config.input_price_per_mtok is not None and config.output_price_per_mtok is not None:
        return backbone, (
            f'${config.input_price_per_mtok:g} in, ${config.output_price_per_mtok:g} out per Mtok (its config)'
        )
    row = price_for(config.model) if 'ft:' in config.model else None
    if row is None:
        return backbone, "pydantic-ai's price table (genai-prices), where it knows the model"
    update = {'input_price_per_mtok': row.input_per_mtok, 'output_price_per_mtok': row.output_per_mtok}
    source = (
        f"${row.input_per_mtok:g} in, ${row.output_per_mtok:g} out per Mtok: OpenAI's rates for fine-tuned "
        f'{row.model} (checked {PRICES_CHECKED}; set input_price_per_mtok and output_price_per_mtok to override)'
    )
    return replace(backbone, config=config.model_copy(update=update)), source


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


def _intervals(arm: Arm) -> dict[str, Any]:
    """Each rate's and measure's 95% interval, as JSON."""
    summary = arm.summary
    named = {
        'pass_rate': summary.pass_rate_ci,
        'tool_accuracy': summary.tool_accuracy_ci,
        'format_compliance': summary.format_compliance_ci,
        'tokens_per_turn': summary.tokens_per_turn_ci,
        'latency_p50_s': summary.latency_p50_ci,
        'latency_p95_s': summary.latency_p95_ci,
        'cost_per_turn_usd': summary.cost_per_turn_ci,
        'answer_agreement': summary.answer_agreement,
        'normalized_agreement': summary.normalized_agreement,
        'tool_agreement': summary.tool_agreement,
    }
    return {name: None if interval is None else interval.model_dump() for name, interval in named.items()}


def _differences(arm: Arm, baseline: Arm) -> dict[str, Any]:
    """Each rate's difference from the baseline, with its interval and whether the trials can tell."""
    found: dict[str, Any] = {}
    for rate in RATES:
        measured = difference(arm.summary, baseline.summary, rate)
        found[rate.replace(' ', '_').replace('-', '_')] = None if measured is None else measured.model_dump()
    return found


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# -- the verdict --------------------------------------------------------------------------------------


def _step(prompting: Arm, short: Arm) -> str:
    """What arm 2 changes from arm 1, in words: `the short prompt without RAG`."""
    words = 'the short prompt' if short.cell.prompt != prompting.cell.prompt else 'the same prompt'
    if 'rag' in short.cell.ablation and 'rag' not in prompting.cell.ablation:
        words += ' without RAG'
    return words


def _tokens_differ(arm: Arm, baseline: Arm) -> bool:
    """Whether the two arms' tokens per turn differ beyond noise: their bootstrap intervals do not overlap."""
    mine, theirs = arm.summary.tokens_per_turn_ci, baseline.summary.tokens_per_turn_ci
    if mine is None or theirs is None:
        return arm.tokens_per_turn != baseline.tokens_per_turn
    return mine.high < theirs.low or theirs.high < mine.low


def _savings(arm: Arm, baseline: Arm) -> str:
    """`saves 38% tokens and 41% of the cost per 1,000 turns`, or `uses 12% more tokens`, or ``."""
    tokens = _relative(arm.tokens_per_turn, baseline.tokens_per_turn)
    cost = _relative(arm.cost_per_1k_turns, baseline.cost_per_1k_turns)
    if tokens is None or abs(tokens) < _NOTABLE_SAVING or not _tokens_differ(arm, baseline):
        return ''
    if tokens < 0:
        text = f'saves {-tokens:.0%} tokens'
        if cost is not None and cost < -_NOTABLE_SAVING:
            text += f' and {-cost:.0%} of the cost per 1,000 turns'
        return text
    return f'uses {tokens:.0%} more tokens'


def _rate(arm: Arm) -> str:
    return f'{arm.pass_rate:.0%}'


def _percent_of(arm: Arm, rate: str) -> str:
    interval = rate_interval(arm.summary, rate)
    return '—' if interval is None else f'{interval.value:.0%}'


def _first_detectable(prompting: Arm, short: Arm, tuned: Arm) -> tuple[str, Difference, Difference, Difference] | None:
    """The first rate (pass rate, tool-call accuracy, format compliance) on which some step makes a
    difference the trials can tell: `(rate, arm 1 → 2, arm 2 → 3, arm 1 → 3)`."""
    for rate in RATES:
        first = difference(short.summary, prompting.summary, rate)
        second = difference(tuned.summary, short.summary, rate)
        whole = difference(tuned.summary, prompting.summary, rate)
        if first is None or second is None or whole is None:
            continue
        if any(step.call != 'none' for step in (first, second, whole)):
            return rate, first, second, whole
    return None


def _undetected(prompting: Arm, short: Arm, tuned: Arm) -> str:
    """`no detectable difference at 20 runs; about 600 would tell 5 pp` for the largest difference the
    trials cannot tell, or `` when the arms measured exactly alike."""
    candidates = [
        (measured, rate)
        for rate in RATES
        for arm in (short, tuned)
        if (measured := difference(arm.summary, prompting.summary, rate)) is not None and measured.points
    ]
    if not candidates:
        return ''
    largest, rate = max(candidates, key=lambda found: abs(found[0].delta.value))
    return f'{largest.describe(UNITS[rate])} in {rate}'


def _attribution(
    rate: str, step: str, arms: tuple[Arm, Arm, Arm], first: Difference, second: Difference, whole: Difference
) -> str:
    """`the short prompt without RAG costs 5 points of tool-call accuracy (63% → 58%); the fine-tune
    recovers none of it (58%)`: each step's effect, named by the factor that changed."""
    prompting, short, tuned = (_percent_of(arm, rate) for arm in arms)
    if first.call == 'worse':
        lost = f'{step} costs {-first.points} points of {rate} ({prompting} → {short})'
        if second.call == 'better':
            if whole.call == 'worse':
                return f'{lost}; the fine-tune recovers {second.points} of them ({tuned})'
            if whole.call == 'better':
                return f'{lost}; the fine-tune more than recovers it ({tuned})'
            return f'{lost}; the fine-tune recovers all of it ({tuned})'
        if second.call == 'worse':
            return f'{lost}; the fine-tune loses {-second.points} more ({tuned})'
        return f'{lost}; the fine-tune recovers none of it ({tuned})'
    if first.call == 'better':
        gained = f'{step} gains {first.points} points of {rate} ({prompting} → {short})'
        if second.call == 'better':
            return f'{gained}; the fine-tune adds {second.points} more ({tuned})'
        if second.call == 'worse':
            return f'{gained}; the fine-tune loses {-second.points} of them ({tuned})'
        return f'{gained}; the fine-tune changes nothing detectable ({tuned})'
    same = f'{step} makes no detectable difference to {rate} ({prompting} → {short})'
    if second.call == 'better':
        return f'{same}; the fine-tune gains {second.points} points ({short} → {tuned})'
    if second.call == 'worse':
        return f'{same}; the fine-tune costs {-second.points} points ({short} → {tuned})'
    return f'{same}, nor does the fine-tune on its own ({tuned})'


Choice = Literal['prompting', 'short', 'fine-tune', 'few-shot', 'undecided']

RECOMMENDATIONS: dict[Choice, str] = {
    'prompting': 'keep prompting + RAG',
    'short': 'use the short prompt: the fine-tune adds nothing',
    'fine-tune': 'use the fine-tune',
    'few-shot': 'use the base model with few-shot examples: they beat the fine-tune on the same data',
    'undecided': 'run more trials before deciding',
}


def _tune_vs_examples(tuned: Arm, few_shot: Arm) -> tuple[str, Difference] | None:
    """`tuned - few_shot` on the first rate where the trials tell a difference, else on the first measured."""
    measured = [
        (rate, found) for rate in RATES if (found := difference(tuned.summary, few_shot.summary, rate)) is not None
    ]
    return next((pair for pair in measured if pair[1].call != 'none'), measured[0] if measured else None)


def _against_examples(
    choice: Choice, confidence: Confidence, tuned: Arm, few_shot: Arm
) -> tuple[Choice, Confidence, str]:
    """The choice, confidence and a sentence once the fine-tune has met few-shot prompting on its own data.

    Few-shot examples that beat the fine-tune detectably win whatever the three arms said; otherwise the
    three arms' choice stands, and the sentence says what the examples cost or save.
    """
    found = _tune_vs_examples(tuned, few_shot)
    cost = f' ({few_shot.tokens_per_turn:,.0f} tokens per turn against {tuned.tokens_per_turn:,.0f})'
    if found is None:
        return choice, confidence, f'few-shot prompting on the same examples measured no rate the fine-tune did{cost}'
    rate, measured = found
    if measured.call == 'worse':
        return (
            'few-shot',
            'high',
            f'the base model with few-shot examples from the same training data beats the fine-tune by '
            f'{-measured.points} points of {rate} ({_percent_of(few_shot, rate)} against {_percent_of(tuned, rate)}){cost}',
        )
    if measured.call == 'better':
        return (
            choice,
            confidence,
            f'the fine-tune beats few-shot prompting on the same examples by {measured.points} points of {rate} '
            f'({_percent_of(tuned, rate)} against {_percent_of(few_shot, rate)}){cost}',
        )
    return (
        choice,
        confidence,
        f'few-shot prompting on the same examples does as well as the fine-tune on {rate} '
        f'({measured.describe(UNITS[rate])}){cost}',
    )


def decide_arms(prompting: Arm, short: Arm, tuned: Arm) -> tuple[Choice, Confidence, str]:
    """The choice, how sure it is (`high` when it rests on a difference the trials can tell), and the
    verdict in plain words, naming the factor behind each difference."""
    if prompting.summary.scenarios == 0:
        return 'undecided', 'low', 'no scenario ran, so there is nothing to decide'
    if prompting.pass_rate == 1:
        lead = 'prompting + RAG already passes these scenarios'
    elif prompting.pass_rate == 0:
        lead = 'prompting + RAG passes none of these scenarios'
    else:
        lead = f'prompting + RAG passes {_rate(prompting)} of these scenarios'
    step = _step(prompting, short)
    saving = _savings(tuned, prompting)
    found = _first_detectable(prompting, short, tuned)
    if found is None:
        noise = _undetected(prompting, short, tuned)
        if noise:
            return (
                'undecided',
                'low',
                f'{lead}; neither {step} nor the fine-tune makes a difference these trials can tell ({noise}): '
                'run more trials (-n) before deciding',
            )
        short_saving = _savings(short, prompting)
        extra = f' and {short_saving}' if short_saving.startswith('saves') else ''
        choice: Choice = 'short' if extra else 'prompting'
        return choice, 'medium', f'{lead}; {step} does as well{extra}, so the fine-tune adds nothing here'
    rate, first, second, whole = found
    story = _attribution(rate, step, (prompting, short, tuned), first, second, whole)
    if whole.call == 'better':
        return (
            'fine-tune',
            'high',
            f'{lead}; {story}' + (f' and {saving}' if saving.startswith('saves') else '') + ': it pays off',
        )
    if whole.call == 'worse':
        return 'prompting', 'high', f'{lead}; {story}: keep prompting + RAG, or tune on more (or better) examples'
    quality = 'equal quality' if not whole.points else f'no detectable loss ({whole.describe(UNITS[rate])})'
    sure: Confidence = 'medium' if not whole.points else 'low'
    if saving.startswith('saves'):
        return 'fine-tune', sure, f'{lead}; {story} and {saving} at {quality}'
    if saving:
        return 'prompting', sure, f'{lead}; {story} but {saving}: keep prompting + RAG'
    return 'prompting', sure, f'{lead}; {story} at about the same cost: keep prompting + RAG, which is easier to change'


def verdict(prompting: Arm, short: Arm, tuned: Arm) -> str:
    """The decision in plain words, naming the factor behind each difference and calling a difference only
    when the trials can tell, e.g. `prompting + RAG passes 80% of these scenarios; the short prompt without
    RAG costs 5 points of tool-call accuracy (63% → 58%); the fine-tune recovers none of it (58%): keep
    prompting + RAG, or tune on more (or better) examples`."""
    return decide_arms(prompting, short, tuned)[2]


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
    """The comparison of a report holding the three arms' cells in arm order, and maybe the few-shot arm's.

    Raises:
        TandemError: The report does not hold three or four cells.
    """
    if len(report.cells) not in (3, 4):
        raise TandemError(f'a comparison needs the three arms; this report has {len(report.cells)} cell(s).')
    first, second, third = (Arm(label, summary) for label, summary in zip(ARM_LABELS, report.cells[:3], strict=True))
    few_shot = Arm(FEW_SHOT_LABEL, report.cells[3]) if len(report.cells) == 4 else None
    return Comparison(base=base, tuned=tuned, report=report, arms=(first, second, third), few_shot=few_shot)


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
    trials: int = 1,
    judge: Backbone | None = None,
    on_run: Callable[[ScenarioRun], None] | None = None,
    curve: Sequence[Backbone] = (),
    examples: Path | None = None,
) -> Comparison:
    """Run the three arms on `scenarios` and compare them (see the module docs).

    `curve`: other tunes of the tuned backbone's base model, trained on other numbers of examples
    (`training_examples`), each run as the tuned arm is, for the learning curve of the data criterion.
    `examples`: the fine-tune's training file; its examples go into an example set of the settings'
    tenant (named for the file's content, so a second comparison reuses it), and a fourth arm runs
    the base backbone with the short prompt and the `examples.k` of them most like each question.

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
    base, base_price = priced(base)
    tuned, tuned_price = priced(tuned)
    library = PromptLibrary.default(settings.prompts_dir)
    short_ref = library.get(short_prompt).ref
    full_ref = library.get(full_prompt).ref if full_prompt is not None else None
    cells = _arm_cells(base.name, tuned.name, full_ref, short_ref, short_rag)
    source = ''
    if examples is not None:
        set_name, source = await _training_examples(examples, settings=settings, redis=redis)
        cells.append(cells[1].model_copy(update={'examples': set_name}))
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
            examples=cell.examples,
            concurrency=concurrency,
            trials=trials,
            judge=judge,
            on_run=on_run,
        )
        started_at = started_at or part.started_at
        mode = part.mode
        runs += part.runs
    assert started_at is not None
    report = SuiteReport.of(cells, runs, started_at=started_at, duration_s=time.perf_counter() - started, mode=mode)
    curve_cells: tuple[CellSummary, ...] = ()
    if curve:
        points = await run_suite(
            scenarios,
            settings=settings,
            redis=redis,
            backbones=[priced(other)[0] for other in curve],
            prompts=[cells[2].prompt],
            ablations=[cells[2].ablation],
            concurrency=concurrency,
            trials=trials,
            judge=judge,
            on_run=on_run,
        )
        curve_cells = tuple(points.cells)
    return replace(
        comparison_of(report, base.name, tuned.name),
        prices={base.name: base_price, tuned.name: tuned_price},
        training_cost_usd=tuned.config.training_cost_usd,
        configs={backbone.name: backbone.config for backbone in (tuned, *curve)},
        curve_cells=curve_cells,
        examples_source=source,
    )


async def _training_examples(path: Path, *, settings: Settings, redis: Redis) -> tuple[str, str]:
    """Load a training file into an example set of the settings' tenant: `(set name, "FILE (N examples)")`.

    Raises:
        TandemError: The file cannot be read or holds no valid example.
    """
    import hashlib

    from tandem.agent.tune.examples import read_examples
    from tandem.memory.examples import ExampleSet
    from tandem.memory.knowledge.embeddings import make_embedder

    found = read_examples(path)
    if not found.examples:
        reasons = '; '.join(f'{where}: {reason}' for where, reason in found.skipped[:3])
        raise TandemError(f'--examples {path}: no valid example in it{f" ({reasons})" if reasons else ""}.')
    digest = hashlib.sha256(''.join(example.id for example in found.examples).encode()).hexdigest()[:12]
    name = f'train-{digest}'
    tenant = settings.examples.tenant or settings.tenant
    target = ExampleSet(redis, tenant=tenant, name=name)
    await target.add(found.examples, config=settings.knowledge, embedder=make_embedder(settings.knowledge))
    return name, f'{path.name} ({len(found.examples):,} examples, {settings.examples.k} a turn)'


def curve_tunes(settings: Settings, tuned: Backbone) -> list[str]:
    """The configured tunes on `tuned`'s learning curve: the same base model, other numbers of examples."""
    mine = tuned.config
    if mine.kind != 'fine-tuned' or mine.base_model is None or mine.training_examples is None:
        return []
    sizes = {mine.training_examples}
    found: list[str] = []
    for name, config in settings.backbones.items():
        size = config.training_examples
        if (
            config.kind == 'fine-tuned'
            and config.base_model == mine.base_model
            and size is not None
            and size not in sizes
        ):
            sizes.add(size)
            found.append(name)
    return found


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


def _points(arm: Arm, base: Arm, rate: str) -> str:
    """`-50 pp [-65, -33]` when the trials tell a difference, `-5 pp (n.s.)` when they cannot, `±0 pp`."""
    measured = difference(arm.summary, base.summary, rate)
    if measured is None:
        return '—'
    if measured.call != 'none':
        return measured.describe()
    return f'{measured.points:+d} pp (n.s.)' if measured.points else '±0 pp'


def _with_interval(arm: Arm, rate: str) -> str:
    """`63% [60–66%]`, with `(40/40)` for the pass rate."""
    interval = rate_interval(arm.summary, rate)
    if interval is None:
        return '—'
    summary = arm.summary
    return interval.percent() + (f' ({summary.passed}/{summary.scenarios})' if rate == 'pass rate' else '')


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
    """`[metric, arm 1, arm 2, Δ, arm 3, Δ]` rows (and `arm 4, Δ` with the few-shot arm), as the terminal
    and Markdown reports show them."""
    one, two, three = comparison.arms
    four = comparison.few_shot

    def row(name: str, show: Callable[[Arm], str], delta: Callable[[Arm, Arm], str]) -> list[str]:
        shown = [name, show(one), show(two), delta(two, one), show(three), delta(three, one)]
        return shown + ([show(four), delta(four, one)] if four is not None else [])

    return [
        row(
            'pass rate',
            lambda arm: _with_interval(arm, 'pass rate'),
            lambda arm, base: _points(arm, base, 'pass rate'),
        ),
        row(
            'tool-call accuracy',
            lambda arm: _with_interval(arm, 'tool-call accuracy'),
            lambda arm, base: _points(arm, base, 'tool-call accuracy'),
        ),
        *(
            [
                row(
                    'format compliance',
                    lambda arm: _with_interval(arm, 'format compliance'),
                    lambda arm, base: _points(arm, base, 'format compliance'),
                ),
                row(
                    'output retries per turn',
                    lambda arm: f'{arm.output_retries_per_turn:.2f}',
                    lambda arm, base: _change(arm.output_retries_per_turn, base.output_retries_per_turn),
                ),
            ]
            if any(arm.summary.typed_turns for arm in comparison.all_arms)
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
    headers = [
        'metric',
        *(f'{arm.label}: {arm.cell.label}' for arm in (one, two)),
        'Δ',
        f'{three.label}: {three.cell.label}',
        'Δ',
    ]
    four = comparison.few_shot
    return headers + ([f'{four.label}: {four.cell.label}', 'Δ'] if four is not None else [])


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
        'for rates, percent for the rest. [Brackets]: 95% confidence intervals; `n.s.`: a difference these '
        'trials cannot tell from noise.',
        '',
        '| ' + ' | '.join(headers) + ' |',
        '| ' + ' | '.join(['---'] * len(headers)) + ' |',
    ]
    lines += ['| ' + ' | '.join(row) + ' |' for row in metric_rows(comparison)]
    if comparison.few_shot is not None:
        lines += ['', f'**{FEW_SHOT_LABEL}** shows examples from {comparison.examples_source}.']
    if any(arm.cost_per_1k_turns is None for arm in comparison.all_arms):
        lines += [
            '',
            'Cost is `—` where a backbone has no known price: set `input_price_per_mtok` and '
            '`output_price_per_mtok` on it in the config.',
        ]
    labels = [arm.label for arm in comparison.all_arms]
    lines += ['', '## Scenarios', '', '| scenario | ' + ' | '.join(labels) + ' |', '|' + ' --- |' * (len(labels) + 1)]
    for name in scenarios:
        marks = [
            _scenario_mark(next((run for run in report.runs_of(arm.cell) if run.scenario == name), None))
            for arm in comparison.all_arms
        ]
        lines.append(f'| {name} | ' + ' | '.join(marks) + ' |')
    sentence = comparison.verdict
    lines += ['', f'**Verdict:** {sentence[0].upper()}{sentence[1:]}.', '']
    return '\n'.join(lines)
