"""`tandem models`: small instruct GGUF models for `llama-cpp:` backbones.

`agent/cli/main.py` registers `models_app` as `tandem models`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tandem.agent.cli._app import async_command, cli_settings, stderr, stdout

models_app = typer.Typer(help='Download small GGUF models for in-process llama-cpp backbones.', no_args_is_help=True)


@models_app.command('list')
def models_list() -> None:
    """The models `tandem models pull` knows, and which are downloaded."""
    from tandem.agent.backbones.llama_cpp import CATALOG, models_dir

    cli_settings()
    folder = models_dir()
    table = Table('name', 'size', 'downloaded', 'about')
    for name, entry in CATALOG.items():
        table.add_row(name, entry.size, 'yes' if (folder / entry.file).is_file() else '', entry.description)
    stdout.print(table)
    stderr.print(f'[dim]models folder: {escape(str(folder))}[/]', highlight=False)


@models_app.command('pull')
def models_pull(
    name: Annotated[str, typer.Argument(help='A name from `tandem models list`, hf:OWNER/REPO/FILE.gguf, or a URL.')],
    directory: Annotated[
        Path | None, typer.Option('--dir', help='Where to save it (default: TANDEM_HOME/models).')
    ] = None,
    force: Annotated[bool, typer.Option('--force', help='Download again even if the file is there.')] = False,
    register: Annotated[
        str | None, typer.Option('--register', help='Also add it to the config as backbone NAME.')
    ] = None,
) -> None:
    """Download a small instruct GGUF, with a progress bar; says so plainly when there is no network."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from tandem.agent.backbones.llama_cpp import (
        CATALOG,
        LOCAL_EXTRA_HINT,
        check_network,
        download,
        download_source,
        models_dir,
    )
    from tandem.agent.core.config import BackboneConfig
    from tandem.agent.tune.registry import register_backbone

    cli_settings()

    async def body() -> None:
        source = download_source(name)
        folder = directory or models_dir()
        if force or not (folder / source.file).is_file():
            check_network(source.url)  # before the progress bar: offline, say so and nothing else
        progress = Progress(
            TextColumn('[bold]{task.description}'),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
        )
        task = progress.add_task(source.file, total=None)

        def show(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        with progress:
            path = download(source, folder, on_progress=show, force=force)
        spec = name if name in CATALOG and directory is None else str(path)
        stderr.print(escape(f'saved {path}'), highlight=False)
        if register:
            done = register_backbone(register, BackboneConfig(model=f'llama-cpp:{spec}'), comment=f'pulled {name}')
            stderr.print(escape(f'registered backbone {register} in {done.path}'), highlight=False)
        stderr.print(escape(f'use it: tandem ask --model llama-cpp:{spec} "hello"'), highlight=False)
        if importlib.util.find_spec('llama_cpp') is None:
            stderr.print(escape(f'to run it, {LOCAL_EXTRA_HINT}'), highlight=False)
        sys.stdout.write(str(path) + '\n')

    async_command(body)()
