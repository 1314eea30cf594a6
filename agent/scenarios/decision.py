"""The decision a report supports: a recommendation, how sure it is, and one line per criterion.

Every report (`tandem run --report DIR`, `tandem tune compare --report DIR`) opens with this card:
what to choose and why, on the criteria for choosing between prompting and fine-tuning: quality (pass
rate, tool-call accuracy, format compliance), consistency of repeated trials, cost, latency,
freshness, training data, and the same examples in the prompt instead of the weights. It is data,
kept in `report.json` (`SuiteReport.decision`) and drawn by the HTML report. `attribution.decide`
builds it for any matrix; `tune.compare` builds its own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tandem.agent.scenarios.stats import Interval

__all__ = ['AttributionRow', 'Confidence', 'Criterion', 'CriterionName', 'CurvePoint', 'Decision']

Confidence = Literal['high', 'medium', 'low']
CriterionName = Literal['quality', 'consistency', 'cost', 'latency', 'freshness', 'data', 'examples']


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Criterion(_Model):
    """One criterion of the decision and what the runs say about it, in one line."""

    name: CriterionName
    line: str
    measured: bool = True
    """`False` when these runs could not measure it; the line then says what would."""


class AttributionRow(_Model):
    """What changing one factor did to one rate, the others held."""

    factor: str
    """`backbone`, `prompt`, `ingredients`, or a step of several (`prompt and ingredients`)."""
    change: str
    """`base → tuned`."""
    held: str
    """The factors held fixed, e.g. `short@1 · -rag`."""
    rate: str
    before: Interval
    after: Interval
    difference: Interval
    call: Literal['better', 'worse', 'none']
    reading: str
    """`-30 pp [-41, -18]`, or `no detectable difference at 100 runs; about 900 would tell 2 pp`."""


class CurvePoint(_Model):
    """One tune on the learning curve: how many examples trained it, and how it did."""

    backbone: str
    examples: int
    pass_rate: Interval
    tool_accuracy: Interval | None = None


class Decision(_Model):
    """The card at the top of a report."""

    recommendation: str
    confidence: Confidence
    why: str
    criteria: list[Criterion] = Field(default_factory=list[Criterion])
    attribution: list[AttributionRow] = Field(default_factory=list[AttributionRow])
    curve: list[CurvePoint] = Field(default_factory=list[CurvePoint])
    """Tunes of one base model trained on different numbers of examples, in the same cell otherwise, smallest first."""
