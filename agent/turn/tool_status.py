"""Every installed tool with its status, for `tandem tools` and `/tools`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tandem.agent.core.config import Settings
from tandem.agent.turn.agent import tool_descriptions
from tandem.tools.installed import installed_plugins
from tandem.tools.registry import ToolsetPlugin, plugin_status

_LISTING_SECONDS = 5
"""How long `tandem tools` waits for an MCP server to connect and list its tools."""


@dataclass(frozen=True)
class ToolStatus:
    """One row of `tandem tools`."""

    toolset: str
    tool: str
    status: str
    description: str


async def tool_statuses(settings: Settings) -> list[ToolStatus]:
    """Each tool of each installed toolset, with the toolset's status (`off` when not selected).

    An MCP server's tools are known only once connected (once per server, for its status and its tools):
    an unreachable or unselected server shows as one row.
    """
    plugins = installed_plugins(settings)
    enabled = set(plugins) if settings.tools is None else set(settings.tools)
    names = sorted(plugins)
    found = await asyncio.gather(*(_status_and_tools(plugins[name], name in enabled) for name in names))
    rows: list[ToolStatus] = []
    for name, (status, described) in zip(names, found, strict=True):
        for tool, description in described or [('-', plugins[name].description)]:
            rows.append(ToolStatus(name, tool, status, description))
    return rows


async def _status_and_tools(plugin: ToolsetPlugin, enabled: bool) -> tuple[str, list[tuple[str, str]]]:
    if plugin.listing is not None:
        if not enabled:
            return 'off', []
        try:
            async with asyncio.timeout(_LISTING_SECONDS):
                return await plugin.listing()
        except TimeoutError:
            return f'failed: no answer in {_LISTING_SECONDS} s', []
    described = [(tool['name'], tool['description']) for tool in tool_descriptions([plugin.build()])]
    return (await plugin_status(plugin, timeout=3) if enabled else 'off'), described
