"""No zero-click leaks from the command line: `tandem ask` (streamed text and `--json`) and the REPL
show a planted page's URLs inert, from a real OpenAI-compatible server the model stands behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.core.config import Settings
from tandem.agent.turn.request import TurnRequest
from tests.support.fake_openai import FakeOpenAI
from tests.support.loopback_http import LoopbackHTTPServer
from tests.support.planted import CANARY_PATHS, SECRET, steered_script
from tests.support.repl import drive_repl


@pytest.fixture
def model(notes: LoopbackHTTPServer) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(steered_script(notes.url('/notes')), models=['tiny']) as fake:
        yield fake


def _question(notes: LoopbackHTTPServer) -> str:
    return f'Fetch {notes.url("/notes")} and tell me what it says.'


def _assert_inert(answer: str, canary: LoopbackHTTPServer, notes: LoopbackHTTPServer) -> None:
    assert SECRET not in answer
    for path in CANARY_PATHS:
        assert f'{canary.netloc}{path}' in answer  # shown, as text
    assert f'http://{canary.netloc}' not in answer
    assert f'({notes.url("/notes")})' in answer  # the page the user named stays a live link


@pytest.mark.parametrize('as_json', [False, True], ids=['text', 'json'])
def test_tandem_ask_prints_the_planted_urls_inert(
    env: dict[str, str],
    model: FakeOpenAI,
    notes: LoopbackHTTPServer,
    canary: LoopbackHTTPServer,
    as_json: bool,
) -> None:
    env = {**env, 'OPENAI_BASE_URL': model.url, 'TANDEM_WEB__ALLOWED_HOSTS': notes.netloc}
    flags = ['--json'] if as_json else []
    result = CliRunner().invoke(
        app, ['ask', '--model', 'openai-chat:tiny', '--tools', 'web', *flags, _question(notes)], env=env
    )

    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)['answer'] if as_json else result.stdout
    _assert_inert(answer, canary, notes)


async def test_the_repl_shows_the_planted_urls_inert(
    tmp_path: Path, redis_url: str, model: FakeOpenAI, notes: LoopbackHTTPServer, canary: LoopbackHTTPServer
) -> None:
    settings = Settings(
        home=tmp_path,
        redis_url=redis_url,  # type: ignore[arg-type]
        backbones={'base': {'model': 'openai-chat:tiny', 'base_url': model.url}},  # type: ignore[dict-item]
        backbone='base',
        tools=['web'],
        web={'allowed_hosts': [notes.netloc]},  # type: ignore[arg-type]
    )

    screen = await drive_repl(settings, [_question(notes), '/history'], TurnRequest(session='r1'), width=200)

    stored = screen[screen.index('assistant: Here are the notes') :]  # /history: what the session stored
    _assert_inert(stored, canary, notes)
    assert SECRET not in screen and f'http://{canary.netloc}' not in screen  # nor in the rendered answer
    assert f'[image removed: {canary.netloc}/inline.png]' in screen  # rendered as Markdown: brackets, no escapes
