"""`TurnRequest`: one turn as a front end asks for it, the same type from every front end down to the runtime."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage

__all__ = ['TurnRequest', 'new_session_id']


@dataclass(frozen=True)
class TurnRequest:
    """What the REPL, `tandem ask`, the Python API, the HTTP service and the scenario runner ask for.

    `agent.turn.build.build_deps` turns it into `Deps`; every field but `text` falls back to the settings.
    A front end that runs many turns (the REPL, a scenario) keeps one and replaces `text` per turn.
    """

    text: str = ''
    """The user's message."""
    session: str | None = None
    """The session to continue or start; a new one when `None`."""
    user: str | None = None
    tenant: str | None = None
    backbone: str | None = None
    """A backbone name from the config."""
    model: str | None = None
    """A model string, e.g. `openai-chat:qwen2.5`, in place of a configured backbone."""
    prompt: str | None = None
    """`NAME` or `NAME@VERSION`."""
    system: str | None = None
    """A system prompt, used as written in place of the prompt template (`--system TEXT`)."""
    tools: Sequence[str] | None = None
    """Toolset names; the config's (else every installed one) when `None`."""
    history: Sequence[ModelMessage] | None = None
    """Run statelessly on these messages: nothing is loaded or saved."""
    output_type: Any = None
    """The type the answer must have (see `agent.turn.output`); prose when `None`."""
    strict: bool | None = None
    """Ask the server to hold a typed answer to its schema while it decodes (`response_format`'s `strict`)."""


def new_session_id() -> str:
    """A fresh session id: short, sortable by creation time, and valid as a Redis key part."""
    return time.strftime('%Y%m%d-%H%M%S-') + uuid.uuid4().hex[:6]
