"""Assembly: one pydantic-ai `Agent` from a backbone, toolsets and the turn's capabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pydantic_ai
from pydantic_ai import Agent
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.toolsets import AbstractToolset

from tandem.agent.turn.approvals import needs_approval, resolve_approvals
from tandem.agent.turn.compaction import HistoryCompaction
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.guard import TurnGuard

if TYPE_CHECKING:
    from tandem.tools.registry import ToolsetPlugin

# pydantic-ai prints a first-run banner (a logo and a Logfire offer) into the terminal of a program run
# from a source checkout. Tandem owns its screen: the REPL, `tandem run` and the service print only Tandem.
# Every Tandem agent, extraction's and compaction's included, runs in a process that imported this module.
pydantic_ai.BANNER_ENABLED = False


def tool_descriptions(toolsets: Sequence[AbstractToolset[Any]]) -> list[dict[str, str]]:
    """Name and first docstring line of every function tool, for the prompt's `tools` variable."""
    from pydantic_ai.toolsets import FunctionToolset

    described: list[dict[str, str]] = []
    for toolset in toolsets:
        if isinstance(toolset, FunctionToolset):
            for name, tool in toolset.tools.items():  # pyright: ignore[reportUnknownVariableType,reportUnknownMemberType]
                first_line = (tool.description or '').strip().splitlines()  # pyright: ignore[reportUnknownMemberType]
                described.append({'name': str(name), 'description': first_line[0] if first_line else ''})  # pyright: ignore[reportUnknownArgumentType]
    return described


def build_agent(deps: Deps, toolsets: Sequence[AbstractToolset[Any]]) -> Agent[Deps, str]:
    """The agent for `deps`: its backbone's model and settings, the toolsets, and Tandem's capabilities."""
    return Agent(
        deps.backbone.model,
        deps_type=Deps,
        output_type=str,
        toolsets=[toolset.approval_required(needs_approval) for toolset in toolsets],
        model_settings=deps.backbone.model_settings,
        capabilities=[TurnGuard(), HandleDeferredToolCalls(handler=resolve_approvals), HistoryCompaction()],
        retries=deps.settings.limits.tool_retries,
        name='tandem',
    )


class AgentFactory:
    """Builds agents and toolsets once and reuses them: tool schemas are costly to generate.

    A front end makes one and shares it across the `Deps` it builds, so a long-running service
    pays for each (backbone, toolsets) combination once. Agents hold no per-run state.
    """

    def __init__(self, max_agents: int = 32) -> None:
        self._max_agents = max_agents
        self._toolsets: dict[str, AbstractToolset[Any]] = {}
        self._agents: dict[tuple[object, ...], tuple[Agent[Deps, str], list[AbstractToolset[Any]]]] = {}

    def get(self, deps: Deps) -> tuple[Agent[Deps, str], list[AbstractToolset[Any]]]:
        """The agent and toolsets for `deps`' backbone and selected plugins."""
        key = (id(deps.backbone.model), deps.backbone.name, tuple(plugin.name for plugin in deps.toolsets))
        cached = self._agents.get(key)
        if cached is None:
            toolsets = [self._toolset(plugin) for plugin in deps.toolsets]
            cached = (build_agent(deps, toolsets), toolsets)
            if len(self._agents) >= self._max_agents:
                self._agents.pop(next(iter(self._agents)))
            self._agents[key] = cached
        return cached

    def _toolset(self, plugin: ToolsetPlugin) -> AbstractToolset[Any]:
        toolset = self._toolsets.get(plugin.name)
        if toolset is None:
            toolset = self._toolsets[plugin.name] = plugin.build()
        return toolset
