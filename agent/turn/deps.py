"""`Deps`: everything a turn needs, passed to tools through `RunContext`, never through globals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import Settings
from tandem.agent.core.prompts import PromptTemplate
from tandem.agent.core.turn_state import ToolCallRecord, TurnState
from tandem.agent.turn.builder import AgentFactory

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tandem.agent.turn.approvals import Approver
    from tandem.agent.turn.providers.base import TurnContextProvider
    from tandem.memory.conversations import RedisConversationStore
    from tandem.tools.registry import ToolsetPlugin


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
    agents: AgentFactory = field(default_factory=AgentFactory)
    """Built agents and toolsets, shared by every `Deps` a front end makes."""


__all__ = ['Deps', 'Identity', 'ToolCallRecord', 'TurnState']
