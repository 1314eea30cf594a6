"""Attribution over a matrix: only cells that differ in one factor are compared, and the factor is named."""

from __future__ import annotations

from tandem.agent.scenarios.attribution import effects, factor_change
from tandem.agent.scenarios.results import Cell, CellSummary


def _summary(cell: Cell, passed: int, runs: int = 100) -> CellSummary:
    return CellSummary(
        cell=cell,
        scenarios=runs,
        passed=passed,
        failed=runs - passed,
        errors=0,
        tool_checks=0,
        tool_checks_passed=0,
        turns=runs,
        total_tokens=0,
        cost_usd=None,
        latency_p50_s=0,
        latency_p95_s=0,
        latency_total_s=0,
    )


FULL = Cell(backbone='base', prompt='assistant@1')
NO_RAG = Cell(backbone='base', prompt='assistant@1', ablation=('rag',))
TUNED_NO_RAG = Cell(backbone='tuned', prompt='assistant@1', ablation=('rag',))
SHORT_TUNED = Cell(backbone='tuned', prompt='short@1', ablation=('rag',))


def test_only_cells_differing_in_one_factor_are_compared() -> None:
    assert factor_change(FULL, NO_RAG) == ('ingredients', 'full', '-rag')
    assert factor_change(NO_RAG, TUNED_NO_RAG) == ('backbone', 'base', 'tuned')
    assert factor_change(TUNED_NO_RAG, SHORT_TUNED) == ('prompt', 'assistant@1', 'short@1')
    assert factor_change(FULL, TUNED_NO_RAG) is None  # two factors: neither can take the blame
    assert factor_change(FULL, FULL) is None


def test_each_effect_names_its_factor_what_was_held_and_whether_the_trials_tell() -> None:
    cells = [_summary(FULL, 90), _summary(NO_RAG, 60), _summary(TUNED_NO_RAG, 62)]
    found = effects(cells)
    assert [(effect.factor, effect.rate, effect.difference.call) for effect in found] == [
        ('ingredients', 'pass rate', 'worse'),
        ('backbone', 'pass rate', 'none'),
    ]
    assert found[0].describe() == 'ingredients full → -rag (base · assistant@1): pass rate -30 pp [-41, -18]'
    assert (
        found[1]
        .describe()
        .startswith(
            'backbone base → tuned (assistant@1 · -rag): pass rate no detectable difference at 100 runs; about '
        )
    )
    assert found[1].describe().endswith(' would tell 2 pp')
