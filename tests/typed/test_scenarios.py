"""A scenario's `expect.output`: the turn asks for the schema, its fields are checked, and the report
shows each arm's format compliance and output retries."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tests.support.fake_openai import FakeOpenAI
from tests.typed.conftest import PROSE, answer

runner = CliRunner()

SCENARIO = """
name: invoice
setup: {tools: []}
turns:
  - user: Read invoice INV-7 for 12.50 EUR from ACME.
    expect:
      output:
        schema: 'number str, total float, vendor str'
        fields:
          number: {regex: '^INV-[0-9]+$'}
          total: {min: 10, max: 20}
          vendor: ACME
"""


@pytest.fixture
def env(tmp_path: Path, redis_url: str, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    for name in ('OPENAI_API_KEY', 'TANDEM_CONFIG', 'TANDEM_BACKBONE', 'TANDEM_TOOLS'):
        monkeypatch.delenv(name, raising=False)
    return {
        'TANDEM_HOME': str(tmp_path / 'home'),
        'TANDEM_REDIS_URL': redis_url,
        'XDG_CONFIG_HOME': str(tmp_path),
        'OPENAI_BASE_URL': server.url,
    }


def _run(tmp_path: Path, env: dict[str, str], scenario: str = SCENARIO) -> tuple[int, str, dict[str, object]]:
    path = tmp_path / 'invoice.yaml'
    path.write_text(textwrap.dedent(scenario))
    done = runner.invoke(
        app, ['run', str(path), '-m', 'openai-chat:tiny-chat', '--report', str(tmp_path / 'out')], env=env
    )
    report = (
        json.loads((tmp_path / 'out' / 'report.json').read_text())
        if (tmp_path / 'out' / 'report.json').exists()
        else {}
    )
    return done.exit_code, done.output, report


def test_a_valid_typed_answer_passes_its_field_checks(tmp_path: Path, env: dict[str, str], server: FakeOpenAI) -> None:
    server.script = [PROSE, answer(number='INV-7', total=12.5, vendor='ACME')]

    code, output, report = _run(tmp_path, env)

    assert code == 0, output
    (run,) = report['runs']  # pyright: ignore[reportGeneralTypeIssues]
    (turn,) = run['turns']
    assert json.loads(turn['answer']) == {'number': 'INV-7', 'total': 12.5, 'vendor': 'ACME'}
    assert turn['output_valid'] is True and turn['output_retries'] == 1
    assert [check['label'] for check in turn['checks']] == [
        'answers in its schema',
        'number=~/^INV-[0-9]+$/',
        'total in [10, 20]',
        "vendor='ACME'",
    ]
    (cell,) = report['cells']  # pyright: ignore[reportGeneralTypeIssues]
    assert cell['typed_turns'] == 1 and cell['valid_outputs'] == 1 and cell['output_retries'] == 1
    assert 'format 100% [21–100%] · 1.00 output retries/turn' in output


def test_wrong_fields_fail_their_checks(tmp_path: Path, env: dict[str, str], server: FakeOpenAI) -> None:
    server.script = [answer(number='7', total=99.0, vendor='Globex')]

    code, _, report = _run(tmp_path, env)

    assert code == 1
    (run,) = report['runs']  # pyright: ignore[reportGeneralTypeIssues]
    checks = {check['label']: (check['passed'], check['detail']) for check in run['turns'][0]['checks']}
    assert checks['answers in its schema'] == (True, '')
    assert checks['number=~/^INV-[0-9]+$/'] == (False, "number was '7'")
    assert checks['total in [10, 20]'] == (False, 'total was 99.0')
    assert checks["vendor='ACME'"] == (False, "vendor was 'Globex'")


def test_prose_fails_the_format_check_and_counts_against_compliance(
    tmp_path: Path, env: dict[str, str], server: FakeOpenAI
) -> None:
    server.script = [PROSE, PROSE, PROSE]

    code, output, report = _run(tmp_path, env)

    assert code == 1
    (run,) = report['runs']  # pyright: ignore[reportGeneralTypeIssues]
    assert run['status'] == 'failed'
    (turn,) = run['turns']
    assert turn['output_valid'] is False and turn['output_retries'] == 2
    check = turn['checks'][0]
    assert check['label'] == 'answers in its schema' and check['passed'] is False
    assert 'gave no valid typed answer in 3 tries' in check['detail']
    assert 'format 0% [0–79%] · 2.00 output retries/turn' in output


def test_a_bad_schema_in_a_scenario_points_at_its_line(tmp_path: Path, env: dict[str, str]) -> None:
    bad = SCENARIO.replace("'number str, total float, vendor str'", "'number strr'")

    code, output, _ = _run(tmp_path, env, bad)

    assert code == 1, output
    assert "invoice.yaml:8:9: turns[0].expect.output.schema: field 'number' has unknown type 'strr'" in output
