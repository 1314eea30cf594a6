"""Building real `Deps` around a scripted model, for tests of the runtime and front ends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic_ai.models import Model
from redis.asyncio import Redis

from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.prompts import PromptLibrary
from tandem.agent.turn.approvals import Approver
from tandem.agent.turn.deps import Deps, Identity
from tandem.memory.conversations import RedisConversationStore
from tandem.tools.registry import ToolsetPlugin, discover_plugins, select


def scripted_backbone(model: Model, name: str = 'scripted') -> Backbone:
    """A backbone around a test double such as `FunctionModel` or `TestModel`."""
    return Backbone(name=name, config=BackboneConfig(model=f'test:{name}'), model=model)


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Settings that read no config file and keep data under `home`."""
    return Settings(home=home, **overrides)


def make_deps(
    redis: Redis,
    model: Model,
    *,
    home: Path,
    session: str = 's1',
    user: str = 'alice',
    tenant: str = 'acme',
    tools: Sequence[str] = ('calc', 'clock'),
    prompt: str = 'assistant',
    approver: Approver | None = None,
    plugins: Sequence[ToolsetPlugin] = (),
    **settings: Any,
) -> Deps:
    """Real `Deps` (real Redis, real store, real prompt and toolsets) around a scripted `model`."""
    config = make_settings(home, **settings)
    return Deps(
        settings=config,
        identity=Identity(tenant=tenant, user=user, session=session),
        backbone=scripted_backbone(model),
        prompt=PromptLibrary.default().get(prompt),
        redis=redis,
        conversations=RedisConversationStore(redis, tenant=tenant, ttl_seconds=config.session_ttl_seconds),
        toolsets=[*select(list(tools), discover_plugins()), *plugins],
        approver=approver,
    )
