"""The core commands: `chat`, `ask`, and inspecting config, backbones, tools, prompts, sessions and Redis."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tandem.agent.cli._app import (
    BackboneOpt,
    ContinueOpt,
    ModelOpt,
    PromptOpt,
    SessionOpt,
    SystemOpt,
    ToolsOpt,
    UserOpt,
    async_command,
    cli_settings,
    fail,
    parse_tools,
    stderr,
    stdout,
)
from tandem.agent.core.errors import TandemError

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage

    from tandem.agent.core.config import Settings
    from tandem.memory.conversations import SessionInfo

commands = typer.Typer()
"""`chat`, `ask`, `tools` and `prompts`, merged into the root app by `main.py`."""
sessions_app = typer.Typer(help='List, search, show, title, export and delete stored sessions.', no_args_is_help=True)
config_app = typer.Typer(help='Inspect the effective configuration.', no_args_is_help=True)
redis_app = typer.Typer(
    help='The embedded Redis server Tandem starts when TANDEM_REDIS_URL is unset.', no_args_is_help=True
)


@commands.command()
def chat(
    session: SessionOpt = None,
    user: UserOpt = None,
    backbone: BackboneOpt = None,
    model: ModelOpt = None,
    prompt: PromptOpt = None,
    system: SystemOpt = None,
    tools: ToolsOpt = None,
    continue_last: ContinueOpt = False,
) -> None:
    """Talk with the assistant in an interactive REPL (Ctrl-C cancels a turn, Ctrl-D exits)."""
    from tandem.agent.cli.repl import run_repl
    from tandem.agent.turn.request import TurnRequest

    settings = cli_settings()
    if continue_last:
        session = async_command(_continued)(settings, session, user)
    request = TurnRequest(
        session=session,
        user=user,
        backbone=backbone,
        model=model,
        prompt=prompt,
        system=system,
        tools=parse_tools(tools),
    )
    async_command(run_repl)(settings, request)


async def _continued(settings: Settings, session: str | None, user: str | None) -> str:
    """The session `--continue` means: the user's most recent one."""
    from tandem.agent.turn.build import last_session, open_redis

    _one_session_choice(session, continue_last=True)
    async with open_redis(settings) as redis:
        return await last_session(settings, redis, user)


def _one_session_choice(session: str | None, *, continue_last: bool) -> None:
    """Refuse `--continue` with `--session`: each picks the session."""
    if continue_last and session is not None:
        raise TandemError('--continue picks your most recent session: leave out --session, or --continue.')


def _message(text: str | None) -> str:
    """What `tandem ask` asks: piped input, then the argument (`-` reads standard input alone), as `llm` does."""
    if text == '-':
        text, piped = None, sys.stdin.read()
    else:
        piped = '' if sys.stdin.isatty() else sys.stdin.read()
    parts = [part for part in (piped.strip(), (text or '').strip()) if part]
    if not parts:
        raise TandemError(
            'nothing to ask: give a message, or pipe one in (cat notes.md | tandem ask "Summarise this").'
        )
    return '\n\n'.join(parts)


@commands.command()
def ask(
    text: Annotated[
        str | None,
        typer.Argument(
            help='Your message; input piped in comes before it, and - reads the message from standard input.',
            show_default=False,
        ),
    ] = None,
    session: SessionOpt = None,
    user: UserOpt = None,
    backbone: BackboneOpt = None,
    model: ModelOpt = None,
    prompt: PromptOpt = None,
    system: SystemOpt = None,
    tools: ToolsOpt = None,
    continue_last: ContinueOpt = False,
    as_json: Annotated[
        bool, typer.Option('--json', help='Print answer, session, tool_calls and usage as JSON.')
    ] = False,
    schema: Annotated[
        str | None,
        typer.Option(
            '--schema',
            metavar='SCHEMA',
            help="Answer in JSON that fits SCHEMA: a JSON Schema (a .json file, or inline) or fields as 'name str, "
            "age int, tags list[str]'.",
            show_default=False,
        ),
    ] = None,
    schema_multi: Annotated[
        str | None,
        typer.Option(
            '--schema-multi',
            metavar='SCHEMA',
            help='As --schema, for a list of such objects: {"items": [...]}.',
            show_default=False,
        ),
    ] = None,
) -> None:
    """Ask one question and print the answer. Without --session or --continue, each ask is a new session."""
    from tandem.agent.turn.build import build_deps, last_session, open_redis
    from tandem.agent.turn.request import TurnRequest
    from tandem.agent.turn.run import TextDelta, run_turn

    settings = cli_settings()
    try:
        message = _message(text)
    except TandemError as error:
        raise fail(error) from None
    try:
        _one_session_choice(session, continue_last=continue_last)
    except TandemError as error:
        raise fail(error) from None
    try:
        output_type = _schema_option(schema, schema_multi)
    except TandemError as error:
        raise fail(error, code=2) from None

    async def body() -> None:
        async with open_redis(settings) as redis:
            request = TurnRequest(
                message,
                session=await last_session(settings, redis, user) if continue_last else session,
                user=user,
                backbone=backbone,
                model=model,
                prompt=prompt,
                system=system,
                tools=parse_tools(tools),
                output_type=output_type,
            )
            deps = await build_deps(settings, redis, request)

            def show(event: object) -> None:
                if isinstance(event, TextDelta):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()

            typed = output_type is not None
            result = await run_turn(
                deps, request.text, on_event=None if as_json or typed else show, output_type=output_type
            )
        if as_json:
            payload = {
                'answer': result.answer,
                **({'output': json.loads(result.answer)} if output_type is not None else {}),
                'session': result.session,
                'backbone': result.backbone,
                'prompt': result.prompt,
                'tool_calls': [asdict(call) for call in result.tool_calls],
                'usage': {**asdict(result.usage), 'total_tokens': result.usage.total_tokens},
            }
            sys.stdout.write(json.dumps(payload, indent=2, default=str) + '\n')
        else:
            if output_type is not None:
                sys.stdout.write(json.dumps(json.loads(result.answer), indent=2, ensure_ascii=False))
            sys.stdout.write('\n')
            stderr.print(
                f'session {result.session} · {result.backbone} · {result.usage.total_tokens} tokens',
                style='dim',
                markup=False,
            )

    async_command(body)()


def _schema_option(schema: str | None, schema_multi: str | None) -> Any:
    """The output type `--schema` or `--schema-multi` asks for; `None` for prose."""
    if schema is None and schema_multi is None:
        return None
    from tandem.agent.turn.output import list_schema, load_schema, schema_type

    if schema is not None and schema_multi is not None:
        raise TandemError('give --schema or --schema-multi, not both.')
    if schema is not None:
        return schema_type(load_schema(schema, what='--schema'))
    assert schema_multi is not None
    return schema_type(list_schema(load_schema(schema_multi, what='--schema-multi')))


@config_app.command('show')
def config_show() -> None:
    """Print the effective configuration, secrets masked, and where it came from."""
    from tandem.agent.core.config import config_file_path

    settings = cli_settings()
    source = config_file_path()
    stderr.print(f'config file: {source or "none (defaults and environment only)"}', style='dim', markup=False)
    sys.stdout.write(json.dumps(settings.masked(), indent=2) + '\n')


backbones_app = typer.Typer(help='List, probe and add backbones.', invoke_without_command=True)
TimeoutOpt = Annotated[float, typer.Option(help='Seconds to wait for each backbone.')]


@backbones_app.callback()
def backbones_main(ctx: typer.Context, timeout: TimeoutOpt = 5.0) -> None:
    """List the configured backbones and probe each: reachable, model listed, tool calls well-formed."""
    if ctx.invoked_subcommand is None:
        backbones_list(timeout)


@backbones_app.command('add')
def backbones_add(
    name: Annotated[str, typer.Argument(help='The backbone name, for --backbone NAME.')],
    model: Annotated[
        str, typer.Option('--model', '-m', help='The served model or adapter name, or a model string (llama-cpp:PATH).')
    ],
    base_url: Annotated[
        str | None, typer.Option(help='The OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.')
    ] = None,
    fine_tuned_from: Annotated[
        str | None, typer.Option(help='The base model it was tuned from (marks it fine-tuned).')
    ] = None,
    api_key_env: Annotated[str | None, typer.Option(help='The environment variable holding its API key.')] = None,
    training_examples: Annotated[
        int | None,
        typer.Option(min=1, help='How many examples trained it: the data criterion and learning curve of reports.'),
    ] = None,
    replace: Annotated[bool, typer.Option('--replace', help='Overwrite a different backbone of that name.')] = False,
    probe: Annotated[bool, typer.Option('--probe/--no-probe', help='Probe the server once added.')] = True,
) -> None:
    """Register a backbone (a LoRA adapter on vLLM, an Ollama model, ...) in the config file."""
    from tandem.agent.tune.registry import local_backbone_config, register_backbone

    cli_settings()

    async def body() -> None:
        from tandem.agent.backbones import base as backbones

        if training_examples is not None and fine_tuned_from is None:
            raise TandemError('--training-examples describes a fine-tune: give --fine-tuned-from BASE too.')
        config = local_backbone_config(
            model, base_url=base_url, fine_tuned_from=fine_tuned_from, api_key_env=api_key_env
        ).model_copy(update={'training_examples': training_examples})
        done = register_backbone(name, config, replace=replace, comment='added by `tandem backbones add`')
        verb = {'added': 'added', 'replaced': 'replaced', 'unchanged': 'already had'}[done.action]
        stderr.print(f'{verb} backbone {name} ({config.model}) in {done.path}', highlight=False, markup=False)
        if probe and config.model.startswith('openai'):
            result = await backbones.probe(name, config, timeout=3.0)
            if not (result.reachable and result.listed and result.tool_calls):
                listed = {True: 'yes', False: 'no', None: 'unknown'}[result.listed]
                stderr.print(
                    f'[yellow]warning:[/] probe: {escape(result.detail)} (model listed: {listed})', highlight=False
                )

    async_command(body)()


@backbones_app.command('list')
def backbones_list(timeout: TimeoutOpt = 5.0) -> None:
    """List the configured backbones and probe each: reachable, model listed, tool calls well-formed."""
    import asyncio

    from tandem.agent.backbones import base as backbones

    settings = cli_settings()

    async def body() -> None:
        if not settings.backbones:
            stdout.print(
                'No backbones configured. Add a [backbones.NAME] table to tandem.toml; see the README.', markup=False
            )
            return
        results = await asyncio.gather(
            *(backbones.probe(name, config, timeout=timeout) for name, config in settings.backbones.items())
        )
        table = Table('name', 'model', 'kind', 'reachable', 'listed', 'tool calls', 'detail')
        mark = {True: '[green]yes[/]', False: '[red]no[/]', None: '[dim]-[/]'}
        for result in results:
            table.add_row(
                escape(result.name),
                escape(result.model),
                result.kind,
                mark[result.reachable],
                mark[result.listed],
                mark[result.tool_calls],
                escape(result.detail),
            )
        stdout.print(table)

    async_command(body)()


@commands.command('tools')
def tools_list() -> None:
    """List every installed tool with its status."""
    from tandem.agent.turn.tool_status import tool_statuses

    settings = cli_settings()

    async def body() -> None:
        table = Table('toolset', 'tool', 'status', 'description')
        for row in await tool_statuses(settings):
            table.add_row(row.toolset, row.tool, row.status, row.description)
        stdout.print(table, markup=False)

    async_command(body)()


@commands.command('prompts')
def prompts_list() -> None:
    """List the prompt templates and their versions."""
    from tandem.agent.core.prompts import PromptLibrary

    settings = cli_settings()

    async def body() -> None:
        library = PromptLibrary.default(settings.prompts_dir)
        table = Table('name', 'versions', 'latest description')
        for name in library.names():
            latest = library.get(name)
            table.add_row(name, ', '.join(library.versions(name)), latest.description)
        stdout.print(table, markup=False)

    async_command(body)()


@sessions_app.command('list')
def sessions_list(
    user: UserOpt = None,
    limit: Annotated[int, typer.Option(help='At most this many, newest first.')] = 50,
    as_json: Annotated[bool, typer.Option('--json')] = False,
) -> None:
    """List stored sessions, newest first."""
    from tandem.agent.turn.build import open_conversations
    from tandem.memory.keys import validate_id

    settings = cli_settings()

    async def body() -> None:
        scope = validate_id('user', user) if user else None
        async with open_conversations(settings) as store:
            infos = await store.list_sessions(user=scope, limit=limit)
        if as_json:
            sys.stdout.write(json.dumps([_session_row(info) for info in infos], indent=2) + '\n')
            return
        table = Table('session', 'title', 'user', 'messages', 'updated')
        for info in infos:
            updated = f'{info.updated_at:%Y-%m-%d %H:%M}'
            table.add_row(info.id, info.title or '', info.user or '', str(info.message_count), updated)
        stdout.print(table, markup=False)

    async_command(body)()


@sessions_app.command('search')
def sessions_search(
    text: Annotated[str, typer.Argument(help='Words the session contains, in any case.')],
    user: UserOpt = None,
    limit: Annotated[int, typer.Option(min=1, help='At most this many, newest first.')] = 20,
    as_json: Annotated[bool, typer.Option('--json')] = False,
) -> None:
    """Find sessions by their title or by what the user or the assistant wrote."""
    from tandem.agent.turn.build import open_conversations
    from tandem.memory.keys import validate_id

    settings = cli_settings()
    if not text.strip():
        raise fail(TandemError('give some text to search for, such as `tandem sessions search "tax deadline"`.'))

    async def body() -> None:
        scope = validate_id('user', user) if user else None
        async with open_conversations(settings) as store:
            matches = await store.search_sessions(text, user=scope, limit=limit)
        if as_json:
            rows = [{**_session_row(match.session), 'match': match.snippet} for match in matches]
            sys.stdout.write(json.dumps(rows, indent=2) + '\n')
            return
        if not matches:
            stderr.print(f'no session mentions {text!r}', markup=False, highlight=False)
            return
        table = Table('session', 'title', 'match', 'updated')
        for match in matches:
            info = match.session
            table.add_row(info.id, info.title or '', match.snippet, f'{info.updated_at:%Y-%m-%d %H:%M}')
        stdout.print(table, markup=False)

    async_command(body)()


@sessions_app.command('title')
def sessions_title(
    session: Annotated[str, typer.Argument(help='Session id.')],
    title: Annotated[str, typer.Argument(help='The new title.')],
) -> None:
    """Rename a session (it is titled by its first message until then)."""
    from tandem.agent.turn.build import open_conversations

    settings = cli_settings()
    if not title.strip():
        raise fail(TandemError('a title needs some text.'))

    async def body() -> None:
        async with open_conversations(settings) as store:
            stored = await store.set_title(session, title)
        stderr.print(f'session {session} is titled {stored!r}', markup=False, highlight=False)

    async_command(body)()


def _session_row(info: SessionInfo) -> dict[str, object]:
    return {
        'session': info.id,
        'title': info.title,
        'user': info.user,
        'messages': info.message_count,
        'updated_at': info.updated_at.isoformat(),
        'total_tokens': info.usage.total_tokens,
    }


def _session_messages(session: str) -> list[ModelMessage]:
    """A stored session's messages, for `show` and `export`."""
    from tandem.agent.turn.build import open_conversations

    settings = cli_settings()

    async def body() -> list[ModelMessage]:
        async with open_conversations(settings) as store:
            return await store.export_messages(session)

    return async_command(body)()


@sessions_app.command('show')
def sessions_show(session: Annotated[str, typer.Argument(help='Session id.')]) -> None:
    """Print a session's transcript."""
    from tandem.agent.cli.transcript import render_transcript

    for line in render_transcript(_session_messages(session)):
        stdout.print(line, highlight=False, markup=False)


@sessions_app.command('export')
def sessions_export(session: Annotated[str, typer.Argument(help='Session id.')]) -> None:
    """Print a session's messages as pydantic-ai message JSON, losslessly."""
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    messages = _session_messages(session)
    sys.stdout.write(ModelMessagesTypeAdapter.dump_json(messages, indent=2).decode() + '\n')


@sessions_app.command('delete')
def sessions_delete(session: Annotated[str, typer.Argument(help='Session id.')]) -> None:
    """Delete a session and its messages."""
    from tandem.agent.turn.build import open_conversations

    settings = cli_settings()

    async def body() -> None:
        async with open_conversations(settings) as store:
            if await store.read_record(session) is None:
                raise TandemError(f'no session {session!r}: `tandem sessions list` shows the stored ones.')
            await store.delete(session)
        stderr.print(f'deleted session {session}')

    async_command(body)()


@redis_app.command('status')
def redis_status() -> None:
    """Which Redis Tandem uses, and what it holds: server, version, memory, keys, Query Engine."""
    from tandem.memory.connection import connect, mask_url, server_report
    from tandem.memory.redis_server import EmbeddedRedis

    settings = cli_settings()
    table = Table.grid(padding=(0, 2))
    url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
    if url is None:
        embedded = EmbeddedRedis(settings.home).status()
        table.add_row('server', 'embedded (started by Tandem, one per TANDEM_HOME)')
        table.add_row('data', str(embedded.data_dir))
        if not embedded.running or embedded.url is None:
            table.add_row('state', 'not running: the next tandem command starts it')
            stdout.print(table, markup=False)
            return
        table.add_row('state', f'running, pid {embedded.pid}' if embedded.pid else 'running')
        url = embedded.url
    else:
        table.add_row('server', 'TANDEM_REDIS_URL')
    table.add_row('address', mask_url(url))

    async def body() -> None:
        redis = await connect(url, home=settings.home, retries=0)
        try:
            report = await server_report(redis)
        finally:
            await redis.aclose()
        table.add_row('version', f'{report.product} {report.version}')
        table.add_row('memory', f'{report.used_memory} used')
        table.add_row('keys', str(report.keys))
        table.add_row(
            'query engine',
            'yes: vectors are searched in Redis (FT.SEARCH)'
            if report.query_engine
            else 'no: vectors are searched in process (Redis 8 or Redis Stack has FT.SEARCH)',
        )
        stdout.print(table, markup=False)

    async_command(body)()


@redis_app.command('stop')
def redis_stop() -> None:
    """Stop the embedded Redis server cleanly (its data stays in TANDEM_HOME)."""
    from tandem.memory.redis_server import EmbeddedRedis

    settings = cli_settings()
    server = EmbeddedRedis(settings.home)
    if not server.is_running():
        stdout.print('the embedded Redis server is not running')
        return
    server.stop()
    stdout.print('stopped the embedded Redis server')
