"""`tandem --help` and `--version` start fast: they load none of the libraries that only commands need.

bench/startup.py times them against `import pydantic_ai`; this checks the cause, which timing cannot pin.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ('pydantic_ai', 'pydantic', 'pydantic_settings', 'redis', 'httpx', 'structlog', 'openai', 'markdown_it')

_PROBE = """
import json, sys
from tandem.agent.cli.main import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted({name.split('.')[0] for name in sys.modules} & set(json.loads(sys.stdin.readline())))
print(json.dumps(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ('argv', 'heavy'),
    [
        (['--help'], HEAVY),
        (['--version'], HEAVY),
        # typer itself validates the Path defaults of a command's options with pydantic.
        (['kb', '--help'], tuple(name for name in HEAVY if name != 'pydantic')),
        (['run', '--help'], tuple(name for name in HEAVY if name != 'pydantic')),
    ],
)
def test_help_and_version_load_no_command_libraries(argv: list[str], heavy: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, '-c', _PROBE, *argv], input=json.dumps(heavy) + '\n', capture_output=True, text=True
    )

    assert done.stdout.strip(), done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []


def test_version_alone_answers_before_the_command_line_loads() -> None:
    probe = (
        'import sys\n'
        'from tandem.agent.cli.entry import main\n'
        "sys.argv = ['tandem', '--version']\n"
        'main()\n'
        "print(sorted({'typer', 'rich', 'tandem.agent.cli.main'} & set(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True)

    assert done.stdout.startswith('tandem ') and '(pydantic-ai ' in done.stdout
    assert done.stderr.strip() == '[]'
