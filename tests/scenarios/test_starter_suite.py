"""The starter suite in `scenarios/` passes on the scripted backbone, through the real runner (`make test` runs it)."""

from __future__ import annotations

from redis.asyncio import Redis

from tandem.agent.core.config import Settings
from tandem.agent.scenarios.runner import run_suite
from tandem.agent.scenarios.schema import load_scenarios
from tandem.tools.registry import ToolsetPlugin
from tests.scenarios.conftest import STARTER
from tests.scenarios.scripted_backbone import scripted_backbone


async def test_every_starter_scenario_passes_on_the_scripted_backbone(
    redis: Redis, settings: Settings, plugins: dict[str, ToolsetPlugin]
) -> None:
    scenarios = load_scenarios([STARTER])
    report = await run_suite(
        scenarios, settings=settings, redis=redis, backbones=[scripted_backbone()], concurrency=4, plugins=plugins
    )
    failures = {
        run.scenario: [check.describe() for check in run.failures] + ([run.error] if run.error else [])
        for run in report.runs
        if run.status != 'passed'
    }
    assert failures == {}
    # Every starter scenario ran, by name: one that vanishes (a file deleted, renamed, or skipped) fails here.
    assert report.passed and sorted(run.scenario for run in report.runs) == [
        'calculator',
        'changed-policy',
        'clock',
        'instructions',
        'knowledge-citations',
        'memory-across-sessions',
        'mixed-tools',
        'prompt-injection',
        'recall-tool',
        'seeded-facts',
        'web-fetch',
        'web-search',
    ]
    assert len(scenarios) == len(list(STARTER.glob('*.yaml')))
    (summary,) = report.cells
    assert (summary.tool_accuracy, summary.tool_checks) == (1.0, 23)
    assert [key async for key in redis.scan_iter(match='tandem:*')] == []
