"""Generated session titles (`memory.generate_titles = true`): the backbone names a new session.

Every session is titled by its first user message as it is saved (`memory.conversations`). With
`memory.generate_titles` on, `run_turn` also asks the turn's backbone, after a session's first turn
and off the latency path (`agent.turn.background`), for a short title, with the `title` prompt
(`prompts/title/`), and stores it in place of the first message's.

The backbone sees the user's first message only: never tool results or the answer, so no web page
or document can name a session. A failure is logged and the first message stays the title.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import UsageLimits

from tandem.agent.core.log import get_logger
from tandem.agent.core.prompts import PromptLibrary
from tandem.agent.turn.background import BACKGROUND_TIMEOUT, run_in_background
from tandem.memory.conversations import RedisConversationStore, session_title

if TYPE_CHECKING:
    from pydantic_ai.run import AgentRunResult

    from tandem.agent.turn.deps import Deps

__all__ = ['schedule_title']

_log = get_logger('tandem.titles')

_MAX_MESSAGE_CHARS = 2_000
_STRIP = ' \t\n"\'“”‘’`*#.'


@dataclass(frozen=True)
class _Job:
    """What naming a session needs, copied out of `Deps` when the turn ends."""

    store: RedisConversationStore
    session: str
    message: str
    first_title: str | None
    """The title the session took from `message`: the generated one replaces only that one."""
    model: Model
    model_settings: ModelSettings
    prompts_dir: Path | None


def schedule_title(deps: Deps, result: AgentRunResult[Any]) -> asyncio.Task[str | None] | None:
    """Start naming the session in the background if this turn was its first and titles are generated.

    Never raises: a problem is logged, and the turn it follows is unaffected.

    Returns:
        The background task (its result is the title stored, or `None`), or `None` when there is none to find.
    """
    try:
        if not deps.settings.memory.generate_titles or deps.turn.history_start:
            return None
        messages = result.all_messages()
        earlier = messages[: len(messages) - len(result.new_messages())]
        first = _first_user_text(result.new_messages())
        if first is None or session_title(earlier) is not None:
            return None  # not the session's first turn with words from the user
        stored_title = session_title(result.new_messages())
        job = _Job(
            store=deps.conversations,
            session=deps.identity.session,
            message=first,
            first_title=stored_title,
            model=deps.backbone.model,
            model_settings=deps.backbone.model_settings,
            prompts_dir=deps.settings.prompts_dir,
        )
        return run_in_background(_name(job), name=f'tandem-title-{job.session}')
    except Exception:  # noqa: BLE001 - a title is a nicety and must never fail a delivered turn
        _log.exception('title.not_started')
        return None


_TITLE_AGENT = Agent(None, output_type=str, name='tandem-title')
"""Built once: each title passes its model, instructions and settings to `run`."""


async def _name(job: _Job) -> str | None:
    try:
        async with asyncio.timeout(BACKGROUND_TIMEOUT):
            instructions = PromptLibrary.default(job.prompts_dir).get('title').render({})
            result = await _TITLE_AGENT.run(
                f'<message>\n{job.message[:_MAX_MESSAGE_CHARS]}\n</message>',
                model=job.model,
                instructions=instructions,
                model_settings=job.model_settings,
                usage_limits=UsageLimits(request_limit=1),
            )
            title = result.output.strip().splitlines()[0].strip(_STRIP) if result.output.strip() else ''
            if not title:
                _log.warning('title.empty')
                return None
            stored = await job.store.set_title(job.session, title, replacing=job.first_title)
            if stored is None:
                _log.info('title.kept', reason='the session was titled meanwhile')
            return stored
    except Exception as error:  # noqa: BLE001 - logged and dropped; the first message stays the title
        _log.warning('title.failed', error=f'{type(error).__name__}: {str(error)[:200]}')
        return None


def _first_user_text(messages: list[ModelMessage]) -> str | None:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str) and part.content.strip():
                    return part.content
    return None
