"""The `tandem` console script: `tandem --version` answers before the command line loads; the rest runs it."""

from __future__ import annotations

import sys

from tandem.agent.cli.version import version_line


def main() -> None:
    """Console-script entry point."""
    if sys.argv[1:] == ['--version']:
        sys.stdout.write(version_line() + '\n')
        return
    from tandem.agent.cli.main import main as run

    run()
