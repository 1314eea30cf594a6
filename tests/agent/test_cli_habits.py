"""Command-line habits from `llm` and `clai`: piped input, `-` for standard input, `--continue`, `--system`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.core.config import Settings
from tandem.agent.turn.request import TurnRequest
from tests.support.fake_openai import FakeOpenAI

runner = CliRunner()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=['tiny']) as fake:
        yield fake


def ask(env: dict[str, str], server: FakeOpenAI, *args: str, stdin: str = '') -> tuple[int, dict[str, str] | str]:
    """`tandem ask --json ARGS` with `stdin` piped in: the exit code, and the JSON payload or the error output."""
    result = runner.invoke(
        app,
        ['ask', '--model', 'openai-chat:tiny', '--tools', 'calc', '--json', *args],
        env={**env, 'OPENAI_BASE_URL': server.url, 'OPENAI_API_KEY': 'sk-local'},
        input=stdin,
    )
    return result.exit_code, json.loads(result.stdout) if result.exit_code == 0 else result.stderr


def test_piped_input_comes_before_the_message(env: dict[str, str], server: FakeOpenAI) -> None:
    code, payload = ask(env, server, 'Summarise this.', stdin='# Notes\nShip on Friday.\n')

    assert code == 0
    assert isinstance(payload, dict)
    assert payload['answer'] == 'You said: # Notes\nShip on Friday.\n\nSummarise this.'


def test_a_dash_reads_the_message_from_standard_input(env: dict[str, str], server: FakeOpenAI) -> None:
    code, payload = ask(env, server, '-', stdin='What is in the box?\n')

    assert code == 0 and isinstance(payload, dict)
    assert payload['answer'] == 'You said: What is in the box?'


def test_no_message_at_all_is_one_line_and_exit_1(env: dict[str, str], server: FakeOpenAI) -> None:
    assert ask(env, server) == (
        1,
        'error: nothing to ask: give a message, or pipe one in (cat notes.md | tandem ask "Summarise this").\n',
    )
    assert server.chat_requests == []


def test_continue_picks_up_the_most_recent_session(env: dict[str, str], server: FakeOpenAI) -> None:
    _, first = ask(env, server, 'My name is Ada.')
    ask(env, server, '--session', 'older', 'Unrelated.')  # saved later, so the most recent
    code, again = ask(env, server, '-c', 'What is my name?')

    assert code == 0 and isinstance(first, dict) and isinstance(again, dict)
    assert again['session'] == 'older'
    users = [m['content'] for m in server.chat_requests[-1]['messages'] if m['role'] == 'user']
    assert users == ['Unrelated.', 'What is my name?']


def test_continue_without_a_session_says_so(env: dict[str, str], server: FakeOpenAI) -> None:
    assert ask(env, server, '--continue', 'Hello') == (
        1,
        "error: user 'local' has no session to continue yet: leave out --continue to start one.\n",
    )


def test_continue_and_session_together_are_refused(env: dict[str, str], server: FakeOpenAI) -> None:
    code, error = ask(env, server, '-c', '-s', 'x', 'Hello')
    assert (code, error) == (
        1,
        'error: --continue picks your most recent session: leave out --session, or --continue.\n',
    )


def test_system_replaces_the_prompt_template_for_one_run_as_written(env: dict[str, str], server: FakeOpenAI) -> None:
    code, payload = ask(env, server, '--system', 'Answer in French. Keep {{ braces }} as they are.', 'Hello')

    assert code == 0 and isinstance(payload, dict)
    assert payload['prompt'] == 'system@given'
    [system] = [m['content'] for m in server.chat_requests[-1]['messages'] if m['role'] == 'system']
    assert system.startswith('Answer in French. Keep {{ braces }} as they are.')


def test_chat_continue_opens_the_repl_on_the_most_recent_session(
    env: dict[str, str], server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    ask(env, server, '--session', 'latest', 'Hello')
    opened: list[TurnRequest] = []

    async def repl(settings: Settings, request: TurnRequest) -> None:
        opened.append(request)

    monkeypatch.setattr('tandem.agent.cli.repl.run_repl', repl)
    result = runner.invoke(app, ['chat', '--continue', '--system', 'Be brief.'], env=env)

    assert result.exit_code == 0, result.stderr
    assert [(request.session, request.system) for request in opened] == [('latest', 'Be brief.')]
