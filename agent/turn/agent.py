"""The one pydantic-ai `Agent` every turn runs on, and the per-run options that make it this turn's.

The agent holds only what never changes: Tandem's capabilities and its deps and output types. Each
turn passes its backbone's model and settings, its retries and its toolsets to `Agent.run`, so a
process builds one agent whatever its front ends, backbones and limits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic_ai
from pydantic_ai import Agent, Tool
from pydantic_ai.capabilities import AbstractCapability, HandleDeferredToolCalls
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset

from tandem.agent.core.errors import ConfigError
from tandem.agent.turn.approvals import needs_approval, resolve_approvals
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.guard import TurnGuard
from tandem.agent.turn.providers.examples import ExampleMessages
from tandem.tools.registry import has_side_effects, outbound_url_argument

if TYPE_CHECKING:
    from tandem.tools.registry import ToolsetPlugin

# pydantic-ai prints a first-run banner (a logo and a Logfire offer) into the terminal of a program run
# from a source checkout. Tandem owns its screen: the REPL, `tandem run` and the service print only Tandem.
# Every Tandem agent, extraction's and compaction's included, runs in a process that imported this module.
pydantic_ai.BANNER_ENABLED = False


def tool_descriptions(toolsets: Sequence[AbstractToolset[Any]]) -> list[dict[str, str]]:
    """Name and first docstring line of every function tool, for the prompt's `tools` variable."""
    described: list[dict[str, str]] = []
    for toolset in toolsets:
        if isinstance(toolset, FunctionToolset):
            for name, tool in toolset.tools.items():  # pyright: ignore[reportUnknownVariableType,reportUnknownMemberType]
                first_line = (tool.description or '').strip().splitlines()  # pyright: ignore[reportUnknownMemberType]
                described.append({'name': str(name), 'description': first_line[0] if first_line else ''})  # pyright: ignore[reportUnknownArgumentType]
    return described


@functools.cache
def tandem_agent() -> Agent[Deps, str]:
    """The agent: no model or tools of its own, Tandem's capabilities on every run."""
    return Agent(
        None,
        deps_type=Deps,
        output_type=str,
        capabilities=[TurnGuard()],
        name='tandem',
    )


_APPROVALS = HandleDeferredToolCalls(handler=resolve_approvals)
"""Decides held calls (see `agent.turn.approvals`); a run gets it when one of its tools may be held."""


@dataclass(frozen=True)
class _Built:
    toolset: AbstractToolset[Any]
    approved: AbstractToolset[Any]
    """The toolset, its side-effect calls held for approval in a tainted turn."""
    may_hold: bool
    """Whether a call may be held: a tool declares side effects, or its tools are known only at run time."""


@functools.lru_cache(maxsize=256)
def _built(plugin: ToolsetPlugin) -> _Built:
    # Building generates every tool's JSON schema, which costs milliseconds: once per plugin per process.
    toolset = plugin.build()
    _refuse_unstoppable(plugin, toolset)
    may_hold = not isinstance(toolset, FunctionToolset) or any(
        has_side_effects(tool.tool_def) or outbound_url_argument(tool.tool_def) is not None  # pyright: ignore[reportUnknownMemberType,reportUnknownArgumentType]
        for tool in toolset.tools.values()  # pyright: ignore[reportUnknownVariableType,reportUnknownMemberType]
    )
    return _Built(toolset, toolset.approval_required(needs_approval), may_hold)


def _refuse_unstoppable(plugin: ToolsetPlugin, toolset: AbstractToolset[Any]) -> None:
    """Refuse a sync tool with side effects: it runs in a worker thread, which nothing can stop at the
    timeout, so its effect could land after the model was told the call failed."""
    if not isinstance(toolset, FunctionToolset):
        return
    tools: dict[str, Tool[Any]] = toolset.tools  # pyright: ignore[reportUnknownMemberType,reportUnknownVariableType]
    for name, tool in tools.items():
        if not tool.function_schema.is_async and has_side_effects(tool.tool_def):
            raise ConfigError(
                f'tool {name!r} of plugin {plugin.name!r} is a plain (sync) function with side effects: Tandem '
                'cannot stop it at limits.tool_timeout_seconds, so its effect could land after the model was told '
                'it failed. Make it `async def`, or declare it side-effect free.'
            )


def plugin_toolsets(plugins: Sequence[ToolsetPlugin]) -> list[AbstractToolset[Any]]:
    """The toolsets `plugins` build, as the prompt's `tools` variable describes them."""
    return [_built(plugin).toolset for plugin in plugins]


def run_toolsets(plugins: Sequence[ToolsetPlugin]) -> list[AbstractToolset[Any]]:
    """The same toolsets as the agent runs them: a call with side effects in a tainted turn waits for approval."""
    return [_built(plugin).approved for plugin in plugins]


_EXAMPLES = ExampleMessages()
"""Sends a turn's few-shot examples ahead of its history (see `agent.turn.providers.examples`)."""


def run_capabilities(plugins: Sequence[ToolsetPlugin], *, examples: bool = False) -> list[AbstractCapability[Deps]]:
    """The capabilities a run adds to the agent's: approvals, only when one of its calls may be held, and
    few-shot examples, only when `examples` are on.

    Each hook costs every run some time, so a run that cannot use one goes without.
    """
    held: list[AbstractCapability[Deps]] = [_APPROVALS] if any(_built(plugin).may_hold for plugin in plugins) else []
    return [*held, _EXAMPLES] if examples else held
