"""Deps with long-term memory wired in the way `agent.context.build_deps` wires it, around a scripted model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo
from redis.asyncio import Redis

from agent.deps import Deps
from agent.memory_context import MemoryContext, fact_store_for
from memory.facts import FactStore
from tests.support.deps import make_deps
from tools.memory_tools import plugin as memory_plugin


def memory_deps(
    redis: Redis,
    model: Model,
    *,
    home: Path,
    store: FactStore | None = None,
    tools: tuple[str, ...] = (),
    plugins: tuple[Any, ...] = (),
    **kwargs: Any,
) -> Deps:
    """`make_deps` plus the `memory` toolset (through `plugins=`, until its entry point is registered),
    the fact store and the memory context provider."""
    deps = make_deps(redis, model, home=home, tools=tools, plugins=[memory_plugin, *plugins], **kwargs)
    facts = store if store is not None else fact_store_for(deps.settings, redis)
    return replace(deps, facts=facts, context_providers=(MemoryContext(),) if facts is not None else ())


def instructions_of(seen: tuple[list[ModelMessage], AgentInfo]) -> str:
    """The system instructions one scripted request was sent."""
    return seen[1].instructions or ''
