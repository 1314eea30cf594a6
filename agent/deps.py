"""`Deps`: everything a turn needs, passed to tools through `RunContext`, never through globals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.backbones import Backbone
from agent.config import Settings
from agent.prompts import PromptTemplate

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from memory.conversations import RedisConversationStore
    from tools.registry import ToolsetPlugin


@dataclass(frozen=True)
class Identity:
    """Who a turn is for. It comes from the front end, never from model output."""

    tenant: str
    user: str
    session: str


@dataclass
class ToolCallRecord:
    """One tool call of a turn, as shown to users and logged."""

    call_id: str
    name: str
    args: dict[str, Any]
    duration_s: float = 0.0
    ok: bool = True
    result: str = ''


@dataclass
class TurnState:
    """Mutable state of the turn in flight; the runtime gives every turn a fresh one."""

    run_id: str = ''
    tool_calls: list[ToolCallRecord] = field(default_factory=list[ToolCallRecord])
    tainted: bool = False
    """Untrusted content (web, documents) entered this turn, so side-effect tools need approval."""


@dataclass
class Deps:
    """The dependencies of a turn. Front ends build one, then call `agent.runtime.run_turn`."""

    settings: Settings
    identity: Identity
    backbone: Backbone
    prompt: PromptTemplate
    redis: Redis
    conversations: RedisConversationStore
    toolsets: Sequence[ToolsetPlugin] = ()
    interactive: bool = False
    """Whether a person can answer approval questions (the REPL), or not (ask, HTTP, scenarios)."""
    retriever: Any = None
    """The knowledge-base retriever slot; `None` until a knowledge base is configured."""
    turn: TurnState = field(default_factory=TurnState)
