"""Fixtures for the scenario tests: settings, the toolsets scenarios select, and writing scenario files."""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tandem.agent.core.config import Settings
from tandem.tools.registry import ToolsetPlugin, discover_plugins

STARTER = Path(__file__).resolve().parents[2] / 'scenarios'
"""The starter suite shipped at the top of the repository."""

# The knowledge and memory toolsets live in this tree; until their `tandem.tools` entry points are
# installed (pyproject.toml, then `uv sync`), the tests add them from their modules.
_IN_TREE = {'knowledge': 'tandem.tools.knowledge', 'memory': 'tandem.tools.memory_tools'}


def toolset_plugins() -> dict[str, ToolsetPlugin]:
    """Every installed toolset, plus the in-tree knowledge and memory ones if not installed yet."""
    found = discover_plugins()
    for name, module in _IN_TREE.items():
        if name not in found:
            found[name] = importlib.import_module(module).plugin
    return dict(sorted(found.items()))


@pytest.fixture
def plugins() -> dict[str, ToolsetPlugin]:
    """The toolsets scenarios may select."""
    return toolset_plugins()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings that read no config file and keep data under `tmp_path`."""
    for name in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'TANDEM_CONFIG', 'TANDEM_BACKBONE', 'TANDEM_TOOLS'):
        monkeypatch.delenv(name, raising=False)
    return Settings(home=tmp_path / 'home')


WriteScenario = Callable[..., Path]


@pytest.fixture
def write_scenario(tmp_path: Path) -> WriteScenario:
    """`write_scenario(yaml_text, name='s.yaml')`: a scenario file (dedented) under `tmp_path/suite`."""
    folder = tmp_path / 'suite'

    def write(text: str, name: str = 'scenario.yaml') -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding='utf-8')
        return path

    return write
