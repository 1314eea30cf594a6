"""The suite itself: a hang fails one test instead of stalling `make test` and CI."""

from __future__ import annotations

import pytest


def test_every_test_runs_under_a_time_limit(pytestconfig: pytest.Config) -> None:
    # pytest-timeout, set in pyproject.toml; a test that needs longer raises its own with a marker.
    assert 0 < float(pytestconfig.getini('timeout')) <= 300
    assert pytestconfig.getini('timeout_method') in ('', 'signal')  # signal: fail the test, keep the run going
