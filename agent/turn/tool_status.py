"""Every installed tool with its status, for `tandem tools` and `/tools`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tandem.agent.core.config import Settings
from tandem.agent.turn.agent import tool_descriptions
from tandem.tools.installed import installed_plugins
from tandem.tools.registry import ToolsetPlugin, plugin_status


@dataclass(frozen=True)
class ToolStatus:
    """One row of `tandem tools`."""

    toolset: str
    tool: str
    status: str
    description: str


async def tool_statuses(settings: Settings) -> list[ToolStatus]:
    """Each tool of each installed toolset, with the toolset's status (`off` when not selected).

    An MCP server's tools are known only once connected: an unreachable or unselected server shows as one row.
    """
    plugins = installed_plugins(settings)
    enabled = set(plugins) if settings.tools is None else set(settings.tools)

    async def status_of(name: str) -> str:
        plugin = plugins[name]
        if name not in enabled:
            return 'off'
        return await plugin_status(plugin, timeout=3)

    names = sorted(plugins)
    statuses = await asyncio.gather(*(status_of(name) for name in names))
    listed = await asyncio.gather(*(_tools_of(plugins[name], name in enabled) for name in names))
    rows: list[ToolStatus] = []
    for name, status, described in zip(names, statuses, listed, strict=True):
        for tool, description in described or [('-', plugins[name].description)]:
            rows.append(ToolStatus(name, tool, status, description))
    return rows


async def _tools_of(plugin: ToolsetPlugin, enabled: bool) -> list[tuple[str, str]]:
    if plugin.listing is None:
        return [(tool['name'], tool['description']) for tool in tool_descriptions([plugin.build()])]
    if not enabled:
        return []
    try:
        async with asyncio.timeout(5):
            return await plugin.listing()
    except Exception:  # noqa: BLE001 -- the status column says why
        return []
