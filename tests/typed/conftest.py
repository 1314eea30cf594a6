"""Typed answers, surface by surface, against a loopback OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.profiles.openai import OpenAIModelProfile
from pydantic_ai.providers.openai import OpenAIProvider

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig, Settings
from tests.support.fake_openai import FakeOpenAI, Text, ToolCall

PROSE = Text('His name is Ada and she is 36.')
"""What a model that ignores the format answers."""


def answer(tool: str = 'final_result', **fields: object) -> ToolCall:
    """The model's typed answer as an output tool call (the default output mode of `openai-chat:`)."""
    return ToolCall(((tool, dict(fields)),))


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """A loopback server with no replies scripted: each test sets `server.script`."""
    with FakeOpenAI(script=[]) as fake:
        yield fake


def loopback_settings(tmp_path: Path, redis_url: str, server: FakeOpenAI, **backbone: object) -> Settings:
    """Settings whose default backbone is `openai-chat:tiny-chat` on the loopback server."""
    return Settings(
        home=tmp_path,
        redis_url=SecretStr(redis_url),
        tools=['calc'],
        backbone='loop',
        backbones={'loop': BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url, **backbone)},  # pyright: ignore[reportArgumentType]
    )


def loopback_backbone(
    server: FakeOpenAI, name: str = 'loop', *, profile: OpenAIModelProfile | None = None, **config: object
) -> Backbone:
    """A backbone on the loopback server, its model's profile overridden (what it can follow) when given."""
    model = OpenAIChatModel(
        'tiny-chat', provider=OpenAIProvider(base_url=server.url, api_key='unused'), profile=profile
    )
    return Backbone(name=name, config=BackboneConfig(model='openai-chat:tiny-chat', **config), model=model)  # pyright: ignore[reportArgumentType]
