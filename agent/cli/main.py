"""The `tandem` command line, registered top-down: this module imports every command module and adds it to the
root app. Command modules share `_app.py` (consoles, flags, settings, errors) and never import this one."""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import DefaultPlaceholder

from tandem.agent.cli import commands, examples, kb, mcp, memory, models, run, serve, tune
from tandem.agent.cli._app import PlainHelpCommand, PlainHelpGroup, app

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
app.add_typer(examples.examples_app, name='examples')
app.add_typer(memory.memory_app, name='memory')


def _plain_help(typer_app: typer.Typer) -> None:
    """Give every command and group without a class of its own the plain-help one, through the sub-apps."""
    if _unset(typer_app.info.cls, TyperGroup):
        typer_app.info.cls = PlainHelpGroup
    for command in typer_app.registered_commands:
        if _unset(command.cls, TyperCommand):
            command.cls = PlainHelpCommand
    for group in typer_app.registered_groups:
        if _unset(group.cls, TyperGroup):
            group.cls = PlainHelpGroup
        if group.typer_instance is not None:
            _plain_help(group.typer_instance)


def _unset(cls: object, default: type) -> bool:
    return cls is None or cls is default or isinstance(cls, DefaultPlaceholder)


_plain_help(app)

__all__ = ['app', 'main']


def main() -> None:
    """Console-script entry point."""
    app()
