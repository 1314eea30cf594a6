"""`tandem serve`: the OpenAI-compatible HTTP service (agent/server/app.py) under uvicorn."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated

import typer

from tandem.agent.cli._app import CliState, cli_settings, fail
from tandem.agent.core.errors import ConfigError, TandemError

if TYPE_CHECKING:
    from tandem.agent.core.config import Settings

DEFAULT_FACTORY = 'tandem.agent.server.app:worker_app'


def serve(
    host: str = '127.0.0.1',
    port: int = 8000,
    *,
    workers: int = 1,
    no_auth: bool = False,
    log_format: str | None = None,
    factory: str = DEFAULT_FACTORY,
    settings: Settings | None = None,
) -> None:
    """Check the flags, then run uvicorn with `workers` processes, each building its app with `factory`.

    Workers are separate processes: they read the settings from the environment and the config
    file as this process did, and get the flags through `TANDEM_SERVE_OPTIONS`.

    Args:
        host: The address to bind.
        port: The port to bind.
        workers: How many worker processes.
        no_auth: Serve without API keys (only on a loopback `host`).
        log_format: Also log to stderr, as `console` or `json`.
        factory: `module:function` returning the ASGI app, e.g. one that passes extra backbones.
        settings: The settings, to check that there are API keys; loaded when omitted.

    Raises:
        ConfigError: `--no-auth` on a non-loopback address, no API keys without `--no-auth`, or
            invalid options.
    """
    import uvicorn

    from tandem.agent.core.config import load_settings
    from tandem.agent.server.app import SERVE_OPTIONS_ENV
    from tandem.agent.server.auth import is_loopback, load_api_keys

    settings = settings or load_settings()
    if workers < 1:
        raise ConfigError('--workers must be at least 1.')
    if no_auth and not is_loopback(host):
        raise ConfigError(
            f'refusing --no-auth on {host}: without auth the server may only listen on a loopback address '
            '(--host 127.0.0.1). Set TANDEM_API_KEYS="KEY:TENANT" to serve other machines.'
        )
    if not no_auth and not load_api_keys(settings):
        raise ConfigError(
            'no API keys: set TANDEM_API_KEYS="KEY:TENANT" (or server.api_keys in tandem.toml), '
            'or run `tandem serve --no-auth` on 127.0.0.1 for local use.'
        )
    os.environ[SERVE_OPTIONS_ENV] = json.dumps({'host': host, 'no_auth': no_auth, 'log_format': log_format})
    typer.echo(
        f'Tandem serving on http://{host}:{port}/v1 ({workers} worker{"s" if workers != 1 else ""}, '
        f'{"no auth" if no_auth else "API keys"}) · docs at /docs · Ctrl-C stops',
        err=True,
    )
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
    )


commands = typer.Typer()
"""`tandem serve`, merged into the root app by `main.py`."""


@commands.command('serve')
def serve_command(
    host: Annotated[str, typer.Option(help='Address to bind; anything but loopback needs API keys.')] = '127.0.0.1',
    port: Annotated[int, typer.Option(help='Port to bind.')] = 8000,
    workers: Annotated[int, typer.Option(help='Worker processes (they share Redis).')] = 1,
    no_auth: Annotated[
        bool, typer.Option('--no-auth', help='Serve without API keys; only on a loopback address.')
    ] = False,
) -> None:
    """Serve the OpenAI-compatible HTTP API (chat completions, models, sessions) with uvicorn."""
    settings = cli_settings()  # a bad config fails here, in one line, before uvicorn starts
    try:
        serve(host, port, workers=workers, no_auth=no_auth, log_format=CliState.log_format, settings=settings)
    except TandemError as error:
        raise fail(error) from None
