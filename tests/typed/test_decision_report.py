"""Format compliance is the decision report's consistency criterion: a fine-tune that keeps the format
better, at equal pass rate and tool accuracy, pays off; one that keeps it worse does not."""

from __future__ import annotations

from tandem.agent.scenarios.results import Cell, CellSummary, SuiteReport
from tandem.agent.tune.compare import Arm, Comparison, metric_rows, verdict

_CELLS = {
    'p': Cell(backbone='base', prompt=None),
    's': Cell(backbone='base', prompt='short@1', ablation=('rag',)),
    't': Cell(backbone='tuned', prompt='short@1', ablation=('rag',)),
}


def _arm(label: str, *, valid: int, retries: int, passed: int = 40) -> Arm:
    """An arm of 40 runs whose 100 typed turns gave `valid` answers in their schema."""
    summary = CellSummary(
        cell=_CELLS[label],
        scenarios=40,
        passed=passed,
        failed=40 - passed,
        errors=0,
        tool_checks=10,
        tool_checks_passed=10,
        turns=10,
        total_tokens=3000,
        cost_usd=1.0,
        latency_p50_s=1.0,
        latency_p95_s=2.0,
        latency_total_s=10.0,
        typed_turns=100,
        valid_outputs=valid,
        output_retries=retries,
    )
    return Arm(label, summary)


def test_a_fine_tune_that_keeps_the_format_more_consistently_pays_off() -> None:
    prompting, short, tuned = (
        _arm('p', valid=80, retries=6, passed=30),
        _arm('s', valid=50, retries=9, passed=30),
        _arm('t', valid=100, retries=0, passed=30),
    )

    assert verdict(prompting, short, tuned) == (
        'prompting + RAG passes 75% of these scenarios; the short prompt without RAG costs 30 points of format '
        'compliance (80% → 50%); the fine-tune more than recovers it (100%): it pays off'
    )


def test_a_fine_tune_that_keeps_the_format_less_consistently_falls_short() -> None:
    prompting, short, tuned = (
        _arm('p', valid=100, retries=0),
        _arm('s', valid=50, retries=9),
        _arm('t', valid=90, retries=3),
    )

    assert verdict(prompting, short, tuned) == (
        'prompting + RAG already passes these scenarios; the short prompt without RAG costs 50 points of format '
        'compliance (100% → 50%); the fine-tune recovers 40 of them (90%): keep prompting + RAG, or tune on more '
        '(or better) examples'
    )


def test_the_report_shows_format_compliance_and_output_retries_per_arm() -> None:
    arms = (_arm('p', valid=80, retries=6), _arm('s', valid=50, retries=9), _arm('t', valid=100, retries=0))
    comparison = Comparison(base='p', tuned='t', report=SuiteReport.model_construct(), arms=arms)

    rows = {row[0]: row[1:] for row in metric_rows(comparison)}

    assert rows['format compliance'] == [
        '80% [71–87%]',
        '50% [40–60%]',
        '-30 pp [-42, -17]',
        '100% [96–100%]',
        '+20 pp [+12, +29]',
    ]
    assert rows['output retries per turn'][:2] == ['0.60', '0.90']
    arm = comparison.as_dict()['arms'][2]
    assert (arm['format_compliance'], arm['output_retries_per_turn']) == (1.0, 0.0)
    assert arm['delta']['format_compliance_pp'] == 20.0
