"""Building `Deps` from a `TurnRequest` and the settings: what every front end does before calling the runtime."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from tandem.agent.backbones import base as backbones
from tandem.agent.backbones.base import Backbone
from tandem.agent.core.config import Settings
from tandem.agent.core.errors import TandemError
from tandem.agent.core.prompts import PromptLibrary, PromptTemplate
from tandem.agent.turn.deps import Deps, Identity
from tandem.agent.turn.providers.examples import ExamplesContextProvider, example_library
from tandem.agent.turn.providers.knowledge import KnowledgeContextProvider, knowledge_retriever
from tandem.agent.turn.providers.memory import MemoryContext, fact_store_for
from tandem.agent.turn.request import TurnRequest, new_session_id
from tandem.memory.connection import opened
from tandem.memory.conversations import RedisConversationStore
from tandem.memory.keys import validate_id
from tandem.tools.installed import installed_plugins
from tandem.tools.registry import ToolsetPlugin, select


def selected_toolsets(settings: Settings, names: Sequence[str] | None) -> list[ToolsetPlugin]:
    """The tool plugins a turn gets: `names`, else the config's `tools`, else every installed one (MCP servers included)."""
    available = installed_plugins(settings)
    wanted = names if names is not None else settings.tools
    return select(wanted, available)


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncGenerator[Redis]:
    """A Redis client for `settings`, closed on exit; starts the embedded server when no URL is set."""
    url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
    async with opened(url, home=settings.home) as client:
        try:
            yield client
        finally:
            from tandem.agent.turn.background import wait_for_background

            await wait_for_background()  # facts and titles are written after the answer


@asynccontextmanager
async def open_conversations(settings: Settings) -> AsyncGenerator[RedisConversationStore]:
    """The settings' tenant's conversation store, its Redis client closed on exit."""
    tenant = validate_id('tenant', settings.tenant)
    async with open_redis(settings) as redis:
        yield _conversation_store(settings, redis, tenant)


def _conversation_store(settings: Settings, redis: Redis, tenant: str) -> RedisConversationStore:
    """A tenant's conversation store with the settings' TTL and history budget."""
    return RedisConversationStore(
        redis,
        tenant=tenant,
        ttl_seconds=settings.session_ttl_seconds,
        history_cache_bytes=settings.memory.history_cache_bytes,
    )


async def last_session(settings: Settings, redis: Redis, user: str | None) -> str:
    """The user's most recently saved session, which `--continue` continues.

    Raises:
        TandemError: The user has no session yet.
    """
    tenant = validate_id('tenant', settings.tenant)
    user = validate_id('user', user or settings.user)
    # The record alone: a listing would also fetch each session's message count and title.
    latest = await _conversation_store(settings, redis, tenant).read_records(scope=user, limit=1)
    if not latest:
        raise TandemError(f'user {user!r} has no session to continue yet: leave out --continue to start one.')
    return latest[0].conversation_id


async def build_deps(
    settings: Settings,
    redis: Redis,
    request: TurnRequest,
    *,
    session: str | None = None,
    backbone: Backbone | None = None,
    prompt: PromptTemplate | None = None,
    toolsets: Sequence[ToolsetPlugin] | None = None,
    conversations: RedisConversationStore | None = None,
) -> Deps:
    """`Deps` for the request's session, with ids validated before anything touches Redis.

    `session` replaces `request.session` (the REPL's `/new` and `/switch`); a new session when both are `None`.
    A long-running front end may pass the `backbone`, `prompt` and `toolsets` it resolved once, in
    place of `request.backbone`/`model`, `prompt` and `tools` (resolving them costs milliseconds),
    and the tenant's `conversations` store it keeps, whose held histories spare later turns the walk.
    """
    tenant = validate_id('tenant', request.tenant or settings.tenant)
    user = validate_id('user', request.user or settings.user)
    session = validate_id('session', session or request.session or new_session_id())
    if prompt is None and request.system is not None:
        prompt = PromptTemplate.literal(request.system)
    elif prompt is None:
        prompt = PromptLibrary.default(settings.prompts_dir).get(request.prompt or settings.prompt)
    if backbone is None:
        backbone = await backbones.resolve(settings, name=request.backbone, model=request.model)
    if conversations is None:
        conversations = _conversation_store(settings, redis, tenant)
    elif conversations.tenant != tenant:
        raise ValueError(f'the conversation store is for tenant {conversations.tenant!r}, the turn for {tenant!r}')
    facts = fact_store_for(settings, redis)
    return Deps(
        settings=settings,
        identity=Identity(tenant=tenant, user=user, session=session),
        backbone=backbone,
        prompt=prompt,
        redis=redis,
        conversations=conversations,
        toolsets=selected_toolsets(settings, request.tools) if toolsets is None else toolsets,
        facts=facts,
        retriever=knowledge_retriever(settings, redis, tenant=tenant, user=user),
        examples=example_library(settings, redis, tenant=tenant, user=user),
        context_providers=(
            *((MemoryContext(),) if facts is not None else ()),
            KnowledgeContextProvider(),
            ExamplesContextProvider(),
        ),
    )
