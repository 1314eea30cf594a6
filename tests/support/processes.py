"""Running Python in a fresh interpreter with the repository importable: another process, as a replica is."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


async def run_python(code: str, *args: str) -> str:
    """Run `code` (dedented) with `args` in a new interpreter, the repo importable; its stdout. It must exit 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        '-c',
        textwrap.dedent(code),
        *args,
        cwd=REPO,
        env={**os.environ, 'PYTHONPATH': str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()
