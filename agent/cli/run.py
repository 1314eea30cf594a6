"""`tandem run PATH...`: run scenario suites over a matrix of backbones, prompts and ablations.

```bash
tandem run scenarios/                                   # every scenario, on the configured backbone
tandem run scenarios/ -b local -b tuned -p assistant@1 -p short@1 --ablate rag,memory
tandem run scenarios/ -k memory --report out/ --junit out/junit.xml
tandem run scenarios/ --record cassettes/               # then, in CI, with no key and no network:
tandem run scenarios/ --replay cassettes/
tandem run scenarios/ -n 5 --distributed                # queued for `tandem worker`s (see `worker`)
```

The exit code is 0 when every run passed, 1 when anything failed or could not run.

Test hook: `injected_backbones(backbone, ...)` makes `Backbone` objects (a scripted `FunctionModel`,
say) selectable with `--backbone NAME` while the block runs, without registering a resolver.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

from tandem.agent.cli._app import async_command, cli_settings, stderr, stdout
from tandem.agent.core.errors import BackboneError, TandemError

if TYPE_CHECKING:
    from tandem.agent.backbones.base import Backbone
    from tandem.agent.core.config import BackboneConfig, Settings
    from tandem.agent.scenarios.cassettes import Cassettes
    from tandem.agent.scenarios.results import Cell, ScenarioRun
    from tandem.agent.scenarios.schema import Scenario

__all__ = ['commands', 'distributed_module', 'injected_backbone', 'injected_backbones', 'run', 'worker']

_injected: dict[str, Backbone] = {}


@contextmanager
def injected_backbones(*backbones: Backbone) -> Generator[None]:
    """Let `tandem run --backbone NAME` pick these backbones by name while the block runs (for tests)."""
    before = dict(_injected)
    _injected.update({backbone.name: backbone for backbone in backbones})
    try:
        yield
    finally:
        _injected.clear()
        _injected.update(before)


def injected_backbone(name: str) -> Backbone | None:
    """The backbone `injected_backbones` put under `name`, if any."""
    return _injected.get(name)


def _replay_config(settings: Settings, name: str, recorded: dict[str, BackboneConfig]) -> BackboneConfig:
    from tandem.agent.core.config import BackboneConfig

    config = settings.backbones.get(name) or recorded.get(name)
    if config is not None:
        return config
    if ':' in name:
        return BackboneConfig(model=name)
    known = ', '.join(sorted({*settings.backbones, *recorded})) or 'none'
    raise BackboneError(
        f'unknown backbone {name!r} (configured or recorded: {known}): pass one of those, or --model SPEC.'
    )


async def _backbones(
    settings: Settings, names: Sequence[str], specs: Sequence[str], cassettes: Cassettes | None
) -> list[Backbone]:
    """The backbone dimension: `--backbone` names, then `--model` specs; in replay, never a live model."""
    from tandem.agent.backbones import base as registry
    from tandem.agent.core.config import BackboneConfig

    chosen: list[Backbone] = []
    if cassettes is not None and cassettes.mode == 'replay':
        recorded = {item.name: item.config for item in cassettes.recorded_backbones() if item.role == 'backbone'}
        for name in names:
            backbone = _injected.get(name)
            chosen.append(backbone or cassettes.offline_backbone(name, _replay_config(settings, name, recorded)))
        chosen += [cassettes.offline_backbone(spec, BackboneConfig(model=spec)) for spec in specs]
        if not chosen:
            preferred = settings.backbone
            if preferred is not None:
                chosen.append(cassettes.offline_backbone(preferred, _replay_config(settings, preferred, recorded)))
            else:
                chosen = [cassettes.offline_backbone(name, config) for name, config in recorded.items()]
        return chosen
    for name in names:
        chosen.append(_injected.get(name) or registry.configured(settings, name))
    chosen += [registry.backbone_from_config(spec, BackboneConfig(model=spec)) for spec in specs]
    if not chosen:
        chosen.append(await registry.resolve(settings))
    return chosen


def _judge(settings: Settings, name: str | None, cassettes: Cassettes | None) -> Backbone | None:
    from tandem.agent.backbones import base as registry

    if name is None:
        return None
    if name in _injected:
        return _injected[name]
    if cassettes is not None and cassettes.mode == 'replay':
        recorded = {item.name: item.config for item in cassettes.recorded_backbones()}
        return cassettes.offline_backbone(name, _replay_config(settings, name, recorded), role='judge')
    return registry.configured(settings, name)


commands = typer.Typer()
"""`tandem run`, merged into the root app by `main.py`."""


@commands.command('run')
def run(
    paths: Annotated[list[Path], typer.Argument(help='Scenario files, or directories searched for *.yaml.')],
    backbone: Annotated[
        list[str] | None, typer.Option('--backbone', '-b', help='A backbone name; repeat to compare several.')
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option('--model', '-m', help='A model string, e.g. openai-chat:qwen2.5; repeatable.')
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            '--prompt', '-p', help="NAME@VERSION for every scenario; repeat to compare. Default: each scenario's."
        ),
    ] = None,
    ablate: Annotated[
        list[str] | None,
        typer.Option(
            '--ablate', help='Also run with ingredients off: rag,memory,tools,examples (one cell each; + combines).'
        ),
    ] = None,
    keyword: Annotated[
        list[str] | None, typer.Option('-k', help='Only scenarios with this tag (or in their name); repeatable.')
    ] = None,
    concurrency: Annotated[int, typer.Option('--concurrency', '-j', min=1, help='Runs at once.')] = 4,
    trials: Annotated[
        int, typer.Option('--trials', '-n', min=1, help='Runs of each scenario per cell; rates get tighter intervals.')
    ] = 1,
    report: Annotated[
        Path | None,
        typer.Option('--report', help='Write the decision report (report.json, report.html) into this directory.'),
    ] = None,
    junit: Annotated[Path | None, typer.Option('--junit', help='Write JUnit XML to this file.')] = None,
    record: Annotated[
        Path | None, typer.Option('--record', help='Record every model request and response into this directory.')
    ] = None,
    replay: Annotated[
        Path | None, typer.Option('--replay', help='Serve model responses from these cassettes; no network.')
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option('--judge', help='The backbone that judges rubrics naming none (default: the one tested).'),
    ] = None,
    distributed: Annotated[
        bool,
        typer.Option(
            '--distributed', help='Queue the runs in Redis for `tandem worker`s instead of running them here.'
        ),
    ] = False,
) -> None:
    """Run scenario suites over backbones × prompts × ablations; exit 1 when anything fails."""
    from tandem.agent.scenarios.attribution import decide
    from tandem.agent.scenarios.cassettes import Cassettes
    from tandem.agent.scenarios.report import print_report, write_html, write_json, write_junit
    from tandem.agent.scenarios.runner import parse_ablations, run_suite
    from tandem.agent.scenarios.schema import load_scenarios, select_scenarios
    from tandem.agent.turn.build import open_redis

    settings = cli_settings()

    async def body() -> None:
        if record is not None and replay is not None:
            raise TandemError('--record and --replay exclude each other: record once, then replay.')
        if distributed and record is not None:
            raise TandemError('--record runs here: record once without --distributed, then --distributed --replay DIR.')
        # The queue's Redis before anything runs: a missing extra or a cluster URL stops here, in one line.
        queue = await asyncio.to_thread(distributed_module().broker_url, settings) if distributed else None
        scenarios = load_scenarios(paths)
        selected = select_scenarios(scenarios, keyword or [])
        if not selected:
            tags = sorted({tag for scenario in scenarios for tag in scenario.tags})
            raise TandemError(
                f'no scenario matches -k {" -k ".join(keyword or [])}; tags: {", ".join(tags) or "none"}.'
            )
        cassettes = Cassettes(record, 'record') if record else Cassettes(replay, 'replay') if replay else None
        ablations = parse_ablations(ablate or [])
        chosen = await _backbones(settings, backbone or [], model or [], cassettes)
        judge_backbone = _judge(settings, judge, cassettes)
        prompts: list[str | None] = list(prompt) if prompt else [None]
        total = len(selected) * len(chosen) * len(prompts) * len(ablations) * trials
        failures = 0
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        # Started with the first run, so a suite refused before running leaves no trace of a progress bar.
        progress = Progress(
            SpinnerColumn(),
            TextColumn('{task.description}'),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        )
        task = progress.add_task('running scenarios', total=total)

        def queued(count: int) -> None:
            progress.start()
            progress.update(task, description=f'{count} runs queued: waiting for `tandem worker`s')

        engine = distributed_module().DistributedEngine(queue, on_queued=queued) if queue is not None else None

        def started(scenario: Scenario, cell: Cell) -> None:
            if not progress.live.is_started:
                progress.start()
            progress.update(task, description=f'running {scenario.name} [dim]{cell.label}[/]')

        def finished(result: ScenarioRun) -> None:
            nonlocal failures
            failures += result.status != 'passed'
            mark = {'passed': '[green]✓[/]', 'failed': '[red]✗[/]', 'error': '[bold red]![/]'}[result.status]
            note = f' · [red]{failures} not passed[/]' if failures else ''
            progress.update(task, advance=1, description=f'{mark} {result.scenario} [dim]{result.cell.label}[/]{note}')

        try:
            async with open_redis(settings) as redis:
                outcome = await run_suite(
                    selected,
                    settings=settings,
                    redis=redis,
                    backbones=chosen,
                    prompts=prompts,
                    ablations=ablations,
                    concurrency=concurrency,
                    trials=trials,
                    judge=judge_backbone,
                    cassettes=cassettes,
                    on_run_start=started,
                    on_run=finished,
                    engine=engine,
                )
        finally:
            if progress.live.is_started:
                progress.stop()
        configs = {backbone.name: backbone.config for backbone in chosen}
        outcome = outcome.model_copy(update={'decision': decide(outcome.cells, configs)})
        print_report(outcome, stdout)
        if report is not None:
            html = write_html(outcome, report / 'report.html')
            data = write_json(outcome, report / 'report.json')
            stderr.print(f'report: {html} · {data}', style='dim', highlight=False, markup=False)
        if junit is not None:
            stderr.print(f'junit: {write_junit(outcome, junit)}', style='dim', highlight=False, markup=False)
        if cassettes is not None:
            done = f'{cassettes.written} written' if cassettes.mode == 'record' else f'{cassettes.hits} served'
            stderr.print(f'cassettes in {cassettes.directory}: {done}', style='dim', highlight=False, markup=False)
        if not outcome.passed:
            raise typer.Exit(1)

    async_command(body)()


def distributed_module() -> ModuleType:
    """`agent.scenarios.distributed`, or one line naming the extra it needs."""
    try:
        return importlib.import_module('tandem.agent.scenarios.distributed')
    except ImportError as error:
        raise TandemError(
            f'distributed runs need the distributed extra ({error.name} is missing): `make distributed` in a '
            'Tandem checkout (or `pip install "tandem[distributed]"`).'
        ) from None


@commands.command('worker')
def worker(
    concurrency: Annotated[int, typer.Option('--concurrency', '-j', min=1, help='Runs at once.')] = 4,
    name: Annotated[
        str | None, typer.Option('--name', help='How runs and logs name this worker (default: host-pid).')
    ] = None,
    reclaim_after: Annotated[
        float,
        typer.Option(
            '--reclaim-after',
            min=0.1,
            help="Seconds after which a run held by a worker that died goes to another (a live worker's never does).",
        ),
    ] = 60.0,
) -> None:
    """Run the scenario runs `tandem run --distributed` queues, from any machine that reaches its Redis."""
    from tandem.agent.turn.build import open_redis
    from tandem.memory.connection import mask_url

    settings = cli_settings()
    label = name or f'{socket.gethostname()}-{os.getpid()}'

    def ready(url: str) -> None:
        stderr.print(
            f'worker {label}: taking scenario runs from {mask_url(url)}, {concurrency} at a time; '
            'Ctrl-C stops it (its unfinished runs go to other workers).',
            highlight=False,
            markup=False,
        )

    def started(suite: str, scenario: Scenario, cell: Cell, trial: int) -> None:
        stderr.print(f'→ {scenario.name} [{cell.label}] trial {trial}', highlight=False, markup=False)

    def finished(result: ScenarioRun, recorded: bool) -> None:
        note = '' if recorded else ' (recorded already by another worker)'
        stderr.print(
            f'{result.status}: {result.scenario} [{result.cell.label}] trial {result.trial}{note}',
            highlight=False,
            markup=False,
        )

    async def body() -> None:
        module = distributed_module()
        url = await asyncio.to_thread(module.broker_url, settings)
        serving = asyncio.current_task()
        assert serving is not None
        # SIGTERM (a service manager, `kill`) stops it as Ctrl-C does: unfinished runs go back to the queue.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
        async with open_redis(settings) as redis:
            runner = module.Worker(settings, redis, label, on_start=started, on_run=finished)
            try:
                await module.serve_worker(
                    runner, url, concurrency=concurrency, reclaim_after_s=reclaim_after, on_ready=lambda: ready(url)
                )
            except asyncio.CancelledError:
                stderr.print(f'worker {label} stopped', highlight=False, markup=False)

    async_command(body)()
