"""The statistics behind every rate in the reports: intervals, and differences called only when real."""

from __future__ import annotations

import pytest

from tandem.agent.scenarios.stats import bootstrap, median, rate_difference, trials_needed, wilson


def test_wilson_matches_the_published_interval() -> None:
    # Newcombe (1998), table I: 81/263 gives [0.2553, 0.3662] by the score method.
    interval = wilson(81, 263)
    assert interval is not None
    assert interval.low == pytest.approx(0.2553, abs=5e-4)
    assert interval.high == pytest.approx(0.3662, abs=5e-4)


def test_wilson_stays_inside_zero_and_one_at_the_edges() -> None:
    none, every = wilson(0, 10), wilson(10, 10)
    assert none is not None and every is not None
    assert none.low == 0 and 0.2 < none.high < 0.35
    assert every.high == 1 and 0.65 < every.low < 0.8
    assert wilson(0, 0) is None


def test_a_difference_is_called_only_when_its_interval_excludes_zero() -> None:
    real = rate_difference((630, 1000), (580, 1000))
    assert real is not None and real.call == 'better' and real.points == 5
    assert real.describe().startswith('+5 pp [+1, +9]')
    noise = rate_difference((13, 20), (12, 20))
    assert noise is not None and noise.call == 'none'
    assert noise.needed is not None and noise.needed > 100
    assert noise.describe() == f'no detectable difference at 20 trials; about {noise.needed:,} would tell 5 pp'
    worse = rate_difference((2, 20), (18, 20))
    assert worse is not None and worse.call == 'worse'


def test_newcombe_matches_the_published_difference_interval() -> None:
    # Newcombe (1998), table II, example (a): 56/70 vs 48/80 gives [0.0524, 0.3339] by method 10.
    difference = rate_difference((56, 70), (48, 80))
    assert difference is not None
    assert difference.delta.low == pytest.approx(0.0524, abs=5e-4)
    assert difference.delta.high == pytest.approx(0.3339, abs=5e-4)


def test_trials_needed_grows_as_the_difference_shrinks() -> None:
    big, small = trials_needed(0.9, 0.5), trials_needed(0.63, 0.58)
    assert big is not None and small is not None
    assert big < 30 < 1000 < small
    assert trials_needed(0.5, 0.5) is None


def test_bootstrap_is_reproducible_and_brackets_its_statistic() -> None:
    values = [120.0, 80.0, 95.0, 300.0, 101.0, 99.0, 87.0, 110.0]
    first, again = bootstrap(values), bootstrap(values)
    assert first == again
    assert first is not None and first.low < first.value < first.high
    middle = bootstrap(values, median)
    assert middle is not None and middle.value == 100.0
    assert bootstrap([]) is None
    single = bootstrap([4.0])
    assert single is not None and (single.low, single.high) == (4.0, 4.0)


def test_a_large_cell_is_bootstrapped_in_batches_with_the_same_result_each_time() -> None:
    turns = [float(index % 100) for index in range(5000)]  # 5,000 turns: resampled 400 rows at a time
    first, again = bootstrap(turns), bootstrap(turns)
    assert first == again
    assert first is not None and first.value == 49.5 and 48 < first.low < 49.5 < first.high < 51
