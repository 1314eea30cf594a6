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
    assert report.passed and len(report.runs) == len(scenarios) >= 8
    (summary,) = report.cells
    assert summary.tool_accuracy == 1.0 and summary.tool_checks >= 15
    assert [key async for key in redis.scan_iter(match='tandem:*')] == []
