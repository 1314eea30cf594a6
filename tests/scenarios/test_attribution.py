"""Attribution over a matrix: only cells that differ in one factor are compared, and the factor is named."""

from __future__ import annotations

from tandem.agent.core.config import BackboneConfig
from tandem.agent.scenarios.attribution import data_criterion, decide, effects, factor_change, learning_curve
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


# --- the data criterion: how many examples, and the learning curve ----------------------------------------


def _tune(examples: int | None, base_model: str = 'gpt-4.1-mini') -> BackboneConfig:
    return BackboneConfig(model='openai:ft:x', kind='fine-tuned', base_model=base_model, training_examples=examples)


def _sizes(*passed: int) -> tuple[list[CellSummary], dict[str, BackboneConfig]]:
    """Tunes on 100, 400 and 1,600 examples (as many as `passed`), each in the same cell otherwise."""
    sizes = (100, 400, 1600)[: len(passed)]
    cells = [
        _summary(Cell(backbone=f'ft-{size}', prompt='short@1'), count, 40)
        for size, count in zip(sizes, passed, strict=False)
    ]
    return cells, {f'ft-{size}': _tune(size) for size in sizes}


def test_the_learning_curve_orders_tunes_by_size_and_says_when_more_data_stops_paying() -> None:
    cells, configs = _sizes(12, 30, 31)

    criterion, curve = data_criterion(list(reversed(cells)), configs)

    assert [(point.backbone, point.examples, round(point.pass_rate.value, 3)) for point in curve] == [
        ('ft-100', 100, 0.3),
        ('ft-400', 400, 0.75),
        ('ft-1600', 1600, 0.775),
    ]
    assert criterion.measured
    assert criterion.line.startswith('ft-100: 100 examples; ft-400: 400 examples; ft-1600: 1,600 examples. ')
    assert 'Learning curve (pass rate): 100 → 30% [' in criterion.line
    assert criterion.line.endswith(' would tell 3 pp, so more examples may not help')
    assert '400 → 1,600 examples: no detectable difference at 40 runs' in criterion.line


def test_a_curve_still_rising_beyond_noise_says_more_examples_should_help() -> None:
    cells, configs = _sizes(8, 20)

    criterion, curve = data_criterion(cells, configs)

    assert len(curve) == 2
    assert '100 → 400 examples still gains +30 pp [' in criterion.line
    assert criterion.line.endswith(': more examples should help')


def test_tunes_of_other_base_models_or_in_other_cells_make_no_curve() -> None:
    cells, configs = _sizes(12, 30)
    other_base = {**configs, 'ft-400': _tune(400, base_model='gpt-4.1')}
    other_prompt = [cells[0], cells[1].model_copy(update={'cell': Cell(backbone='ft-400', prompt='assistant@1')})]

    assert learning_curve(cells, other_base) == []
    assert learning_curve(other_prompt, configs) == []
    assert learning_curve(cells, configs) != []


def test_a_tune_whose_size_is_not_recorded_leaves_the_criterion_unmeasured_and_says_how_to_record_it() -> None:
    cells, _ = _sizes(12)

    criterion, curve = data_criterion(cells, {'ft-100': _tune(None)})

    assert curve == [] and not criterion.measured
    assert criterion.line == (
        'ft-100: examples not recorded. For ft-100: set training_examples in its [backbones.NAME] table '
        '(tandem tune status sets it for the tunes it registers)'
    )
    assert data_criterion([_summary(FULL, 90)], {'base': BackboneConfig(model='openai:gpt-4.1')})[0].line == (
        'no fine-tuned backbone among these cells'
    )


def test_decide_adds_the_data_criterion_and_curve_when_it_knows_the_backbones() -> None:
    cells, configs = _sizes(12, 30)

    assert 'data' not in [criterion.name for criterion in decide(cells).criteria]
    decision = decide(cells, configs)
    assert decision.criteria[-1].name == 'data' and len(decision.curve) == 2
