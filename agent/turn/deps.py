"""`Deps`: everything a turn needs, passed to tools through `RunContext`, never through globals."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import Settings
from tandem.agent.core.prompts import PromptTemplate
from tandem.agent.core.turn_state import ToolCallRecord, TurnState

if TYPE_CHECKING:
    from pydantic_ai import Agent
    from pydantic_ai.toolsets import AbstractToolset
    from redis.asyncio import Redis

    from tandem.memory.conversations import RedisConversationStore
    from tandem.tools.registry import ToolsetPlugin


@dataclass(frozen=True)
class ApprovalRequest:
    """A held tool call, as shown to the person asked to approve it (see `agent.turn.approvals`)."""

    tool_name: str
    args: dict[str, Any]

    def describe(self) -> str:
        """The exact call, e.g. `remember(fact="...")`."""
        arguments = ', '.join(f'{key}={json.dumps(value, ensure_ascii=False)}' for key, value in self.args.items())
        return f'{self.tool_name}({arguments})'


Approver = Callable[[ApprovalRequest], Awaitable[bool]]
"""Asks a person; returns whether the call may run."""


class TurnContextProvider(Protocol):
    """Contributes prompt variables for a turn, such as `memory` or `retrieval` (see `agent.turn.providers`)."""

    async def prompt_variables(self, deps: Deps, text: str) -> Mapping[str, Any]:
        """Variables to merge into the prompt's for this turn.

        Args:
            deps: The turn's dependencies (identity, stores, settings).
            text: The user's message, to find what is relevant to it.

        Returns:
            Only the variables this provider owns, e.g. `{'memory': '- likes teal'}`.
        """
        ...


class AgentSource(Protocol):
    """Where a turn gets its pydantic-ai agent and toolsets: `agent.turn.builder.AgentFactory`."""

    def get(self, deps: Deps) -> tuple[Agent[Deps, str], list[AbstractToolset[Any]]]:
        """The agent and toolsets for `deps`' backbone and selected plugins."""
        ...


@dataclass(frozen=True)
class Identity:
    """Who a turn is for. It comes from the front end, never from model output."""

    tenant: str
    user: str
    session: str


@dataclass
class Deps:
    """The dependencies of a turn. Front ends build one, then call `agent.turn.run.run_turn`."""

    settings: Settings
    identity: Identity
    backbone: Backbone
    prompt: PromptTemplate
    redis: Redis
    conversations: RedisConversationStore
    toolsets: Sequence[ToolsetPlugin] = ()
    approver: Approver | None = None
    """Asks a person to approve held tool calls (the REPL); `None` when nobody is there (ask, HTTP, scenarios)."""
    retriever: Any = None
    """The knowledge-base retriever slot; `None` until a knowledge base is configured."""
    facts: Any = None
    """The long-term memory (facts about the user) slot; `None` when memory is off."""
    context_providers: Sequence[TurnContextProvider] = ()
    """Fill the prompt's `memory`, `retrieval` and `user_name` slots each turn."""
    turn: TurnState = field(default_factory=TurnState)
    agents: AgentSource | None = None
    """Built agents and toolsets, shared by every `Deps` a front end makes; `None` gets one at the first turn."""


__all__ = [
    'AgentSource',
    'ApprovalRequest',
    'Approver',
    'Deps',
    'Identity',
    'ToolCallRecord',
    'TurnContextProvider',
    'TurnState',
]
