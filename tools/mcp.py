"""MCP servers as tool plugins: each `[mcp.NAME]` of the settings offers its server's tools as `NAME_TOOL`.

The client is pydantic-ai's `MCPToolset` (fastmcp underneath). What Tandem adds is policy:
- every result is untrusted content, so it taints the turn, and a tool whose annotations do not say
  `readOnlyHint: true` has side effects, so in a tainted turn the approval policy holds it (both
  rules are the registry's, `returns_untrusted` and `has_side_effects`, for any MCP toolset);
- a server that fails to start, or whose configuration names an unset variable, offers no tools for
  that turn (logged, and shown by `tandem tools`), and one that dies mid-turn is a tool error the
  model sees: none of them crashes the turn, and the other servers keep working.

This module imports the MCP client, which takes a while: the registry imports it only when a server is configured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any, cast

from fastmcp.exceptions import McpError  # pyright: ignore[reportPrivateImportUsage]
from mcp_types import CONNECTION_CLOSED
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ModelRetry, ToolFailed
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.tools import RunContext
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool, WrapperToolset

from tandem.agent.core.config import McpServerConfig
from tandem.agent.core.errors import ConfigError
from tandem.agent.core.events import short
from tandem.agent.core.log import get_logger
from tandem.tools.registry import ToolsetPlugin

__all__ = ['McpServerToolset', 'mcp_plugin', 'server_listing']

_log = get_logger('tandem.tools.mcp')

_VARIABLE = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)\}')

_PASSED_THROUGH = (ModelRetry, ToolFailed, ApprovalRequired, CallDeferred)
"""What a tool call may raise on purpose; anything else from an MCP call means the server failed."""


def expand(value: str, *, server: str, field: str) -> str:
    """`value` with each `${NAME}` replaced by that environment variable.

    Raises:
        ConfigError: A named variable is unset; the message names it and the server.
    """

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        found = os.environ.get(name)
        if found is None:
            raise ConfigError(f'MCP server {server!r}: {field} names ${{{name}}}, which is not set in the environment.')
        return found

    return _VARIABLE.sub(variable, value)


def _client(name: str, config: McpServerConfig) -> MCPToolset[Any]:
    """pydantic-ai's toolset for the server, connecting lazily (at a run's start, or for a listing)."""
    from fastmcp.client.transports import StdioTransport, StreamableHttpTransport

    if config.command is not None:
        env = {key: expand(value, server=name, field=f'env.{key}') for key, value in config.env.items()}
        cwd = str(config.cwd) if config.cwd is not None else None
        transport = StdioTransport(config.command, list(config.args), env=env or None, cwd=cwd)
    else:
        assert config.url is not None  # the config allows one of the two
        headers = {key: expand(value, server=name, field=f'headers.{key}') for key, value in config.headers.items()}
        transport = StreamableHttpTransport(config.url, headers=headers or None)
    return MCPToolset(transport, id=name, init_timeout=config.connect_timeout_seconds)


def _leaf(error: BaseException) -> BaseException:
    """The first leaf of an exception group (the MCP client runs its session in a task group), else `error`."""
    while isinstance(error, BaseExceptionGroup):
        group = cast(BaseExceptionGroup[BaseException], error)
        error = group.exceptions[0]
    return error


def _reason(error: BaseException) -> str:
    """One line for why a server failed; the exception's name when it has no text."""
    error = _leaf(error)
    text = str(error).strip().splitlines()
    return short(text[0] if text else type(error).__name__, 200)


@dataclass
class McpServerToolset(WrapperToolset[Any]):
    """One MCP server's tools, prefixed with its name, under Tandem's policy (see the module docstring).

    The toolset is shared by every run of the process; `for_run` gives each run its own copy, which
    remembers whether that run's connection came up.
    """

    server: str = ''
    client: MCPToolset[Any] | None = None
    """The unprefixed toolset, which listings ask directly; `None` when the configuration is unusable."""
    unusable: str | None = None
    """Why the server cannot be reached at all: its configuration names an unset variable."""
    failure: str | None = None
    """Why this run has none of the server's tools (set on entering, or when listing them failed)."""
    entered: bool = False
    """Whether this run's connection came up, so leaving the run closes it."""

    async def for_run(self, ctx: RunContext[Any]) -> AbstractToolset[Any]:
        return replace(self, wrapped=await self.wrapped.for_run(ctx), failure=None, entered=False)

    async def __aenter__(self) -> McpServerToolset:
        if self.unusable is not None:
            self.failure = self.unusable
            _log.warning('mcp.unavailable', server=self.server, reason=self.failure)
            return self
        try:
            await self.wrapped.__aenter__()
        except Exception as error:  # noqa: BLE001 -- a server that cannot start must not stop the turn
            self.failure = _reason(error)
            _log.warning('mcp.unavailable', server=self.server, reason=self.failure)
        else:
            self.entered = True
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        if self.entered:
            self.entered = False
            try:
                await self.wrapped.__aexit__(*args)
            except Exception as error:  # noqa: BLE001 -- a server that died has nothing left to close cleanly
                _log.warning('mcp.close_failed', server=self.server, reason=_reason(error))
        return None

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        if self.failure is not None:
            return {}
        try:
            tools = await self.wrapped.get_tools(ctx)
        except Exception as error:  # noqa: BLE001 -- as on entering
            self.failure = _reason(error)
            _log.warning('mcp.unavailable', server=self.server, reason=self.failure)
            return {}
        return tools

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        try:
            return await self.wrapped.call_tool(name, tool_args, ctx, tool)
        except ModelRetry as retry:
            if not _connection_closed(retry.__cause__):
                raise
            # pydantic-ai asks the model to retry a protocol error, but the server is gone: say so.
            _log.warning('mcp.call_failed', server=self.server, tool=name, reason='connection closed')
            raise ToolFailed(f'The MCP server {self.server!r} stopped while running {name}.') from retry
        except _PASSED_THROUGH:
            raise
        except Exception as error:
            reason = _reason(error)
            _log.warning('mcp.call_failed', server=self.server, tool=name, reason=reason)
            raise ToolFailed(f'The MCP server {self.server!r} failed while running {name}: {reason}') from error


def _connection_closed(error: BaseException | None) -> bool:
    leaf = _leaf(error) if error is not None else None
    return isinstance(leaf, McpError) and leaf.error.code == CONNECTION_CLOSED


def _toolset(name: str, config: McpServerConfig) -> McpServerToolset:
    try:
        client = _client(name, config)
    except ConfigError as error:  # the server is unavailable, as one that cannot start is; the others still work
        return McpServerToolset(FunctionToolset[Any](), server=name, unusable=str(error))
    return McpServerToolset(client.prefixed(name), server=name, client=client)


async def server_listing(toolset: McpServerToolset) -> tuple[str, list[tuple[str, str]]]:
    """Connect and ask: the server's status line, and the name and first description line of each tool.

    A server that cannot be reached is `failed: <why>` with no tools; this never raises.
    """
    try:
        if toolset.client is None:
            raise ConfigError(toolset.unusable or 'unusable configuration')
        async with toolset.client:
            listed = await toolset.client.list_tools()
    except Exception as error:  # noqa: BLE001 -- `tandem tools` shows why
        return f'failed: {_reason(error)}', []
    described: list[tuple[str, str]] = []
    for tool in listed:
        lines = (tool.description or '').strip().splitlines()
        described.append((f'{toolset.server}_{tool.name}', lines[0] if lines else ''))
    return f'connected, {len(described)} tool{"" if len(described) == 1 else "s"}', described


def mcp_plugin(name: str, config: McpServerConfig) -> ToolsetPlugin:
    """The tool plugin for `[mcp.NAME]`: selected, listed and gated like any other."""
    toolset = _toolset(name, config)
    where = config.url if config.url is not None else ' '.join([config.command or '', *config.args])
    return ToolsetPlugin(
        name=name,
        description=f'MCP server: {short(where, 80)}',
        build=lambda: toolset,
        listing=lambda: server_listing(toolset),
    )
