"""`Deps`: everything a turn needs, passed to tools through `RunContext`, never through globals."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import Settings
from tandem.agent.core.prompts import PromptTemplate
from tandem.agent.core.turn_state import Identity, ToolCallRecord, TurnState

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tandem.memory.conversations import RedisConversationStore
    from tandem.memory.examples import ExampleLibrary
    from tandem.memory.facts import FactStore
    from tandem.memory.knowledge.retrieval import Retriever
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
    retriever: Retriever | None = None
    """Searches the user's knowledge bases; `None` when retrieval is off."""
    facts: FactStore | None = None
    """Long-term memory (facts about the user); `None` when memory is off."""
    examples: ExampleLibrary | None = None
    """The example sets few-shot examples come from; `None` when `examples.mode = "off"`."""
    context_providers: Sequence[TurnContextProvider] = ()
    """Fill the prompt's `memory`, `retrieval`, `examples` and `user_name` slots each turn."""
    turn: TurnState = field(default_factory=TurnState)


__all__ = [
    'ApprovalRequest',
    'Approver',
    'Deps',
    'Identity',
    'ToolCallRecord',
    'TurnContextProvider',
    'TurnState',
]
