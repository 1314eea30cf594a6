"""User control over long-term memory: `tandem memory list|forget|export|import`, and the REPL's `/memory`.

Every command acts on one user (`--user`, else the configured user) of the configured tenant; no
command shows, exports or deletes another user's facts. They work whether or not `memory.enabled`
is on, so memory can be inspected and cleaned up after turning it off.

`agent.cli.main` registers `memory_app` as `tandem memory`; the commands use its helpers for settings,
errors and output, imported when a command runs, so the REPL can use `MemoryCommands` without the CLI.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tandem.agent.core.errors import TandemError
from tandem.agent.core.files import write_atomically

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tandem.agent.core.config import Settings
    from tandem.agent.turn.deps import Deps
    from tandem.memory.connection import RedisClient
    from tandem.memory.facts import Fact, FactStore

__all__ = ['MemoryCommands', 'memory_app']

memory_app = typer.Typer(
    help='Long-term memory: list, forget, export and import what the assistant remembers about a user.',
    no_args_is_help=True,
)

UserOpt = Annotated[str | None, typer.Option('--user', '-u', help='User id; the configured user when omitted.')]

_LABEL = {'user-stated': 'stated', 'inferred': 'inferred', 'tool': 'from a tool'}


def _store(settings: Settings, redis: RedisClient) -> FactStore:
    from tandem.memory.facts import FactStore

    config = settings.memory
    return FactStore(
        redis,
        default_ttl_seconds=config.fact_ttl_seconds,
        similarity_threshold=config.similarity_threshold,
        max_facts=config.max_facts,
    )


def _ids(settings: Settings, user: str | None) -> tuple[str, str]:
    from tandem.memory.keys import validate_id

    return validate_id('tenant', settings.tenant), validate_id('user', user or settings.user)


def _table(facts: list[Fact]) -> Table:
    table = Table('#', 'id', 'fact', 'source', 'updated', 'expires')
    for number, fact in enumerate(facts, 1):
        table.add_row(
            str(number),
            fact.id,
            fact.text,
            _LABEL[fact.source],
            f'{fact.updated_at:%Y-%m-%d %H:%M}',
            f'{fact.expires_at:%Y-%m-%d %H:%M}' if fact.expires_at else '',
        )
    return table


@memory_app.command('list')
def memory_list(
    user: UserOpt = None,
    as_json: Annotated[bool, typer.Option('--json', help='Print the facts as JSON.')] = False,
) -> None:
    """List what is remembered about a user, oldest first."""
    from tandem.agent.cli._app import async_command, cli_settings, stdout
    from tandem.agent.turn.build import open_redis

    settings = cli_settings()

    async def body() -> None:
        tenant, user_id = _ids(settings, user)
        async with open_redis(settings) as redis:
            facts = await _store(settings, redis).list_facts(tenant, user_id)
        if as_json:
            sys.stdout.write(json.dumps([fact.model_dump(mode='json') for fact in facts], indent=2) + '\n')
        elif not facts:
            stdout.print(f'nothing is remembered about user {user_id}', highlight=False)
        else:
            stdout.print(_table(facts), markup=False)

    async_command(body)()


@memory_app.command('forget')
def memory_forget(
    fact_ids: Annotated[list[str] | None, typer.Argument(help='Fact ids, as `tandem memory list` shows them.')] = None,
    user: UserOpt = None,
    forget_all: Annotated[bool, typer.Option('--all', help='Forget every fact of the user.')] = False,
    yes: Annotated[bool, typer.Option('--yes', '-y', help='Do not ask before forgetting everything.')] = False,
) -> None:
    """Forget facts by id, or every fact of the user with --all."""
    from tandem.agent.cli._app import async_command, cli_settings, fail, stderr
    from tandem.agent.turn.build import open_redis

    settings = cli_settings()
    if forget_all == bool(fact_ids):
        raise fail(TandemError('name the fact ids to forget, or pass --all (not both).'))

    async def body() -> None:
        tenant, user_id = _ids(settings, user)
        async with open_redis(settings) as redis:
            store = _store(settings, redis)
            if forget_all:
                if not yes and not typer.confirm(f'Forget everything remembered about user {user_id}?'):
                    stderr.print('nothing was forgotten')
                    return
                count = await store.forget_all(tenant, user_id)
                stderr.print(f'forgot {count} fact{"" if count == 1 else "s"} of user {user_id}', highlight=False)
                return
            forgotten = await store.forget_many(tenant, user_id, fact_ids or [])
        for fact in forgotten:
            stderr.print(f'forgot {fact.id}: {fact.text}', highlight=False, markup=False)
        missing = [fact_id for fact_id in fact_ids or [] if fact_id not in {fact.id for fact in forgotten}]
        if missing:
            raise TandemError(
                f'user {user_id} has no fact {", ".join(missing)}: `tandem memory list --user {user_id}` shows the ids.'
            )

    async_command(body)()


@memory_app.command('export')
def memory_export(
    user: UserOpt = None,
    output: Annotated[
        Path | None, typer.Option('--output', '-o', help='Write to this file instead of standard output.')
    ] = None,
) -> None:
    """Export a user's facts as JSON (for backup, or `tandem memory import`)."""
    from tandem.agent.cli._app import async_command, cli_settings, stderr
    from tandem.agent.turn.build import open_redis

    settings = cli_settings()

    async def body() -> None:
        tenant, user_id = _ids(settings, user)
        async with open_redis(settings) as redis:
            data = await _store(settings, redis).export(tenant, user_id)
        text = json.dumps(data, indent=2, ensure_ascii=False) + '\n'
        if output is None:
            sys.stdout.write(text)
            return
        write_atomically(output, text)
        count = len(data['facts'])
        stderr.print(f'exported {count} fact{"" if count == 1 else "s"} of user {user_id} to {output}', highlight=False)

    async_command(body)()


@memory_app.command('import')
def memory_import(
    source: Annotated[
        str, typer.Argument(help='A JSON file from `tandem memory export` (or a list of facts); - for stdin.')
    ],
    user: UserOpt = None,
) -> None:
    """Import facts into a user's memory; facts the user already has are updated, not duplicated."""
    from tandem.agent.cli._app import async_command, cli_settings, stderr
    from tandem.agent.turn.build import open_redis

    settings = cli_settings()

    async def body() -> None:
        tenant, user_id = _ids(settings, user)
        data = _read_json(source)
        async with open_redis(settings) as redis:
            report = await _store(settings, redis).import_facts(tenant, user_id, data)
        stderr.print(
            f'imported into user {user_id}: {report.created} new, {report.updated} already known (updated), '
            f'{report.skipped} skipped (expired or invalid)',
            highlight=False,
        )

    async_command(body)()


def _read_json(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == '-' else Path(source).read_text(encoding='utf-8')
    except OSError as error:
        raise TandemError(f'cannot read {source}: {error.strerror or error}.') from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TandemError(f'{source} is not JSON (line {error.lineno}, column {error.colno}: {error.msg}).') from error


class MemoryCommands:
    """The REPL's `/memory` (list), `/memory forget N|ID` and `/memory forget all`.

    Numbers refer to the last list shown, so a fact another process added meanwhile can't shift
    what `forget N` deletes.
    """

    USAGE = 'usage: /memory, /memory forget N (a number from /memory, or a fact id), /memory forget all'

    def __init__(self, console: Console, *, confirm: Callable[[str], Awaitable[bool]]) -> None:
        self._console = console
        self._confirm = confirm
        self._shown: list[str] = []

    async def run(self, deps: Deps, argument: str) -> None:
        """Run `/memory ARGUMENT` for the user of `deps`.

        Raises:
            TandemError: Bad arguments, or long-term memory is off.
        """
        store = deps.facts
        if store is None:
            raise TandemError('long-term memory is off: set memory.enabled = true to use /memory.')
        tenant, user = deps.identity.tenant, deps.identity.user
        words = argument.split()
        if not words:
            facts = await store.list_facts(tenant, user)
            self._shown = [fact.id for fact in facts]
            if not facts:
                self._console.print('(nothing remembered yet)')
            for number, fact in enumerate(facts, 1):
                self._console.print(
                    f'{number:>3}. {fact.text}  ({fact.id} · {_LABEL[fact.source]} {fact.updated_at:%Y-%m-%d})',
                    highlight=False,
                    markup=False,
                )
            return
        if words[0] != 'forget' or len(words) != 2:
            raise TandemError(self.USAGE)
        target = words[1]
        if target == 'all':
            if not await self._confirm(f'Forget everything remembered about {user}?'):
                self._console.print('nothing was forgotten')
                return
            count = await store.forget_all(tenant, user)
            self._shown = []
            self._console.print(f'forgot {count} fact{"" if count == 1 else "s"}')
            return
        if target.isdigit():
            shown = self._shown or [fact.id for fact in await store.list_facts(tenant, user)]
            number = int(target)
            if not 1 <= number <= len(shown):
                raise TandemError(f'no fact number {number}: /memory lists {len(shown)}.')
            target = shown[number - 1]
        forgotten = await store.forget(tenant, user, target)
        if forgotten is None:
            raise TandemError(f'no fact {target}: /memory lists what is remembered.')
        self._console.print(f'forgot: {forgotten.text}', highlight=False, markup=False)
