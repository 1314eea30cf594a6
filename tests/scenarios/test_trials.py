"""Repeated trials (`tandem run -n N`): every scenario runs N times per cell, and the reports say how
sure they are: rates with intervals, and how consistently the model answers the same input."""

from __future__ import annotations

import itertools
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis
from rich.console import Console
from typer.testing import CliRunner

from tandem.agent.backbones.base import Backbone
from tandem.agent.cli.main import app
from tandem.agent.cli.run import injected_backbones
from tandem.agent.core.config import Settings
from tandem.agent.core.errors import TandemError
from tandem.agent.scenarios.report import print_report, render_html, write_junit
from tandem.agent.scenarios.results import SuiteReport
from tandem.agent.scenarios.runner import run_suite
from tandem.agent.scenarios.schema import load_scenarios
from tests.scenarios.conftest import WriteScenario
from tests.support.browser import dump_dom, needs_chromium
from tests.support.deps import scripted_backbone

ANSWERS = ('The answer is 391.', 'the answer is 391', 'The answer is 391.', 'It is 390.')
"""What the stochastic stand-in says on its 1st, 2nd, 3rd and 4th call, round and round."""


def wavering(name: str = 'wavering') -> Backbone:
    said = itertools.cycle(ANSWERS)

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(next(said))])

    return scripted_backbone(FunctionModel(answer), name)


@pytest.fixture
def product(write_scenario: WriteScenario) -> Path:
    return write_scenario(
        'name: product\nsetup: {tools: []}\nturns: [{user: "What is 17 * 23?", expect: {contains: "391"}}]\n'
    )


async def _report(redis: Redis, settings: Settings, product: Path, trials: int) -> SuiteReport:
    return await run_suite(
        load_scenarios([product]), settings=settings, redis=redis, backbones=[wavering()], trials=trials, concurrency=1
    )


async def test_each_scenario_runs_n_times_per_cell_and_rates_count_every_run(
    redis: Redis, settings: Settings, product: Path
) -> None:
    report = await _report(redis, settings, product, trials=4)
    assert [(run.trial, run.status) for run in report.runs] == [
        (1, 'passed'),
        (2, 'passed'),
        (3, 'passed'),
        (4, 'failed'),
    ]
    cell = report.cells[0]
    assert (cell.trials, cell.scenarios, cell.passed, cell.pass_rate) == (4, 4, 3, 0.75)
    interval = cell.pass_rate_ci
    assert interval is not None and interval.low < 0.75 < interval.high and interval.n == 4


async def test_consistency_is_the_agreement_between_trials_of_the_same_input(
    redis: Redis, settings: Settings, product: Path
) -> None:
    cell = (await _report(redis, settings, product, trials=4)).cells[0]
    assert cell.answer_agreement is not None and cell.answer_agreement.value == 0.5  # 'The answer is 391.' twice
    assert cell.normalized_agreement is not None and cell.normalized_agreement.value == 0.75  # case, '.' ignored
    assert cell.tool_agreement is not None and cell.tool_agreement.value == 1.0  # no tool call, every time
    single = (await _report(redis, settings, product, trials=1)).cells[0]
    assert single.answer_agreement is None  # one trial says nothing about consistency


async def test_tokens_latency_and_cost_carry_bootstrap_intervals(
    redis: Redis, settings: Settings, product: Path
) -> None:
    cell = (await _report(redis, settings, product, trials=4)).cells[0]
    for interval in (cell.tokens_per_turn_ci, cell.latency_p50_ci, cell.latency_p95_ci):
        assert interval is not None and interval.low <= interval.value <= interval.high and interval.n == 4
    assert cell.cost_per_turn_ci is None  # a test model has no price


async def test_trials_must_be_at_least_one(redis: Redis, settings: Settings, product: Path) -> None:
    with pytest.raises(TandemError, match='--trials must be at least 1'):
        await _report(redis, settings, product, trials=0)


async def test_every_report_shows_intervals_and_the_trials(
    redis: Redis, settings: Settings, product: Path, tmp_path: Path
) -> None:
    report = await _report(redis, settings, product, trials=4)
    console = Console(record=True, width=240, color_system=None)
    print_report(report, console)
    text = console.export_text()
    caption = ' '.join(text.split())  # the caption wraps at the table's width
    assert 'pass 3/4 (75% [30–95%]) · 4 trials each' in caption
    assert 'same answer 50% [15–85%] (normalized 75% [30–95%]) · same tool calls 100% [' in caption
    assert re.search(r'product\s+│\s+3/4 passed\s+│\s+trial 4: turn 1: contains \'391\'', text)

    page = render_html(report)
    assert page.count('class="whisker"') >= 3  # pass rate, tokens, latency
    assert '>3/4<' in page and 'same answer (normalized)' in page and 'trial 4' in page
    assert '75% [30–95%]' in page

    names = [case.get('name') for case in ET.parse(write_junit(report, tmp_path / 'junit.xml')).iter('testcase')]
    assert names == [f'product [trial {n}]' for n in (1, 2, 3, 4)]  # unique, as CI tools need


def test_tandem_run_takes_n(product: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}
    with injected_backbones(wavering('wavering')):
        result = CliRunner().invoke(
            app, ['run', str(product), '-b', 'wavering', '-n', '4', '-j', '1', '--report', 'out'], env=env
        )
    assert result.exit_code == 1, result.output  # one trial of four failed
    assert '3/4 passed' in result.stdout
    data = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert [run['trial'] for run in data['runs']] == [1, 2, 3, 4]
    assert data['cells'][0]['answer_agreement']['value'] == 0.5
    refused = CliRunner().invoke(app, ['run', str(product), '-n', '0'], env=env)
    assert refused.exit_code == 2 and 'Invalid value' in refused.output


def steady(name: str = 'steady') -> Backbone:
    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart('The answer is 391.')])

    return scripted_backbone(FunctionModel(answer), name)


@needs_chromium
def test_the_run_decision_report_passes_its_browser_check(
    product: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}
    with injected_backbones(wavering(), steady()):
        result = CliRunner().invoke(
            app,
            ['run', str(product), '-b', 'wavering', '-b', 'steady', '-n', '4', '-j', '1', '--report', 'out'],
            env=env,
        )
    assert result.exit_code == 1, result.output
    said = ' '.join(result.stdout.split())
    assert 'Verdict: choose steady · scenario prompt · full (confidence low: no cell is detectably better' in said

    dom, console = dump_dom((tmp_path / 'out' / 'report.html').as_uri(), tmp_path / 'profile')
    assert console == []
    card = dom[dom.index('<section id="decision"') : dom.index('<section id="cells-compared"')]
    assert '<p class="recommendation">choose steady · scenario prompt · full</p>' in card
    assert re.findall(r'data-criterion="([a-z]+)"', card) == ['quality', 'consistency', 'cost', 'latency', 'data']
    assert '<b>data</b>: no fine-tuned backbone among these cells' in card
    assert 'steady · scenario prompt · full passes 100% [51–100%]' in card
    assert 'wavering · scenario prompt · full: same answer 75% [30–95%]' in card  # normalized
    attribution = dom[dom.index('<section id="attribution">') : dom.index('<section id="grid">')]
    assert '<td>backbone</td><td>wavering → steady</td><td>scenario prompt · full</td><td>pass rate</td>' in attribution
    assert 'no detectable difference at 4 runs' in attribution
    assert dom.count('class="whisker"') >= 6  # two cells × pass rate, tokens, latency
    data = SuiteReport.model_validate_json((tmp_path / 'out' / 'report.json').read_text())
    assert data.decision is not None and data.decision.confidence == 'low'
