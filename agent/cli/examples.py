"""`tandem examples`: the example sets few-shot prompting draws from (see `memory.examples`).

`agent/cli/main.py` registers `examples_app` as `tandem examples`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tandem.agent.cli._app import async_command, cli_settings, stderr, stdout
from tandem.agent.cli.tune import (
    DedupOpt,
    OnlyPassingOpt,
    ReportOpt,
    ScrubOpt,
    ScrubPiiOpt,
    SessionOpt,
    SessionsUserOpt,
    SinceOpt,
    TeacherOpt,
    TenantOpt,
    ToolsOpt,
    TraceSelection,
    UntilOpt,
    collect_examples,
)
from tandem.agent.core.errors import TandemError

if TYPE_CHECKING:
    from tandem.agent.core.config import Settings
    from tandem.memory.examples import AddResult, Example, ExampleSet

examples_app = typer.Typer(
    help='Example sets for few-shot prompting: the same conversations a fine-tune trains on, shown in the prompt.',
    no_args_is_help=True,
)

SetOpt = Annotated[str | None, typer.Option('--set', help='The example set (default: examples.set, "default").')]
OwnerOpt = Annotated[
    str | None, typer.Option('--owner', help="A user's own set instead of the tenant's (per-user examples).")
]
SetTenantOpt = Annotated[str | None, typer.Option('--tenant', help='Tenant of the set (default: the configured one).')]


@asynccontextmanager
async def _opened(
    settings: Settings, name: str | None, owner: str | None, tenant: str | None
) -> AsyncGenerator[ExampleSet]:
    from tandem.agent.turn.build import open_redis
    from tandem.memory.examples import ExampleSet

    async with open_redis(settings) as redis:
        yield ExampleSet(redis, tenant=tenant or settings.tenant, user=owner, name=name or settings.examples.set)


async def _store(settings: Settings, target: ExampleSet, examples: list[Example]) -> AddResult:
    from tandem.memory.knowledge.embeddings import make_embedder

    return await target.add(examples, config=settings.knowledge, embedder=make_embedder(settings.knowledge))


def _print_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    for where, reason in skipped:
        stderr.print(f'[yellow]skipped[/] {escape(where)}: {escape(reason)}', highlight=False)


def _added(result: AddResult, target: ExampleSet, skipped: int) -> None:
    parts = [f'added {len(result.added)} example(s) to {target.label}']
    if result.unchanged:
        parts.append(f'{len(result.unchanged)} already there')
    if skipped:
        parts.append(f'{skipped} skipped')
    stderr.print(escape(', '.join(parts)), highlight=False)


@examples_app.command('add')
def examples_add(
    report: ReportOpt = None,
    only_passing: OnlyPassingOpt = False,
    backbone: TeacherOpt = None,
    tenant: TenantOpt = None,
    user: SessionsUserOpt = None,
    session: SessionOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    scrub_pii: ScrubPiiOpt = False,
    scrub: ScrubOpt = None,
    dedup: DedupOpt = True,
    tools: ToolsOpt = None,
    name: SetOpt = None,
    owner: OwnerOpt = None,
) -> None:
    """Add stored sessions (or a scenario report's runs) as examples, chosen and scrubbed as `tune export` does."""
    from tandem.agent.tune.examples import examples_from_lines
    from tandem.agent.tune.export import ExportOptions

    settings = cli_settings()

    async def body() -> None:
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
        built = await collect_examples(settings, selection, ExportOptions(system='drop'))
        lines = [(f'example {index}', line) for index, line in enumerate(built.train, 1)]
        found = examples_from_lines(lines)
        _print_skipped(found.skipped)
        async with _opened(settings, name, owner, tenant) as target:
            _added(await _store(settings, target, found.examples), target, len(found.skipped) + len(built.dropped))

    async_command(body)()


@examples_app.command('import')
def examples_import(
    files: Annotated[
        list[Path], typer.Argument(help='Training JSONL (as `tune export` writes) or curated YAML files.')
    ],
    name: SetOpt = None,
    owner: OwnerOpt = None,
    tenant: SetTenantOpt = None,
) -> None:
    """Add the examples of training files or curated YAML files; bad ones are skipped with the reason."""
    from tandem.agent.tune.examples import read_examples

    settings = cli_settings()

    async def body() -> None:
        examples: list[Example] = []
        skipped = 0
        for path in files:
            found = read_examples(path)
            _print_skipped(found.skipped)
            examples += found.examples
            skipped += len(found.skipped)
        if not examples:
            raise TandemError(f'no valid example in {", ".join(map(str, files))}: each line needs "messages".')
        async with _opened(settings, name, owner, tenant) as target:
            _added(await _store(settings, target, examples), target, skipped)

    async_command(body)()


@examples_app.command('list')
def examples_list(
    name: SetOpt = None,
    owner: OwnerOpt = None,
    tenant: SetTenantOpt = None,
    limit: Annotated[int, typer.Option('--limit', '-n', min=1, help='Show at most this many.')] = 50,
    as_json: Annotated[bool, typer.Option('--json', help='One JSON object per example.')] = False,
) -> None:
    """The set's examples, in the order they were added: id, when added, size in tokens, and question."""
    settings = cli_settings()

    async def body() -> None:
        async with _opened(settings, name, owner, tenant) as target:
            total = await target.count()
            shown = await target.summaries(limit=limit)
        if as_json:
            for summary in shown:
                row = {
                    'id': summary.id,
                    'added_at': summary.added_at,
                    'tokens': summary.tokens,
                    'question': summary.question,
                }
                stdout.print(json.dumps(row, ensure_ascii=False), highlight=False, soft_wrap=True)
            return
        if not shown:
            stderr.print(
                f'example set {escape(target.label)} is empty: `tandem examples import FILE` or '
                '`tandem examples add` fills it.'
            )
            return
        table = Table('id', 'added', 'tokens', 'question', title=f'{target.label}: {total} example(s)')
        for summary in shown:
            table.add_row(summary.id, summary.added_at[:10], str(summary.tokens), escape(summary.question))
        stdout.print(table)
        if total > len(shown):
            stderr.print(f'{total - len(shown)} more: --limit {total} shows them all.')

    async_command(body)()


@examples_app.command('rm')
def examples_rm(
    ids: Annotated[list[str] | None, typer.Argument(help='Example ids (`tandem examples list` shows them).')] = None,
    name: SetOpt = None,
    owner: OwnerOpt = None,
    tenant: SetTenantOpt = None,
    every: Annotated[bool, typer.Option('--all', help='Remove every example of the set.')] = False,
    yes: Annotated[bool, typer.Option('--yes', '-y', help='With --all: do not ask.')] = False,
) -> None:
    """Remove examples by id, or the whole set with --all."""
    settings = cli_settings()

    async def body() -> None:
        if bool(ids) == every:
            raise TandemError('name the example ids to remove, or pass --all (not both).')
        async with _opened(settings, name, owner, tenant) as target:
            if every:
                total = await target.count()
                if total and not yes:
                    if not sys.stdin.isatty():
                        raise TandemError(f'removing all {total} examples of {target.label!r} needs --yes.')
                    typer.confirm(f'Remove all {total} examples of {target.label!r}?', abort=True)
                removed = await target.clear()
                stderr.print(f'removed {removed} example(s) from {escape(target.label)}')
                return
            assert ids is not None
            removed_ids = await target.remove(ids)
            missing = [example_id for example_id in ids if example_id not in removed_ids]
            if missing:
                raise TandemError(
                    f'{", ".join(missing)}: no such example in {target.label!r} '
                    f'({len(removed_ids)} removed); `tandem examples list` shows the ids.'
                )
            stderr.print(f'removed {len(removed_ids)} example(s) from {escape(target.label)}')

    async_command(body)()


@examples_app.command('export')
def examples_export(
    out: Annotated[Path, typer.Option('--out', '-o', help='The JSONL file to write (the training format).')],
    name: SetOpt = None,
    owner: OwnerOpt = None,
    tenant: SetTenantOpt = None,
) -> None:
    """Write the set as a training file: what `tune submit` trains on, and `examples import` reads back."""
    from tandem.agent.tune.examples import write_examples

    settings = cli_settings()

    async def body() -> None:
        async with _opened(settings, name, owner, tenant) as target:
            examples = await target.get(await target.ids())
        if not examples:
            raise TandemError(f'example set {target.label!r} is empty: nothing to export.')
        write_examples(out, examples)
        stderr.print(f'wrote {len(examples)} example(s) to {escape(str(out))}')

    async_command(body)()
