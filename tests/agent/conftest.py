"""Fixtures for driving the CLI through typer's runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment for `runner.invoke(..., env=env)`: a fresh home and config folder, the test
    Redis, and no model settings from the machine running the tests."""
    monkeypatch.chdir(tmp_path)
    for name in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'TANDEM_CONFIG', 'TANDEM_BACKBONE'):
        monkeypatch.delenv(name, raising=False)
    yield {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}
