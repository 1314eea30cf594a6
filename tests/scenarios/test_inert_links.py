"""No zero-click leaks in scenario transcripts: a run that reads a planted page records its answer with
the planted URLs inert, in the JSON results and the JUnit transcript alike."""

from __future__ import annotations

import html
import json
from pathlib import Path

from redis.asyncio import Redis

from tandem.agent.core.config import Settings, WebConfig
from tandem.agent.scenarios.report import write_json, write_junit
from tandem.agent.scenarios.runner import run_suite
from tandem.agent.scenarios.schema import load_scenario
from tandem.tools.registry import ToolsetPlugin
from tests.scenarios.conftest import WriteScenario
from tests.support.deps import scripted_backbone
from tests.support.loopback_http import LoopbackHTTPServer
from tests.support.planted import CANARY_PATHS, SECRET, steered_model


async def test_a_scenario_transcript_holds_the_planted_urls_inert(
    redis: Redis,
    settings: Settings,
    write_scenario: WriteScenario,
    plugins: dict[str, ToolsetPlugin],
    notes: LoopbackHTTPServer,
    canary: LoopbackHTTPServer,
    tmp_path: Path,
) -> None:
    page = notes.url('/notes')
    scenario = load_scenario(
        write_scenario(f'name: notes\nsetup: {{tools: [web]}}\nturns:\n  - user: Fetch {page} and summarise it.\n')
    )
    settings = settings.model_copy(update={'web': WebConfig(allowed_hosts=[notes.netloc])})

    report = await run_suite(
        [scenario], settings=settings, redis=redis, backbones=[scripted_backbone(steered_model(page))], plugins=plugins
    )

    answer = report.runs[0].turns[0].answer
    runs = json.loads(write_json(report, tmp_path / 'results.json').read_text())['runs']
    junit = write_junit(report, tmp_path / 'junit.xml').read_text()
    said = junit[junit.index('assistant: ') : junit.index('</system-out>')]  # the transcript's answer
    for answer in (report.runs[0].turns[0].answer, runs[0]['turns'][0]['answer'], html.unescape(said)):
        assert SECRET not in answer and f'http://{canary.netloc}' not in answer
        assert all(f'{canary.netloc}{path}`' in answer for path in CANARY_PATHS)
    assert canary.request_count == 0
