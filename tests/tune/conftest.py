"""Shared fixtures for the fine-tuning loop's tests.

Token counting never reaches for the network here: tiktoken's download host is reported
unreachable, so counters are either a real tiktoken encoding a test builds, or the labelled
estimate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.agent.core import tokens


@pytest.fixture(autouse=True)
def _offline_tokenizer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tokens, '_reachable', lambda host, port=443, timeout=3.0: False)
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', '')  # tiktoken's cache off: nothing cached counts
    tokens._token_counter.cache_clear()
    yield
    tokens._token_counter.cache_clear()


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`TANDEM_CONFIG`, pointing at a config file with a comment and a backbone already in it."""
    path = tmp_path / 'tandem.toml'
    path.write_text(
        '# my settings: keep this comment\n'
        'tenant = "acme"\n\n'
        '[backbones.local]   # the vLLM box\n'
        'model = "openai-chat:Qwen/Qwen2.5-3B-Instruct"\n'
        'base_url = "http://127.0.0.1:8000/v1"\n\n'
        '# limits come last\n'
        '[limits]\n'
        'requests = 8\n',
        encoding='utf-8',
    )
    monkeypatch.setenv('TANDEM_CONFIG', str(path))
    return path
