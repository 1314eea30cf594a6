"""Each scenario run in its own Redis namespace: a fresh tenant, seeded before the first turn, deleted after.

Every Tandem key lives under a hash tag that starts with the tenant id (see `memory.keys`), so a
run that gets a tenant nobody else uses (`scn-` and 16 random hex digits) cannot see, or be seen by,
any other run: not its sessions, not its long-term memory, not its knowledge base, not its web
search cache. Two scenarios running in parallel with the same user id, session ids, fact texts and
document names never meet. When the run ends, whatever it wrote is deleted: every key the tenant's
`SCAN` patterns (`memory.keys.tenant_key_patterns`) match, and any Query Engine index named under
the tenant.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

from redis.exceptions import ResponseError

from tandem.agent.core.errors import TandemError
from tandem.agent.scenarios.schema import Document, Fact, Scenario
from tandem.agent.turn.deps import Deps
from tandem.memory.connection import RedisClient, query_engine_available
from tandem.memory.keys import tenant_key_patterns, validate_id

__all__ = [
    'ScenarioSetupError',
    'Seeder',
    'count_namespace',
    'delete_namespace',
    'new_tenant',
    'seed_documents',
    'seed_facts',
    'seed_other_users',
    'seed_scenario',
]

_BATCH = 500

Where = tuple[str | int, ...]
"""A path into a scenario file, e.g. `('setup', 'other_users', 0, 'facts')`."""

Seeder = Callable[[Deps, Scenario, frozenset[str]], Awaitable[None]]
"""Seeds a run's namespace from a scenario's setup; the set names the ingredients turned off (`rag`, `memory`)."""


class ScenarioSetupError(TandemError):
    """A scenario's setup could not be seeded (a document that cannot be read, memory that is off, ...)."""


def new_tenant() -> str:
    """A tenant id no other run has: `scn-` and 16 random hex digits."""
    return validate_id('tenant', f'scn-{secrets.token_hex(8)}')


async def _keys(redis: RedisClient, tenant: str) -> list[bytes]:
    found: list[bytes] = []
    for pattern in tenant_key_patterns(tenant):
        keys = cast(AsyncIterator[bytes], redis.scan_iter(match=pattern, count=_BATCH))  # pyright: ignore[reportUnknownMemberType]
        async for key in keys:
            found.append(key)
    return found


async def count_namespace(redis: RedisClient, tenant: str) -> int:
    """How many keys the tenant has."""
    return len(await _keys(redis, tenant))


async def _drop_indexes(redis: RedisClient, tenant: str) -> None:
    """Drop the Query Engine indexes named under the tenant (they are not keys, so SCAN misses them)."""
    if not await query_engine_available(redis):
        return  # no indexes to drop; and a cluster client could not even route `FT._LIST`, which names no key
    try:
        listed = cast(list[Any], await redis.execute_command('FT._LIST'))  # pyright: ignore[reportUnknownMemberType]
    except ResponseError:  # no Query Engine on this server: no indexes either
        return
    prefixes = tuple(pattern.rstrip('*') for pattern in tenant_key_patterns(tenant))
    for raw in listed:
        name = raw.decode('utf-8', 'replace') if isinstance(raw, bytes) else str(raw)
        if name.startswith(prefixes):
            try:
                await redis.execute_command('FT.DROPINDEX', name)  # pyright: ignore[reportUnknownMemberType]
            except ResponseError:
                continue  # dropped concurrently


async def delete_namespace(redis: RedisClient, tenant: str) -> int:
    """Delete every key of `tenant` (and its Query Engine indexes); returns how many keys were deleted.

    Raises:
        InvalidIdError: `tenant` is not a valid id.
    """
    validate_id('tenant', tenant)
    await _drop_indexes(redis, tenant)
    deleted = 0
    keys = await _keys(redis, tenant)
    for start in range(0, len(keys), _BATCH):
        # UNLINK takes keys of several slots on a cluster client too: it splits them per slot.
        deleted += int(await redis.unlink(*keys[start : start + _BATCH]))
    return deleted


async def seed_facts(deps: Deps, scenario: Scenario) -> None:
    """Store the scenario's facts in the long-term memory of the run's user, as if stated in an earlier session.

    Raises:
        ScenarioSetupError: A fact the fact store refuses.
    """
    await _remember(deps, scenario, scenario.setup.facts, ('setup', 'facts'), deps.identity.user)


async def _remember(deps: Deps, scenario: Scenario, facts: Sequence[Fact], where: Where, user: str) -> None:
    """Store `facts` in `user`'s memory; `where` locates them in the file, for errors."""
    if not facts:
        return
    from tandem.memory.facts import FactStore

    store: Any = deps.facts
    if not isinstance(store, FactStore):
        store = FactStore(deps.redis)
    for index, fact in enumerate(facts):
        try:
            await cast(FactStore, store).remember(deps.identity.tenant, user, fact.text, source=fact.source)
        except ValueError as error:
            raise ScenarioSetupError(f'{scenario.where(*where, index)}: cannot seed this fact: {error}') from error


def _slug(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')[:60] or 'document'


def _named(scenario: Scenario, index: int, document: Document) -> tuple[str, bytes, str]:
    """A document's source (as citations show it), bytes and file name.

    A file's source is its path relative to the scenario file, not an absolute path: it reaches the
    model in every passage, so it must be the same on every machine for cassettes to replay.
    """
    if document.path is not None:
        base = scenario.path.parent.resolve() if scenario.path is not None else None
        try:
            source = document.path.relative_to(base).as_posix() if base is not None else document.path.name
        except ValueError:
            source = document.path.name
        return source, document.path.read_bytes(), document.path.name
    text = document.text or ''
    suffix = {'markdown': 'md', 'text': 'txt', 'html': 'html'}[document.kind]
    title = document.title or f'document {index + 1}'
    if document.title is not None and document.kind == 'markdown' and not text.lstrip().startswith('#'):
        text = f'# {document.title}\n\n{text}'
    name = f'{_slug(title)}.{suffix}'
    return name, text.encode('utf-8'), name


async def seed_documents(deps: Deps, scenario: Scenario) -> None:
    """Ingest the scenario's documents into the run tenant's `knowledge.default_kb`, as `tandem ingest` would.

    Raises:
        ScenarioSetupError: A document was skipped (unreadable, empty, too large), or ingestion failed.
    """
    await _ingest(deps, scenario, scenario.setup.documents, ('setup', 'documents'))


async def _ingest(
    deps: Deps, scenario: Scenario, documents: Sequence[Document], where: Where, user: str | None = None
) -> None:
    """Ingest `documents` into `knowledge.default_kb`: the tenant's, or `user`'s own."""
    if not documents:
        return
    from tandem.memory.knowledge.embeddings import make_embedder
    from tandem.memory.knowledge.ingest import IngestOptions, Ingestor
    from tandem.memory.knowledge.store import KnowledgeBase

    config = deps.settings.knowledge
    kb = KnowledgeBase(deps.redis, tenant=deps.identity.tenant, name=config.default_kb, user=user)
    options = IngestOptions(
        chunk_tokens=config.chunk_tokens,
        chunk_overlap=config.chunk_overlap,
        max_file_bytes=config.max_file_bytes,
        language=config.language,
    )
    ingestor = Ingestor(kb, embedder=make_embedder(config), options=options)
    for index, document in enumerate(documents):
        source, data, name = _named(scenario, index, document)
        report = await ingestor.ingest_bytes(source, data, name=name)
        if report.skipped_total:
            reason = report.skipped[0].reason if report.skipped else 'skipped'
            raise ScenarioSetupError(f'{scenario.where(*where, index)}: {source} was not ingested: {reason}')


async def seed_scenario(deps: Deps, scenario: Scenario, ablated: frozenset[str]) -> None:
    """Seed the run's namespace: documents into its knowledge base, facts into its user's memory.

    An ingredient turned off is not seeded: no documents without `rag`, no facts without `memory`.
    """
    if 'rag' not in ablated:
        await seed_documents(deps, scenario)
    if 'memory' not in ablated:
        await seed_facts(deps, scenario)
    await seed_other_users(deps, scenario, ablated)


async def seed_other_users(deps: Deps, scenario: Scenario, ablated: frozenset[str]) -> None:
    """Seed each of `setup.other_users`: facts into their memory, documents into their own knowledge base.

    Raises:
        ScenarioSetupError: A fact the store refuses, or a document that was not ingested.
    """
    for number, other in enumerate(scenario.setup.other_users):
        where = ('setup', 'other_users', number)
        if 'memory' not in ablated:
            await _remember(deps, scenario, other.facts, (*where, 'facts'), other.id)
        if 'rag' not in ablated:
            await _ingest(deps, scenario, other.documents, (*where, 'documents'), other.id)
