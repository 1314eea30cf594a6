"""The clock tool, with the time pinned through the toolset factory."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

import pytest
from inline_snapshot import snapshot
from pydantic_ai import FunctionToolset, ModelRetry

from tandem.tools.clock import clock_toolset, plugin
from tandem.tools.registry import plugin_status

# A Friday, after the US (but before the EU) switched to daylight saving time.
FIXED = datetime(2025, 3, 14, 13, 26, 53, 987654, tzinfo=UTC)


def now_tool(moment: datetime = FIXED) -> Callable[..., str]:
    toolset = clock_toolset(now=lambda: moment)
    return cast(Callable[..., str], toolset.tools['now'].function)


def outcome(timezone: str) -> str:
    try:
        return now_tool()(timezone=timezone)
    except ModelRetry as exc:
        return f'retry: {exc.message}'


def test_defaults_to_utc() -> None:
    assert now_tool()() == snapshot('2025-03-14T13:26:53+00:00 (Friday, UTC)')


def test_zones_give_local_time_weekday_and_abbreviation() -> None:
    zones = ['UTC', ' utc ', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'Pacific/Auckland', 'europe/berlin']
    assert {zone: outcome(zone) for zone in zones} == snapshot(
        {
            'UTC': '2025-03-14T13:26:53+00:00 (Friday, UTC)',
            ' utc ': '2025-03-14T13:26:53+00:00 (Friday, UTC)',
            'Europe/Berlin': '2025-03-14T14:26:53+01:00 (Friday, Europe/Berlin, CET)',
            'America/New_York': '2025-03-14T09:26:53-04:00 (Friday, America/New_York, EDT)',
            'Asia/Kolkata': '2025-03-14T18:56:53+05:30 (Friday, Asia/Kolkata, IST)',
            'Pacific/Auckland': '2025-03-15T02:26:53+13:00 (Saturday, Pacific/Auckland, NZDT)',
            'europe/berlin': '2025-03-14T14:26:53+01:00 (Friday, Europe/Berlin, CET)',
        }
    )


def test_unknown_zones_are_retried_with_examples() -> None:
    zones = ['Mars/Olympus', 'Europe/Berlinn', 'PST', '../etc/passwd', '', 'x' * 500]
    assert {zone[:20]: outcome(zone) for zone in zones} == snapshot(
        {
            'Mars/Olympus': "retry: Unknown time zone 'Mars/Olympus'. Use an IANA time zone name such as 'UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles', 'Asia/Tokyo'.",
            'Europe/Berlinn': "retry: Unknown time zone 'Europe/Berlinn'. Did you mean 'Europe/Berlin', 'Europe/Tallinn', 'Europe/Helsinki'? Use an IANA time zone name such as 'UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles', 'Asia/Tokyo'.",
            'PST': "retry: Unknown time zone 'PST'. Did you mean 'America/Los_Angeles'? Use an IANA time zone name such as 'UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles', 'Asia/Tokyo'.",
            '../etc/passwd': "retry: Unknown time zone '../etc/passwd'. Use an IANA time zone name such as 'UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles', 'Asia/Tokyo'.",
            '': "retry: Unknown time zone ''. Use an IANA time zone name such as 'UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles', 'Asia/Tokyo'.",
            'xxxxxxxxxxxxxxxxxxxx': "retry: Unknown time zone 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'. Use an IANA time zone name such as 'UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles', 'Asia/Tokyo'.",
        }
    )


def test_the_injected_clock_is_read_on_every_call() -> None:
    ticks = iter([FIXED, datetime(2030, 1, 1, tzinfo=UTC)])
    toolset = clock_toolset(now=lambda: next(ticks))
    tool = cast(Callable[..., str], toolset.tools['now'].function)
    assert [tool(), tool()] == snapshot(
        ['2025-03-14T13:26:53+00:00 (Friday, UTC)', '2030-01-01T00:00:00+00:00 (Tuesday, UTC)']
    )


def test_a_naive_clock_is_a_wiring_bug() -> None:
    with pytest.raises(ValueError, match='timezone-aware'):
        now_tool(datetime(2025, 1, 1))()


def test_the_system_clock_is_the_default() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = cast(Callable[..., str], clock_toolset().tools['now'].function)()
    assert datetime.fromisoformat(stamp.split(' ')[0]) >= before


async def test_plugin_metadata_and_status() -> None:
    toolset = plugin.build()
    assert isinstance(toolset, FunctionToolset)
    assert list(toolset.tools) == ['now']
    assert toolset.tools['now'].metadata == {'side_effect': False}
    assert await plugin_status(plugin) == 'ok'
