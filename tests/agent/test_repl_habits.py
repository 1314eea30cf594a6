"""REPL habits from clai: /markdown and /cp for the last answer, a spinner until the first event,
/switch asking before it starts a session, and the status bar counting the current session's tokens."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from tandem.agent.cli.repl import Repl, _TurnView, make_prompt_session
from tandem.agent.core.config import Settings
from tandem.agent.core.events import TextDelta
from tandem.agent.turn.build import build_deps, open_redis
from tandem.agent.turn.request import TurnRequest
from tests.support.fake_openai import FakeOpenAI, Text
from tests.support.repl import drive_repl

ANSWER = '**Bold** and `code`'


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(lambda body: Text(ANSWER), models=['tiny']) as fake:
        yield fake


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> Settings:
    return Settings.model_validate(
        {
            'home': tmp_path,
            'redis_url': redis_url,
            'backbones': {'tiny': {'model': 'openai-chat:tiny', 'base_url': server.url}},
            'backbone': 'tiny',
            'tools': ['calc'],
        }
    )


async def test_markdown_shows_the_last_answer_raw_and_cp_copies_it_through_the_terminal(settings: Settings) -> None:
    screen = await drive_repl(settings, ['/markdown', 'hello', '/markdown', '/cp'])

    assert 'error: no answer yet in this REPL: /markdown shows the last one as raw markdown.' in screen
    _, raw = screen.split('Bold and code', 1)  # the answer as rendered markdown, then /markdown
    assert ANSWER in raw
    assert f'\x1b]52;c;{base64.b64encode(ANSWER.encode()).decode()}\x07' in raw
    assert 'copied the last answer (19 characters) through the terminal' in raw


async def test_switching_to_a_session_that_does_not_exist_asks_first(settings: Settings) -> None:
    screen = await drive_repl(settings, ['/switch fresh', 'n', '/switch fresh', 'yes'], TurnRequest(session='r1'))

    # The question goes to the prompt: answered no, nothing changes; yes, the session starts.
    _, second = screen.split('still in session r1')
    assert 'switched to session fresh (0 messages)' in second


def test_a_spinner_shows_until_the_first_event() -> None:
    out = io.StringIO()
    view = _TurnView(Console(file=out, force_terminal=True, width=80))
    view(TextDelta('Hi'))
    view.close()

    assert 'thinking…' in out.getvalue()
    assert out.getvalue().rindex('thinking…') < out.getvalue().rindex('Hi')


async def test_the_status_bar_counts_the_current_sessions_tokens(settings: Settings) -> None:
    await drive_repl(settings, ['hello'], TurnRequest(session='one'))
    async with open_redis(settings) as redis:
        deps = await build_deps(settings, redis, TurnRequest(session='one'))
        with create_pipe_input() as pipe:
            session = make_prompt_session(settings, input=pipe, output=DummyOutput())
            repl = Repl(deps, settings, console=Console(file=io.StringIO()), prompt_session=session)
            await repl._load_session_tokens()  # pyright: ignore[reportPrivateUsage]
            resumed = repl.status_line().value
            await repl._new('')  # pyright: ignore[reportPrivateUsage]
            fresh = repl.status_line().value
            await repl._switch('one')  # pyright: ignore[reportPrivateUsage]
            switched_back = repl.status_line().value

    assert repl.usage.total_tokens == 0  # nothing ran in this REPL
    assert ' · 0 tokens' not in resumed and resumed.endswith(' tokens')
    assert fresh.endswith(' · 0 tokens')
    assert switched_back.endswith(resumed.rsplit(' · ', 1)[1])  # the session's own count again
