"""The root `tandem` app and what every command shares: consoles, global flags, settings, one-line errors.

Command modules import this one, and never `main.py`, which imports them all and registers them on `app`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup

from tandem.agent.core.errors import TandemError

if TYPE_CHECKING:
    # Imported where a command needs them: `tandem --help` and `--version` load neither pydantic nor structlog.
    from tandem.agent.core.config import Settings
    from tandem.agent.core.log import LogFormat

app = typer.Typer(
    name='tandem',
    help='Tandem: a tool-using assistant on the backbone of your choice, with Redis memory.',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help text: typer's rich help loads a Markdown parser, which would triple `tandem --help`'s start-up.
    rich_markup_mode=None,
    context_settings={'max_content_width': 120},
)


class PlainHelpCommand(TyperCommand):
    """A command whose help names each value by what it is, as `llm --help` does: `--session SESSION`,
    `tandem ask [TEXT]`, with no `<str>` or `{text}` (typer's plain help marks types and required
    arguments so). `main.py` gives every command this class; a metavar a parameter sets is kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)


class PlainHelpGroup(TyperGroup):
    """`PlainHelpCommand`'s help for a group's own options, such as `tandem --log-format FORMAT`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self.params)


def _name_values(params: list[Any]) -> None:
    for param in params:
        if param.metavar is None and param.name and not getattr(param, 'is_flag', False):
            param.metavar = param.name.upper()
        if type(param) is TyperArgument:
            param.__class__ = _PlainArgument


class _PlainArgument(TyperArgument):
    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = f'{self.metavar}...' if self.nargs != 1 else str(self.metavar)
        return [name if self.required else f'[{name}]']

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


# Rich wraps output at the terminal's width. Output that is not a terminal (a pipe, a file, a test) is
# not wrapped at all, and tables get a fixed width: neither depends on COLUMNS or on path lengths.
_NOT_A_TERMINAL_WIDTH = 240


def _console(*, stderr: bool) -> Console:
    if (sys.stderr if stderr else sys.stdout).isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=_NOT_A_TERMINAL_WIDTH, soft_wrap=True)


stdout = _console(stderr=False)
stderr = _console(stderr=True)

T = TypeVar('T')

BackboneOpt = Annotated[
    str | None, typer.Option('--backbone', '-b', metavar='NAME', help='A backbone name from the config.')
]
ModelOpt = Annotated[
    str | None, typer.Option('--model', '-m', metavar='SPEC', help='A model string, e.g. openai-chat:qwen2.5.')
]
PromptOpt = Annotated[
    str | None, typer.Option('--prompt', '-p', metavar='NAME[@VERSION]', help='NAME or NAME@VERSION.')
]
SessionOpt = Annotated[
    str | None, typer.Option('--session', '-s', metavar='ID', help='Session id; a new one when omitted.')
]
UserOpt = Annotated[str | None, typer.Option('--user', '-u', metavar='ID', help='User id.')]
ToolsOpt = Annotated[
    str | None, typer.Option('--tools', metavar='NAMES', help='Comma-separated toolsets, e.g. calc,clock,web.')
]
ContinueOpt = Annotated[bool, typer.Option('--continue', '-c', help='Continue your most recent session.')]
SystemOpt = Annotated[
    str | None,
    typer.Option(
        '--system', metavar='TEXT', help='A system prompt to use as written, in place of the prompt template.'
    ),
]


class CliState:
    """Global flags, set by the app callback."""

    debug: bool = False
    log_format: LogFormat | None = None


def parse_tools(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(',') if part.strip()]


def fail(error: Exception, *, code: int = 1) -> typer.Exit:
    """Print `error` as one line (a traceback only with --debug) and return the exit to raise.

    `code` is 1 for a failure, 2 for input the command cannot take (a usage error).
    """
    if CliState.debug:
        raise error
    stderr.print(f'[bold red]error:[/] {escape(str(error))}', highlight=False, soft_wrap=True)
    return typer.Exit(code)


def cli_settings() -> Settings:
    from tandem.agent.core.config import load_settings
    from tandem.agent.core.log import configure_logging

    try:
        settings = load_settings()
        configure_logging(settings.home, 'DEBUG' if CliState.debug else settings.log_level, CliState.log_format)
    except TandemError as error:
        raise fail(error) from None
    except OSError as error:
        raise fail(TandemError(f'cannot write to TANDEM_HOME: {error}')) from None
    return settings


def async_command(coroutine_fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body, turning user-facing failures into one line and a non-zero exit."""

    @functools.wraps(coroutine_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import asyncio

        import redis.exceptions

        try:
            return asyncio.run(coroutine_fn(*args, **kwargs))
        except TandemError as error:
            raise fail(error) from None
        except redis.exceptions.RedisError as error:
            message = f'Redis failed: {error}. Check TANDEM_REDIS_URL, or `tandem redis status`.'
            raise fail(TandemError(message)) from None
        except KeyboardInterrupt:
            stderr.print('interrupted')
            raise typer.Exit(130) from None

    return wrapper


def _print_version(value: bool) -> None:
    """`--version` among other arguments (`tandem --version` alone never loads the command line: `entry.py`)."""
    if value:
        from tandem.agent.cli.version import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option('--debug', help='Show tracebacks and debug logs.')] = False,
    _version: Annotated[
        bool, typer.Option('--version', callback=_print_version, is_eager=True, help='Print the version and exit.')
    ] = False,
    log_format: Annotated[
        str | None, typer.Option('--log-format', metavar='FORMAT', help='Also log to stderr, as console or json.')
    ] = None,
) -> None:
    CliState.debug = debug
    if log_format not in (None, 'console', 'json'):
        stderr.print(f'[bold red]error:[/] --log-format must be console or json, not {escape(repr(log_format))}.')
        raise typer.Exit(2)
    CliState.log_format = log_format  # type: ignore[assignment]
