"""Every installed tool with its status, for `tandem tools` and `/tools`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tandem.agent.core.config import Settings
from tandem.agent.turn.agent import tool_descriptions
from tandem.tools.registry import discover_plugins, plugin_status


@dataclass(frozen=True)
class ToolStatus:
    """One row of `tandem tools`."""

    toolset: str
    tool: str
    status: str
    description: str


async def tool_statuses(settings: Settings) -> list[ToolStatus]:
    """Each tool of each installed toolset, with the toolset's status (`off` when not selected)."""
    plugins = discover_plugins()
    enabled = set(plugins) if settings.tools is None else set(settings.tools)

    async def status_of(name: str) -> str:
        plugin = plugins[name]
        if name not in enabled:
            return 'off'
        return await plugin_status(plugin, timeout=3)

    names = sorted(plugins)
    statuses = await asyncio.gather(*(status_of(name) for name in names))
    rows: list[ToolStatus] = []
    for name, status in zip(names, statuses, strict=True):
        described = tool_descriptions([plugins[name].build()])
        for tool in described or [{'name': '-', 'description': plugins[name].description}]:
            rows.append(ToolStatus(name, tool['name'], status, tool['description']))
    return rows
