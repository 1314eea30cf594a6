"""Format compliance is the decision report's consistency criterion: a fine-tune that keeps the format
better, at equal pass rate and tool accuracy, pays off; one that keeps it worse does not."""

from __future__ import annotations

from tandem.agent.scenarios.results import Cell, CellSummary, SuiteReport
from tandem.agent.tune.compare import Arm, Comparison, metric_rows, verdict


def _arm(label: str, *, valid: int, retries: int, passed: int = 4) -> Arm:
    summary = CellSummary(
        cell=Cell(backbone=label, prompt=None),
        scenarios=4,
        passed=passed,
        failed=4 - passed,
        errors=0,
        tool_checks=10,
        tool_checks_passed=10,
        turns=10,
        total_tokens=3000,
        cost_usd=1.0,
        latency_p50_s=1.0,
        latency_p95_s=2.0,
        latency_total_s=10.0,
        typed_turns=10,
        valid_outputs=valid,
        output_retries=retries,
    )
    return Arm(label, summary)


def test_a_fine_tune_that_keeps_the_format_more_consistently_pays_off() -> None:
    prompting, short, tuned = (
        _arm('p', valid=8, retries=6, passed=3),
        _arm('s', valid=5, retries=9, passed=2),
        _arm('t', valid=10, retries=0, passed=3),
    )

    assert verdict(prompting, short, tuned) == (
        'prompting + RAG passes 75% of these scenarios; the fine-tune keeps the answer format more consistently '
        '(100% vs 80%): it pays off'
    )


def test_a_fine_tune_that_keeps_the_format_less_consistently_falls_short() -> None:
    prompting, short, tuned = (
        _arm('p', valid=10, retries=0),
        _arm('s', valid=5, retries=9, passed=2),
        _arm('t', valid=9, retries=3),
    )

    assert verdict(prompting, short, tuned) == (
        'prompting + RAG already passes these scenarios; the fine-tune keeps the answer format less consistently '
        '(90% vs 100%): keep prompting + RAG, or tune on more (or better) examples'
    )


def test_the_report_shows_format_compliance_and_output_retries_per_arm() -> None:
    arms = (_arm('p', valid=8, retries=6), _arm('s', valid=5, retries=9), _arm('t', valid=10, retries=0))
    comparison = Comparison(base='p', tuned='t', report=SuiteReport.model_construct(), arms=arms)

    rows = {row[0]: row[1:] for row in metric_rows(comparison)}

    assert rows['format compliance'] == ['80%', '50%', '-30 pp', '100%', '+20 pp']
    assert rows['output retries per turn'][:2] == ['0.60', '0.90']
    arm = comparison.as_dict()['arms'][2]
    assert (arm['format_compliance'], arm['output_retries_per_turn']) == (1.0, 0.0)
    assert arm['delta']['format_compliance_pp'] == 20.0
