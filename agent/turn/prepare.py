"""Turn preparation: the instructions a turn runs with."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from pydantic_ai.toolsets import AbstractToolset

from tandem.agent.turn.agent import tool_descriptions
from tandem.agent.turn.deps import Deps


def prompt_variables(
    deps: Deps, toolsets: Sequence[AbstractToolset[Any]], *, today: date | None = None
) -> dict[str, Any]:
    """The variables every prompt template can use.

    `memory`, `retrieval` and `examples` are slots that long-term memory, retrieval and few-shot
    examples fill; they are empty strings when those features are off. The date has no time part, so the prompt prefix stays
    stable (and cacheable) all day.
    """
    return {
        'date': (today or date.today()).isoformat(),
        'tools': tool_descriptions(toolsets),
        'user_name': None,
        'memory': '',
        'retrieval': '',
        'examples': '',
        'backbone': deps.backbone.name,
    }


async def render_instructions(deps: Deps, toolsets: Sequence[AbstractToolset[Any]], text: str) -> str:
    """The system instructions for this turn: the prompt template, its slots filled by the context providers."""
    variables = prompt_variables(deps, toolsets)
    for provider in deps.context_providers:
        variables.update(await provider.prompt_variables(deps, text))
    return deps.prompt.render(variables)
