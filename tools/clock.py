"""Clock tool: the current date and time in any IANA time zone.

The clock is injected into the toolset factory (`clock_toolset(now=...)`) rather than read from
a module global, so tests and replays can pin the time without patching.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic_ai import FunctionToolset, ModelRetry

from tandem.tools.registry import SIDE_EFFECT_KEY, ToolsetPlugin

__all__ = ['clock_toolset', 'plugin']

_EXAMPLE_ZONES = ('UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles', 'Asia/Tokyo')
# Abbreviations models like to pass that aren't IANA keys, and the zone they most often mean.
_ABBREVIATIONS = {
    'PST': 'America/Los_Angeles',
    'PDT': 'America/Los_Angeles',
    'MDT': 'America/Denver',
    'CST': 'America/Chicago',
    'CDT': 'America/Chicago',
    'EDT': 'America/New_York',
    'BST': 'Europe/London',
    'CEST': 'Europe/Berlin',
    'IST': 'Asia/Kolkata',
    'JST': 'Asia/Tokyo',
    'AEST': 'Australia/Sydney',
    'AEDT': 'Australia/Sydney',
}
# Letters, digits and the punctuation IANA names use (e.g. Etc/GMT+5, America/Port-au-Prince);
# this also keeps path tricks like "../" away from zoneinfo's file lookup.
_ZONE_PATTERN = re.compile(r'[A-Za-z0-9_+\-/]{1,64}')


def _system_now() -> datetime:
    return datetime.now(UTC)


def clock_toolset(*, now: Callable[[], datetime] | None = None) -> FunctionToolset[Any]:
    """Build the clock toolset: one side-effect-free `now` tool.

    Args:
        now: Returns the current time as a timezone-aware datetime. Defaults to the system clock;
            tests pass a fixed time.
    """
    read_clock = now or _system_now

    def current_time(timezone: str = 'UTC') -> str:
        """Get the current date and time. Use it whenever an answer depends on today's date or the time; never guess.

        Returns ISO 8601 with the UTC offset, then the weekday and zone, e.g.
        `2025-03-14T09:26:53-04:00 (Friday, America/New_York, EDT)`.

        Args:
            timezone: IANA time zone name such as "UTC", "Europe/Berlin" or "America/New_York".
                Abbreviations like "PST" and bare offsets are not accepted. Defaults to UTC.
        """
        key, zone = _resolve_zone(timezone)
        moment = read_clock()
        if moment.tzinfo is None:
            # A naive time is ambiguous; this is a wiring bug, not something the model can fix.
            raise ValueError('The clock passed to clock_toolset() must return timezone-aware datetimes.')
        local = moment.astimezone(zone).replace(microsecond=0)
        abbreviation = local.tzname()
        label = key if abbreviation in (None, key) else f'{key}, {abbreviation}'
        return f'{local.isoformat()} ({local:%A}, {label})'

    toolset = FunctionToolset[Any](id='clock')
    toolset.add_function(current_time, name='now', metadata={SIDE_EFFECT_KEY: False})
    return toolset


def _resolve_zone(name: str) -> tuple[str, tzinfo]:
    """Return the canonical key and tzinfo for `name`, or raise `ModelRetry` with examples."""
    key = name.strip()
    if key.upper() == 'UTC':
        # datetime.UTC needs no tz database, so UTC works even where tzdata is missing.
        return 'UTC', UTC
    if _ZONE_PATTERN.fullmatch(key):
        try:
            return key, ZoneInfo(key)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
        # Forgive case slips like "europe/berlin" on case-sensitive file systems.
        by_lower = {zone.lower(): zone for zone in available_timezones()}
        if (canonical := by_lower.get(key.lower())) is not None:
            return canonical, ZoneInfo(canonical)
        if (zone_for_abbreviation := _ABBREVIATIONS.get(key.upper())) is not None:
            suggestions = [zone_for_abbreviation]
        else:
            suggestions = difflib.get_close_matches(key, sorted(by_lower.values()), n=3, cutoff=0.6)
    else:
        suggestions = []
    hint = f' Did you mean {", ".join(map(repr, suggestions))}?' if suggestions else ''
    examples = ', '.join(repr(zone) for zone in _EXAMPLE_ZONES)
    raise ModelRetry(f'Unknown time zone {name[:64]!r}.{hint} Use an IANA time zone name such as {examples}.')


async def _status() -> str:
    try:
        ZoneInfo('Europe/London')
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return 'degraded: no IANA time zone database found, only UTC works (install tzdata)'
    return 'ok'


plugin = ToolsetPlugin(
    name='clock',
    description='Current date and time in any IANA time zone.',
    build=clock_toolset,
    status=_status,
)
