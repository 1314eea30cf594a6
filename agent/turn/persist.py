"""Session persistence: load a session's conversation, and save a turn whole or not at all."""

from __future__ import annotations

from typing import Any

from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import ConversationConflict
from pydantic_ai.messages import ModelMessage
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import RunUsage

from tandem.agent.core.errors import TandemError
from tandem.agent.turn.deps import Deps

_SAVE_ATTEMPTS = 8


async def load_conversation(deps: Deps) -> Conversation:
    """The session's stored conversation, or a new empty one.

    Raises:
        SessionNotFoundError: The session exists but belongs to another user.
    """
    identity = deps.identity
    conversation = await deps.conversations.load_owned(identity.session, user=identity.user)
    return conversation if conversation is not None else Conversation(conversation_id=identity.session)


async def save_turn(deps: Deps, result: AgentRunResult[Any], turn_usage: RunUsage) -> None:
    """Append the turn's new messages to the session in one atomic write.

    When another process saved the same session since it was loaded, the turn is appended after
    what that process saved, so concurrent writers lose nothing and each turn stays contiguous.
    """
    store, identity = deps.conversations, deps.identity
    new_messages: list[ModelMessage] = result.new_messages()
    try:
        await store.save(result, scope=identity.user)
        return
    except ConversationConflict:
        pass
    for _ in range(_SAVE_ATTEMPTS):
        latest = await store.load(identity.session, scope=identity.user)
        base_messages = latest.messages if latest is not None else []
        base_usage = latest.usage if latest is not None else RunUsage()
        rebased = Conversation(
            conversation_id=identity.session,
            messages=[*base_messages, *new_messages],
            usage=base_usage + turn_usage,
            revision=latest.revision if latest is not None else None,
            new_message_index=len(base_messages),
        )
        try:
            await store.save(rebased, scope=identity.user)
            return
        except ConversationConflict:
            continue
    raise TandemError(
        f'session {identity.session!r} is being written by too many processes at once; the turn was not saved. Try again.'
    )
