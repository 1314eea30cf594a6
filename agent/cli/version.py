"""`tandem --version`'s line: Tandem's version, with what a bug report needs beside it."""

from __future__ import annotations

import sys


def version_line() -> str:
    """E.g. `tandem 0.1.0 (pydantic-ai 2.68.0, Python 3.11.7)`."""
    from importlib.metadata import version  # 40 ms of imports: only when the line is asked for

    python = '.'.join(map(str, sys.version_info[:3]))
    return f'tandem {version("tandem")} (pydantic-ai {version("pydantic-ai-slim")}, Python {python})'
