"""Session persistence: load a session's conversation, and save a turn whole or not at all."""

from __future__ import annotations

from typing import Any

from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import ConversationConflict
from pydantic_ai.messages import ModelMessage
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import RunUsage

from tandem.agent.core.errors import TandemError
from tandem.agent.turn.compaction import SummaryState, load_summary
from tandem.agent.turn.deps import Deps


async def load_conversation(deps: Deps) -> Conversation:
    """The session's stored conversation, or a new empty one.

    A session with a running summary (compaction) is loaded from the last message the summary covers,
    which the compactor checks it still does: the older ones are never sent, so a turn reads, parses
    and holds what it may send, however long the session grew. `deps.turn` records where it starts.

    Raises:
        SessionNotFoundError: The session exists but belongs to another user.
    """
    identity, store = deps.identity, deps.conversations
    conversation: Conversation | None = None
    state = await _summary(deps)
    if state is not None and state.turns is not None and state.covered > 1:
        start = state.covered - 1
        conversation = await store.load_owned(identity.session, user=identity.user, start=start)
        if conversation is not None and conversation.messages and state.ends_with(conversation.messages[0]):
            deps.turn.history_start, deps.turn.summarized_turns = start, state.turns
        else:
            conversation = None  # the history changed under the summary: the compactor starts over
    if conversation is None:
        conversation = await store.load_owned(identity.session, user=identity.user)
    return conversation if conversation is not None else Conversation(conversation_id=identity.session)


async def _summary(deps: Deps) -> SummaryState | None:
    if deps.settings.memory.compaction_tokens is None:
        return None
    return await load_summary(deps.redis, deps.identity.tenant, deps.identity.session)


async def save_turn(deps: Deps, result: AgentRunResult[Any], turn_usage: RunUsage) -> None:
    """Store the turn's new messages in the session, each exactly once, in one atomic write.

    The usual case, nobody else wrote the session since it was loaded, is pydantic-ai's save, which
    checks the revision. When another turn saved in between (a double submit, a retry, a second tab,
    another replica), this one is appended after it by one script instead: no reload and no retry, so
    concurrent turns are never refused, and each one's messages stay contiguous, in arrival order.
    """
    store, identity = deps.conversations, deps.identity
    try:
        await store.save(result, scope=identity.user)
    except ConversationConflict:
        new_messages: list[ModelMessage] = result.new_messages()
        try:
            await store.append(identity.session, new_messages, usage=turn_usage, scope=identity.user)
        except ConversationConflict:
            # Only another user creating the session while the turn ran, or a history with a hole.
            raise TandemError(
                f'session {identity.session!r} was taken by another user while the turn ran, or its history '
                'is damaged; the turn was not saved: pick another session, or omit it to start a new one.'
            ) from None
