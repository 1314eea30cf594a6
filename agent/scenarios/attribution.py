"""Attribution over the matrix, and the decision it supports.

Two cells that differ in one factor only (the backbone, the prompt, or the ingredients turned off)
tell what that factor does; cells that differ in two say nothing about either. `effects` pairs
every such two cells of a report and, for each rate both measured, gives the difference with its
Newcombe interval (`stats.rate_difference`): `better` or `worse` only when the trials can tell.

`decide` turns a matrix into the card at the top of its report (`decision.Decision`): the best cell by
quality, how sure that is, a line per criterion, and the attribution table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tandem.agent.core.config import BackboneConfig
from tandem.agent.scenarios.decision import AttributionRow, Confidence, Criterion, CurvePoint, Decision
from tandem.agent.scenarios.results import Cell, CellSummary
from tandem.agent.scenarios.stats import Difference, Interval, rate_difference, wilson

__all__ = [
    'FACTORS',
    'RATES',
    'UNITS',
    'Effect',
    'Factor',
    'attribution_row',
    'attribution_rows',
    'consistency_criterion',
    'cost_criterion',
    'data_criterion',
    'decide',
    'difference',
    'effects',
    'factor_change',
    'latency_criterion',
    'learning_curve',
    'rate_interval',
]

Factor = Literal['backbone', 'prompt', 'ingredients']
FACTORS: tuple[Factor, ...] = ('backbone', 'prompt', 'ingredients')

RATES: dict[str, Callable[[CellSummary], tuple[int, int]]] = {
    'pass rate': lambda summary: (summary.passed, summary.scenarios),
    'tool-call accuracy': lambda summary: (summary.tool_checks_passed, summary.tool_checks),
    'format compliance': lambda summary: (summary.valid_outputs, summary.typed_turns),
}
"""The rates a decision weighs, in order, as `(successes, observations)` of a cell."""

UNITS = {'pass rate': 'runs', 'tool-call accuracy': 'tool checks', 'format compliance': 'typed answers'}
"""What each rate counts, for `no detectable difference at 40 runs`."""


def difference(after: CellSummary, before: CellSummary, rate: str) -> Difference | None:
    """`after - before` on `rate`, with its interval; `None` when either cell measured none of it."""
    count = RATES[rate]
    return rate_difference(count(after), count(before))


def _values(cell: Cell) -> dict[Factor, str]:
    return {'backbone': cell.backbone, 'prompt': cell.prompt or 'scenario prompt', 'ingredients': cell.ablation_label}


def factor_change(before: Cell, after: Cell) -> tuple[Factor, str, str] | None:
    """`(factor, from, to)` when the cells differ in exactly one factor, else `None`."""
    mine, theirs = _values(before), _values(after)
    changed: list[Factor] = [factor for factor in FACTORS if mine[factor] != theirs[factor]]
    if len(changed) != 1:
        return None
    factor = changed[0]
    return factor, mine[factor], theirs[factor]


@dataclass(frozen=True)
class Effect:
    """What changing one factor did to one rate, the other factors held."""

    factor: Factor
    before: CellSummary
    after: CellSummary
    change: tuple[str, str]
    """The factor's value before and after, e.g. `('base', 'support-ft')`."""
    rate: str
    difference: Difference

    @property
    def held(self) -> str:
        """The factors held fixed, e.g. `short@1 · -rag`."""
        values = _values(self.before.cell)
        return ' · '.join(values[factor] for factor in FACTORS if factor != self.factor)

    def describe(self) -> str:
        """`backbone base → tuned (short@1 · -rag): tool-call accuracy +0 pp, no detectable difference at 40 trials`."""
        return (
            f'{self.factor} {self.change[0]} → {self.change[1]} ({self.held}): {self.rate} '
            f'{self.difference.describe(UNITS[self.rate])}'
        )


def effects(cells: Sequence[CellSummary]) -> list[Effect]:
    """Every one-factor comparison in `cells` (earlier cell first, as the matrix orders them), per rate."""
    found: list[Effect] = []
    for index, before in enumerate(cells):
        for after in cells[index + 1 :]:
            change = factor_change(before.cell, after.cell)
            if change is None:
                continue
            factor, old, new = change
            for rate in RATES:
                measured = difference(after, before, rate)
                if measured is not None:
                    found.append(Effect(factor, before, after, (old, new), rate, measured))
    return found


# --- the decision a matrix supports ------------------------------------------------------------------


def rate_interval(summary: CellSummary, rate: str) -> Interval | None:
    """A cell's `rate` with its Wilson interval; `None` when it measured none."""
    return wilson(*RATES[rate](summary))


def attribution_row(
    factor: str, change: str, held: str, before: CellSummary, after: CellSummary, rate: str
) -> AttributionRow | None:
    """One row of an attribution table; `None` when either cell measured none of `rate`."""
    old, new, measured = rate_interval(before, rate), rate_interval(after, rate), difference(after, before, rate)
    if old is None or new is None or measured is None:
        return None
    return AttributionRow(
        factor=factor,
        change=change,
        held=held,
        rate=rate,
        before=old,
        after=new,
        difference=measured.delta,
        call=measured.call,
        reading=measured.describe(UNITS[rate]),
    )


def attribution_rows(cells: Sequence[CellSummary]) -> list[AttributionRow]:
    """Every one-factor comparison of `cells`, as rows."""
    rows: list[AttributionRow] = []
    for effect in effects(cells):
        row = attribution_row(
            effect.factor, ' → '.join(effect.change), effect.held, effect.before, effect.after, effect.rate
        )
        if row is not None:
            rows.append(row)
    return rows


def _rank(summary: CellSummary) -> tuple[float, float, float, float]:
    """Best first: pass rate, tool-call accuracy, format compliance, then fewer tokens."""
    return (
        -summary.pass_rate,
        -(summary.tool_accuracy if summary.tool_accuracy is not None else 0.0),
        -(summary.format_compliance if summary.format_compliance is not None else 0.0),
        summary.tokens_per_turn,
    )


def _seconds(value: float) -> str:
    return f'{value * 1000:.0f} ms' if value < 1 else f'{value:.2f} s'


def _quality(best: CellSummary, others: Sequence[CellSummary]) -> tuple[Criterion, Confidence, str]:
    interval = best.pass_rate_ci
    line = f'{best.cell.label} passes {interval.percent() if interval else "—"}'
    if best.tool_accuracy_ci is not None:
        line += f', tool-call accuracy {best.tool_accuracy_ci.percent()}'
    if not others:
        return Criterion(name='quality', line=line), 'low', 'one cell only: nothing to compare it with'
    beaten = 0
    closest = ''
    for other in others:
        measured = [difference(best, other, rate) for rate in RATES]
        if any(found is not None and found.call == 'better' for found in measured):
            beaten += 1
        elif not closest:
            reading = measured[0].describe(UNITS['pass rate']) if measured[0] is not None else 'not measured'
            closest = f'{other.cell.label} ({reading})'
    if beaten == len(others):
        line += '; better than every other cell beyond noise'
        return Criterion(name='quality', line=line), 'high', 'its quality beats every other cell beyond noise'
    line += f'; not detectably better than {closest}'
    if beaten:
        return (
            Criterion(name='quality', line=line),
            'medium',
            f'it beats {beaten} of {len(others)} other cells beyond noise',
        )
    return Criterion(name='quality', line=line), 'low', 'no cell is detectably better at these trials: run more (-n)'


def consistency_criterion(cells: Sequence[CellSummary], labels: Sequence[str] | None = None) -> Criterion:
    """How often repeated trials agree, per cell; unmeasured with one trial."""
    names = labels or [summary.cell.label for summary in cells]
    parts = [
        f'{name}: same answer {summary.normalized_agreement.percent()}'
        + (f', same tool calls {summary.tool_agreement.percent()}' if summary.tool_agreement is not None else '')
        for name, summary in zip(names, cells, strict=True)
        if summary.normalized_agreement is not None
    ]
    if not parts:
        return Criterion(
            name='consistency',
            line='one trial per scenario: run -n 3 or more to see whether repeated trials agree',
            measured=False,
        )
    return Criterion(name='consistency', line='; '.join(parts))


def cost_criterion(cells: Sequence[CellSummary], labels: Sequence[str] | None = None) -> Criterion:
    """Cost per 1,000 turns per cell, with tokens; unmeasured where no price is known."""
    names = labels or [summary.cell.label for summary in cells]
    parts: list[str] = []
    unpriced: list[str] = []
    for name, summary in zip(names, cells, strict=True):
        per_turn = summary.cost_per_turn_ci
        if per_turn is None:
            unpriced.append(summary.cell.backbone)
            parts.append(f'{name}: {summary.tokens_per_turn:,.0f} tokens/turn, price unknown')
        else:
            parts.append(
                f'{name}: ${per_turn.value * 1000:,.4f} [{per_turn.low * 1000:,.4f}–{per_turn.high * 1000:,.4f}] '
                f'per 1,000 turns ({summary.tokens_per_turn:,.0f} tokens/turn)'
            )
    line = '; '.join(parts)
    if unpriced:
        line += (
            f'. No price is known for {", ".join(sorted(set(unpriced)))}: set input_price_per_mtok and '
            "output_price_per_mtok in the backbone's config"
        )
    return Criterion(name='cost', line=line, measured=not unpriced)


def latency_criterion(cells: Sequence[CellSummary], labels: Sequence[str] | None = None) -> Criterion:
    """Median and p95 latency of a turn, per cell."""
    names = labels or [summary.cell.label for summary in cells]
    return Criterion(
        name='latency',
        line='; '.join(
            f'{name}: p50 {_seconds(summary.latency_p50_s)}, p95 {_seconds(summary.latency_p95_s)}'
            for name, summary in zip(names, cells, strict=True)
        ),
    )


def _curve(cells: Sequence[CellSummary], configs: Mapping[str, BackboneConfig]) -> list[tuple[CurvePoint, CellSummary]]:
    groups: dict[tuple[str | None, str | None, tuple[str, ...]], dict[int, tuple[CurvePoint, CellSummary]]] = {}
    for summary in cells:
        config = configs.get(summary.cell.backbone)
        interval = summary.pass_rate_ci
        if config is None or config.kind != 'fine-tuned' or config.training_examples is None or interval is None:
            continue
        group = groups.setdefault((config.base_model, summary.cell.prompt, summary.cell.ablation), {})
        point = CurvePoint(
            backbone=summary.cell.backbone,
            examples=config.training_examples,
            pass_rate=interval,
            tool_accuracy=summary.tool_accuracy_ci,
        )
        group.setdefault(config.training_examples, (point, summary))
    curves = [group for group in groups.values() if len(group) > 1]
    if not curves:
        return []
    longest = max(curves, key=len)
    return [longest[size] for size in sorted(longest)]


def learning_curve(cells: Sequence[CellSummary], configs: Mapping[str, BackboneConfig]) -> list[CurvePoint]:
    """The longest learning curve in `cells`: tunes of one base model, trained on different numbers of
    examples, in cells alike otherwise (prompt, ingredients), smallest first; `[]` with fewer than two sizes."""
    return [point for point, _ in _curve(cells, configs)]


def data_criterion(
    cells: Sequence[CellSummary], configs: Mapping[str, BackboneConfig]
) -> tuple[Criterion, list[CurvePoint]]:
    """How many examples trained each fine-tune among `cells`, and what the last step of the learning curve bought."""
    tuned = {s.cell.backbone for s in cells if (c := configs.get(s.cell.backbone)) and c.kind == 'fine-tuned'}
    tunes = sorted(tuned, key=lambda name: (configs[name].training_examples or math.inf, name))  # smallest first
    if not tunes:
        return Criterion(name='data', line='no fine-tuned backbone among these cells', measured=False), []
    sizes = [configs[name].training_examples for name in tunes]
    line = '; '.join(
        f'{name}: {size:,} examples' if size is not None else f'{name}: examples not recorded'
        for name, size in zip(tunes, sizes, strict=True)
    )
    found = _curve(cells, configs)
    curve = [point for point, _ in found]
    if found:
        line += '. Learning curve (pass rate): ' + ', '.join(
            f'{point.examples:,} → {point.pass_rate.percent()}' for point in curve
        )
        last = difference(found[-1][1], found[-2][1], 'pass rate')
        step = f'{curve[-2].examples:,} → {curve[-1].examples:,} examples'
        if last is not None:
            reading = last.describe(UNITS['pass rate'])
            line += {
                'better': f'; {step} still gains {reading}: more examples should help',
                'worse': f'; {step} loses {reading}: look at the added examples',
                'none': f'; {step}: {reading}, so more examples may not help',
            }[last.call]
    if None in sizes:
        missing = ', '.join(name for name, size in zip(tunes, sizes, strict=True) if size is None)
        line += (
            f'. For {missing}: set training_examples in its [backbones.NAME] table (tandem tune status sets it for '
            'the tunes it registers)'
        )
    return Criterion(name='data', line=line, measured=None not in sizes), curve


def decide(cells: Sequence[CellSummary], configs: Mapping[str, BackboneConfig] | None = None) -> Decision:
    """The decision a matrix supports: its best cell by quality (then fewer tokens), and how sure that is.

    With the backbones' `configs`, it adds the data criterion and the learning curve (`data_criterion`).
    """
    if not cells or all(summary.scenarios == 0 for summary in cells):
        return Decision(recommendation='nothing ran, so there is nothing to decide', confidence='low', why='no runs')
    ranked = sorted(cells, key=_rank)
    best, others = ranked[0], ranked[1:]
    quality, confidence, why = _quality(best, others)
    criteria = [quality, consistency_criterion(cells), cost_criterion(cells), latency_criterion(cells)]
    curve: list[CurvePoint] = []
    if configs is not None:
        data, curve = data_criterion(cells, configs)
        criteria.append(data)
    return Decision(
        recommendation=f'choose {best.cell.label}' if others else f'{best.cell.label}: the only cell',
        confidence=confidence,
        why=why,
        criteria=criteria,
        attribution=attribution_rows(cells),
        curve=curve,
    )
