"""Who a turn is for, and the mutable state of one turn in flight."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandem.agent.core.links import LinkPolicy


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


@dataclass(frozen=True)
class Citation:
    """A knowledge-base passage the model was shown this turn under the number `[n]`."""

    number: int
    source: str
    """The file path or URL of its document."""
    title: str = ''
    heading: str = ''
    """The section, e.g. `Install > From source`."""
    page: int | None = None
    kb: str = ''
    chunk_id: str = ''
    snippet: str = ''
    """The start of the passage."""


@dataclass(frozen=True)
class ShownExample:
    """A few-shot example the model was shown this turn (`/examples`)."""

    id: str
    question: str
    tokens: int
    tool_calls: int = 0


@dataclass
class TurnState:
    """Mutable state of the turn in flight; the runtime gives every turn a fresh one."""

    run_id: str = ''
    tool_calls: list[ToolCallRecord] = field(default_factory=list[ToolCallRecord])
    tainted: bool = False
    """Untrusted content (web, documents) entered this turn, so side-effect tools need approval."""
    search_urls: set[str] = field(default_factory=set[str])
    """The URLs web searches returned this turn, which `web_fetch` may read, as they are, in a tainted turn."""
    link_policy: LinkPolicy | None = None
    """The URLs the answer may keep live, once untrusted content entered the turn; `None` leaves them all live."""
    citations: dict[int, Citation] = field(default_factory=dict[int, Citation])
    """Knowledge-base passages shown to the model this turn, by citation number (`/sources`)."""
    output_tools: set[str] = field(default_factory=set[str])
    """The names of the output tools a typed turn offered the model, whose retries are the answer's."""
    history_start: int = 0
    """How many of the session's stored messages come before the first one this turn loaded: a running
    summary (compaction) stands for them, so the turn reads only what it may send."""
    summarized_turns: int = 0
    """How many of the session's turns those messages hold."""
    examples: list[ShownExample] = field(default_factory=list[ShownExample])
    """The few-shot examples this turn shows, in the order they are sent."""
    example_messages: list[Any] = field(default_factory=list[Any])
    """Their messages (pydantic-ai `ModelMessage`s), sent ahead of the history with every model request."""

    def find_call(self, call_id: str) -> ToolCallRecord | None:
        """The record of a tool call of this turn, by id."""
        return next((record for record in self.tool_calls if record.call_id == call_id), None)
