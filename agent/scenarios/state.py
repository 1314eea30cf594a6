"""`expect.state`: what must be stored after a turn, read back from Redis once its background work is done.

Facts are read from the user's long-term memory (after background fact extraction has finished, so
a fact the model learned from the turn is there); documents from the tenant's knowledge base.
"""

from __future__ import annotations

from tandem.agent.core.events import short
from tandem.agent.scenarios.results import CheckResult
from tandem.agent.scenarios.schema import StateExpectation
from tandem.agent.turn.background import wait_for_background
from tandem.agent.turn.deps import Deps

__all__ = ['check_state']


async def check_state(turn: int, spec: StateExpectation, deps: Deps) -> list[CheckResult]:
    """The checks of `spec` against what `deps`' tenant stores now; facts are those of `spec.user`, else
    of the user the turn ran as."""
    from tandem.memory.facts import FactStore
    from tandem.memory.knowledge.store import KnowledgeBase

    await wait_for_background()
    checks: list[CheckResult] = []
    user = spec.user or deps.identity.user
    whose = '' if spec.user is None else f' of {user}'
    if spec.facts_contain or spec.facts_not_contain:
        facts = [fact.text for fact in await FactStore(deps.redis).list_facts(deps.identity.tenant, user)]
        stored = '; '.join(short(text, 80) for text in facts) or 'no facts'
        for text in spec.facts_contain:
            found = any(text.lower() in fact.lower() for fact in facts)
            checks.append(
                CheckResult(
                    turn=turn,
                    kind='state',
                    label=f'a fact{whose} contains {text!r}',
                    passed=found,
                    detail='' if found else f'stored: {stored}',
                )
            )
        for text in spec.facts_not_contain:
            holding = [fact for fact in facts if text.lower() in fact.lower()]
            checks.append(
                CheckResult(
                    turn=turn,
                    kind='state',
                    label=f'no fact{whose} contains {text!r}',
                    passed=not holding,
                    detail='; '.join(f'stored: {short(fact, 120)}' for fact in holding),
                )
            )
    if spec.documents:
        kb = KnowledgeBase(deps.redis, tenant=deps.identity.tenant, name=deps.settings.knowledge.default_kb)
        sources = [record.source async for batch in kb.iter_documents() for record in batch]
        for source in spec.documents:
            present = source in sources
            checks.append(
                CheckResult(
                    turn=turn,
                    kind='state',
                    label=f'document {source!r} exists',
                    passed=present,
                    detail='' if present else f'the knowledge base holds: {", ".join(sources) or "nothing"}',
                )
            )
    return checks
