"""What a scenario run produced: per turn, per scenario, per matrix cell, and for the whole suite.

These are pydantic models, so a report written as JSON (`SuiteReport.model_dump_json`) reads back
with `SuiteReport.model_validate_json`: `tandem tune export --only-passing` and `tandem tune compare`
work from it. Each run keeps the exported pydantic-ai messages of its sessions, because the
scenario's Redis namespace is deleted once it finishes.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tandem.agent.scenarios.decision import Decision
from tandem.agent.scenarios.stats import Interval, bootstrap, median, p95, wilson

__all__ = [
    'REPORT_FORMAT',
    'Cell',
    'CellSummary',
    'CheckResult',
    'ScenarioRun',
    'SuiteReport',
    'ToolCallResult',
    'TurnOutcome',
]

REPORT_FORMAT = 'tandem.scenario-report/1'

Status = Literal['passed', 'failed', 'error']


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Cell(_Model):
    """One point of the matrix: a backbone, a prompt, and the ingredients turned off."""

    backbone: str
    prompt: str | None = None
    """`NAME@VERSION` for every scenario; `None`: each scenario's own (`setup.prompt`, else the configured one)."""
    ablation: tuple[str, ...] = ()
    """Ingredients turned off, sorted: `examples`, `memory`, `rag`, `tools`."""
    examples: str | None = None
    """An example set this cell's runs show retrieved few-shot examples from, whatever `examples.mode`
    says: `tune compare`'s fourth arm (base model + examples from the training file)."""

    @property
    def ablation_label(self) -> str:
        """`full`, or the ingredients turned off, e.g. `-rag -memory`, and `+examples` for a cell that adds them."""
        parts = [f'-{part}' for part in self.ablation] + (['+examples'] if self.examples else [])
        return ' '.join(parts) if parts else 'full'

    @property
    def label(self) -> str:
        """`backbone · prompt · ablation`, as shown in tables and charts."""
        return f'{self.backbone} · {self.prompt or "scenario prompt"} · {self.ablation_label}'

    @property
    def slug(self) -> str:
        """`backbone=B,prompt=P,ablate=rag+memory`: a stable id for JUnit suites and file names."""
        slug = f'backbone={self.backbone},prompt={self.prompt or "-"},ablate={"+".join(self.ablation) or "none"}'
        return slug + (f',examples={self.examples}' if self.examples else '')


class ToolCallResult(_Model):
    """A tool call the model made."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict[str, Any])
    ok: bool = True
    result: str = ''
    """The start of what it returned, or the error; `denied` when the approval policy refused it."""
    duration_s: float = 0.0

    def describe(self) -> str:
        """`calculate(expression='17*23')`."""
        args = ', '.join(f'{key}={value!r}' for key, value in self.args.items())
        return f'{self.name}({args})'


class CheckResult(_Model):
    """One expectation of one turn, and whether it held."""

    turn: int
    """1 for the first turn."""
    kind: Literal[
        'tool',
        'tool_not_called',
        'contains',
        'not_contains',
        'regex',
        'max_tool_calls',
        'max_tokens',
        'judge',
        'output',
        'output_field',
        'error',
        'completes',
        'max_latency',
        'state',
    ]
    label: str
    """What was expected, e.g. `calculate(expression=~/17/)` or `contains '391'`."""
    passed: bool
    detail: str = ''
    """Why it failed (or the judge's reason)."""

    @property
    def about_tools(self) -> bool:
        """Whether it counts towards tool-call accuracy."""
        return self.kind in ('tool', 'tool_not_called', 'max_tool_calls')

    def describe(self) -> str:
        """`turn 2: contains '391' — the answer was '...'`."""
        return f'turn {self.turn}: {self.label}' + (f' — {self.detail}' if self.detail else '')


class TurnOutcome(_Model):
    """One turn as it ran."""

    index: int
    """1 for the first turn."""
    session: str
    user: str
    """What the user said."""
    as_user: str | None = None
    """The other user the turn ran as (`as_user`); `None`: the scenario's user."""
    answer: str = ''
    tool_calls: list[ToolCallResult] = Field(default_factory=list[ToolCallResult])
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    """Wall time of the turn; for a replayed turn, the recorded latency of its model requests plus the replay's time."""
    checks: list[CheckResult] = Field(default_factory=list[CheckResult])
    output_valid: bool | None = None
    """For a turn that asked for a typed answer (`expect.output`): whether it got one that fits the schema."""
    output_retries: int = 0
    """How often the model was sent back because its answer did not validate."""
    error: str | None = None
    """Why the turn stopped without an answer: expected (`expect.error`), or the run's error."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class ScenarioRun(_Model):
    """One scenario in one matrix cell."""

    scenario: str
    file: str | None = None
    tags: list[str] = Field(default_factory=list[str])
    description: str = ''
    cell: Cell
    trial: int = 1
    """Which repetition of the scenario in its cell (`tandem run -n N`), from 1."""
    status: Status
    error: str | None = None
    """Why the run could not finish (setup, backbone, replay miss, ...): then `status` is `error`."""
    prompt: str = ''
    """The prompt the run used, `NAME@VERSION`."""
    tenant: str = ''
    """The run's own namespace (deleted when it finished)."""
    worker: str | None = None
    """The `tandem worker` that ran it (`tandem run --distributed`); `None` when it ran in the suite's process."""
    turns: list[TurnOutcome] = Field(default_factory=list[TurnOutcome])
    duration_s: float = 0.0
    messages: dict[str, list[dict[str, Any]]] = Field(default_factory=dict[str, list[dict[str, Any]]])
    """Each session's pydantic-ai messages (`ModelMessagesTypeAdapter` JSON), by session id."""

    @property
    def checks(self) -> list[CheckResult]:
        """Every check of every turn."""
        return [check for turn in self.turns for check in turn.checks]

    @property
    def failures(self) -> list[CheckResult]:
        """The checks that did not hold."""
        return [check for check in self.checks if not check.passed]

    @property
    def total_tokens(self) -> int:
        """Tokens over every turn."""
        return sum(turn.total_tokens for turn in self.turns)

    @property
    def cost_usd(self) -> float | None:
        """Cost over every turn; `None` when any turn's price is unknown."""
        costs = [turn.cost_usd for turn in self.turns]
        return None if not costs or any(cost is None for cost in costs) else sum(c for c in costs if c is not None)

    @property
    def latency_s(self) -> float:
        """Latency over every turn."""
        return sum(turn.latency_s for turn in self.turns)


def _percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class CellSummary(_Model):
    """The numbers of one matrix cell, over its scenarios."""

    cell: Cell
    scenarios: int
    passed: int
    failed: int
    errors: int
    tool_checks: int
    tool_checks_passed: int
    turns: int
    total_tokens: int
    cost_usd: float | None
    latency_p50_s: float
    """Median latency of a turn."""
    latency_p95_s: float
    latency_total_s: float
    typed_turns: int = 0
    """Turns that asked for a typed answer."""
    valid_outputs: int = 0
    """Of those, the turns whose answer fit the schema."""
    output_retries: int = 0
    """Retries of answers that did not validate, over all turns."""
    trials: int = 1
    """Runs of each scenario (`tandem run -n N`); `scenarios` counts every run."""
    tokens_per_turn_ci: Interval | None = None
    """Mean tokens of a turn, bootstrapped over turns."""
    latency_p50_ci: Interval | None = None
    latency_p95_ci: Interval | None = None
    cost_per_turn_ci: Interval | None = None
    """Mean USD of a turn, bootstrapped; `None` when a price is unknown."""
    answer_agreement: Interval | None = None
    """Consistency: the share of trials whose answer is the most common one for the same turn of the same
    scenario, exactly. `None` with one trial."""
    normalized_agreement: Interval | None = None
    """The same, comparing answers case-folded with punctuation and spacing ignored."""
    tool_agreement: Interval | None = None
    """The same, comparing the sequence of tool calls (names and arguments)."""

    @property
    def pass_rate_ci(self) -> Interval | None:
        """The pass rate with its Wilson interval."""
        return wilson(self.passed, self.scenarios)

    @property
    def tool_accuracy_ci(self) -> Interval | None:
        """Tool-call accuracy with its Wilson interval."""
        return wilson(self.tool_checks_passed, self.tool_checks)

    @property
    def format_compliance_ci(self) -> Interval | None:
        """Format compliance with its Wilson interval."""
        return wilson(self.valid_outputs, self.typed_turns)

    @property
    def pass_rate(self) -> float:
        """Share of scenarios that passed (errors count as not passed)."""
        return self.passed / self.scenarios if self.scenarios else 0.0

    @property
    def tool_accuracy(self) -> float | None:
        """Share of tool checks (expected calls with their arguments, forbidden tools, call budgets) that held."""
        return self.tool_checks_passed / self.tool_checks if self.tool_checks else None

    @property
    def format_compliance(self) -> float | None:
        """Share of typed turns whose answer fit the schema: how consistently the arm keeps a format."""
        return self.valid_outputs / self.typed_turns if self.typed_turns else None

    @property
    def output_retries_per_turn(self) -> float:
        """Mean retries of invalid answers per turn: what keeping the format costs."""
        return self.output_retries / self.turns if self.turns else 0.0

    @property
    def tokens_per_turn(self) -> float:
        """Mean tokens of a turn."""
        return self.total_tokens / self.turns if self.turns else 0.0

    @classmethod
    def of(cls, cell: Cell, runs: Sequence[ScenarioRun]) -> CellSummary:
        """Summarize the runs of one cell."""
        tool_checks = [check for run in runs for check in run.checks if check.about_tools]
        latencies = [turn.latency_s for run in runs for turn in run.turns]
        typed = [turn for run in runs for turn in run.turns if turn.output_valid is not None]
        costs = [run.cost_usd for run in runs if run.turns]
        turn_costs = [turn.cost_usd for run in runs for turn in run.turns]
        known_costs = [cost for cost in turn_costs if cost is not None]
        return cls(
            cell=cell,
            scenarios=len(runs),
            passed=sum(run.status == 'passed' for run in runs),
            failed=sum(run.status == 'failed' for run in runs),
            errors=sum(run.status == 'error' for run in runs),
            tool_checks=len(tool_checks),
            tool_checks_passed=sum(check.passed for check in tool_checks),
            turns=len(latencies),
            total_tokens=sum(run.total_tokens for run in runs),
            cost_usd=None if not costs or any(c is None for c in costs) else sum(c for c in costs if c is not None),
            latency_p50_s=statistics.median(latencies) if latencies else 0.0,
            latency_p95_s=_percentile(latencies, 0.95),
            latency_total_s=sum(latencies),
            typed_turns=len(typed),
            valid_outputs=sum(bool(turn.output_valid) for turn in typed),
            output_retries=sum(turn.output_retries for run in runs for turn in run.turns),
            trials=max((run.trial for run in runs), default=1),
            tokens_per_turn_ci=bootstrap([turn.total_tokens for run in runs for turn in run.turns]),
            latency_p50_ci=bootstrap(latencies, median),
            latency_p95_ci=bootstrap(latencies, p95),
            cost_per_turn_ci=bootstrap(known_costs) if len(known_costs) == len(turn_costs) else None,
            answer_agreement=_agreement(runs, lambda turn: turn.answer),
            normalized_agreement=_agreement(runs, lambda turn: _normalized(turn.answer)),
            tool_agreement=_agreement(runs, lambda turn: tuple(call.describe() for call in turn.tool_calls)),
        )


_NOT_WORDS = re.compile(r'[\W_]+')


def _normalized(answer: str) -> str:
    """`The answer is 391.` and `the answer is 391` alike."""
    return ' '.join(_NOT_WORDS.sub(' ', answer.casefold()).split())


def _agreement(runs: Sequence[ScenarioRun], key: Callable[[TurnOutcome], object]) -> Interval | None:
    """Of the trials of every (scenario, turn) asked more than once, the share giving that turn's most common
    `key`, with its Wilson interval. `None` when no turn was asked twice."""
    trials: defaultdict[tuple[str, int], list[object]] = defaultdict(list)
    for run in runs:
        for turn in run.turns:
            trials[run.scenario, turn.index].append(key(turn))
    asked = [keys for keys in trials.values() if len(keys) > 1]
    agreeing = sum(Counter(keys).most_common(1)[0][1] for keys in asked)
    return wilson(agreeing, sum(len(keys) for keys in asked))


class SuiteReport(_Model):
    """A whole matrix run: the cells' numbers, and every run with its turns, checks and messages."""

    format: str = REPORT_FORMAT
    started_at: datetime
    duration_s: float
    mode: Literal['live', 'record', 'replay'] = 'live'
    """Whether the model traffic was live, recorded into cassettes, or replayed from them."""
    cells: list[CellSummary] = Field(default_factory=list[CellSummary])
    runs: list[ScenarioRun] = Field(default_factory=list[ScenarioRun])
    decision: Decision | None = None
    """What the runs support (`attribution.decide`, or the comparison's for `tandem tune compare`)."""

    @property
    def passed(self) -> bool:
        """Whether every run of every cell passed."""
        return bool(self.runs) and all(run.status == 'passed' for run in self.runs)

    def runs_of(self, cell: Cell) -> list[ScenarioRun]:
        """The runs of one cell, in scenario order."""
        return [run for run in self.runs if run.cell == cell]

    @classmethod
    def of(
        cls,
        cells: Sequence[Cell],
        runs: Sequence[ScenarioRun],
        *,
        started_at: datetime,
        duration_s: float,
        mode: Literal['live', 'record', 'replay'] = 'live',
    ) -> SuiteReport:
        """The report of `runs`, summarized per cell in the order of `cells`."""
        return cls(
            started_at=started_at,
            duration_s=duration_s,
            mode=mode,
            cells=[CellSummary.of(cell, [run for run in runs if run.cell == cell]) for cell in cells],
            runs=list(runs),
        )
