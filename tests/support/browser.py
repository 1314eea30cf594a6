"""Headless Chromium for tests that look at a page as a person's browser would (`make browser` installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason='chromium is not installed: `make browser` installs it from Debian'
)


def dump_dom(url: str, profile: Path, *flags: str) -> tuple[str, list[str]]:
    """The DOM of `url` after it loaded, and the console messages, in headless Chromium with its own `profile`."""
    assert CHROMIUM is not None
    completed = subprocess.run(
        [
            CHROMIUM,
            '--headless',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
            '--no-first-run',
            f'--user-data-dir={profile}',
            '--enable-logging=stderr',
            '--v=0',
            *flags,
            '--dump-dom',
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout, [line for line in completed.stderr.splitlines() if ':CONSOLE' in line]
