"""`tandem tune`: export traces, validate them, fine-tune, follow the job, and compare base with tuned.

`agent/cli/main.py` registers `tune_app` as `tandem tune`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tandem.agent.cli._app import async_command, cli_settings, parse_tools, stderr, stdout
from tandem.agent.core.errors import TandemError

if TYPE_CHECKING:
    from tandem.agent.core.config import Settings
    from tandem.agent.tune.export import ExportOptions, ExportResult
    from tandem.agent.tune.jobs import JobUpdate
    from tandem.agent.tune.validate import DatasetReport

tune_app = typer.Typer(
    help='The prompting-vs-fine-tuning loop: export traces, validate, fine-tune, follow, compare.',
    no_args_is_help=True,
)

_SYSTEM_MODES = ('keep', 'short', 'drop')


def _date(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise TandemError(f'{flag} {value!r}: give a date like 2025-06-01 or 2025-06-01T12:00.') from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


ReportOpt = Annotated[
    Path | None, typer.Option('--report', help='Take a scenario report (`tandem run` JSON) instead of sessions.')
]
OnlyPassingOpt = Annotated[bool, typer.Option('--only-passing', help='With --report: keep only the runs that passed.')]
TeacherOpt = Annotated[
    str | None, typer.Option('--backbone', help='With --report: keep only the runs of this backbone.')
]
TenantOpt = Annotated[str | None, typer.Option(help='Tenant of the sessions (default: the configured one).')]
SessionsUserOpt = Annotated[str | None, typer.Option('--user', '-u', help="Only this user's sessions.")]
SessionOpt = Annotated[list[str] | None, typer.Option('--session', '-s', help='Only these sessions (repeat).')]
SinceOpt = Annotated[str | None, typer.Option(help='Only sessions last active on or after this date.')]
UntilOpt = Annotated[str | None, typer.Option(help='Only sessions last active before this date.')]
ScrubPiiOpt = Annotated[bool, typer.Option('--scrub-pii', help='Replace emails and phone numbers.')]
ScrubOpt = Annotated[
    list[str] | None, typer.Option('--scrub', help='A scrubber module:function from str to str (repeat).')
]
DedupOpt = Annotated[bool, typer.Option('--dedup/--no-dedup', help='Drop duplicate examples.')]
ToolsOpt = Annotated[
    str | None, typer.Option('--tools', help='Toolsets whose definitions go in each example (default: configured).')
]


@dataclass(frozen=True)
class TraceSelection:
    """Which conversations become examples, and how they are cleaned: `tune export`'s and `examples add`'s options."""

    report: Path | None = None
    only_passing: bool = False
    backbone: str | None = None
    tenant: str | None = None
    user: str | None = None
    sessions: Sequence[str] = ()
    since: str | None = None
    until: str | None = None
    scrub_pii: bool = False
    scrub: Sequence[str] = ()
    dedup: bool = True
    tools: str | None = None


async def collect_examples(
    settings: Settings, selection: TraceSelection, options: ExportOptions | None = None
) -> ExportResult:
    """The examples `selection` picks, built with `options` (its tools and scrubbers are filled in here).

    What is skipped, and tools called without a definition, are reported on stderr.

    Raises:
        TandemError: Bad filters, or no example at all.
    """
    from tandem.agent.tune.export import (
        ExportOptions,
        SessionQuery,
        Trace,
        build_examples,
        report_traces,
        session_traces,
        tool_definitions,
    )
    from tandem.agent.tune.scrub import BUILTIN_SCRUBBER, Scrubber, load_scrubber
    from tandem.agent.turn.build import open_redis, selected_toolsets

    if selection.report is None and (selection.only_passing or selection.backbone):
        raise TandemError('--only-passing and --backbone filter a scenario report: add --report FILE.')
    scrubbers: list[Scrubber] = [load_scrubber(BUILTIN_SCRUBBER)] if selection.scrub_pii else []
    with _cwd_importable():
        scrubbers += [load_scrubber(path) for path in selection.scrub]
    toolsets = [plugin.build() for plugin in selected_toolsets(settings, parse_tools(selection.tools))]
    options = dataclasses.replace(
        options or ExportOptions(prompts_dir=settings.prompts_dir),
        tools=tool_definitions(toolsets),
        scrubbers=scrubbers,
        dedup=selection.dedup,
    )
    traces: list[Trace]
    if selection.report is not None:
        traces = report_traces(selection.report, only_passing=selection.only_passing, backbone=selection.backbone)
        origin = f'scenario report {selection.report}'
    else:
        query = SessionQuery(
            tenant=selection.tenant or settings.tenant,
            user=selection.user,
            sessions=selection.sessions,
            since=_date(selection.since, '--since'),
            until=_date(selection.until, '--until'),
        )
        async with open_redis(settings) as redis:
            traces = await session_traces(redis, query)
        origin = f'tenant {query.tenant}' + (f', user {selection.user}' if selection.user else '')
    result = build_examples(traces, options)
    for source, reason in result.dropped:
        stderr.print(f'[yellow]skipped[/] {escape(source)}: {escape(reason)}', highlight=False)
    if result.undefined_tools:
        names = ', '.join(sorted(result.undefined_tools))
        stderr.print(
            f'[yellow]note:[/] no definition for tool(s) {escape(names)}: given a bare one; '
            'pass --tools to include theirs.',
            highlight=False,
        )
    if not result.examples:
        raise TandemError(f'no examples from {origin} ({len(traces)} conversation(s) found).')
    return result


@tune_app.command('export')
def tune_export(
    out: Annotated[Path, typer.Option('--out', '-o', help='The training JSONL file to write.')],
    report: ReportOpt = None,
    only_passing: OnlyPassingOpt = False,
    backbone: TeacherOpt = None,
    tenant: TenantOpt = None,
    user: SessionsUserOpt = None,
    session: SessionOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    system: Annotated[
        str, typer.Option(help='System prompt: keep it, replace it by the short prompt, or drop it.')
    ] = 'keep',
    short_prompt: Annotated[str, typer.Option(help='The prompt `--system short` renders (NAME or NAME@V).')] = 'short',
    system_text: Annotated[str | None, typer.Option(help='A literal system prompt for every example.')] = None,
    scrub_pii: ScrubPiiOpt = False,
    scrub: ScrubOpt = None,
    dedup: DedupOpt = True,
    validation_fraction: Annotated[
        float, typer.Option(help='Share of examples held out for validation, e.g. 0.1.')
    ] = 0.0,
    validation_out: Annotated[
        Path | None, typer.Option(help='Where the validation split goes (default: NAME.validation.jsonl).')
    ] = None,
    seed: Annotated[int, typer.Option(help='Seed of the train/validation shuffle.')] = 0,
    tools: ToolsOpt = None,
) -> None:
    """Export stored sessions (or a scenario report's runs) as OpenAI chat fine-tuning JSONL."""
    from tandem.agent.tune.export import ExportOptions, validation_path, write_jsonl

    settings = cli_settings()

    async def body() -> None:
        if system not in _SYSTEM_MODES:
            raise TandemError(f'--system {system!r}: choose keep, short or drop.')
        selection = TraceSelection(
            report=report,
            only_passing=only_passing,
            backbone=backbone,
            tenant=tenant,
            user=user,
            sessions=session or (),
            since=since,
            until=until,
            scrub_pii=scrub_pii,
            scrub=scrub or (),
            dedup=dedup,
            tools=tools,
        )
        options = ExportOptions(
            system=system,  # type: ignore[arg-type]  # checked above
            short_prompt=short_prompt,
            system_text=system_text,
            prompts_dir=settings.prompts_dir,
            validation_fraction=validation_fraction,
            seed=seed,
        )
        result = await collect_examples(settings, selection, options)
        write_jsonl(out, result.train)
        written = f'wrote {len(result.train)} example(s) to {out}'
        if result.validation:
            held = validation_out or validation_path(out)
            write_jsonl(held, result.validation)
            written += f' and {len(result.validation)} to {held}'
        extras = [f'{len(result.dropped)} skipped'] if result.dropped else []
        if result.duplicates:
            extras.append(f'{result.duplicates} duplicate(s) dropped')
        stderr.print(
            escape(written + (f' ({", ".join(extras)})' if extras else '') + f'. Next: tandem tune validate {out}')
        )

    async_command(body)()


class _cwd_importable:
    """Make modules in the current directory importable while scrubber hooks load."""

    def __enter__(self) -> None:
        self._added = str(Path.cwd()) not in sys.path
        if self._added:
            sys.path.append(str(Path.cwd()))

    def __exit__(self, *exc: object) -> None:
        if self._added and str(Path.cwd()) in sys.path:
            sys.path.remove(str(Path.cwd()))


def _print_report(report: DatasetReport) -> None:
    for problem in report.problems:
        colour = 'red' if problem.level == 'error' else 'yellow'
        stderr.print(f'[{colour}]{problem.level}[/] {escape(str(problem))}', highlight=False, soft_wrap=True)
    data = report.as_dict()
    tokens = data['tokens']
    table = Table(title=Text(f'{report.path} for {report.model}'), show_header=False, title_justify='left')
    table.add_column(style='bold')
    table.add_column()
    approx = '' if report.exact_tokens else '≈ '
    table.add_row('examples', f'{report.examples} ({len(report.errors)} error(s), {len(report.warnings)} warning(s))')
    table.add_row(
        'tokens per example',
        f'{approx}min {tokens["min"]:,} · median {tokens["median"]:,} · max {tokens["max"]:,} '
        f'(limit {report.context_limit:,})',
    )
    table.add_row('counted with', report.counter_label)
    epochs = f'{report.epochs}' + (" (OpenAI's default for this many examples)" if report.epochs_auto else '')
    table.add_row('epochs', epochs)
    table.add_row(
        'training tokens', f'{approx}{report.training_tokens:,} ({report.billed_tokens_per_epoch:,} per epoch)'
    )
    if report.cost_usd is not None:
        table.add_row(
            'estimated cost', f'{approx}${report.cost_usd:,.2f} at ${report.price_per_mtok:g}/M training tokens'
        )
    else:
        table.add_row('estimated cost', f'unknown: no price for {report.model}; pass --price-per-mtok')
    stdout.print(table, markup=False)


@tune_app.command('validate')
def tune_validate(
    path: Annotated[Path, typer.Argument(help='The JSONL file.')],
    model: Annotated[str | None, typer.Option('--model', '--base', help='The base model it is for.')] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs to price (default: OpenAI's for the size).")] = None,
    context_limit: Annotated[int | None, typer.Option(help="Override the model's example limit.")] = None,
    price_per_mtok: Annotated[
        float | None, typer.Option(help='Override the training price, USD per million tokens.')
    ] = None,
    as_json: Annotated[bool, typer.Option('--json', help='Print the findings as JSON.')] = False,
) -> None:
    """Check every line (roles, tool-call ids, JSON arguments, last message), count tokens, estimate the cost."""
    from tandem.agent.tune.pricing import DEFAULT_BASE_MODEL
    from tandem.agent.tune.validate import validate_file

    cli_settings()

    async def body() -> None:
        report = validate_file(
            path,
            model=model or DEFAULT_BASE_MODEL,
            epochs=epochs,
            context_limit=context_limit,
            price_per_mtok=price_per_mtok,
        )
        if as_json:
            sys.stdout.write(json.dumps(report.as_dict(), indent=2) + '\n')
        else:
            _print_report(report)
        if not report.ok:
            raise TandemError(f'{path} has {len(report.errors)} error(s); each names its line above.')

    async_command(body)()


@tune_app.command('submit')
def tune_submit(
    path: Annotated[Path, typer.Argument(help='The training JSONL file.')],
    base: Annotated[str, typer.Option('--base', help='The model to fine-tune, e.g. gpt-4.1-mini-2025-04-14.')],
    suffix: Annotated[str | None, typer.Option(help="Up to 64 characters added to the tuned model's name.")] = None,
    epochs: Annotated[int | None, typer.Option(help='Training epochs (default: OpenAI picks).')] = None,
    validation_file: Annotated[Path | None, typer.Option(help='A validation JSONL file.')] = None,
    name: Annotated[
        str | None, typer.Option('--name', help='The backbone name to register the tuned model under.')
    ] = None,
    seed: Annotated[int | None, typer.Option(help="The job's seed, for reproducibility.")] = None,
    follow: Annotated[bool, typer.Option('--follow/--no-follow', help='Follow the job until it ends.')] = False,
    interval: Annotated[float, typer.Option(help='Seconds between polls when following.')] = 10.0,
) -> None:
    """Validate, upload and start an OpenAI fine-tuning job (`tandem tune status` follows it)."""
    from tandem.agent.tune.jobs import JobLog, openai_client, submit_job
    from tandem.agent.tune.validate import validate_file

    settings = cli_settings()

    async def body() -> None:
        for file in (path, *([validation_file] if validation_file else [])):
            report = validate_file(file, model=base, epochs=epochs)
            if not report.ok:
                _print_report(report)
                raise TandemError(f'{file} has {len(report.errors)} error(s): fix them, then submit again.')
            for warning in report.warnings:
                stderr.print(f'[yellow]warning[/] {escape(str(warning))}', highlight=False)
            if file == path and report.cost_usd is not None:
                approx = '' if report.exact_tokens else '≈'
                stderr.print(
                    f'{report.examples} examples, {approx}{report.training_tokens:,} training tokens, '
                    f'estimated {approx}${report.cost_usd:,.2f}',
                    highlight=False,
                )
        client = openai_client()
        job, _ = await submit_job(
            client,
            path,
            base_model=base,
            log=JobLog(settings.home),
            suffix=suffix,
            epochs=epochs,
            validation=validation_file,
            backbone=name,
            seed=seed,
        )
        sys.stdout.write(job.id + '\n')
        stderr.print(escape(f'submitted fine-tuning job {job.id} on {base} ({job.status}).'), highlight=False)
        if follow:
            await _follow(settings.home, job.id, interval=interval, once=False, name=None)
        else:
            stderr.print(f'follow it with: tandem tune status {job.id}', highlight=False)

    async_command(body)()


@tune_app.command('status')
def tune_status(
    job_id: Annotated[str | None, typer.Argument(help='The job id (default: the last one submitted here).')] = None,
    interval: Annotated[float, typer.Option(help='Seconds between polls.')] = 10.0,
    once: Annotated[bool, typer.Option('--once', help='Show the current state and return.')] = False,
    name: Annotated[str | None, typer.Option('--name', help='Register the tuned model under this name.')] = None,
) -> None:
    """Follow a fine-tuning job's events live; when it succeeds, register the tuned model as a backbone."""
    from tandem.agent.tune.jobs import JobLog

    settings = cli_settings()

    async def body() -> None:
        chosen = job_id
        if chosen is None:
            latest = JobLog(settings.home).latest()
            if latest is None:
                raise TandemError('no job submitted from here yet: pass a job id (ftjob-...).')
            chosen = latest.job_id
        await _follow(settings.home, chosen, interval=interval, once=once, name=name)

    async_command(body)()


async def _follow(home: Path, job_id: str, *, interval: float, once: bool, name: str | None) -> None:
    from rich.live import Live

    from tandem.agent.tune.jobs import JobLog, custom_base_url, follow_job, openai_client, register_tuned_model

    client = openai_client()
    log = JobLog(home)
    view = _JobView(job_id)
    live = Live(view.render(), console=stderr, refresh_per_second=4, transient=False) if stderr.is_terminal else None

    def show(update: JobUpdate) -> None:
        view.update(update)
        if live is not None:
            live.update(view.render())
        else:
            for line in view.take_lines():
                stderr.print(escape(line), highlight=False, soft_wrap=True)

    if live is not None:
        with live:
            job = await follow_job(client, job_id, on_update=show, interval=interval, once=once)
    else:
        job = await follow_job(client, job_id, on_update=show, interval=interval, once=once)
    if job.status == 'succeeded':
        registration = register_tuned_model(job, log.find(job_id), base_url=custom_base_url(client), name=name)
        verb = {'added': 'registered', 'replaced': 'updated', 'unchanged': 'already registered'}[registration.action]
        stderr.print(
            f'[green]succeeded:[/] {escape(str(job.fine_tuned_model))} {verb} as backbone '
            f'[bold]{escape(registration.name)}[/] in {escape(str(registration.path))}. '
            f'Try: tandem ask --backbone {escape(registration.name)} "hello"',
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.write(registration.name + '\n')
    elif job.status in ('failed', 'cancelled'):
        reason = f': {job.error.message}' if job.error is not None and job.error.message else ''
        raise TandemError(f'job {job_id} {job.status}{reason}')
    elif once:
        stderr.print(
            escape(f'job {job_id} is {job.status}; follow it with: tandem tune status {job_id}'), highlight=False
        )


class _JobView:
    """What the live display of a job shows: its state, progress, latest metrics and events."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.status = 'unknown'
        self.model = ''
        self.tuned: str | None = None
        self.trained_tokens: int | None = None
        self.metrics: dict[str, Any] = {}
        self.events: list[tuple[int, str, str]] = []
        self._unprinted: list[str] = []
        self.started = time.monotonic()

    def update(self, update: JobUpdate) -> None:
        job = update.job
        if job.status != self.status:
            self._unprinted.append(f'status: {job.status}')
        self.status = job.status
        self.model = job.model
        self.tuned = job.fine_tuned_model
        self.trained_tokens = job.trained_tokens
        self.metrics = update.metrics or self.metrics
        for event in update.new_events:
            self.events.append((event.created_at, event.level, event.message))
            self._unprinted.append(f'{datetime.fromtimestamp(event.created_at, UTC):%H:%M:%S} {event.message}')

    def take_lines(self) -> list[str]:
        lines, self._unprinted = self._unprinted, []
        return lines

    def render(self) -> Group:
        colour = {'succeeded': 'green', 'failed': 'red', 'cancelled': 'red', 'running': 'cyan'}.get(
            self.status, 'yellow'
        )
        head = Table.grid(padding=(0, 2))
        head.add_row('job', Text(self.job_id))
        head.add_row('base', Text(self.model or '…'))
        head.add_row('status', Text(self.status, style=colour))
        head.add_row('elapsed', f'{time.monotonic() - self.started:,.0f} s')
        step, total = self.metrics.get('step'), self.metrics.get('total_steps')
        if isinstance(step, int) and isinstance(total, int) and total:
            filled = round(20 * step / total)
            head.add_row('progress', Text(f'[{"█" * filled}{"·" * (20 - filled)}] step {step}/{total}'))
        losses = ', '.join(
            f'{key} {value:.4g}'
            for key, value in self.metrics.items()
            if 'loss' in key and isinstance(value, int | float)
        )
        if losses:
            head.add_row('metrics', Text(losses))
        if self.trained_tokens:
            head.add_row('trained tokens', f'{self.trained_tokens:,}')
        if self.tuned:
            head.add_row('model', Text(self.tuned, style='bold'))
        recent = Table('time', 'event', box=None, show_header=False, padding=(0, 1))
        for created, level, message in self.events[-8:]:
            style = {'error': 'red', 'warn': 'yellow'}.get(level, '')
            recent.add_row(f'{datetime.fromtimestamp(created, UTC):%H:%M:%S}', Text(message, style=style))
        return Group(head, recent)


@tune_app.command('compare')
def tune_compare(
    paths: Annotated[list[Path], typer.Argument(help='Scenario files, or directories searched for *.yaml.')],
    base: Annotated[str, typer.Option('--base', help='The base backbone (name from the config, or a model string).')],
    tuned: Annotated[str, typer.Option('--tuned', help='The fine-tuned backbone.')],
    full_prompt: Annotated[
        str | None, typer.Option(help="The full prompt, NAME[@VERSION] (default: each scenario's own).")
    ] = None,
    short_prompt: Annotated[str, typer.Option(help='The short prompt, NAME[@VERSION].')] = 'short',
    short_rag: Annotated[bool, typer.Option('--short-rag', help='Keep retrieval on in the short-prompt arms.')] = False,
    keyword: Annotated[
        list[str] | None, typer.Option('-k', help='Only scenarios with this tag (or in their name); repeatable.')
    ] = None,
    concurrency: Annotated[int, typer.Option('--concurrency', '-j', min=1, help='Runs at once, per arm.')] = 4,
    trials: Annotated[
        int, typer.Option('--trials', '-n', min=1, help='Runs of each scenario per arm; differences need enough.')
    ] = 1,
    judge: Annotated[
        str | None, typer.Option(help='The backbone that judges rubrics (default: the one tested).')
    ] = None,
    out: Annotated[Path, typer.Option('--out', '-o', help='Where to write the decision report (Markdown).')] = Path(
        'tandem-compare.md'
    ),
    report: Annotated[
        Path | None,
        typer.Option('--report', help='Also write the decision report (report.json, report.html) into this directory.'),
    ] = None,
    as_json: Annotated[bool, typer.Option('--json', help='Print the numbers and the verdict as JSON.')] = False,
    curve: Annotated[
        bool,
        typer.Option(
            help='Also run the other configured tunes of the same base model (other training_examples) as the '
            'fine-tune arm, for the learning curve.'
        ),
    ] = True,
    examples: Annotated[
        Path | None,
        typer.Option(
            '--examples',
            help="The fine-tune's training file (JSONL): a fourth arm runs the base model with the short prompt and "
            'the examples of it most like each question (examples.k of them) in the prompt. Default: the file '
            'the tune recorded (training_file), when it is on this machine.',
        ),
    ] = None,
    few_shot: Annotated[
        bool, typer.Option('--few-shot/--no-few-shot', help='Run the few-shot arm when a training file is known.')
    ] = True,
) -> None:
    """Run your scenarios on base + full prompting + RAG, base + short prompt, tuned + short prompt, and (with
    --examples) base + short prompt + few-shot examples from the training file; decide."""
    from tandem.agent.scenarios.report import write_html, write_json
    from tandem.agent.scenarios.schema import load_scenarios, select_scenarios
    from tandem.agent.tune.compare import arm_headers, compare, curve_tunes, metric_rows, render_markdown
    from tandem.agent.turn.build import open_redis

    settings = cli_settings()

    async def body() -> None:
        if report is not None and report.exists() and not report.is_dir():
            raise TandemError(f'--report takes a directory, as tandem run does; {report} is a file.')
        scenarios = select_scenarios(load_scenarios(paths), keyword or [])
        if not scenarios:
            raise TandemError(
                f'no scenarios found in {", ".join(map(str, paths))}'
                + (' for -k ' + ','.join(keyword) if keyword else '')
                + '.'
            )
        base_backbone, tuned_backbone = _named_backbone(settings, base), _named_backbone(settings, tuned)
        judge_backbone = _named_backbone(settings, judge) if judge else None
        others = [_named_backbone(settings, name) for name in curve_tunes(settings, tuned_backbone)] if curve else []
        if others:
            stderr.print(
                escape(
                    f'learning curve: also running {", ".join(other.name for other in others)} as the fine-tune arm '
                    '(--no-curve skips them)'
                ),
                highlight=False,
            )
        training = _training_file(tuned_backbone, examples) if few_shot else None
        arms = 3 + len(others) + (training is not None)
        done = 0

        def on_run(run: Any) -> None:
            nonlocal done
            done += 1
            mark = {'passed': '[green]✓[/]', 'failed': '[red]✗[/]', 'error': '[bold red]![/]'}[run.status]
            stderr.print(
                f'{mark} {done}/{arms * len(scenarios) * trials} ' + escape(f'{run.scenario} · {run.cell.label}'),
                highlight=False,
            )

        async with open_redis(settings) as redis:
            comparison = await compare(
                scenarios,
                settings=settings,
                redis=redis,
                base=base_backbone,
                tuned=tuned_backbone,
                full_prompt=full_prompt,
                short_prompt=short_prompt,
                short_rag=short_rag,
                concurrency=concurrency,
                trials=trials,
                judge=judge_backbone,
                on_run=on_run,
                curve=others,
                examples=training,
            )
        _write_text(out, render_markdown(comparison))
        written = ''
        if report is not None:
            decided = comparison.decided_report
            html, data = write_html(decided, report / 'report.html'), write_json(decided, report / 'report.json')
            written = f'; report: {html} · {data}'
        if as_json:
            sys.stdout.write(json.dumps(comparison.as_dict(), indent=2) + '\n')
        else:
            table = Table(*arm_headers(comparison), title='prompting vs fine-tuning', title_justify='left')
            for row in metric_rows(comparison):
                table.add_row(*row)
            stdout.print(table, markup=False)
            sentence = comparison.verdict
            stdout.print('[bold]Verdict:[/] ' + escape(f'{sentence[0].upper()}{sentence[1:]}.'), highlight=False)
        stderr.print(escape(f'decision report: {out}{written}'), highlight=False)

    async_command(body)()


def _training_file(tuned: Any, given: Path | None) -> Path | None:
    """The few-shot arm's training file: `--examples`, else the one the tune recorded, if it is here."""
    if given is not None:
        return given
    recorded = tuned.config.training_file
    if recorded and Path(recorded).is_file():
        stderr.print(
            escape(
                f'few-shot arm: the examples of {recorded}, which {tuned.name} was trained on (--no-few-shot skips it)'
            ),
            highlight=False,
        )
        return Path(recorded)
    where = f'{recorded} is not on this machine' if recorded else f'{tuned.name} records no training file'
    stderr.print(
        escape(
            f'note: no few-shot arm ({where}): add --examples TRAIN.jsonl, the file the tune trained on, to also '
            'run the base model with those examples in the prompt.'
        ),
        highlight=False,
    )
    return None


def _named_backbone(settings: Any, name: str) -> Any:
    """A backbone by config name or model string; the scenario CLI's test hook (`injected_backbones`) first."""
    from tandem.agent.backbones import base as registry
    from tandem.agent.cli.run import injected_backbone

    return injected_backbone(name) or registry.configured(settings, name)


def _write_text(path: Path, text: str) -> None:
    from tandem.agent.core.files import write_atomically

    write_atomically(path, text)
