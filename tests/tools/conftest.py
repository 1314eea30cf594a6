"""Fixtures for the tool tests."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tools.fake_install import EXAMPLE_PLUGIN_SOURCE, FakeInstall


@pytest.fixture
def fake_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeInstall]:
    """A fresh site directory at the front of `sys.path`; modules imported from it are forgotten afterwards."""
    site = tmp_path / 'site-packages'
    site.mkdir()
    modules_before = set(sys.modules)
    # syspath_prepend also invalidates importlib's caches, which importlib.metadata relies on.
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(site))
    yield FakeInstall(site)
    for name in set(sys.modules) - modules_before:
        if name.startswith(('tandem_example_plugin', 'tandem_test_')):
            del sys.modules[name]
    importlib.invalidate_caches()
