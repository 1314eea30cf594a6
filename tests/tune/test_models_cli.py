"""`tandem models pull`: a download with a progress bar from a loopback "Hugging Face", and plain failures."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.agent.backbones import base as backbones
from tandem.agent.backbones.llama_cpp import CATALOG, LlamaCppResolver
from tandem.agent.cli.main import app
from tandem.agent.core.config import load_settings
from tests.support.loopback_http import LoopbackHTTPServer, RecordedRequest, Reply, refused_port, text_reply
from tests.tune.gguf_model import write_tiny_llama

runner = CliRunner()
ENTRY = CATALOG['qwen2.5-0.5b-instruct']
ROUTE = f'/{ENTRY.path}'


@pytest.fixture
def gguf_bytes(tmp_path: Path) -> bytes:
    return write_tiny_llama(tmp_path / 'src.gguf', context_length=8192).read_bytes()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('TANDEM_CONFIG', raising=False)
    monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path / 'xdg'))  # where the registration creates the config
    return {'TANDEM_HOME': str(tmp_path / 'home')}


def _ranged(data: bytes) -> object:
    def reply(request: RecordedRequest) -> Reply:
        start = int(request.headers.get('range', 'bytes=0-').removeprefix('bytes=').split('-')[0] or 0)
        status = 206 if start else 200
        return Reply(status, {'Content-Type': 'application/octet-stream'}, data[start:])

    return reply


def test_pull_downloads_with_progress_registers_and_the_model_answers(
    gguf_bytes: bytes, env: dict[str, str], tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LoopbackHTTPServer({ROUTE: _ranged(gguf_bytes)}) as hub:  # type: ignore[dict-item]
        result = runner.invoke(
            app,
            ['models', 'pull', 'qwen2.5-0.5b-instruct', '--register', 'local'],
            env=env | {'HF_ENDPOINT': hub.url('')},
        )
    assert result.exit_code == 0, result.stderr
    saved = tmp_path / 'home' / 'models' / ENTRY.file
    assert result.stdout.strip() == str(saved)
    assert saved.read_bytes() == gguf_bytes and not saved.with_name(saved.name + '.part').exists()
    size = f'{len(gguf_bytes) / 1000:.1f}'
    assert f'{ENTRY.file} ' in result.stderr and f'{size}/{size} kB' in result.stderr  # the progress bar's last frame
    assert 'registered backbone local' in result.stderr
    assert load_settings().backbones['local'].model == 'llama-cpp:qwen2.5-0.5b-instruct'

    listed = runner.invoke(app, ['models', 'list'], env=env)
    assert 'qwen2.5-0.5b-instruct' in listed.stdout and 'yes' in listed.stdout

    resolvers = dict(backbones._resolvers())
    resolvers['llama-cpp'] = LlamaCppResolver()
    monkeypatch.setattr(backbones, '_resolvers', lambda: resolvers)
    asked = runner.invoke(
        app,
        ['ask', '--backbone', 'local', '--tools', 'calc', '--json', 'hi'],
        env=env | {'TANDEM_REDIS_URL': redis_url},
    )
    # The tiny model's random weights end an answer only by chance: when they don't, it runs to its
    # output limit, and that cut answer is refused, not stored. Either way the pulled model ran.
    if asked.exit_code == 0:
        assert json.loads(asked.stdout)['backbone'] == 'local'
    else:
        assert "error: backbone 'local' hit its output limit mid-answer (finish_reason 'length')" in asked.stderr


def test_a_partial_download_resumes_where_it_stopped(gguf_bytes: bytes, env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / 'home' / 'models'
    folder.mkdir(parents=True)
    (folder / f'{ENTRY.file}.part').write_bytes(gguf_bytes[:1000])
    with LoopbackHTTPServer({ROUTE: _ranged(gguf_bytes)}) as hub:  # type: ignore[dict-item]
        result = runner.invoke(app, ['models', 'pull', 'qwen2.5-0.5b-instruct'], env=env | {'HF_ENDPOINT': hub.url('')})
        ranges = [request.headers.get('range') for request in hub.requests]
    assert result.exit_code == 0, result.stderr
    assert ranges == ['bytes=1000-']
    assert (folder / ENTRY.file).read_bytes() == gguf_bytes


def test_without_a_network_it_says_so_plainly_and_quickly(env: dict[str, str]) -> None:
    with refused_port() as closed:
        started = time.monotonic()
        result = runner.invoke(
            app, ['models', 'pull', 'qwen2.5-0.5b-instruct'], env=env | {'HF_ENDPOINT': f'http://127.0.0.1:{closed}'}
        )
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f'error: no network: cannot reach 127.0.0.1:{closed} (Connection refused).'
    ]


def test_a_page_that_is_not_a_gguf_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    with LoopbackHTTPServer({ROUTE: text_reply('<html>log in</html>')}) as hub:
        result = runner.invoke(app, ['models', 'pull', 'qwen2.5-0.5b-instruct'], env=env | {'HF_ENDPOINT': hub.url('')})
    assert result.exit_code == 1
    assert 'did not send a GGUF file' in result.stderr
    assert list((tmp_path / 'home' / 'models').iterdir()) == []


def test_http_errors_and_unknown_names(env: dict[str, str]) -> None:
    with LoopbackHTTPServer() as hub:
        missing = runner.invoke(
            app, ['models', 'pull', 'hf:someone/repo/model.gguf'], env=env | {'HF_ENDPOINT': hub.url('')}
        )
    assert missing.exit_code == 1 and 'answered HTTP 404' in missing.stderr
    unknown = runner.invoke(app, ['models', 'pull', 'gpt-5'], env=env)
    assert unknown.exit_code == 1 and "unknown model 'gpt-5': pick one of qwen2.5-0.5b-instruct" in unknown.stderr


def test_without_the_local_extra_the_pull_still_works_and_names_the_command_to_run_it(
    gguf_bytes: bytes, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, 'llama_cpp', None)  # as after `make chat`: the core only
    with LoopbackHTTPServer({ROUTE: _ranged(gguf_bytes)}) as hub:  # type: ignore[dict-item]
        result = runner.invoke(app, ['models', 'pull', 'qwen2.5-0.5b-instruct'], env=env | {'HF_ENDPOINT': hub.url('')})
    assert result.exit_code == 0, result.stderr
    assert 'to run it, install the local extra: `make local` in a Tandem checkout' in result.stderr
    assert "`pip install 'tandem[local]'`" in result.stderr


def test_with_the_local_extra_the_pull_names_no_install_command(gguf_bytes: bytes, env: dict[str, str]) -> None:
    with LoopbackHTTPServer({ROUTE: _ranged(gguf_bytes)}) as hub:  # type: ignore[dict-item]
        result = runner.invoke(app, ['models', 'pull', 'qwen2.5-0.5b-instruct'], env=env | {'HF_ENDPOINT': hub.url('')})
    assert result.exit_code == 0, result.stderr
    assert 'make local' not in result.stderr
