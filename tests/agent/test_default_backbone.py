"""The configured default backbone, through every documented path: `tandem.toml`, `TANDEM_BACKBONE`,
`Assistant.from_config(backbone=...)`; `chat`, `stream`, `chat_sync`, `stream_sync`; and `tandem serve`
(`/readyz`, `/v1/models`, a plain chat and a streamed one, through the openai SDK).

Nothing here passes backbones in by hand: each test configures Tandem as a user would, against a
loopback OpenAI-compatible server, and every wait is bounded, so a hang fails instead of stalling.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tandem.agent import Assistant
from tandem.agent.api import TurnFinished
from tandem.agent.core.events import TextDelta
from tests.support.fake_openai import FakeOpenAI
from tests.support.served import served

ROOT = Path(__file__).resolve().parents[2]
TURN_TIMEOUT = 30.0


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=['tiny-chat']) as fake:
        yield fake


@pytest.fixture
def user_dir(tmp_path: Path, redis_url: str, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the README's `tandem.toml` shape, pointed at the loopback server."""
    for name in [name for name in os.environ if name.startswith(('TANDEM_', 'OPENAI_'))]:
        monkeypatch.delenv(name)
    (tmp_path / 'tandem.toml').write_text(
        f'tools = ["calc"]\n\n[backbones.local]\nmodel = "openai-chat:tiny-chat"\nbase_url = "{server.url}"\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('TANDEM_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('TANDEM_REDIS_URL', redis_url)
    return tmp_path


def _set_default_in_toml(user_dir: Path) -> None:
    toml = user_dir / 'tandem.toml'
    toml.write_text('backbone = "local"\n' + toml.read_text())


async def _chat(assistant: Assistant) -> str:
    async with assistant:
        result = await asyncio.wait_for(assistant.chat('hello'), TURN_TIMEOUT)
        again = await asyncio.wait_for(assistant.chat('and again', session=result.session), TURN_TIMEOUT)
    assert (result.backbone, again.backbone) == ('local', 'local')
    return again.answer


async def test_the_default_from_tandem_toml_answers(user_dir: Path) -> None:
    _set_default_in_toml(user_dir)
    assert await _chat(Assistant.from_config()) == 'You said: and again'


async def test_the_default_from_tandem_backbone_answers(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('TANDEM_BACKBONE', 'local')
    assert await _chat(Assistant.from_config()) == 'You said: and again'


async def test_the_default_from_from_config_answers(user_dir: Path) -> None:
    assert await _chat(Assistant.from_config(backbone='local')) == 'You said: and again'


async def test_the_default_resolves_once_for_concurrent_turns(user_dir: Path) -> None:
    _set_default_in_toml(user_dir)
    async with Assistant.from_config() as assistant:
        results = await asyncio.wait_for(asyncio.gather(*(assistant.chat(f'turn {n}') for n in range(4))), TURN_TIMEOUT)
        assert await assistant.backbone() is await assistant.backbone('local')
    assert sorted(result.answer for result in results) == [f'You said: turn {n}' for n in range(4)]


async def test_a_stream_on_the_default_yields_the_answer_then_the_result(user_dir: Path) -> None:
    _set_default_in_toml(user_dir)

    async def events() -> list[object]:
        async with Assistant.from_config() as assistant:
            return [event async for event in assistant.stream('hello')]

    received = await asyncio.wait_for(events(), TURN_TIMEOUT)
    finished = received[-1]
    assert isinstance(finished, TurnFinished)
    assert (finished.result.backbone, finished.result.answer) == ('local', 'You said: hello')
    assert ''.join(event.text for event in received if isinstance(event, TextDelta)) == 'You said: hello'


@pytest.mark.parametrize(
    'call',
    [
        "print(assistant.chat_sync('hello').answer)",
        "print(''.join(e.text for e in assistant.stream_sync('hello') if hasattr(e, 'text')))",
    ],
    ids=['chat_sync', 'stream_sync'],
)
@pytest.mark.usefixtures('user_dir')
def test_the_sync_api_with_the_default_answers_in_a_plain_program(call: str) -> None:
    program = f'from tandem.agent import Assistant\nwith Assistant.from_config() as assistant:\n    {call}\n'
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'TANDEM_BACKBONE': 'local'}
    done = subprocess.run(
        [sys.executable, '-c', program], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, 'You said: hello\n', '')


@pytest.mark.slow
@pytest.mark.timeout(300)  # start-up, four bounded requests and a graceful stop, each slow on a loaded machine
def test_tandem_serve_with_the_default_answers_models_readiness_and_chat(user_dir: Path) -> None:
    _set_default_in_toml(user_dir)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'TANDEM_API_KEYS': 'sk-default-test:acme'}
    headers = {'Authorization': 'Bearer sk-default-test'}
    with served(lambda port: [sys.executable, '-m', 'tandem.agent', 'serve', '--port', str(port)], env=env) as server:
        # Readiness first, as a load balancer asks it: the default is resolved before any backbone by name.
        ready = httpx.get(f'{server.base_url}/readyz', timeout=TURN_TIMEOUT)
        models = httpx.get(f'{server.base_url}/v1/models', headers=headers, timeout=TURN_TIMEOUT)
        client = openai.OpenAI(
            base_url=f'{server.base_url}/v1', api_key='sk-default-test', timeout=TURN_TIMEOUT, max_retries=0
        )
        with client:
            chat = client.chat.completions.create(model='local', messages=[{'role': 'user', 'content': 'hello'}])
            chunks = client.chat.completions.create(
                model='local', messages=[{'role': 'user', 'content': 'streamed'}], stream=True
            )
            streamed = ''.join(chunk.choices[0].delta.content or '' for chunk in chunks if chunk.choices)

    assert (ready.status_code, ready.json()['backbones']) == (200, {'local': 'ok'})
    assert [model['id'] for model in models.json()['data']] == ['local']
    assert chat.choices[0].message.content == 'You said: hello'
    assert streamed == 'You said: streamed'
    assert server.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down cleanly
