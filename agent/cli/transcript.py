"""Plain-text rendering of stored messages, for `/history` and `tandem sessions show`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from tandem.agent.core.events import short
from tandem.agent.turn.output import as_sent


def render_transcript(messages: Sequence[ModelMessage]) -> Iterator[str]:
    """One line per user message, answer, tool call and tool result; a typed answer as it was sent."""
    for message in as_sent(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    content = part.content if isinstance(part.content, str) else '[non-text content]'
                    yield f'you: {content}'
                elif isinstance(part, ToolReturnPart):
                    error = '' if part.outcome == 'success' else f'{part.outcome}: '
                    yield f'  ← {part.tool_name}: {error}{short(part.model_response_str(wrap_if_error=False), 100)}'
        else:
            for part in message.parts:
                if isinstance(part, ToolCallPart):
                    yield f'  → {part.tool_name}({short(part.args_as_json_str(), 80)})'
                elif isinstance(part, TextPart) and part.content:
                    yield f'assistant: {part.content}'
