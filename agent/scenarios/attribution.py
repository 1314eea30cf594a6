"""Attribution over the matrix: which factor made the difference, compared one factor at a time.

Two cells that differ in one factor only (the backbone, the prompt, or the ingredients turned off)
tell what that factor does; cells that differ in two say nothing about either. `effects` pairs
every such two cells of a report and, for each rate both measured, gives the difference with its
Newcombe interval (`stats.rate_difference`): `better` or `worse` only when the trials can tell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from tandem.agent.scenarios.results import Cell, CellSummary
from tandem.agent.scenarios.stats import Difference, rate_difference

__all__ = ['FACTORS', 'RATES', 'UNITS', 'Effect', 'Factor', 'difference', 'effects', 'factor_change']

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
