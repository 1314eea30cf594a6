"""Reports: rich tables, JSON that reads back, JUnit that CI tools parse, and HTML checked in headless Chromium."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis
from rich.console import Console

from tandem.agent.core.config import Settings
from tandem.agent.scenarios.isolation import ScenarioSetupError, seed_scenario
from tandem.agent.scenarios.report import print_report, write_html, write_json, write_junit
from tandem.agent.scenarios.results import SuiteReport
from tandem.agent.scenarios.runner import parse_ablations, run_suite
from tandem.agent.scenarios.schema import Scenario, load_scenario, load_scenarios
from tandem.agent.turn.deps import Deps
from tandem.tools.registry import ToolsetPlugin
from tests.scenarios.conftest import STARTER, WriteScenario
from tests.scenarios.scripted_backbone import judge_backbone, scripted_backbone
from tests.support.browser import dump_dom, needs_chromium
from tests.support.deps import scripted_backbone as backbone_of

HOSTILE = '<script>console.log("pwned")</script> \x00\x1b[31m & done'


@pytest.fixture
async def report(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> SuiteReport:
    """Two backbones × two ablations: passes, failures, an error, and an answer full of markup and control characters."""
    scenarios = [s for s in load_scenarios([STARTER]) if s.name in ('calculator', 'instructions')]
    scenarios.append(load_scenario(write_scenario('name: broken-setup\ntags: [boom]\nturns: [{user: hi}]\n')))

    async def seed(deps: Deps, scenario: Scenario, ablated: frozenset[str]) -> None:
        if 'boom' in scenario.tags:
            raise ScenarioSetupError('the setup cannot be seeded: line 1\nline 2')
        await seed_scenario(deps, scenario, ablated)

    def hostile(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(HOSTILE)])

    return await run_suite(
        scenarios,
        settings=settings,
        redis=redis,
        backbones=[scripted_backbone(), backbone_of(FunctionModel(hostile), 'hostile')],
        ablations=parse_ablations(['tools']),
        judge=judge_backbone(),
        seed=seed,
        plugins=plugins,
    )


def test_the_console_shows_a_table_per_cell_then_the_matrix(report: SuiteReport) -> None:
    console = Console(record=True, width=220, color_system=None)
    print_report(report, console)
    text = console.export_text()
    for label in ('scripted · scenario prompt · full', 'hostile · scenario prompt · -tools'):
        assert label in text
    assert (
        'pass 2/3 (67% [21–94%]) · tool-call accuracy 100% [' in text
    )  # scripted, full: broken-setup errs; 95% Wilson
    assert 'turn 1: calls calculate(expression=~/17\\s*\\*\\s*23/) — not called; the calls were: no tool calls' in text
    assert 'answer: "I can\'t do that without a suitable tool."' in text
    assert 'the setup cannot be seeded: line 1' in text
    assert 'matrix' in text and 'scripted · full' in text and 'hostile · -tools' in text
    assert re.search(r'3 passed, 5 failed, 4 errors in \d', text)


def test_json_reads_back_as_the_same_report(report: SuiteReport, tmp_path: Path) -> None:
    path = write_json(report, tmp_path / 'out' / 'report.json')
    again = SuiteReport.model_validate_json(path.read_text())
    assert again == report
    assert again.runs[0].messages['s1'][0]['kind'] == 'request'  # the transcripts travel with the report


def test_junit_is_what_ci_tools_parse(report: SuiteReport, tmp_path: Path) -> None:
    path = write_junit(report, tmp_path / 'junit.xml')
    root = ET.parse(path).getroot()  # control characters from the model would make this raise
    assert root.tag == 'testsuites'
    suites = root.findall('testsuite')
    assert [suite.get('name') for suite in suites] == [summary.cell.slug for summary in report.cells]
    assert int(root.get('tests', -1)) == sum(int(suite.get('tests', -1)) for suite in suites) == 12
    assert int(root.get('failures', -1)) == sum(int(suite.get('failures', -1)) for suite in suites) == 5
    assert int(root.get('errors', -1)) == sum(int(suite.get('errors', -1)) for suite in suites) == 4
    first = suites[0]
    properties = {prop.get('name'): prop.get('value') for prop in first.iter('property')}
    assert properties['backbone'] == 'scripted' and properties['pass_rate'] == '0.6667'
    cases = {case.get('name'): case for case in first.findall('testcase')}
    assert set(cases) == {'calculator', 'instructions', 'broken-setup'}
    assert cases['calculator'].get('classname') == 'scenarios.scripted.scenario-prompt.full'
    assert cases['calculator'].get('file') == str(STARTER / 'calculator.yaml')
    assert cases['calculator'].find('failure') is None and cases['calculator'].find('error') is None
    error = cases['broken-setup'].find('error')
    assert error is not None and error.get('message') == 'the setup cannot be seeded: line 1'
    hostile_cases = {case.get('name'): case for case in suites[2].findall('testcase')}
    failure = hostile_cases['calculator'].find('failure')
    assert failure is not None and failure.get('type') == 'ExpectationFailed'
    assert (failure.get('message') or '').startswith('4 expectations failed: turn 1: calls calculate')
    out = hostile_cases['calculator'].find('system-out')
    assert out is not None and '<script>console.log("pwned")</script> [31m & done' in (out.text or '')


@needs_chromium
def test_the_console_check_sees_errors(tmp_path: Path) -> None:
    page = tmp_path / 'broken.html'
    page.write_text('<!DOCTYPE html><html><body><script>console.error("boom"); missing();</script></body></html>')
    _, console = dump_dom(page.as_uri(), tmp_path / 'profile')
    assert len(console) == 2 and '"boom"' in console[0] and 'ReferenceError' in console[1]


@needs_chromium
def test_the_html_report_renders_its_charts_in_chromium_without_console_errors(
    report: SuiteReport, tmp_path: Path
) -> None:
    page = write_html(report, tmp_path / 'report' / 'report.html')
    source = page.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", source)  # nothing from the network
    dom, console = dump_dom(page.as_uri(), tmp_path / 'profile')
    assert console == []  # no errors, and the hostile answer's <script> never ran
    assert '<html lang="en" data-ready="4">' in dom  # the page's script ran, and counted four charts
    charts = re.findall(r'<svg class="chart" data-metric="([a-z_]+)"', dom)
    assert charts == ['pass_rate', 'tool_accuracy', 'tokens_per_turn', 'latency']  # cost: no price known
    assert len(re.findall(r'<rect class="bar"', dom)) == 4 * len(report.cells)
    assert 'no price is known for these backbones' in dom
    assert '&lt;script&gt;console.log("pwned")&lt;/script&gt;' in dom
    grid = dom[dom.index('<table class="grid">') :]
    assert grid.count('class="status-passed"') == 3 and grid.count('class="status-error"') == 4
    assert dom.count('<details class="run status-failed" open="">') == 5
