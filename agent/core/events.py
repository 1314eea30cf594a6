"""What a turn reports while it runs, for front ends to render (REPL, SSE, scenario traces)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer's text, as the model streams it."""

    text: str


@dataclass(frozen=True)
class ToolCallStarted:
    """The model called a tool; it is about to run."""

    call_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ToolCallFinished:
    """A tool call returned (or failed, with `ok` false and the error as `result`)."""

    call_id: str
    name: str
    duration_s: float
    ok: bool
    result: str


@dataclass(frozen=True)
class PartialOutput:
    """A typed answer as far as the model has written it, validated as it streams.

    A typed turn streams these instead of `TextDelta`s; the turn's result holds the final, whole answer.
    """

    output: Any


TurnEvent = TextDelta | ToolCallStarted | ToolCallFinished | PartialOutput


def short(value: Any, limit: int = 80) -> str:
    """A one-line preview of `value`, cut at `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + '…'
