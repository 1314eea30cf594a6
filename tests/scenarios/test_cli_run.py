"""`tandem run` through typer's runner: the matrix, reports, exit codes, record/replay, and bad input."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.cli.run import injected_backbones
from tests.scenarios.conftest import WriteScenario
from tests.scenarios.scripted_backbone import judge_backbone, scripted_backbone
from tests.support.fake_openai import FakeOpenAI, Reply, Text, ToolCall, last_tool_result, user_texts

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    for name in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'TANDEM_CONFIG', 'TANDEM_BACKBONE', 'TANDEM_TOOLS'):
        monkeypatch.delenv(name, raising=False)
    return {
        'TANDEM_HOME': str(tmp_path / 'home'),
        'TANDEM_REDIS_URL': redis_url,
        'XDG_CONFIG_HOME': str(tmp_path),
    }


@pytest.fixture
def suite(write_scenario: WriteScenario) -> Path:
    """A small suite on the built-in toolsets (so it needs no plugin that is not installed)."""
    write_scenario(
        """
        name: calc
        tags: [math]
        setup: {tools: [calc]}
        turns:
          - user: What is 17 * 23?
            expect: {tools: [calculate], contains: '391'}
        """,
        name='calc.yaml',
    )
    write_scenario(
        """
        name: identity
        tags: [instructions]
        setup: {tools: []}
        turns:
          - user: Who are you?
            expect: {regex: '\\bTandem\\b', max_tool_calls: 0, judge: "The answer mentions 'Tandem'."}
        """,
        name='identity.yaml',
    )
    return write_scenario(
        'name: clock\ntags: [time]\nsetup: {tools: [clock]}\nturns: [{user: What time is it in Tokyo}]\n',
        name='clock.yaml',
    ).parent


@pytest.fixture
def scripted() -> Iterator[None]:
    with injected_backbones(scripted_backbone(), scripted_backbone('other'), judge_backbone()):
        yield


def test_a_passing_suite_exits_0_with_a_table_per_cell_and_reports(
    env: dict[str, str], suite: Path, scripted: None, tmp_path: Path
) -> None:
    out = tmp_path / 'out'
    result = runner.invoke(
        app,
        [
            'run',
            str(suite),
            '-b',
            'scripted',
            '--judge',
            'scripted-judge',
            '--report',
            str(out),
            '--junit',
            str(out / 'junit.xml'),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert 'scripted · scenario prompt · full' in result.stdout
    assert 'pass 3/3 (100% [44–100%]) · tool-call accuracy 100% [' in result.stdout
    assert '3 passed, 0 failed, 0 errors in' in result.stdout
    assert f'report: {out / "report.html"} · {out / "report.json"}' in result.stderr
    data = json.loads((out / 'report.json').read_text())
    assert [run['status'] for run in data['runs']] == ['passed'] * 3
    assert ET.parse(out / 'junit.xml').getroot().get('tests') == '3'
    assert '<svg class="chart"' in (out / 'report.html').read_text()


def test_the_matrix_compares_backbones_prompts_and_ablations_and_exits_1_when_a_cell_fails(
    env: dict[str, str], suite: Path, scripted: None
) -> None:
    result = runner.invoke(
        app,
        [
            'run',
            str(suite),
            '-b',
            'scripted',
            '-b',
            'other',
            '-p',
            'assistant@1',
            '-p',
            'short@1',
            '--ablate',
            'tools',
            '-j',
            '3',
        ],
        env=env,
    )
    assert result.exit_code == 1, result.output
    for cell in ('scripted · assistant@1 · full', 'other · short@1 · -tools'):
        assert cell in result.stdout
    assert 'matrix' in result.stdout and 'scripted · assistant@1 · -tools' in result.stdout
    assert '20 passed, 4 failed, 0 errors in' in result.stdout  # -tools: calc fails on each backbone × prompt


def test_k_selects_scenarios_by_tag_and_says_when_none_match(env: dict[str, str], suite: Path, scripted: None) -> None:
    result = runner.invoke(app, ['run', str(suite), '-b', 'scripted', '-k', 'math', '-k', 'time'], env=env)
    assert result.exit_code == 0, result.output
    assert '2 passed, 0 failed, 0 errors' in result.stdout
    missing = runner.invoke(app, ['run', str(suite), '-b', 'scripted', '-k', 'nothing'], env=env)
    assert missing.exit_code == 1
    assert 'error: no scenario matches -k nothing; tags: instructions, math, time.' in missing.stderr


@pytest.mark.parametrize(
    ('arguments', 'message'),
    [
        (['--ablate', 'prompt'], "error: unknown ablation 'prompt': --ablate takes rag, memory, tools"),
        (['--record', 'a', '--replay', 'b'], 'error: --record and --replay exclude each other'),
        (['--replay', 'empty'], 'error: no cassettes in empty: record them first with `tandem run --record empty`.'),
        (['-p', 'nope@1'], "error: unknown prompt 'nope'"),
        (['-b', 'unknown'], "error: unknown backbone 'unknown'"),
    ],
)
def test_bad_options_are_one_line_errors_and_exit_1(
    env: dict[str, str], suite: Path, scripted: None, arguments: list[str], message: str
) -> None:
    (Path.cwd() / 'empty').mkdir(exist_ok=True)
    result = runner.invoke(
        app, ['run', str(suite), *(['-b', 'scripted'] if '-b' not in arguments else []), *arguments], env=env
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(message), result.stderr


def test_an_invalid_scenario_file_exits_1_naming_its_line(
    env: dict[str, str], write_scenario: WriteScenario, scripted: None
) -> None:
    path = write_scenario('name: x\nturns:\n  - user: hi\n    expect: {max_tool_calls: -1}\n')
    result = runner.invoke(app, ['run', str(path), '-b', 'scripted'], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f'error: {path}:4:14: turns[0].expect.max_tool_calls: Input should be greater than or equal to 0'
    )


def _script(body: dict[str, object]) -> Reply:
    result = last_tool_result(body)  # type: ignore[arg-type]
    if result is not None:
        return Text(f'It is {result}.')
    if '17 * 23' in user_texts(body)[-1]:  # type: ignore[arg-type]
        return ToolCall.one('calculate', expression='17 * 23')
    return Text('I am Tandem.')


def test_record_with_a_model_spec_then_replay_with_no_server_and_no_backbone_named(
    env: dict[str, str], suite: Path, tmp_path: Path
) -> None:
    cassettes = tmp_path / 'cassettes'
    with FakeOpenAI(_script, models=['tiny']) as server:
        live_env = {**env, 'OPENAI_BASE_URL': server.url}
        recorded = runner.invoke(
            app,
            [
                'run',
                str(suite),
                '-k',
                'math',
                '-k',
                'instructions',
                '-m',
                'openai-chat:tiny',
                '--record',
                str(cassettes),
            ],
            env=live_env,
        )
        assert recorded.exit_code == 1, recorded.output  # the fake judge cannot give a verdict: the run errs
        assert 'cassettes in' in recorded.stderr and 'written' in recorded.stderr
    replayed = runner.invoke(app, ['run', str(suite), '-k', 'math', '--replay', str(cassettes)], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert 'openai-chat:tiny · scenario prompt · full' in replayed.stdout  # the backbone the cassettes recorded
    assert '1 passed, 0 failed, 0 errors in' in replayed.stdout and '(replayed)' in replayed.stdout
    assert 'served' in replayed.stderr
    missing = runner.invoke(app, ['run', str(suite), '-k', 'time', '--replay', str(cassettes)], env=env)
    assert missing.exit_code == 1
    assert 'replay miss: no cassette' in missing.stdout
