"""Automatic retrieval: the best knowledge-base passages for the user's message, in the prompt.

With `retrieval = "auto"`, `KnowledgeContextProvider` searches the knowledge base with the user's
message before the model is called and fills the prompt's `retrieval` slot with the top
`knowledge.top_k` passages, numbered `[n]` like `search_knowledge`'s (the numbers continue if the
model also calls the tool) and recorded in `deps.turn.citations` for `/sources`. The passages are
wrapped as untrusted content and taint the turn, exactly as the tool's results do.

Retrieval failing (Redis, an embedding server) never fails the turn: it is logged, and the turn
runs without passages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rich.markup import escape
from rich.table import Column, Table

from tandem.agent.core.errors import TandemError
from tandem.agent.core.log import get_logger
from tandem.agent.core.turn_state import Citation
from tandem.memory.connection import RedisClient
from tandem.memory.knowledge.embeddings import EmbeddingsUnavailable
from tandem.memory.knowledge.retrieval import Retriever, build_retriever
from tandem.tools.knowledge import format_passages
from tandem.tools.untrusted import wrap_untrusted

if TYPE_CHECKING:
    from tandem.agent.core.config import Settings
    from tandem.agent.turn.deps import Deps

__all__ = ['KnowledgeContextProvider', 'cited_numbers', 'knowledge_retriever', 'sources_table']

_log = get_logger('tandem.retrieval')


class KnowledgeContextProvider:
    """Fills the prompt's `retrieval` slot when `settings.retrieval == "auto"` (a `TurnContextProvider`)."""

    async def prompt_variables(self, deps: Deps, text: str) -> Mapping[str, Any]:
        """`{'retrieval': passages}` for an `auto` turn with matching passages, else nothing."""
        retriever: Any = deps.retriever
        if deps.settings.retrieval != 'auto' or not isinstance(retriever, Retriever) or not text.strip():
            return {}
        try:
            passages = await retriever.search(text, deps.settings.knowledge.top_k)
        except (TandemError, RedisError, OSError) as error:
            _log.warning('retrieval.failed', error=f'{type(error).__name__}: {error}')
            return {}
        if not passages:
            return {}
        deps.turn.tainted = True
        body = format_passages(passages, deps.turn)
        return {'retrieval': wrap_untrusted('retrieval', body)}


def knowledge_retriever(settings: Settings, redis: RedisClient, *, tenant: str, user: str) -> Retriever | None:
    """The retriever a turn gets (`deps.retriever`): `None` when `retrieval = "off"`.

    It searches the tenant's `knowledge.default_kb` and the user's own KB of that name: BM25, or
    hybrid BM25 + dense when `knowledge.embeddings` is set. When the configured embeddings can't
    be used (the extra isn't installed, a key is missing), it logs why and falls back to BM25, so
    a chat still starts; `tandem ingest` and `tandem kb search` report the error instead.
    """
    if settings.retrieval == 'off':
        return None
    try:
        return build_retriever(settings.knowledge, redis, tenant=tenant, user=user)
    except EmbeddingsUnavailable as error:
        _log.warning('retrieval.embeddings_unavailable', error=str(error), fallback='bm25')
        return build_retriever(settings.knowledge, redis, tenant=tenant, user=user, mode='bm25')


_CITED = re.compile(r'\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]')


def cited_numbers(answer: str) -> list[int]:
    """The citation numbers an answer uses, in order of first use: `[2]`, `[1, 3]` and `[4][5]` all count."""
    seen: dict[int, None] = {}
    for match in _CITED.finditer(answer):
        for part in re.split(r'[,;]', match.group(1)):
            seen.setdefault(int(part.strip()), None)
    return list(seen)


def sources_table(citations: Mapping[int, Citation], answer: str) -> tuple[str, Table | None]:
    """What `/sources` shows for the last answer: a headline, and a table of the sources.

    The table lists the passages the answer cites; if it cites none of those it was shown, it lists
    every passage shown, so the person can still check them.
    """
    if not citations:
        return 'The last answer used no passages from the knowledge base.', None
    cited = [number for number in cited_numbers(answer) if number in citations]
    shown = cited or sorted(citations)
    if cited:
        headline = f'The last answer cites {len(cited)} of the {len(citations)} passages it was shown:'
    else:
        headline = f'The last answer cites none of the {len(citations)} passages it was shown; they were:'
    table = Table('n', Column('source', overflow='fold'), 'section', 'passage')
    for number in shown:
        citation = citations[number]
        section = ' · '.join(
            part
            for part in (
                citation.heading,
                f'page {citation.page}' if citation.page and not citation.heading.startswith('page ') else '',
            )
            if part
        )
        named = citation.title and citation.title not in (citation.source, citation.source.rsplit('/', 1)[-1])
        title = f'{citation.title}\n' if named else ''
        table.add_row(
            f'[{number}]', escape(f'{title}{citation.source}'), escape(section), escape(citation.snippet[:120])
        )
    return headline, table
