"""`tandem tune submit` and `status` against a loopback fake of OpenAI's files and fine-tuning API."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.core.config import load_settings
from tests.support.fake_openai import FakeFineTuning

runner = CliRunner()

GOOD = {'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]}


@pytest.fixture
def fake() -> Iterator[FakeFineTuning]:
    with FakeFineTuning(api_key='sk-test') as server:
        yield server


@pytest.fixture
def env(
    tmp_path: Path, fake: FakeFineTuning, config_file: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('TANDEM_BACKBONE', raising=False)
    return {
        'OPENAI_API_KEY': 'sk-test',
        'OPENAI_BASE_URL': fake.url,
        'TANDEM_HOME': str(tmp_path / 'home'),
        'TANDEM_CONFIG': str(config_file),
        'TANDEM_REDIS_URL': redis_url,  # the shared test server, not an embedded one left running
    }


def _data(tmp_path: Path, count: int = 12) -> Path:
    path = tmp_path / 'data.jsonl'
    path.write_text(
        ''.join(
            json.dumps(GOOD | {'messages': [{'role': 'user', 'content': f'hi {n}'}, GOOD['messages'][1]]}) + '\n'
            for n in range(count)
        )
    )
    return path


def _invoke(env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, list(args), env=env)


def test_submit_then_status_registers_the_tuned_model_as_a_backbone(
    tmp_path: Path, fake: FakeFineTuning, env: dict[str, str], config_file: Path
) -> None:
    data = _data(tmp_path)
    submitted = _invoke(
        env,
        'tune',
        'submit',
        str(data),
        '--base',
        'gpt-4.1-mini-2025-04-14',
        '--suffix',
        'support',
        '--epochs',
        '2',
        '--name',
        'support-bot',
    )
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    job = fake.jobs[job_id]
    assert job['model'] == 'gpt-4.1-mini-2025-04-14' and job['suffix'] == 'support'
    assert job['method'] == {'type': 'supervised', 'supervised': {'hyperparameters': {'n_epochs': 2}}}
    assert job['metadata'] == {'tandem_backbone': 'support-bot', 'tandem_examples': '12'}
    assert fake.file_contents[job['training_file']] == data.read_bytes()
    assert 'estimated' in submitted.stderr and f'tandem tune status {job_id}' in submitted.stderr

    followed = _invoke(env, 'tune', 'status', '--interval', '0')  # the job submitted last
    assert followed.exit_code == 0, followed.stderr
    assert followed.stdout.strip() == 'support-bot'
    for line in ('status: queued', 'status: running', 'Step 1/2: training loss=1.000', 'status: succeeded'):
        assert line in followed.stderr
    tuned = fake.jobs[job_id]['fine_tuned_model']
    assert tuned == f'ft:gpt-4.1-mini-2025-04-14:acme:support:{job_id[-8:]}'

    text = config_file.read_text()
    assert text.startswith('# my settings: keep this comment\n') and '[backbones.local]   # the vLLM box' in text
    assert f'# fine-tuned by OpenAI job {job_id}' in text
    registered = tomllib.loads(text)['backbones']['support-bot']
    # Training cost: the job's trained tokens at OpenAI's training price for gpt-4.1-mini ($5 per Mtok).
    assert registered.pop('training_cost_usd') == round(fake.jobs[job_id]['trained_tokens'] * 5.0 / 1e6, 4) > 0
    assert registered == {
        'model': f'openai-chat:{tuned}',
        'base_url': fake.url,
        'kind': 'fine-tuned',
        'base_model': 'gpt-4.1-mini-2025-04-14',
        'input_price_per_mtok': 0.8,
        'output_price_per_mtok': 3.2,
        'training_examples': 12,
        'training_file': str(data.resolve()),  # the few-shot arm of tune compare reads its examples from it
    }
    assert load_settings().backbones['support-bot'].kind == 'fine-tuned'

    answered = _invoke(env, 'ask', '--backbone', 'support-bot', 'hello')
    assert answered.exit_code == 0, answered.stderr
    assert answered.stdout.strip() == 'You said: hello'

    again = _invoke(env, 'tune', 'status', job_id, '--interval', '0')
    assert again.exit_code == 0 and 'already registered as backbone support-bot' in ' '.join(again.stderr.split())
    assert config_file.read_text() == text


def test_status_on_another_machine_registers_the_tune_with_its_size(
    tmp_path: Path, env: dict[str, str], config_file: Path
) -> None:
    submitted = _invoke(env, 'tune', 'submit', str(_data(tmp_path, 30)), '--base', 'gpt-4.1-mini-2025-04-14')
    assert submitted.exit_code == 0, submitted.stderr
    (tmp_path / 'home' / 'tune' / 'jobs.json').unlink()  # no note of the submit here: the job's metadata says

    followed = _invoke(env, 'tune', 'status', submitted.stdout.strip(), '--interval', '0')

    assert followed.exit_code == 0, followed.stderr
    backbones = tomllib.loads(config_file.read_text())['backbones']
    (registered,) = (config for name, config in backbones.items() if name != 'local')
    assert registered['training_examples'] == 30


def test_without_a_name_the_suffix_names_the_backbone(tmp_path: Path, env: dict[str, str], config_file: Path) -> None:
    submitted = _invoke(
        env,
        'tune',
        'submit',
        str(_data(tmp_path)),
        '--base',
        'gpt-4o-mini-2024-07-18',
        '--suffix',
        'helpdesk',
        '--follow',
        '--interval',
        '0',
    )
    assert submitted.exit_code == 0, submitted.stderr
    assert submitted.stdout.splitlines()[-1] == 'helpdesk'
    assert tomllib.loads(config_file.read_text())['backbones']['helpdesk']['input_price_per_mtok'] == 0.3


def test_a_failed_job_exits_non_zero_and_registers_nothing(
    tmp_path: Path, env: dict[str, str], config_file: Path
) -> None:
    before = config_file.read_text()
    submitted = _invoke(env, 'tune', 'submit', str(_data(tmp_path, count=3)), '--base', 'gpt-4.1-mini-2025-04-14')
    assert submitted.exit_code == 0, submitted.stderr  # too few examples is a warning here; OpenAI refuses it
    assert 'only 3 example(s)' in submitted.stderr
    followed = _invoke(env, 'tune', 'status', '--interval', '0')
    assert followed.exit_code == 1
    assert 'failed: Training file has 3 example(s), but must have at least 10 examples' in followed.stderr
    assert config_file.read_text() == before


def test_a_file_with_errors_is_not_uploaded(tmp_path: Path, fake: FakeFineTuning, env: dict[str, str]) -> None:
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps(GOOD) + '\n{"messages": [{"role": "user", "content": "x"}]}\n')
    result = _invoke(env, 'tune', 'submit', str(bad), '--base', 'gpt-4.1-mini-2025-04-14')
    assert result.exit_code == 1
    assert "line 2: the last message must be the assistant's" in result.stderr
    assert fake.requests == []


def test_api_failures_are_one_actionable_line(tmp_path: Path, fake: FakeFineTuning, env: dict[str, str]) -> None:
    wrong_key = _invoke(
        env | {'OPENAI_API_KEY': 'sk-wrong'},
        'tune',
        'submit',
        str(_data(tmp_path)),
        '--base',
        'gpt-4.1-mini-2025-04-14',
    )
    assert wrong_key.exit_code == 1
    assert 'rejected the API key (HTTP 401): check OPENAI_API_KEY' in wrong_key.stderr

    bad_model = _invoke(env, 'tune', 'submit', str(_data(tmp_path)), '--base', 'gpt-9')
    assert bad_model.exit_code == 1
    assert 'HTTP 400: Model gpt-9 is not available for fine-tuning' in bad_model.stderr

    unknown = _invoke(env, 'tune', 'status', 'ftjob-nope', '--once')
    assert unknown.exit_code == 1 and 'not found (HTTP 404): Could not find fine-tune: ftjob-nope' in unknown.stderr

    no_key = _invoke({key: value for key, value in env.items() if key != 'OPENAI_API_KEY'}, 'tune', 'status', 'ftjob-x')
    assert no_key.exit_code == 1 and 'fine-tuning needs OPENAI_API_KEY' in no_key.stderr


def test_status_with_nothing_submitted_says_what_to_pass(env: dict[str, str]) -> None:
    result = _invoke(env, 'tune', 'status')
    assert result.exit_code == 1
    assert 'no job submitted from here yet: pass a job id' in result.stderr


def test_status_once_shows_the_state_and_returns(tmp_path: Path, env: dict[str, str], fake: FakeFineTuning) -> None:
    job_id = _invoke(env, 'tune', 'submit', str(_data(tmp_path)), '--base', 'gpt-4.1-mini-2025-04-14').stdout.strip()
    once = _invoke(env, 'tune', 'status', job_id, '--once')
    assert once.exit_code == 0
    assert f'job {job_id} is queued; follow it with: tandem tune status {job_id}' in ' '.join(once.stderr.split())
    assert fake.jobs[job_id]['fine_tuned_model'] is None


def test_the_live_view_shows_progress_metrics_and_the_latest_events() -> None:
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
    from rich.console import Console

    from tandem.agent.cli.tune import _JobView
    from tandem.agent.tune.jobs import JobUpdate

    job = FineTuningJob.model_validate(
        {
            'id': 'ftjob-1', 'object': 'fine_tuning.job', 'created_at': 0, 'model': 'gpt-4.1-mini-2025-04-14',
            'organization_id': 'org', 'result_files': [], 'seed': 1, 'status': 'running', 'training_file': 'file-1',
            'hyperparameters': {'n_epochs': 3},
        }
    )  # fmt: skip
    event = FineTuningJobEvent.model_validate(
        {
            'id': 'e1',
            'object': 'fine_tuning.job.event',
            'created_at': 60,
            'level': 'info',
            'message': 'Step 5/20',
            'type': 'metrics',
        }
    )
    view = _JobView('ftjob-1')
    view.update(JobUpdate(job, [event], {'step': 5, 'total_steps': 20, 'train_loss': 0.4321}))
    console = Console(record=True, width=100)
    console.print(view.render())
    screen = console.export_text()
    assert 'running' in screen and 'step 5/20' in screen and 'train_loss 0.4321' in screen
    assert '00:01:00 Step 5/20' in screen.replace('  ', ' ')
    assert view.take_lines() == ['status: running', '00:01:00 Step 5/20'] and view.take_lines() == []
