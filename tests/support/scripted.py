"""A scriptable model for tests: a list of steps, each a text answer or tool calls, served in order.

Built on pydantic-ai's `FunctionModel`, with the same script served streamed and not streamed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel


@dataclass(frozen=True)
class Call:
    """A step that calls tools: `(name, args)` pairs."""

    calls: tuple[tuple[str, dict[str, Any]], ...]


def call(name: str, **args: Any) -> Call:
    """A step that calls one tool."""
    return Call(((name, args),))


Step = str | Call
StepFn = Callable[[list[ModelMessage], AgentInfo], Step]


@dataclass
class Script:
    """The steps, and what the model was sent for each request."""

    steps: list[Step | StepFn]
    seen: list[tuple[list[ModelMessage], AgentInfo]] = field(default_factory=list[tuple[list[ModelMessage], AgentInfo]])

    def next(self, messages: list[ModelMessage], info: AgentInfo) -> Step:
        self.seen.append((list(messages), info))
        if not self.steps:
            raise AssertionError('the scripted model was asked for more steps than the test scripted')
        step = self.steps.pop(0)
        return step(messages, info) if callable(step) else step


def _response(step: Step, index: int) -> ModelResponse:
    if isinstance(step, str):
        return ModelResponse(parts=[TextPart(step)])
    return ModelResponse(
        parts=[ToolCallPart(name, args, tool_call_id=f'call-{index}-{n}') for n, (name, args) in enumerate(step.calls)]
    )


def scripted_model(*steps: Step | StepFn, chunk: int = 4) -> tuple[FunctionModel, Script]:
    """A model that plays `steps` in order, streamed in `chunk`-character pieces when streaming."""
    script = Script(list(steps))

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return _response(script.next(messages, info), len(script.seen))

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        step = script.next(messages, info)
        if isinstance(step, str):
            for start in range(0, len(step), chunk):
                yield step[start : start + chunk]
            return
        for n, (name, args) in enumerate(step.calls):
            yield {n: DeltaToolCall(name=name, json_args=json.dumps(args), tool_call_id=f'call-{len(script.seen)}-{n}')}

    return FunctionModel(respond, stream_function=stream, model_name='scripted'), script
