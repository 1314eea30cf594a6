"""uvicorn factories for tests that run `tandem serve`'s worker processes: each worker imports this module."""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tandem.agent.server.app import worker_app
from tests.support.deps import scripted_backbone


async def _echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    request = messages[-1]
    assert isinstance(request, ModelRequest)
    text = next(part.content for part in request.parts if isinstance(part, UserPromptPart))
    turns = sum(1 for message in messages if isinstance(message, ModelResponse))
    return ModelResponse(parts=[TextPart(f'{text} (turn {turns + 1}, worker {os.getpid()})')])


def echo_app() -> FastAPI:
    """`tandem serve`'s worker app with an `echo` backbone that says which worker process answered."""
    return worker_app({'echo': scripted_backbone(FunctionModel(_echo), 'echo')})
