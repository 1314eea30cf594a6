"""Every tool plugin a turn may select: those installed as packages, and one per configured MCP server."""

from __future__ import annotations

import functools

from tandem.agent.core.config import McpServerConfig, Settings
from tandem.agent.core.errors import ConfigError
from tandem.tools.registry import ToolsetPlugin, discover_plugins


def installed_plugins(settings: Settings) -> dict[str, ToolsetPlugin]:
    """The `tandem.tools` entry points' plugins and the settings' `[mcp.NAME]` servers, by name.

    Raises:
        ConfigError: A server is named like an installed plugin.
    """
    found = discover_plugins()
    if not settings.mcp:
        return found
    clash = sorted(found.keys() & settings.mcp.keys())
    if clash:
        raise ConfigError(
            f'[mcp.{clash[0]}] is named like the installed tool plugin {clash[0]!r}: give the MCP server another name.'
        )
    servers = {name: _mcp_plugin(name, config.model_dump_json()) for name, config in settings.mcp.items()}
    return dict(sorted({**found, **servers}.items()))


@functools.lru_cache(maxsize=64)
def _mcp_plugin(name: str, config: str) -> ToolsetPlugin:
    # One plugin per server and configuration per process: its toolset keeps the server process between
    # turns, and the agent builds each plugin's toolset once. The MCP client loads only when a server is set.
    from tandem.tools.mcp import mcp_plugin

    return mcp_plugin(name, McpServerConfig.model_validate_json(config))
