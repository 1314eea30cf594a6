"""Turn preparation: the instructions a turn runs with."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from pydantic_ai.toolsets import AbstractToolset

from agent.builder import tool_descriptions
from agent.deps import Deps


def prompt_variables(
    deps: Deps, toolsets: Sequence[AbstractToolset[Any]], *, today: date | None = None
) -> dict[str, Any]:
    """The variables every prompt template can use.

    `memory` and `retrieval` are slots that long-term memory and retrieval fill; they are empty
    strings when those features are off. The date has no time part, so the prompt prefix stays
    stable (and cacheable) all day.
    """
    return {
        'date': (today or date.today()).isoformat(),
        'tools': tool_descriptions(toolsets),
        'user_name': None,
        'memory': '',
        'retrieval': '',
        'backbone': deps.backbone.name,
    }


def render_instructions(deps: Deps, toolsets: Sequence[AbstractToolset[Any]]) -> str:
    """The system instructions for this turn, rendered from the selected prompt template."""
    return deps.prompt.render(prompt_variables(deps, toolsets))
