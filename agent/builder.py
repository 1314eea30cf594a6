"""Assembly: one pydantic-ai `Agent` from a backbone, toolsets and the turn's capabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.toolsets import AbstractToolset

from agent._telemetry import TurnTelemetry
from agent.deps import Deps


def toolsets_for(deps: Deps) -> list[AbstractToolset[Any]]:
    """The toolsets the selected plugins provide."""
    return [plugin.build() for plugin in deps.toolsets]


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
        toolsets=list(toolsets),
        model_settings=deps.backbone.model_settings,
        tool_timeout=deps.settings.limits.tool_timeout_seconds,
        capabilities=[TurnTelemetry()],
        name='tandem',
    )
