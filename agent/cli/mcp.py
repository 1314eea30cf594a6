"""`tandem mcp`: Tandem as an MCP server (agent/server/mcp.py), over stdio or streamable HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from tandem.agent.cli._app import async_command, cli_settings
from tandem.agent.core.errors import ConfigError

commands = typer.Typer()
"""`tandem mcp`, merged into the root app by `main.py`."""


@commands.command('mcp')
@async_command
async def mcp_command(
    http: Annotated[
        int | None,
        typer.Option('--http', metavar='PORT', help='Serve streamable HTTP on this port (at /mcp), not stdio.'),
    ] = None,
    host: Annotated[
        str, typer.Option(help='With --http: the address to bind; anything but loopback needs API keys.')
    ] = ('127.0.0.1'),
    no_auth: Annotated[
        bool, typer.Option('--no-auth', help='With --http: serve without API keys, to this machine only.')
    ] = False,
) -> None:
    """Serve Tandem's knowledge search, memory and `ask` to MCP clients (desktop assistants, IDEs).

    Over stdio it acts for the configured tenant and user; over HTTP, API keys name them as in `tandem serve`.
    """
    from tandem.agent.api import Assistant
    from tandem.agent.server.auth import KeyRing, is_loopback, load_api_keys
    from tandem.agent.server.mcp import create_mcp_server, local_identity, mcp_http_app

    settings = cli_settings()
    if http is None:
        if no_auth or host != '127.0.0.1':
            raise ConfigError(
                '--host and --no-auth apply to --http; over stdio the server acts for the configured user.'
            )
        async with Assistant(settings) as assistant:
            # Standard output carries the protocol: nothing else may write to it.
            await create_mcp_server(assistant, local_identity(assistant)).run_stdio_async()
        return
    if no_auth and not is_loopback(host):
        raise ConfigError(
            f'refusing --no-auth on {host}: without auth the server may only listen on a loopback address. '
            'Set TANDEM_API_KEYS="KEY:TENANT" to serve other machines.'
        )
    import uvicorn

    async with Assistant(settings) as assistant:
        app = mcp_http_app(assistant, KeyRing(load_api_keys(settings)), allow_anonymous=no_auth, host=host)
        typer.echo(
            f'Tandem MCP server on http://{host}:{http}/mcp ({"no auth" if no_auth else "API keys"}) · Ctrl-C stops',
            err=True,
        )
        config = uvicorn.Config(app, host=host, port=http, log_level=settings.log_level.lower(), lifespan='on')
        await uvicorn.Server(config).serve()
