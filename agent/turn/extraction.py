"""Automatic memory (`memory.extract = true`): after a turn, the backbone picks durable facts out of it.

`run_turn` calls `schedule_extraction` once the turn is saved and its answer delivered: the
extraction runs as a background task, never on the latency path. It asks the turn's backbone,
with the `extract_facts` prompt (`prompts/extract_facts/`), for durable facts about the user as
structured output, and stores each through `FactStore.remember` with source `inferred`, so
restatements update known facts instead of piling up.

Only what the user wrote, and the assistant's final answer, are shown to the extractor, never
tool results; in a turn that untrusted content entered (web, documents), only what the user wrote.
So a web page cannot plant a fact about the user through extraction.

It is a background job (`agent.turn.background`): front ends wait for it before they close the Redis
connection it writes through. A failed extraction is logged and dropped: it never affects the turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import UsageLimits

from tandem.agent.core.log import get_logger
from tandem.agent.core.prompts import PromptLibrary
from tandem.agent.turn.background import BACKGROUND_TIMEOUT, run_in_background
from tandem.memory.facts import MAX_FACT_CHARS, FactStore, RememberResult

if TYPE_CHECKING:
    from pydantic_ai.run import AgentRunResult

    from tandem.agent.turn.deps import Deps

__all__ = ['ExtractedFact', 'ExtractedFacts', 'schedule_extraction']

_log = get_logger('tandem.extraction')

_KNOWN_FACTS = 20
_MAX_FACTS_PER_TURN = 10
_MAX_TURN_CHARS = 8_000


class ExtractedFact(BaseModel):
    """One durable fact about the user."""

    text: str = Field(
        description='One short sentence in the third person, e.g. "The user\'s name is Alice."',
        max_length=MAX_FACT_CHARS,
    )


class ExtractedFacts(BaseModel):
    """The durable facts about the user in one turn; usually none."""

    facts: list[ExtractedFact] = Field(default_factory=list[ExtractedFact], max_length=_MAX_FACTS_PER_TURN)


@dataclass(frozen=True)
class _Job:
    """What an extraction needs, copied out of `Deps` when the turn ends (the front end may reuse them)."""

    store: FactStore
    tenant: str
    user: str
    session: str
    turn: int
    model: Model
    model_settings: ModelSettings
    prompts_dir: Path | None
    user_text: str
    answer: str | None


def _user_texts(messages: Sequence[ModelMessage]) -> list[str]:
    return [
        part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    ]


def schedule_extraction(deps: Deps, result: AgentRunResult[Any]) -> asyncio.Task[list[RememberResult]] | None:
    """Start extracting facts from the turn that just ended, in the background, if `memory.extract` is on.

    Never raises: a problem is logged, and the turn it follows is unaffected.

    Returns:
        The background task (its result is what was remembered), or `None` when nothing is extracted.
    """
    try:
        config = deps.settings.memory
        if not (config.enabled and config.extract and isinstance(deps.facts, FactStore)):
            return None
        user_texts = _user_texts(result.new_messages())
        if not user_texts:
            return None
        identity = deps.identity
        job = _Job(
            store=deps.facts,
            tenant=identity.tenant,
            user=identity.user,
            session=identity.session,
            turn=len(_user_texts(result.all_messages())),
            model=deps.backbone.model,
            model_settings=deps.backbone.model_settings,
            prompts_dir=deps.settings.prompts_dir,
            user_text='\n\n'.join(user_texts),
            # In a tainted turn the answer may repeat untrusted content: the extractor sees only the user.
            answer=None if deps.turn.tainted else str(result.output),
        )
        return run_in_background(_extract(job), name=f'tandem-extract-{identity.session}')
    except Exception:  # noqa: BLE001 - extraction is best effort and must never fail a delivered turn
        _log.exception('extraction.not_started')
        return None


_EXTRACTION_AGENT = Agent(None, output_type=ExtractedFacts, name='tandem-extraction')
"""Built once: each extraction passes its model, instructions and settings to `run`."""


async def _extract(job: _Job) -> list[RememberResult]:
    try:
        async with asyncio.timeout(BACKGROUND_TIMEOUT):
            return await _run(job)
    except Exception as error:  # noqa: BLE001 - logged and dropped; the turn was delivered long ago
        _log.warning('extraction.failed', error=f'{type(error).__name__}: {str(error)[:200]}')
        return []


async def _run(job: _Job) -> list[RememberResult]:
    snapshot = await job.store.snapshot(job.tenant, job.user)
    known: dict[str, str] = {}
    for fact in [*snapshot.search(job.user_text, _KNOWN_FACTS), *snapshot.recent(_KNOWN_FACTS)]:
        known.setdefault(fact.id, fact.text)
    template = PromptLibrary.default(job.prompts_dir).get('extract_facts')
    instructions = template.render(
        {'known_facts': list(known.values())[:_KNOWN_FACTS], 'date': date.today().isoformat()}
    )
    turn = f'User: {job.user_text[:_MAX_TURN_CHARS]}'
    if job.answer:
        turn += f'\n\nAssistant: {job.answer[:_MAX_TURN_CHARS]}'
    result = await _EXTRACTION_AGENT.run(
        f'<turn>\n{turn}\n</turn>',
        model=job.model,
        instructions=instructions,
        model_settings=job.model_settings,
        usage_limits=UsageLimits(request_limit=3),
    )
    stored: list[RememberResult] = []
    for extracted in result.output.facts:
        try:
            stored.append(
                await job.store.remember(
                    job.tenant, job.user, extracted.text, source='inferred', session=job.session, turn=job.turn
                )
            )
        except ValueError:
            continue  # an empty, over-long or secret fact: skip it, keep the others
    _log.info(
        'extraction.done',
        proposed=len(result.output.facts),
        created=sum(1 for item in stored if item.created),
        updated=sum(1 for item in stored if not item.created),
    )
    return stored
