"""Every command's `--help` names its values by what they are, without typer's `<str>`/`{text}` marks."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from tandem.agent.cli.main import app

runner = CliRunner()


def _command_paths(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, 'commands', {}).items()):
        yield from _command_paths(sub, (*path, name))


COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_the_tree_is_walked() -> None:
    assert {('ask',), ('sessions', 'search'), ('kb', 'search'), ('mcp',)} <= set(COMMANDS)


@pytest.mark.parametrize('path', COMMANDS, ids=lambda path: ' '.join(path) or 'tandem')
def test_help_has_no_type_marks(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, '--help'], env={'COLUMNS': '120'})

    assert result.exit_code == 0, result.output
    assert not re.search(r'<\w[\w ,\[\]|]*>|\{\w+\}', result.output), result.output


def test_values_are_named_for_what_they_are() -> None:
    ask = runner.invoke(app, ['ask', '--help'], env={'COLUMNS': '120'}).output
    search = runner.invoke(app, ['sessions', 'search', '--help'], env={'COLUMNS': '120'}).output

    assert 'Usage: tandem ask [OPTIONS] [TEXT]' in ask
    assert re.search(r'-s, --session ID +Session id', ask)
    assert re.search(r'-m, --model SPEC +A model string', ask)
    assert 'Usage: tandem sessions search [OPTIONS] TEXT' in search
    assert re.search(r'--limit LIMIT +At most this many', search)
