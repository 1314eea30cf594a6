"""Running scenarios: the matrix of scenario × backbone × prompt × ablation, each run isolated.

The runner is thin on purpose. For every run it builds `Deps` with `agent.turn.build.build_deps`
(in a tenant of its own, see `agent.scenarios.isolation`), seeds the setup, sends each turn through
`agent.turn.run.run_turn` exactly as `tandem ask` would, checks the expectations, and deletes the
namespace. Everything a front end needs comes back as data (`SuiteReport`) and, while it runs, as
steps (`RunStarted`, `TurnStarted`, the runtime's `TurnEvent`s, `TurnFinished`).

Where the runs run is an `Engine`: `LocalEngine` runs them in this process, `concurrency` at a time;
`agent.scenarios.distributed.DistributedEngine` queues them for `tandem worker`s. Either way each
run goes through `run_planned`, so the results are the same.

Ablations turn one ingredient off for a cell:

- `rag`: no knowledge base (`retrieval = "off"`, no `knowledge` toolset, no documents seeded);
- `memory`: no long-term memory (`memory.enabled = false`, no `memory` toolset, no facts seeded);
- `tools`: no toolsets at all;
- `examples`: no few-shot examples (`examples.mode = "off"`).

Runs read example sets from the suite's tenant (`examples.tenant`), since each runs in a tenant of its
own; a cell with `examples` (`tune compare`'s fourth arm) shows retrieved examples from that set.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, cast

from pydantic import ValidationError
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.models import Model
from redis.asyncio import Redis

from tandem.agent.backbones import base as backbone_registry
from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.errors import BackboneError, InvalidOutputError, PromptError, TandemError
from tandem.agent.core.events import TurnEvent
from tandem.agent.core.log import get_logger
from tandem.agent.core.prompts import PromptLibrary, PromptTemplate
from tandem.agent.core.turn_state import ToolCallRecord
from tandem.agent.scenarios._yaml import Problem
from tandem.agent.scenarios.cassettes import Cassettes, model_time
from tandem.agent.scenarios.expectations import check_stopped_turn, check_turn, judge_answer
from tandem.agent.scenarios.isolation import ScenarioSetupError, Seeder, delete_namespace, new_tenant, seed_scenario
from tandem.agent.scenarios.results import Cell, CheckResult, ScenarioRun, SuiteReport, ToolCallResult, TurnOutcome
from tandem.agent.scenarios.schema import Judge, Scenario, ScenarioFileError, Turn
from tandem.agent.scenarios.state import check_state
from tandem.agent.turn.build import build_deps
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.output import schema_type
from tandem.agent.turn.request import TurnRequest
from tandem.agent.turn.run import run_turn, with_session
from tandem.tools.installed import installed_plugins
from tandem.tools.registry import ToolsetPlugin, select

__all__ = [
    'ABLATIONS',
    'Engine',
    'LocalEngine',
    'PlannedRun',
    'RunHooks',
    'RunStarted',
    'Step',
    'StepSink',
    'SuiteEnv',
    'TurnFinished',
    'TurnStarted',
    'build_matrix',
    'parse_ablations',
    'run_planned',
    'run_scenario',
    'run_suite',
]

ABLATIONS = ('rag', 'memory', 'tools', 'examples')
"""The ingredients a cell can turn off."""

_INGREDIENT_TOOLSETS: Mapping[str, frozenset[str]] = {
    'rag': frozenset({'knowledge'}),
    'memory': frozenset({'memory'}),
}

_log = get_logger('tandem.scenarios')


# --- steps, for front ends that show a run as it happens ---------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    """A scenario run begins, in its own namespace."""

    scenario: Scenario
    cell: Cell
    tenant: str
    prompt: str
    tools: list[str]


@dataclass(frozen=True)
class TurnStarted:
    """A turn is about to be sent."""

    index: int
    total: int
    user: str
    session: str
    new_session: bool


@dataclass(frozen=True)
class TurnFinished:
    """A turn ran and was checked."""

    outcome: TurnOutcome


Step = RunStarted | TurnStarted | TurnFinished | TurnEvent
StepSink = Callable[[Step], Awaitable[None] | None]


async def _emit(sink: StepSink | None, step: Step) -> None:
    if sink is not None:
        outcome = sink(step)
        if outcome is not None:
            await outcome


# --- the matrix ------------------------------------------------------------------------------------


def parse_ablations(specs: Sequence[str]) -> list[tuple[str, ...]]:
    """The ablation dimension from `--ablate` values: the full cell, then one cell per ablation.

    `rag,memory,tools` gives four cells: nothing off, `rag` off, `memory` off, `tools` off; `+`
    turns several off in one cell (`rag+memory`), and `none` names the full cell explicitly.

    Raises:
        TandemError: An unknown ingredient.
    """
    cells: list[tuple[str, ...]] = [()]
    for spec in specs:
        for item in spec.split(','):
            item = item.strip().lower()
            if not item:
                continue
            parts = tuple(sorted({part.strip() for part in item.split('+') if part.strip()} - {'none', 'full'}))
            unknown = [part for part in parts if part not in ABLATIONS]
            if unknown:
                raise TandemError(
                    f'unknown ablation {", ".join(map(repr, unknown))}: --ablate takes {", ".join(ABLATIONS)} '
                    '(comma-separated cells, + to combine).'
                )
            if parts not in cells:
                cells.append(parts)
    return cells


def build_matrix(
    backbones: Sequence[str],
    prompts: Sequence[str | None] = (None,),
    ablations: Sequence[tuple[str, ...]] = ((),),
    examples: str | None = None,
) -> list[Cell]:
    """Every cell of backbone × prompt × ablation, in that nesting order; each shows `examples` when given."""
    return [
        Cell(backbone=backbone, prompt=prompt, ablation=tuple(sorted(ablation)), examples=examples)
        for backbone, prompt, ablation in itertools.product(backbones, prompts or (None,), ablations or ((),))
    ]


# --- one run ---------------------------------------------------------------------------------------


@dataclass
class SuiteEnv:
    """What every run of a suite shares: the backbones (wrapped for record/replay), judges, prompts and toolsets."""

    settings: Settings
    redis: Redis
    prompts: PromptLibrary
    plugins: dict[str, ToolsetPlugin]
    seed: Seeder
    judge: Backbone | None = None
    judges: dict[str, Backbone] = field(default_factory=dict[str, Backbone])
    backbones: dict[str, Backbone] = field(default_factory=dict[str, Backbone])
    cassettes: Cassettes | None = None

    def judge_model(self, spec: Judge, backbone: Backbone) -> Model:
        if spec.backbone is not None:
            return self.judges[spec.backbone].model
        return (self.judge or backbone).model


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            merged[key] = _merge(cast(dict[str, Any], current), cast(Mapping[str, Any], value))
        else:
            merged[key] = value
    return merged


def _run_settings(base: Settings, scenario: Scenario, ablation: Sequence[str], examples: str | None = None) -> Settings:
    """The settings of one run: the suite's, the scenario's overrides, then the cell's ablations and examples."""
    overrides: dict[str, Any] = dict(scenario.setup.settings)
    shown: dict[str, Any] = {'mode': 'retrieved', 'set': examples} if examples is not None else {}
    if 'examples' in ablation:
        shown = {'mode': 'off'}
    if shown or base.examples.mode != 'off' or 'examples' in overrides:
        given = cast(dict[str, Any], overrides.get('examples') or {})
        if 'tenant' not in given:  # each run has a tenant of its own: the example sets are the suite's
            shown.setdefault('tenant', base.examples.tenant or base.tenant)
        overrides['examples'] = _merge(given, shown)
    if 'rag' in ablation:
        overrides['retrieval'] = 'off'
    if 'memory' in ablation:
        overrides['memory'] = _merge(cast(dict[str, Any], overrides.get('memory') or {}), {'enabled': False})
    if not overrides:
        return base
    try:
        return type(base).model_validate(_merge(base.model_dump(), overrides))
    except ValidationError as error:
        first = error.errors()[0]
        where = '.'.join(str(part) for part in first['loc'])
        raise ScenarioSetupError(
            f"{scenario.where('setup', 'settings')}: these settings are invalid with the run's: {where}: {first['msg']}"
        ) from error


def _tool_names(
    settings: Settings, scenario: Scenario, ablation: Sequence[str], plugins: Mapping[str, ToolsetPlugin]
) -> list[str]:
    if 'tools' in ablation:
        return []
    names = scenario.setup.tools
    if names is None:
        names = settings.tools if settings.tools is not None else [plugin.name for plugin in select(None, plugins)]
    dropped: set[str] = set()
    for part in ablation:
        dropped |= _INGREDIENT_TOOLSETS.get(part, frozenset[str]())
    return [name for name in names if name not in dropped]


def _tool_calls(result_calls: Sequence[ToolCallRecord]) -> list[ToolCallResult]:
    return [
        ToolCallResult(name=call.name, args=dict(call.args), ok=call.ok, result=call.result, duration_s=call.duration_s)
        for call in result_calls
    ]


async def _messages(deps: Deps, sessions: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    exported: dict[str, list[dict[str, Any]]] = {}
    for session in sessions:
        try:
            messages = await deps.conversations.export_messages(session)
        except TandemError:
            continue  # a session whose first turn failed was never saved
        exported[session] = cast(list[dict[str, Any]], ModelMessagesTypeAdapter.dump_python(messages, mode='json'))
    return exported


@dataclass
class _Outcome:
    """What a run produced so far: kept when it stops half-way, for the report."""

    prompt: str
    turns: list[TurnOutcome] = field(default_factory=list[TurnOutcome])
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict[str, list[dict[str, Any]]])


async def _judge(
    env: SuiteEnv, scenario: Scenario, index: int, user: str, answer: str, latency: float, backbone: Backbone
) -> CheckResult:
    spec = scenario.turns[index - 1].expect.judge
    assert spec is not None
    model = env.judge_model(spec, backbone)
    try:
        return await judge_answer(
            index, spec, model=model, user=user, answer=answer, scenario=scenario.name, duration_s=latency
        )
    except Exception as error:
        reason = str(error) if isinstance(error, TandemError) else f'{type(error).__name__}: {error}'
        raise TandemError(f'turn {index}: the LLM judge ({model.model_name}) gave no verdict: {reason}') from error


async def _turns(
    scenario: Scenario,
    cell: Cell,
    backbone: Backbone,
    env: SuiteEnv,
    tenant: str,
    on_step: StepSink | None,
    out: _Outcome,
) -> None:
    settings = _run_settings(env.settings, scenario, cell.ablation, cell.examples)
    prompt: PromptTemplate = env.prompts.get(out.prompt)
    out.prompt = prompt.ref
    tools = _tool_names(settings, scenario, cell.ablation, env.plugins)
    request = TurnRequest(tenant=tenant, user=scenario.setup.user, prompt=prompt.ref, tools=tools)
    deps = await build_deps(
        settings,
        env.redis,
        request,
        session='s1',
        backbone=backbone,
        prompt=prompt,
        toolsets=select(tools, env.plugins),
    )
    await _emit(on_step, RunStarted(scenario=scenario, cell=cell, tenant=tenant, prompt=prompt.ref, tools=tools))
    sessions = ['s1']
    others: dict[str, Deps] = {}  # the other users turns run as (`as_user`), each in a session of their own
    try:
        await env.seed(deps, scenario, frozenset(cell.ablation))
        for index, turn in enumerate(scenario.turns, 1):
            if turn.new_session and index > 1:
                sessions.append(f's{len(sessions) + 1}')
                deps = with_session(deps, sessions[-1])
            current = deps
            if turn.as_user is not None and turn.as_user != deps.identity.user:
                if turn.as_user not in others:
                    other = TurnRequest(tenant=tenant, user=turn.as_user, prompt=prompt.ref, tools=tools)
                    others[turn.as_user] = await build_deps(
                        settings,
                        env.redis,
                        other,
                        session=f'{turn.as_user}-s1',
                        backbone=backbone,
                        prompt=prompt,
                        toolsets=select(tools, env.plugins),
                    )
                current = others[turn.as_user]
            session = current.identity.session
            await _emit(
                on_step, TurnStarted(index, len(scenario.turns), turn.user, session, turn.new_session and index > 1)
            )
            typed = turn.expect.output
            with model_time() as served:
                started = time.perf_counter()
                try:
                    # Streaming only when someone watches: the same turn either way, as `tandem ask` runs it.
                    result = await run_turn(
                        current,
                        turn.user,
                        on_event=on_step,
                        output_type=schema_type(typed.json_schema) if typed is not None else None,
                    )
                except Exception as error:
                    if isinstance(error, InvalidOutputError) and typed is not None:
                        # No answer in the format is a failed expectation (the format-compliance rate), not an error.
                        latency = time.perf_counter() - started + served.recorded_seconds
                        outcome = _invalid_output(index, session, turn, str(error), latency, settings)
                        out.turns.append(outcome)
                        await _emit(on_step, TurnFinished(outcome))
                        continue
                    message = str(error) if isinstance(error, TandemError) else f'{type(error).__name__}: {error}'
                    expected = isinstance(error, TandemError) and (
                        turn.expect.error is not None or bool(turn.expect.completes)
                    )
                    outcome = _stopped(
                        index, session, turn, message, started, served.recorded_seconds, checked=expected
                    )
                    if expected and turn.expect.state is not None:
                        stored = await check_state(index, turn.expect.state, current)
                        outcome = outcome.model_copy(update={'checks': [*outcome.checks, *stored]})
                    out.turns.append(outcome)  # the transcript up to the error stays in the report
                    if not expected:
                        raise
                    await _emit(on_step, TurnFinished(outcome))
                    continue
                latency = time.perf_counter() - started + served.recorded_seconds
            calls = _tool_calls(result.tool_calls)
            usage = result.usage
            checks = check_turn(index, turn.expect, result.answer, calls, usage.total_tokens, latency_s=latency)
            if turn.expect.judge is not None:
                checks.append(await _judge(env, scenario, index, turn.user, result.answer, latency, backbone))
            if turn.expect.state is not None:
                checks += await check_state(index, turn.expect.state, current)
            outcome = TurnOutcome(
                index=index,
                session=session,
                user=turn.user,
                as_user=turn.as_user,
                answer=result.answer,
                tool_calls=calls,
                requests=usage.requests,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=usage.cost_usd,
                latency_s=latency,
                checks=checks,
                output_valid=True if typed is not None else None,
                output_retries=usage.output_retries,
            )
            out.turns.append(outcome)
            await _emit(on_step, TurnFinished(outcome))
    finally:
        out.messages = await _messages(deps, sessions)
        for other in others.values():
            out.messages |= await _messages(other, [other.identity.session])


def _stopped(
    index: int, session: str, turn: Turn, error: str, started: float, recorded: float, *, checked: bool = False
) -> TurnOutcome:
    """A turn that stopped with `error`; `checked`: it was expected to stop (or to complete), so its checks say."""
    latency = time.perf_counter() - started + recorded
    return TurnOutcome(
        index=index,
        session=session,
        user=turn.user,
        as_user=turn.as_user,
        latency_s=latency,
        error=error,
        checks=check_stopped_turn(index, turn.expect, error, latency) if checked else [],
    )


def _invalid_output(
    index: int, session: str, turn: Turn, error: str, latency: float, settings: Settings
) -> TurnOutcome:
    """A turn whose model gave no answer in its schema, in all `limits.output_retries` retries."""
    return TurnOutcome(
        index=index,
        session=session,
        user=turn.user,
        as_user=turn.as_user,
        latency_s=latency,
        checks=check_turn(index, turn.expect, '', [], 0, output_error=error),
        output_valid=False,
        output_retries=settings.limits.output_retries,
    )


async def _run_scenario(
    env: SuiteEnv, scenario: Scenario, cell: Cell, backbone: Backbone, on_step: StepSink | None, trial: int = 1
) -> ScenarioRun:
    tenant = new_tenant()
    started = time.perf_counter()
    out = _Outcome(prompt=cell.prompt or scenario.setup.prompt or env.settings.prompt)
    error: str | None = None
    try:
        await _turns(scenario, cell, backbone, env, tenant, on_step, out)
    except TandemError as failure:
        error = str(failure)
    except Exception as failure:  # noqa: BLE001 - one broken run must not take the suite down
        _log.exception('scenario.crashed', scenario=scenario.name, cell=cell.slug)
        error = f'{type(failure).__name__}: {failure}'
    finally:
        await delete_namespace(env.redis, tenant)
    failed = any(not check.passed for turn in out.turns for check in turn.checks)
    status: Literal['passed', 'failed', 'error'] = 'error' if error is not None else ('failed' if failed else 'passed')
    return ScenarioRun(
        scenario=scenario.name,
        file=str(scenario.path) if scenario.path is not None else None,
        tags=list(scenario.tags),
        description=scenario.description,
        cell=cell,
        trial=trial,
        status=status,
        error=error,
        prompt=out.prompt,
        tenant=tenant,
        turns=out.turns,
        duration_s=time.perf_counter() - started,
        messages=out.messages,
    )


async def run_scenario(
    scenario: Scenario,
    backbone: Backbone,
    *,
    settings: Settings,
    redis: Redis,
    prompt: str | None = None,
    ablation: Sequence[str] = (),
    judge: Backbone | None = None,
    cassettes: Cassettes | None = None,
    seed: Seeder = seed_scenario,
    plugins: Mapping[str, ToolsetPlugin] | None = None,
    on_step: StepSink | None = None,
) -> ScenarioRun:
    """Run one scenario on one backbone, in a fresh namespace that is deleted afterwards.

    Never raises for a problem of the run itself: a failed expectation makes it `failed`, and
    anything that stops it (a backbone error, a replay miss, a setup that cannot be seeded, a bug)
    makes it `error`, with the reason. Cancelling it (Ctrl-C) still deletes the namespace.

    Args:
        scenario: What to run.
        backbone: The backbone to run it on.
        settings: The settings (the scenario may override some).
        redis: Where the namespace lives.
        prompt: `NAME@VERSION` instead of the scenario's own prompt.
        ablation: Ingredients to turn off (`rag`, `memory`, `tools`).
        judge: Judges rubrics that name no backbone; else the backbone under test does.
        cassettes: Record into, or replay from, these cassettes.
        seed: Seeds the namespace from the setup.
        plugins: The toolsets `setup.tools` may name; every installed one when omitted.
        on_step: Told each step as it happens (the REPL's `/run` shows them).

    Raises:
        ScenarioFileError: The scenario names a prompt, toolset or judge that does not exist.
    """
    if cassettes is not None:
        backbone = cassettes.wrap(backbone)
        judge = cassettes.wrap(judge, role='judge') if judge is not None else None
    env = SuiteEnv(
        settings=settings,
        redis=redis,
        prompts=PromptLibrary.default(settings.prompts_dir),
        plugins=dict(plugins) if plugins is not None else installed_plugins(settings),
        seed=seed,
        judge=judge,
        judges=resolve_judges(settings, [scenario], cassettes=cassettes),
    )
    cell = Cell(backbone=backbone.name, prompt=prompt, ablation=tuple(sorted(set(ablation))))
    _check_suite([scenario], [cell], env.prompts, env.plugins, env.judges)
    return await _run_scenario(env, scenario, cell, backbone, on_step)


# --- engines: where the runs of a suite run -------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    """One run of a suite's matrix: a scenario in a cell, the `trial`-th time; `index` is its place in the report."""

    index: int
    scenario: Scenario
    cell: Cell
    trial: int


@dataclass(frozen=True)
class RunHooks:
    """What a front end is told while a suite runs."""

    on_run_start: Callable[[Scenario, Cell], None] | None = None
    on_run: Callable[[ScenarioRun], None] | None = None
    on_step: StepSink | None = None


class Engine(Protocol):
    """Runs the planned runs of a suite and returns them finished, in `planned` order."""

    async def run(self, env: SuiteEnv, planned: Sequence[PlannedRun], hooks: RunHooks) -> list[ScenarioRun]: ...


@dataclass(frozen=True)
class LocalEngine:
    """Runs in this process, `concurrency` runs at a time."""

    concurrency: int = 4

    async def run(self, env: SuiteEnv, planned: Sequence[PlannedRun], hooks: RunHooks) -> list[ScenarioRun]:
        limit = asyncio.Semaphore(self.concurrency)

        async def one(job: PlannedRun) -> ScenarioRun:
            async with limit:
                if hooks.on_run_start is not None:
                    hooks.on_run_start(job.scenario, job.cell)
                run = await run_planned(env, job, hooks.on_step)
                if hooks.on_run is not None:
                    hooks.on_run(run)
                return run

        return list(await asyncio.gather(*(one(job) for job in planned)))


async def run_planned(env: SuiteEnv, job: PlannedRun, on_step: StepSink | None = None) -> ScenarioRun:
    """Run one planned run on its cell's backbone (never raises for a problem of the run itself)."""
    return await _run_scenario(env, job.scenario, job.cell, env.backbones[job.cell.backbone], on_step, job.trial)


# --- the suite -------------------------------------------------------------------------------------


def _check_suite(
    scenarios: Sequence[Scenario],
    cells: Sequence[Cell],
    prompts: PromptLibrary,
    plugins: Mapping[str, ToolsetPlugin],
    judges: Mapping[str, Backbone],
) -> None:
    """Refuse a suite that cannot run, before running any of it: every problem, with its line."""
    for ref in {cell.prompt for cell in cells if cell.prompt is not None}:
        prompts.get(ref)  # PromptError names the choices
    problems: list[Problem] = []
    for scenario in scenarios:
        if scenario.setup.prompt is not None:
            try:
                prompts.get(scenario.setup.prompt)
            except PromptError as error:
                problems.append(scenario.problem(('setup', 'prompt'), str(error)))
        for index, name in enumerate(scenario.setup.tools or []):
            try:
                select([name], plugins)
            except TandemError as error:
                problems.append(scenario.problem(('setup', 'tools', index), str(error)))
        users = {scenario.setup.user, *(other.id for other in scenario.setup.other_users)}
        for index, turn in enumerate(scenario.turns):
            if turn.as_user is not None and turn.as_user not in users:
                known = ', '.join(sorted(users - {scenario.setup.user})) or 'none'
                problems.append(
                    scenario.problem(
                        ('turns', index, 'as_user'),
                        f'{turn.as_user!r} is not a user of this scenario: add it to setup.other_users (there: {known})',
                    )
                )
            judge = turn.expect.judge
            if judge is not None and judge.backbone is not None and judge.backbone not in judges:
                problems.append(
                    scenario.problem(
                        ('turns', index, 'expect', 'judge', 'backbone'), f'unknown judge backbone {judge.backbone!r}'
                    )
                )
    if problems:
        raise ScenarioFileError(problems)


def resolve_judges(
    settings: Settings, scenarios: Sequence[Scenario], *, cassettes: Cassettes | None = None
) -> dict[str, Backbone]:
    """The judge backbones the scenarios name, resolved once (and wrapped for record/replay).

    A name that cannot be resolved is left out; the suite check then points at the rubric naming it.
    """
    judges: dict[str, Backbone] = {}
    names = {turn.expect.judge.backbone for s in scenarios for turn in s.turns if turn.expect.judge is not None}
    for name in sorted(name for name in names if name is not None):
        try:
            if cassettes is not None and cassettes.mode == 'replay':
                config = settings.backbones.get(name) or (BackboneConfig(model=name) if ':' in name else None)
                if config is None:
                    continue
                judges[name] = cassettes.offline_backbone(name, config, role='judge')
            else:
                backbone = backbone_registry.configured(settings, name)
                judges[name] = cassettes.wrap(backbone, role='judge') if cassettes is not None else backbone
        except BackboneError:
            continue
    return judges


async def run_suite(
    scenarios: Sequence[Scenario],
    *,
    settings: Settings,
    redis: Redis,
    backbones: Sequence[Backbone],
    prompts: Sequence[str | None] = (None,),
    ablations: Sequence[tuple[str, ...]] = ((),),
    examples: str | None = None,
    concurrency: int = 4,
    trials: int = 1,
    judge: Backbone | None = None,
    cassettes: Cassettes | None = None,
    seed: Seeder = seed_scenario,
    plugins: Mapping[str, ToolsetPlugin] | None = None,
    on_run_start: Callable[[Scenario, Cell], None] | None = None,
    on_run: Callable[[ScenarioRun], None] | None = None,
    on_step: StepSink | None = None,
    engine: Engine | None = None,
) -> SuiteReport:
    """Run every scenario in every cell of backbone × prompt × ablation, `concurrency` runs at a time.

    Backbones are given as objects, so any model works, a test's scripted one included; the CLI
    resolves `--backbone` names to them. With `cassettes`, every backbone and judge records into
    them or replays from them.

    Args:
        scenarios: The scenarios, e.g. from `load_scenarios`.
        settings: The suite's settings (each scenario may override some).
        redis: Where each run gets its namespace.
        backbones: The backbone dimension; names must differ.
        prompts: The prompt dimension: `NAME@VERSION`s, or `None` for each scenario's own prompt.
        ablations: The ablation dimension, e.g. from `parse_ablations`.
        examples: An example set of the suite's tenant that every cell shows retrieved few-shot examples
            from (`Cell.examples`), whatever `examples.mode` says.
        concurrency: How many runs at once.
        trials: How often each scenario runs in each cell: models are stochastic, and the reports' intervals
            narrow with more trials.
        judge: Judges rubrics that name no backbone; else the backbone under test does.
        cassettes: Record into, or replay from, these cassettes.
        seed: Seeds each run's namespace.
        plugins: The toolsets `setup.tools` may name; every installed one when omitted.
        on_run_start: Called as each run starts (progress displays).
        on_run: Called with each finished run.
        on_step: Told every step of every run (by engines that run in this process).
        engine: Where the runs run: `LocalEngine(concurrency)` (the default), or
            `agent.scenarios.distributed.DistributedEngine`, which queues them for `tandem worker`s.

    Raises:
        ScenarioFileError: A scenario names a prompt, toolset or judge that does not exist.
        TandemError: Two backbones share a name, a `--prompt` does not exist, or `concurrency` or `trials` < 1.
    """
    if concurrency < 1:
        raise TandemError('--concurrency must be at least 1.')
    if trials < 1:
        raise TandemError('--trials must be at least 1.')
    names = [backbone.name for backbone in backbones]
    if not names:
        raise TandemError('no backbone to run the scenarios on: pass --backbone NAME or --model SPEC.')
    if len(set(names)) != len(names):
        raise TandemError(f'two backbones are called the same: {", ".join(names)}; give each its own name.')
    if cassettes is not None:
        backbones = [cassettes.wrap(backbone) for backbone in backbones]
        judge = cassettes.wrap(judge, role='judge') if judge is not None else None
    env = SuiteEnv(
        settings=settings,
        redis=redis,
        prompts=PromptLibrary.default(settings.prompts_dir),
        plugins=dict(plugins) if plugins is not None else installed_plugins(settings),
        seed=seed,
        judge=judge,
        judges=resolve_judges(settings, scenarios, cassettes=cassettes),
        backbones={backbone.name: backbone for backbone in backbones},
        cassettes=cassettes,
    )
    cells = build_matrix(names, prompts, ablations, examples)
    _check_suite(scenarios, cells, env.prompts, env.plugins, env.judges)
    planned = [
        PlannedRun(index, scenario, cell, trial)
        for index, (cell, scenario, trial) in enumerate(itertools.product(cells, scenarios, range(1, trials + 1)))
    ]
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    runs = await (engine or LocalEngine(concurrency)).run(
        env, planned, RunHooks(on_run_start=on_run_start, on_run=on_run, on_step=on_step)
    )
    mode: Literal['live', 'record', 'replay'] = cassettes.mode if cassettes is not None else 'live'
    return SuiteReport.of(cells, runs, started_at=started_at, duration_s=time.perf_counter() - started, mode=mode)
