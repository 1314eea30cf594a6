"""Recall every turn: the user's relevant facts go into the prompt's `memory` slot, within a token budget.

`MemoryContext` is a `TurnContextProvider` (see `agent.turn.deps`). Before each turn it takes
the user's facts from the fact store (one Redis round trip when its cache is current) and fills:

- `memory`: the facts most relevant to the user's message (BM25, the retriever machinery of the
  knowledge base), then the most recently stated ones, as long as they fit in
  `memory.recall_tokens`;
- `user_name`: when a fact not from a tool gives the user's name ("The user's name is Alice.").

So a new session of the same user already knows what earlier sessions learned, without the model
calling `recall`. Facts whose source is a tool are untrusted: they are rendered apart, inside an
`<untrusted source="memory">` element, as data and never as instructions, and they mark the turn
tainted, so side-effect tools need approval in it (see `agent.turn.approvals`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tandem.agent.core.tokens import TokenCounter, token_counter
from tandem.memory.facts import Fact, FactSnapshot, FactStore
from tandem.tools.memory_tools import TOOL_FACTS_HEADER, fact_line, render_facts
from tandem.tools.untrusted import wrap_untrusted

if TYPE_CHECKING:
    from tandem.agent.core.config import Settings
    from tandem.agent.turn.deps import Deps
    from tandem.memory.connection import RedisClient

__all__ = ['MemoryContext', 'fact_store_for', 'render_facts', 'select_facts', 'user_name_from']

_CANDIDATES = 24

# "The user's name is Alice", "My name is Alice Smith", "The user goes by Al", "Call me Al."
_NAME_PATTERNS = [
    re.compile(
        r"\b(?:the\s+user['’]?s|user['’]?s|my|their)\s+(?:first\s+|full\s+|preferred\s+|given\s+)?name\s+is\s+"
        r'(?P<name>[^.,;:!?()\[\]\n]+)',
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:the\s+user\s+(?:is\s+called|is\s+named|goes\s+by|prefers\s+to\s+be\s+called)|call\s+me|i['’]?m\s+called|"
        r'i\s+am\s+called|my\s+friends\s+call\s+me)\s+(?P<name>[^.,;:!?()\[\]\n]+)',
        re.IGNORECASE,
    ),
]
_NAME_QUERY = 'name named called call goes'
"""Finds the facts that may give the user's name (BM25), so naming costs no scan of every fact."""
_NAME_SHAPE = re.compile(r"[^\W\d_][\w'’-]*(?: [^\W\d_][\w'’-]*){0,3}")
_MAX_NAME_CHARS = 40


def user_name_from(facts: Iterable[Fact]) -> str | None:
    """The user's name, from the most recently stated fact that gives it; never from a tool's fact.

    Only a plain name (up to four words of letters, `'` and `-`) is returned, since it goes into the
    system instructions.
    """
    for fact in sorted(facts, key=lambda f: f.updated_at, reverse=True):
        if fact.source == 'tool':
            continue
        for pattern in _NAME_PATTERNS:
            match = pattern.search(fact.text)
            if match is None:
                continue
            name = ' '.join(match.group('name').split())
            if len(name) <= _MAX_NAME_CHARS and _NAME_SHAPE.fullmatch(name):
                return name
    return None


def select_facts(snapshot: FactSnapshot, text: str, budget: int, counter: TokenCounter) -> list[Fact]:
    """The facts for this turn: relevant to `text` first, then the most recent, while they fit in `budget` tokens."""
    if budget <= 0 or len(snapshot) == 0:
        return []
    candidates: dict[str, Fact] = {}
    for fact in [*snapshot.search(text, _CANDIDATES), *snapshot.recent(_CANDIDATES)]:
        candidates.setdefault(fact.id, fact)
    chosen: list[Fact] = []
    used = 0
    wrapper = counter.count(TOOL_FACTS_HEADER + wrap_untrusted('memory', ''))
    wrapped = False
    for fact in candidates.values():
        cost = counter.count(fact_line(fact)) + 1
        if fact.source == 'tool' and not wrapped:
            cost += wrapper
        if used + cost > budget:
            continue
        chosen.append(fact)
        used += cost
        wrapped = wrapped or fact.source == 'tool'
    return chosen


class MemoryContext:
    """The `TurnContextProvider` for long-term memory: fills `memory` and, when known, `user_name`.

    Args:
        counter: How the `memory.recall_tokens` budget is measured; `token_counter()` when `None`.
    """

    def __init__(self, counter: TokenCounter | None = None) -> None:
        self._counter = counter

    async def prompt_variables(self, deps: Deps, text: str) -> Mapping[str, Any]:
        """`memory` (and `user_name`) for the turn; nothing when memory is off or the user has no facts.

        Raises:
            RedisUnavailableError: Redis can't be reached.
        """
        store = deps.facts
        config = deps.settings.memory
        if not isinstance(store, FactStore) or not config.enabled:
            return {}
        snapshot = await store.snapshot(deps.identity.tenant, deps.identity.user)
        if len(snapshot) == 0:
            return {}
        variables: dict[str, Any] = {}
        chosen = select_facts(snapshot, text, config.recall_tokens, self._counter or token_counter())
        if chosen:
            variables['memory'] = render_facts(chosen)
            if any(fact.source == 'tool' for fact in chosen):
                deps.turn.tainted = True  # untrusted content entered the turn, through memory
        name = user_name_from(snapshot.search(_NAME_QUERY, _CANDIDATES))
        if name is not None:
            variables['user_name'] = name
        return variables


_STORE_ATTRIBUTE = '_tandem_fact_store'


def fact_store_for(settings: Settings, redis: RedisClient) -> FactStore | None:
    """The fact store for `settings` on `redis`, or `None` when memory is off.

    One store per client and configuration, shared by every `Deps` built on that client, so a
    long-running front end keeps each user's facts cached across turns and sessions. The store is
    kept on the client object itself, so it lives exactly as long as the client (a registry keyed
    by client would keep both alive: the store refers to its client).
    """
    config = settings.memory
    if not config.enabled:
        return None
    store = getattr(redis, _STORE_ATTRIBUTE, None)
    wanted = (config.fact_ttl_seconds, config.similarity_threshold, config.max_facts)
    if (
        not isinstance(store, FactStore)
        or (
            store.default_ttl_seconds,
            store.similarity_threshold,
            store.max_facts,
        )
        != wanted
    ):
        store = FactStore(
            redis,
            default_ttl_seconds=config.fact_ttl_seconds,
            similarity_threshold=config.similarity_threshold,
            max_facts=config.max_facts,
        )
        setattr(redis, _STORE_ATTRIBUTE, store)
    return store
