"""The command line through typer's runner: happy paths and every kind of bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tests.support.fake_openai import Error, FakeOpenAI, Text
from tests.support.loopback_http import refused_port

runner = CliRunner()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=['tiny']) as fake:
        yield fake


def _ask(env: dict[str, str], server: FakeOpenAI, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(
        app, ['ask', '--model', 'openai-chat:tiny', *args], env={**env, 'OPENAI_BASE_URL': server.url}
    )
    return result.exit_code, result.stdout, result.stderr


def test_ask_json_prints_answer_session_tool_calls_and_usage(env: dict[str, str], server: FakeOpenAI) -> None:
    code, out, _ = _ask(env, server, '--session', 'c1', '--json', 'Hello')
    assert code == 0
    payload = json.loads(out)
    assert payload['answer'] == 'You said: Hello'
    assert payload['session'] == 'c1'
    assert payload['tool_calls'] == []
    assert payload['usage']['requests'] == 1 and payload['usage']['total_tokens'] > 0


def test_ask_without_a_session_starts_a_new_one_each_time(env: dict[str, str], server: FakeOpenAI) -> None:
    sessions = {json.loads(_ask(env, server, '--json', 'hi')[1])['session'] for _ in range(2)}
    assert len(sessions) == 2


def test_ask_streams_plain_text(env: dict[str, str], server: FakeOpenAI) -> None:
    code, out, err = _ask(env, server, 'Stream me')
    assert code == 0
    assert out == 'You said: Stream me\n'
    assert 'session' in err


def test_sessions_list_show_export_delete(env: dict[str, str], server: FakeOpenAI) -> None:
    _ask(env, server, '--session', 'keep', 'one')
    listed = runner.invoke(app, ['sessions', 'list', '--json'], env=env)
    assert [s['session'] for s in json.loads(listed.stdout)] == ['keep']

    shown = runner.invoke(app, ['sessions', 'show', 'keep'], env=env)
    assert shown.stdout.splitlines() == ['you: one', 'assistant: You said: one']

    exported = json.loads(runner.invoke(app, ['sessions', 'export', 'keep'], env=env).stdout)
    assert [message['kind'] for message in exported] == ['request', 'response']

    assert runner.invoke(app, ['sessions', 'delete', 'keep'], env=env).exit_code == 0
    missing = runner.invoke(app, ['sessions', 'delete', 'keep'], env=env)
    assert missing.exit_code == 1 and "no session 'keep'" in missing.stderr


def test_sessions_are_listed_with_titles_found_by_text_and_renamed(env: dict[str, str], server: FakeOpenAI) -> None:
    _ask(env, server, '--session', 'trip', 'Plan my trip to Rome')
    _ask(env, server, '--session', 'tax', 'When is the tax deadline?')
    _ask(env, server, '--session', 'tax', 'And for Rome residents?')

    listed = json.loads(runner.invoke(app, ['sessions', 'list', '--json'], env=env).stdout)
    found = runner.invoke(app, ['sessions', 'search', 'ROME', '--json'], env=env)
    table = runner.invoke(app, ['sessions', 'search', 'tax deadline'], env={**env, 'COLUMNS': '200'})

    assert [(row['session'], row['title']) for row in listed] == [
        ('tax', 'When is the tax deadline?'),
        ('trip', 'Plan my trip to Rome'),
    ]
    assert [(row['session'], row['match']) for row in json.loads(found.stdout)] == [
        ('tax', 'And for Rome residents?'),
        ('trip', 'Plan my trip to Rome'),
    ]
    assert 'tax' in table.stdout and 'When is the tax deadline?' in table.stdout and 'trip' not in table.stdout

    renamed = runner.invoke(app, ['sessions', 'title', 'trip', 'Rome, three days'], env=env)
    assert renamed.exit_code == 0 and "titled 'Rome, three days'" in renamed.stderr
    listed = json.loads(runner.invoke(app, ['sessions', 'list', '--json'], env=env).stdout)
    assert [row['title'] for row in listed] == ['When is the tax deadline?', 'Rome, three days']


def test_a_search_that_finds_nothing_says_so_and_succeeds(env: dict[str, str], server: FakeOpenAI) -> None:
    _ask(env, server, '--session', 'trip', 'Plan my trip')

    result = runner.invoke(app, ['sessions', 'search', 'zanzibar'], env=env)

    assert result.exit_code == 0 and result.stdout == ''
    assert "no session mentions 'zanzibar'" in result.stderr


def test_config_show_masks_secrets(env: dict[str, str]) -> None:
    result = runner.invoke(app, ['config', 'show'], env={**env, 'TANDEM_REDIS_URL': 'redis://:hunter2@127.0.0.1:1/0'})
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert shown['redis_url'] == 'redis://:***@127.0.0.1:1/0'
    assert 'hunter2' not in result.stdout


def _one_line_error(result_stderr: str, expected: str) -> None:
    lines = [line for line in result_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith('error: ') and expected in lines[0], lines[0]
    assert 'Traceback' not in result_stderr


@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        (['ask', '--backbone', 'nope', 'hi'], "unknown backbone 'nope'"),
        (['ask', '--session', 'a:b', '--model', 'openai-chat:tiny', 'hi'], "invalid session id 'a:b'"),
        (['ask', '--user', 'bad user', '--model', 'openai-chat:tiny', 'hi'], "invalid user id 'bad user'"),
        (['ask', '--prompt', 'missing@3', '--model', 'openai-chat:tiny', 'hi'], "unknown prompt 'missing'"),
        (['sessions', 'show', 'x*'], "invalid session id 'x*'"),
        (['sessions', 'search', '  '], 'give some text to search for'),
        (['sessions', 'title', 'nope', 'New name'], "no session 'nope'"),
        (['sessions', 'title', 'nope', ' '], 'a title needs some text'),
    ],
)
def test_bad_input_is_one_actionable_line_and_exit_1(env: dict[str, str], args: list[str], expected: str) -> None:
    result = runner.invoke(app, args, env={**env, 'OPENAI_BASE_URL': 'http://127.0.0.1:9/v1'})
    assert result.exit_code == 1
    _one_line_error(result.stderr, expected)


def test_redis_down_is_a_clear_error(env: dict[str, str], server: FakeOpenAI) -> None:
    with refused_port() as closed:
        result = runner.invoke(
            app,
            ['ask', '--model', 'openai-chat:tiny', 'hi'],
            env={**env, 'OPENAI_BASE_URL': server.url, 'TANDEM_REDIS_URL': f'redis://127.0.0.1:{closed}/0'},
        )
    assert result.exit_code == 1
    _one_line_error(result.stderr, 'cannot reach Redis')


def test_provider_errors_are_clear_and_lose_nothing(env: dict[str, str]) -> None:
    with FakeOpenAI(
        [Text('stored answer'), Error(401, 'bad key'), Error(404, 'no such model')], models=['tiny']
    ) as fake:
        assert _ask(env, fake, '--session', 'p1', 'first')[0] == 0
        unauthorized = _ask(env, fake, '--session', 'p1', 'second')
        not_found = _ask(env, fake, '--session', 'p1', 'third')

    assert unauthorized[0] == 1
    _one_line_error(unauthorized[2], 'rejected the API key (HTTP 401): check OPENAI_API_KEY')
    assert not_found[0] == 1
    _one_line_error(not_found[2], '(HTTP 404)')
    shown = runner.invoke(app, ['sessions', 'show', 'p1'], env=env)
    assert shown.stdout.splitlines() == ['you: first', 'assistant: stored answer']


def test_an_unreachable_model_server_is_a_clear_error(env: dict[str, str]) -> None:
    with refused_port() as closed:
        result = runner.invoke(
            app,
            ['ask', '--model', 'openai-chat:tiny', 'hi'],
            env={**env, 'OPENAI_BASE_URL': f'http://127.0.0.1:{closed}/v1'},
        )
    assert result.exit_code == 1
    _one_line_error(result.stderr, 'cannot reach backbone')


def test_debug_shows_the_traceback(env: dict[str, str]) -> None:
    result = runner.invoke(app, ['--debug', 'ask', '--backbone', 'nope', 'hi'], env=env)
    assert result.exit_code == 1
    assert result.exception is not None and 'unknown backbone' in str(result.exception)


def test_tools_lists_every_tool_with_its_status(env: dict[str, str]) -> None:
    result = runner.invoke(app, ['tools'], env=env)
    assert result.exit_code == 0
    assert 'calculate' in result.stdout and 'now' in result.stdout and 'ok' in result.stdout


def test_each_turn_is_logged_as_json_lines_without_contents_or_secrets(env: dict[str, str]) -> None:
    from tests.support.fake_openai import ToolCall, last_tool_result

    def script(body: dict[str, object]) -> object:
        return ToolCall.one('calculate', expression='6*7') if last_tool_result(body) is None else Text('It is 42.')

    with FakeOpenAI(script, models=['tiny']) as fake:  # type: ignore[arg-type]
        result = runner.invoke(
            app,
            ['--log-format', 'json', 'ask', '--model', 'openai-chat:tiny', '--session', 'logged', 'my secret phrase'],
            env={**env, 'OPENAI_BASE_URL': fake.url, 'OPENAI_API_KEY': 'sk-never-logged'},
        )
    assert result.exit_code == 0, result.stderr

    log_file = Path(env['TANDEM_HOME']) / 'logs' / 'tandem.log'
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    by_event = {line['event']: line for line in lines}
    start = by_event['turn.start']
    assert (start['session'], start['tenant'], start['user'], start['backbone'], start['prompt']) == (
        'logged',
        'default',
        'local',
        'openai-chat:tiny',
        'assistant@1',
    )
    turn_lines = [line for line in lines if line['event'] in {'turn.start', 'model.request', 'tool.call', 'turn.end'}]
    assert {line['run_id'] for line in turn_lines} == {start['run_id']}
    requests = [line for line in lines if line['event'] == 'model.request']
    assert len(requests) == 2 and all(r['latency_ms'] >= 0 and r['input_tokens'] > 0 for r in requests)
    assert (by_event['tool.call']['tool'], by_event['tool.call']['ok']) == ('calculate', True)
    raw = log_file.read_text()
    assert 'my secret phrase' not in raw and 'It is 42' not in raw and 'sk-never-logged' not in raw
    assert '"event": "turn.end"' in result.stderr  # --log-format json also logs to stderr


def test_version_prints_tandem_pydantic_ai_and_python_versions() -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    done = subprocess.run(
        [str(Path(sys.executable).parent / 'tandem'), '--version'], capture_output=True, text=True, check=False
    )
    python = '.'.join(map(str, sys.version_info[:3]))
    assert (done.returncode, done.stderr) == (0, '')
    assert done.stdout == f'tandem {version("tandem")} (pydantic-ai {version("pydantic-ai-slim")}, Python {python})\n'
