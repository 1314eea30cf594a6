"""`make chat` installs the core only: a setting or command that needs an extra names the exact command.

Each test hides the extra's package (as a core-only venv lacks it) and drives the CLI as a person would.
`.ci/run` checks the same messages in a real core-only venv, right after `make chat`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app

runner = CliRunner()


def test_a_llama_cpp_backbone_without_the_local_extra_names_make_local(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, 'llama_cpp', None)
    result = runner.invoke(app, ['ask', '--model', 'llama-cpp:~/models/base.gguf', 'hello'], env=env)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        'error: llama-cpp:~/models/base.gguf: llama-cpp backbones need llama-cpp-python; install the local extra: '
        '`make local` in a Tandem checkout (it compiles llama.cpp: a C++ compiler and a few minutes), or '
        "`pip install 'tandem[local]'`."
    ]


def test_local_embeddings_without_the_extra_name_make_embeddings(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, 'tokenizers', None)
    (tmp_path / 'tandem.toml').write_text('[knowledge]\nembeddings = "local"\n')
    (tmp_path / 'refunds.md').write_text('# Refunds\n\nRefunds are paid within 14 days.\n')
    result = runner.invoke(app, ['ingest', 'refunds.md'], env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        'error: local embeddings need the embeddings extra: `make embeddings` in a Tandem checkout '
        '(or `pip install "tandem[embeddings]"`), or set knowledge.embeddings = "none".'
    ]


@pytest.mark.parametrize('command', [['worker'], ['run', 'scenarios', '--distributed']])
def test_distributed_runs_without_the_extra_name_make_distributed(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, 'taskiq', None)
    monkeypatch.delitem(sys.modules, 'tandem.agent.scenarios.distributed', raising=False)
    result = runner.invoke(app, command, env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        'error: distributed runs need the distributed extra (taskiq is missing): `make distributed` in a Tandem '
        'checkout (or `pip install "tandem[distributed]"`).'
    ]
