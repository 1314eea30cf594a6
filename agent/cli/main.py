"""The `tandem` command line, registered top-down: this module imports every command module and adds it to the
root app. Command modules share `_app.py` (consoles, flags, settings, errors) and never import this one."""

from __future__ import annotations

from tandem.agent.cli import commands, kb, mcp, memory, models, run, serve, tune
from tandem.agent.cli._app import app

app.add_typer(commands.commands)
app.add_typer(commands.config_app, name='config')
app.add_typer(commands.backbones_app, name='backbones')
app.add_typer(commands.sessions_app, name='sessions')
app.add_typer(commands.redis_app, name='redis')
app.add_typer(kb.kb_app, name='kb')
app.command('ingest')(kb.ingest)
app.add_typer(models.models_app, name='models')
app.add_typer(run.commands)
app.add_typer(serve.commands)
app.add_typer(mcp.commands)
app.add_typer(tune.tune_app, name='tune')
app.add_typer(memory.memory_app, name='memory')

__all__ = ['app', 'main']


def main() -> None:
    """Console-script entry point."""
    app()
