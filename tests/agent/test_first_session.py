"""A newcomer's first session, driven through the REPL and the CLI as a person would.

- text from users, models, config and tools is printed literally, square brackets included;
- `tandem redis status` is a readable table;
- a local `OPENAI_BASE_URL` is used as it is: chat completions and the first model it lists;
- with no model, the REPL says how to get one and runs no agent until one is picked.

The banner and `--version` are driven from a real terminal and a real process: see test_terminal.py
and test_cli.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.core.config import Settings
from tandem.agent.turn.request import TurnRequest
from tests.support.fake_openai import FakeOpenAI, Reply, Text, ToolCall, last_tool_result, user_texts
from tests.support.repl import drive_repl

runner = CliRunner()

MARKUP = '[bold]x[/] [backbones.NAME] [red]'
"""Rich markup, and text that looks like it: printed through markup, the first and last vanish."""


def bracket_script(body: dict[str, Any]) -> Reply:
    result = last_tool_result(body)
    if result is not None:
        return Text('the tool said no')
    if 'compute' in user_texts(body)[-1]:
        return ToolCall.one('calculate', expression='[1] + [bold]2')
    return Text(f'You said: {user_texts(body)[-1]}')


def _settings(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> Settings:
    return Settings(
        home=tmp_path,
        redis_url=redis_url,  # type: ignore[arg-type]
        backbones={'base': {'model': 'openai-chat:base-model', 'base_url': server.url}},  # type: ignore[dict-item]
        backbone='base',
    )


async def test_the_repl_prints_user_model_tool_and_config_text_literally(tmp_path: Path, redis_url: str) -> None:
    with FakeOpenAI(bracket_script, models=['base-model']) as server:
        screen = await drive_repl(
            _settings(tmp_path, redis_url, server),
            [
                f'say {MARKUP}',  # the model's answer repeats it
                'compute it',  # a tool call whose arguments hold markup
                f'/backbone {MARKUP}',  # config text: an unknown backbone's name, in the error
                '/prompt [bold]nope',
                '/switch [bold]x',
            ],
            TurnRequest(session='brackets'),
            width=200,
        )

    assert f'You said: say {MARKUP}' in screen
    assert "⚙ calculate(expression='[1] + [bold]2')" in screen
    assert f'add [backbones.{MARKUP}] to tandem.toml' in screen
    assert "unknown prompt '[bold]nope'" in screen
    assert "'[bold]x'" in screen


def test_the_cli_prints_config_and_stored_text_literally(env: dict[str, str], tmp_path: Path) -> None:
    listed = runner.invoke(app, ['backbones'], env=env)
    assert 'Add a [backbones.NAME] table to tandem.toml' in listed.stdout

    unknown = runner.invoke(app, ['ask', '--backbone', MARKUP, 'hi'], env=env)
    assert unknown.exit_code == 1
    assert f'add [backbones.{MARKUP}] to tandem.toml' in unknown.stderr

    facts = tmp_path / 'facts.json'
    facts.write_text(json.dumps([{'text': f'likes {MARKUP}'}]))
    imported = runner.invoke(app, ['memory', 'import', str(facts), '--user', 'ada'], env=env)
    assert imported.exit_code == 0, imported.stderr
    shown = runner.invoke(app, ['memory', 'list', '--user', 'ada'], env=env)
    assert f'likes {MARKUP}' in shown.stdout


def test_redis_status_is_a_table_of_server_version_memory_keys_and_query_engine(
    env: dict[str, str], redis_url: str
) -> None:
    result = runner.invoke(app, ['redis', 'status'], env=env)

    assert result.exit_code == 0, result.stderr
    rows = _rows(result.stdout)
    assert rows['server'] == 'TANDEM_REDIS_URL'
    assert rows['address'] == redis_url
    assert rows['version'].startswith(('valkey ', 'redis '))
    assert rows['memory'].endswith(' used')
    assert int(rows['keys']) >= 0
    assert rows['query engine'].startswith(('yes: ', 'no: vectors are searched in process'))
    assert 'EmbeddedStatus(' not in result.stdout


def test_redis_status_of_the_embedded_server_before_and_after_it_starts(env: dict[str, str]) -> None:
    embedded = {key: value for key, value in env.items() if key != 'TANDEM_REDIS_URL'}
    try:
        before = runner.invoke(app, ['redis', 'status'], env=embedded)
        assert before.exit_code == 0, before.stderr
        assert 'not running: the next tandem command starts it' in before.stdout

        assert runner.invoke(app, ['sessions', 'list'], env=embedded).exit_code == 0  # starts it
        after = runner.invoke(app, ['redis', 'status'], env=embedded)
        assert after.exit_code == 0, after.stderr
        rows = _rows(after.stdout)
        assert rows['server'].startswith('embedded')
        assert rows['state'].startswith('running, pid ')
        assert rows['version'].startswith('valkey ')
    finally:
        runner.invoke(app, ['redis', 'stop'], env=embedded)


def _rows(table: str) -> dict[str, str]:
    """A two-column table without borders, as label → value (the columns are two or more spaces apart)."""
    pairs = [re.split(r' {2,}', line.strip(), maxsplit=1) for line in table.splitlines() if line.strip()]
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def test_a_local_openai_base_url_is_used_with_chat_completions_and_its_first_model(env: dict[str, str]) -> None:
    with FakeOpenAI(models=['qwen2.5-3b', 'other']) as server:
        # The usual setup for a local server: a placeholder key and the server's URL.
        local = env | {'OPENAI_API_KEY': 'sk-local', 'OPENAI_BASE_URL': server.url}
        result = runner.invoke(app, ['ask', '--json', 'Hello'], env=local)
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload['backbone'], payload['answer']) == ('openai-chat:qwen2.5-3b', 'You said: Hello')
    assert [request['model'] for request in server.chat_requests] == ['qwen2.5-3b']


def test_a_server_without_the_responses_api_is_named_as_such(env: dict[str, str]) -> None:
    with FakeOpenAI(models=['tiny']) as server:  # chat completions only, like vLLM or Ollama
        result = runner.invoke(
            app, ['ask', '--model', 'openai:tiny', 'Hello'], env=env | {'OPENAI_BASE_URL': server.url}
        )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: backbone 'openai:tiny': the server has no Responses API (POST /responses answered 404), which "
        "'openai:' models use; OpenAI-compatible servers speak chat completions: use 'openai-chat:tiny'."
    ]


@pytest.fixture
def nothing_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from tandem.agent.backbones import base as backbones

    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    monkeypatch.delenv('OPENAI_BASE_URL', raising=False)
    monkeypatch.setattr(backbones, '_LOCAL_SERVERS', ())  # no Ollama etc. on this machine's usual ports


@pytest.mark.usefixtures('nothing_configured')
async def test_with_no_model_the_repl_runs_no_agent_and_names_models_pull(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tandem.agent.cli import repl

    async def no_agent(*args: object, **kwargs: object) -> None:
        raise AssertionError('an agent ran with no model')

    monkeypatch.setattr(repl, 'run_turn', no_agent)
    settings = Settings(home=tmp_path, redis_url=redis_url)  # type: ignore[arg-type]

    screen = await drive_repl(settings, ['hi', '/run scenarios/calculator.yaml'], TurnRequest(session='n1'), width=200)

    assert screen.startswith('no model is configured')
    assert 'tandem models pull qwen2.5-1.5b-instruct --register local' in screen
    assert screen.count('Nothing was sent. Get a model as above, then `/backbone NAME`') == 2
    assert 'error:' not in screen


async def test_once_a_backbone_is_picked_the_repl_answers(tmp_path: Path, redis_url: str) -> None:
    with FakeOpenAI(models=['base-model']) as server:
        settings = _settings(tmp_path, redis_url, server).model_copy(update={'backbone': 'typo'})
        screen = await drive_repl(settings, ['hi', '/backbone base', 'hello'], TurnRequest(session='n2'), width=200)
    assert "unknown backbone 'typo'" in screen
    assert 'Nothing was sent' in screen
    assert 'You said: hello' in screen
    assert [user_texts(request)[-1] for request in server.chat_requests] == ['hello']
