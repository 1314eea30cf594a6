"""Honest numbers from few trials: confidence intervals, and differences called only when they are real.

Models are stochastic, so a rate measured on 20 runs is a guess with an error bar. Every rate in the
reports carries one:

- `wilson`: the Wilson score interval of a proportion (pass rate, tool-call accuracy, format
  compliance). Unlike the normal approximation it stays inside [0, 1] and behaves at 0/n and n/n.
- `bootstrap`: a percentile bootstrap interval of a statistic (mean tokens, median or p95 latency,
  cost), from a fixed seed so that a report is reproducible.
- `rate_difference`: Newcombe's hybrid score interval of the difference of two proportions, built from
  the two Wilson intervals. A difference is `better` or `worse` only when that interval excludes 0;
  otherwise `no detectable difference`, with `trials_needed` to tell one of that size.

Closed forms over the standard library and NumPy: SciPy would add 30 MB to `make chat` for four formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = [
    'CONFIDENCE',
    'Difference',
    'Interval',
    'bootstrap',
    'mean',
    'median',
    'p95',
    'rate_difference',
    'trials_needed',
    'wilson',
]

CONFIDENCE = 0.95
_RESAMPLES = 2000
_SEED = 20261207


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


class Interval(BaseModel):
    """A point estimate and its confidence interval, over `n` observations."""

    model_config = ConfigDict(frozen=True)

    value: float
    low: float
    high: float
    n: int

    def percent(self) -> str:
        """`63% [55–70%]`."""
        return f'{self.value:.0%} [{self.low * 100:.0f}–{self.high:.0%}]'


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval | None:
    """The Wilson score interval of `successes` out of `n`; `None` when `n` is 0."""
    if n <= 0:
        return None
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # Rounding can push an end a hair past the estimate at 0/n and n/n.
    return Interval(value=p, low=max(0.0, min(p, centre - spread)), high=min(1.0, max(p, centre + spread)), n=n)


Statistic = Callable[[np.ndarray], np.ndarray]
"""Row by row: a 2-D array of resamples in, one estimate per row out."""


def mean(rows: np.ndarray) -> np.ndarray:
    """The mean of each row, as a bootstrap statistic."""
    return np.mean(rows, axis=-1)


def median(rows: np.ndarray) -> np.ndarray:
    """The median of each row, as a bootstrap statistic."""
    return np.median(rows, axis=-1)


def p95(rows: np.ndarray) -> np.ndarray:
    """The 95th percentile of each row, as a bootstrap statistic."""
    return np.percentile(rows, 95, axis=-1)


_CELLS_PER_BATCH = 2_000_000
"""Resampled values held at once (16 MB): a cell of 12,000 turns would need 24 million for all resamples."""


def bootstrap(
    values: Sequence[float],
    statistic: Statistic = mean,
    confidence: float = CONFIDENCE,
    resamples: int = _RESAMPLES,
) -> Interval | None:
    """The percentile bootstrap interval of `statistic` over `values`; `None` without any value.

    Seeded, so the same values always give the same interval.
    """
    if not values:
        return None
    data = np.asarray(values, dtype=float)
    value = float(statistic(data))
    if len(data) == 1 or bool(np.all(data == data[0])):
        return Interval(value=value, low=value, high=value, n=len(data))
    rng = np.random.default_rng(_SEED)
    batch = max(1, _CELLS_PER_BATCH // len(data))
    estimates = np.concatenate(
        [
            statistic(data[rng.integers(0, len(data), size=(min(batch, resamples - done), len(data)))])
            for done in range(0, resamples, batch)
        ]
    )
    tail = (1 - confidence) / 2 * 100
    low, high = (float(bound) for bound in np.percentile(estimates, [tail, 100 - tail]))
    return Interval(value=value, low=min(low, value), high=max(high, value), n=len(data))


class Difference(BaseModel):
    """How `mine` compares with `theirs` on a rate, and whether the trials can tell."""

    model_config = ConfigDict(frozen=True)

    delta: Interval
    """`mine - theirs`, with Newcombe's interval."""
    call: Literal['better', 'worse', 'none']
    """`better` or `worse` only when the interval excludes 0."""
    needed: int | None = None
    """For `none`: about how many observations per arm would tell a difference of this size (80% power)."""

    @property
    def points(self) -> int:
        """The difference in whole percentage points."""
        return round(self.delta.value * 100)

    def describe(self, unit: str = 'trials') -> str:
        """`+5 pp [+1, +9]`, or `no detectable difference at 40 trials; about 600 would tell 5 pp`."""
        if self.call != 'none':
            return f'{self.points:+d} pp [{self.delta.low * 100:+.0f}, {self.delta.high * 100:+.0f}]'
        text = f'no detectable difference at {self.delta.n:,} {unit}'
        if self.needed is not None and self.points:
            text += f'; about {self.needed:,} would tell {abs(self.points)} pp'
        return text


def rate_difference(
    mine: tuple[int, int], theirs: tuple[int, int], confidence: float = CONFIDENCE
) -> Difference | None:
    """Newcombe's interval of `mine - theirs`, each given as `(successes, n)`; `None` when either `n` is 0."""
    a = wilson(*mine, confidence=confidence)
    b = wilson(*theirs, confidence=confidence)
    if a is None or b is None:
        return None
    delta = a.value - b.value
    low = delta - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = delta + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    call: Literal['better', 'worse', 'none'] = 'better' if low > 0 else 'worse' if high < 0 else 'none'
    n = min(mine[1], theirs[1])
    needed = trials_needed(a.value, b.value, confidence=confidence) if call == 'none' else None
    return Difference(delta=Interval(value=delta, low=low, high=high, n=n), call=call, needed=needed)


def trials_needed(p1: float, p2: float, *, confidence: float = CONFIDENCE, power: float = 0.8) -> int | None:
    """About how many observations per arm a two-sided test needs to tell `p1` from `p2`; `None` if equal."""
    if p1 == p2:
        return None
    z = _z(confidence) + NormalDist().inv_cdf(power)
    variance = p1 * (1 - p1) + p2 * (1 - p2)
    # At 0% vs 100% the variance is 0; one observation per arm can never be enough, so floor it.
    return max(2, math.ceil(z * z * max(variance, 0.01) / (p1 - p2) ** 2))
