"""Example sets: worked conversations shown to the model (few-shot), stored and searched like a knowledge base.

An example is one conversation in OpenAI's chat fine-tuning format, `{"messages": [...], "tools": [...]}`:
the line `tandem tune export` writes, without its system message. So the same examples can go into the
prompt or into the weights, and a comparison of the two is fair.

A set belongs to a tenant, or to one of its users, and has a name (`default` unless named). It is a
knowledge base in the `examples` key space (`memory.keys.KnowledgeKeys.space`), so it is neither listed
nor searched as one, and it gets the knowledge base's machinery for free: each example is one document
with one chunk, whose text is the example's JSON and whose BM25 terms (and vector, with embeddings)
come from the example's user messages. The knowledge base's own retrievers (BM25, dense, hybrid) then
find the examples whose questions are most like the current one, from an in-process index that is
updated incrementally. A sorted set beside it (`order`) keeps the order examples were added in, which
a fixed selection follows.

An example's id is a digest of its content, so adding the same example twice stores it once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from tandem.agent.core.errors import TandemError
from tandem.agent.core.tokens import count_example_tokens, token_counter
from tandem.memory.connection import RedisClient
from tandem.memory.keys import validate_id
from tandem.memory.knowledge.index import Analyzer
from tandem.memory.knowledge.retrieval import Bm25Retriever, DenseRetriever, HybridRetriever
from tandem.memory.knowledge.store import ChunkData, DocumentRecord, KnowledgeBase, document_id

if TYPE_CHECKING:
    from tandem.agent.core.config import KnowledgeConfig
    from tandem.memory.knowledge.embeddings import TextEmbedder

__all__ = [
    'CANDIDATES',
    'AddResult',
    'Example',
    'ExampleLibrary',
    'ExampleSet',
    'ExampleSummary',
    'InvalidExample',
    'examples_in',
    'fit_examples',
]

_SOURCE = 'example:'
_ROLES = frozenset({'user', 'assistant', 'tool'})


class InvalidExample(TandemError):
    """An example that is not a conversation the chat format can carry; the message says what is wrong."""


@dataclass(frozen=True)
class Example:
    """One worked conversation: OpenAI chat messages (user, assistant with `tool_calls`, tool), no system message.

    Build one with `Example.of`, which checks it and computes its id and size.
    """

    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    origin: str = ''
    """Where it came from: `session acme/s1`, `train.jsonl line 3`."""
    tokens: int = 0
    """What showing it costs, in prompt tokens (counted as OpenAI's fine-tuning cookbook counts, tools aside)."""

    @classmethod
    def of(cls, data: Mapping[str, Any], *, origin: str = '') -> Example:
        """The example in a training line (`messages`, maybe `tools`); a system message is left out.

        Raises:
            InvalidExample: No user message and answer, a role the format has no place for, or a
                tool result that answers no call.
        """
        raw = data.get('messages')
        if not isinstance(raw, list) or not raw:
            raise InvalidExample('an example needs a non-empty "messages" list')
        messages: list[dict[str, Any]] = []
        for index, item in enumerate(cast(list[Any], raw), 1):
            if not isinstance(item, dict):
                raise InvalidExample(f'message {index} is not an object')
            message = cast(dict[str, Any], item)
            role = message.get('role')
            if role == 'system':
                continue  # the turn's own prompt stands in for it
            if role not in _ROLES:
                raise InvalidExample(f'message {index} has role {role!r}: use user, assistant or tool')
            messages.append(_clean(message, index))
        _check_calls(messages)
        if not any(message['role'] == 'user' for message in messages):
            raise InvalidExample('an example needs a user message')
        if messages[-1]['role'] != 'assistant' or 'content' not in messages[-1]:
            raise InvalidExample("an example ends with the assistant's answer (an assistant message with content)")
        tools = [dict(cast(Mapping[str, Any], tool)) for tool in cast(list[Any], data.get('tools') or [])]
        canonical = json.dumps({'messages': messages, 'tools': tools}, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:12]
        tokens = count_example_tokens({'messages': messages}, token_counter())
        return cls(id=digest, messages=messages, tools=tools, origin=origin, tokens=tokens)

    @property
    def question(self) -> str:
        """The first user message."""
        return next(str(message['content']) for message in self.messages if message['role'] == 'user')

    @property
    def search_text(self) -> str:
        """What retrieval matches against the current question: every user message."""
        return '\n'.join(str(message['content']) for message in self.messages if message['role'] == 'user')

    @property
    def tool_calls(self) -> int:
        """How many tool calls it shows."""
        return sum(len(message.get('tool_calls') or ()) for message in self.messages)

    def training_line(self) -> dict[str, Any]:
        """The example as a fine-tuning line (`tandem examples export`)."""
        line: dict[str, Any] = {'messages': self.messages}
        if self.tools:
            line['tools'] = self.tools
        return line

    def to_json(self) -> str:
        """As stored: the training line with its origin."""
        return json.dumps({**self.training_line(), 'origin': self.origin}, ensure_ascii=False, separators=(',', ':'))

    @classmethod
    def from_stored(cls, example_id: str, raw: str, tokens: int) -> Example:
        """An example as `to_json` stored it."""
        data = cast(dict[str, Any], json.loads(raw))
        return cls(
            id=example_id,
            messages=cast(list[dict[str, Any]], data['messages']),
            tools=cast(list[dict[str, Any]], data.get('tools') or []),
            origin=str(data.get('origin') or ''),
            tokens=tokens,
        )


def _clean(message: dict[str, Any], index: int) -> dict[str, Any]:
    role = message['role']
    content = message.get('content')
    if isinstance(content, list):  # text parts, as the chat format allows
        texts = [cast(dict[str, Any], part).get('text') for part in cast(list[Any], content) if isinstance(part, dict)]
        if not all(isinstance(text, str) for text in texts):
            raise InvalidExample(f'message {index} holds a part that is not text')
        content = '\n'.join(cast(list[str], texts))
    if content is not None and not isinstance(content, str):
        raise InvalidExample(f'message {index}: content must be text')
    clean: dict[str, Any] = {'role': role}
    if role == 'tool':
        if not message.get('tool_call_id'):
            raise InvalidExample(f'message {index} (a tool result) needs a tool_call_id')
        clean['tool_call_id'] = str(message['tool_call_id'])
        clean['content'] = content or ''
        return clean
    calls = cast(list[Any], message.get('tool_calls') or [])
    if role == 'user' and (calls or not (content or '').strip()):
        raise InvalidExample(f'message {index} (user) needs text and no tool calls')
    if content is not None and (content.strip() or not calls):
        clean['content'] = content
    if calls:
        clean['tool_calls'] = [_call(call, index) for call in calls]
    if 'content' not in clean and 'tool_calls' not in clean:
        raise InvalidExample(f'message {index} (assistant) has neither text nor tool calls')
    return clean


def _call(raw: Any, index: int) -> dict[str, Any]:
    call = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
    function = cast(dict[str, Any], call.get('function') or {})
    name, arguments = function.get('name'), function.get('arguments', '{}')
    if not call.get('id') or not isinstance(name, str) or not name:
        raise InvalidExample(f'message {index}: a tool call needs an id and a function name')
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    try:
        json.loads(arguments)
    except json.JSONDecodeError as error:
        raise InvalidExample(f'message {index}: the arguments of {name} are not JSON ({error.msg})') from error
    return {'id': str(call['id']), 'type': 'function', 'function': {'name': name, 'arguments': arguments}}


def _check_calls(messages: Sequence[dict[str, Any]]) -> None:
    waiting: set[str] = set()
    for message in messages:
        if message['role'] == 'assistant':
            if waiting:
                raise InvalidExample(f'tool call {sorted(waiting)[0]} has no result before the next assistant message')
            waiting = {call['id'] for call in message.get('tool_calls') or ()}
        elif message['role'] == 'tool':
            if message['tool_call_id'] not in waiting:
                raise InvalidExample(f'tool result {message["tool_call_id"]!r} answers no call of the message before')
            waiting.discard(message['tool_call_id'])
        elif waiting:
            raise InvalidExample(f'tool call {sorted(waiting)[0]} has no result before the next user message')


@dataclass(frozen=True)
class ExampleSummary:
    """A stored example, as `tandem examples list` shows it."""

    id: str
    question: str
    tokens: int
    added_at: str


@dataclass
class AddResult:
    """What adding examples did."""

    added: list[str] = field(default_factory=list[str])
    unchanged: list[str] = field(default_factory=list[str])
    """Ids already stored (the same content was added before)."""


class ExampleSet:
    """One example set of a tenant, or of one of its users.

    Args:
        redis: A client with `decode_responses=False`.
        tenant: The tenant id.
        user: The owner of a user's own set; `None` for the tenant's.
        name: The set's name; `default` unless several are kept (the fourth arm of `tune compare` keeps
            one per training file).

    Raises:
        InvalidIdError: A bad tenant, user or set name.
    """

    def __init__(self, redis: RedisClient, *, tenant: str, user: str | None = None, name: str = 'default') -> None:
        self.kb = KnowledgeBase(
            redis, tenant=tenant, name=validate_id('example set', name), user=user, space='examples'
        )
        self.redis = redis
        self._order = self.kb.keys.key('order')

    @property
    def label(self) -> str:
        """`name`, or `user/name` for a user's own set."""
        return self.kb.label

    async def add(
        self,
        examples: Sequence[Example],
        *,
        config: KnowledgeConfig,
        embedder: TextEmbedder | None = None,
    ) -> AddResult:
        """Store `examples`, skipping those already stored; their terms come from `config.language`.

        Raises:
            EmbeddingsUnavailable: `embedder` cannot embed.
            EmbeddingModelMismatch: The set holds vectors of another model.
        """
        result = AddResult()
        unique = list({example.id: example for example in examples}.values())
        analyzer = Analyzer(language=config.language)
        for start in range(0, len(unique), 500):
            batch = unique[start : start + 500]
            stored = await self.kb.documents([document_id(_SOURCE + example.id) for example in batch])
            fresh = [example for example, record in zip(batch, stored, strict=True) if record is None]
            result.unchanged += [example.id for example, record in zip(batch, stored, strict=True) if record]
            if not fresh:
                continue
            vectors = await embedder.embed_documents([e.search_text for e in fresh]) if embedder is not None else None
            writes: list[tuple[DocumentRecord, Sequence[ChunkData], DocumentRecord | None]] = []
            for row, example in enumerate(fresh):
                chunk = ChunkData(
                    position=0,
                    text=example.to_json(),
                    heading='',
                    page=None,
                    tokens=example.tokens,
                    terms=analyzer.terms(example.search_text),
                    vector=vectors[row].astype('float32').tobytes() if vectors is not None else None,
                )
                record = self.kb.new_record(
                    source=_SOURCE + example.id,
                    title=example.question[:200],
                    kind='example',
                    content_hash=example.id,
                    sig=analyzer.name,
                    chunks=[chunk],
                    size=len(chunk.text),
                    previous=None,
                )
                writes.append((record, [chunk], None))
            written = await self.kb.put_documents(
                writes, embed_model=embedder.model_id if embedder is not None else None, analyzer=analyzer.name
            )
            # 0 or -1: another process stored the same example meanwhile.
            stored_now = [example for example, generation in zip(fresh, written, strict=True) if generation > 0]
            result.unchanged += [
                example.id for example, generation in zip(fresh, written, strict=True) if generation <= 0
            ]
            now = time.time()
            if stored_now:
                order = {example.id: now + index / 1e6 for index, example in enumerate(stored_now)}
                await self.redis.zadd(self._order, order, nx=True)  # pyright: ignore[reportUnknownMemberType]
            result.added += [example.id for example in stored_now]
        return result

    async def remove(self, ids: Sequence[str]) -> list[str]:
        """Remove the examples `ids`; returns those that were stored."""
        removed: list[str] = []
        for example_id in ids:
            if await self.kb.remove_document(document_id(_SOURCE + example_id)):
                removed.append(example_id)
        if ids:
            await self.redis.zrem(self._order, *ids)  # pyright: ignore[reportUnknownMemberType]
        return removed

    async def clear(self) -> int:
        """Remove every example; returns how many there were."""
        removed = await self.kb.drop()
        await self.redis.delete(self._order)
        return removed

    async def count(self) -> int:
        """How many examples the set holds."""
        info = await self.kb.info()
        return info.docs if info is not None else 0

    async def ids(self, *, start: int = 0, stop: int = -1) -> list[str]:
        """Example ids in the order they were added, `start` to `stop` inclusive (Python-style negatives)."""
        raw = cast(list[bytes], await self.redis.zrange(self._order, start, stop))  # pyright: ignore[reportUnknownMemberType]
        return [item.decode() for item in raw]

    async def summaries(self, *, limit: int | None = None) -> list[ExampleSummary]:
        """The examples in the order they were added, the first `limit` when given."""
        ids = await self.ids(stop=-1 if limit is None else limit - 1)
        records = await self.kb.documents([document_id(_SOURCE + example_id) for example_id in ids])
        return [
            ExampleSummary(id=example_id, question=record.title, tokens=record.tokens, added_at=record.created_at)
            for example_id, record in zip(ids, records, strict=True)
            if record is not None
        ]

    async def get(self, ids: Sequence[str]) -> list[Example]:
        """The stored examples `ids`, in that order, ids not stored skipped: their records (one round trip),
        then their chunks, remembered or read."""
        if not ids:
            return []
        records = await self.kb.documents([document_id(_SOURCE + example_id) for example_id in ids])
        chunk_ids = [record.chunks[0] for record in records if record is not None and record.chunks]
        by_id = {example.id: example for example in (await examples_in(self.kb, chunk_ids)).values()}
        return [by_id[example_id] for example_id in ids if example_id in by_id]


Search = Literal['auto', 'bm25', 'dense', 'hybrid']


class ExampleLibrary:
    """The example sets a turn draws from: the tenant's set, then the user's own set of the same name.

    Args:
        sets: The sets, the tenant's first.
        config: The `[knowledge]` settings: the retriever is the knowledge base's (BM25, dense or hybrid).
        embedder: Embeds the question for dense or hybrid search; `None` searches by BM25 only.
        search: `auto` is hybrid with an embedder; without one, every search is BM25.
    """

    def __init__(
        self,
        sets: Sequence[ExampleSet],
        *,
        config: KnowledgeConfig,
        embedder: TextEmbedder | None = None,
        search: Search = 'auto',
    ) -> None:
        self.sets = list(sets)
        kbs = [example_set.kb for example_set in self.sets]
        # In process unless told otherwise: a set of examples is small, and its in-process index answers
        # in a fraction of a millisecond where a Query Engine search costs a round trip and a few more.
        bm25 = Bm25Retriever(kbs, bm25_search='process' if config.bm25_search == 'auto' else config.bm25_search)
        retriever: Bm25Retriever | DenseRetriever | HybridRetriever = bm25
        if embedder is not None and search != 'bm25':
            vector_search = 'exact' if config.vector_search == 'auto' else config.vector_search
            dense = DenseRetriever(kbs, embedder, vector_search=vector_search)
            retriever = dense if search == 'dense' else HybridRetriever([bm25, dense], rrf_k=config.rrf_k)
        self.retriever = retriever

    async def first(self, n: int) -> list[Example]:
        """The first `n` examples added, the tenant's before the user's."""
        found: list[Example] = []
        for example_set in self.sets:
            if len(found) >= n:
                break
            found += await example_set.get(await example_set.ids(stop=n - len(found) - 1))
        return found[:n]

    async def chosen(self, ids: Sequence[str]) -> list[Example]:
        """The examples `ids`, in that order, from whichever set holds each."""
        by_id: dict[str, Example] = {}
        for example_set in self.sets:
            missing = [example_id for example_id in ids if example_id not in by_id]
            if missing:
                by_id.update({example.id: example for example in await example_set.get(missing)})
        return [by_id[example_id] for example_id in ids if example_id in by_id]

    async def similar(self, question: str, n: int) -> list[Example]:
        """The `n` examples whose user messages best match `question`, best first."""
        return await self._read(await self.retriever.rank(question, n))

    async def choose(self, question: str, *, k: int, budget_tokens: int) -> list[Example]:
        """The best `k` examples for `question` that fit `budget_tokens` together (`fit_examples`), best first.

        Candidates are read `k` at a time, best first, until `k` fit: usually the first `k` do.
        """
        ranked = await self.retriever.rank(question, k * CANDIDATES)
        candidates: list[Example] = []
        chosen: list[Example] = []
        for start in range(0, len(ranked), k):
            candidates += await self._read(ranked[start : start + k])
            chosen = fit_examples(candidates, k=k, budget_tokens=budget_tokens)
            if len(chosen) == k:
                break
        return chosen

    async def _read(self, ranked: Sequence[tuple[KnowledgeBase, str, float]]) -> list[Example]:
        wanted: dict[str, tuple[KnowledgeBase, list[str]]] = {}
        for kb, chunk_id, _ in ranked:
            wanted.setdefault(kb.keys.meta, (kb, []))[1].append(chunk_id)
        found = {meta: await examples_in(kb, chunk_ids) for meta, (kb, chunk_ids) in wanted.items()}
        return [example for kb, chunk_id, _ in ranked if (example := found[kb.keys.meta].get(chunk_id))]


CANDIDATES = 4
"""Candidates per example wanted (ranked, or the first added), so the budget can pass over long ones."""

_KNOWN: OrderedDict[tuple[str, str], Example] = OrderedDict()
"""Examples read, by set and chunk id. A chunk id names one stored version (a new one for every write),
so an entry never goes stale; whether it is still stored is the caller's question (the set's records,
or its index, answer it)."""
_KNOWN_SIZE = 4_096


def _cached(kb: KnowledgeBase, chunk_id: str) -> Example | None:
    example = _KNOWN.get((kb.keys.meta, chunk_id))
    if example is not None:
        _KNOWN.move_to_end((kb.keys.meta, chunk_id))
    return example


def _remember(kb: KnowledgeBase, chunk_id: str, example: Example) -> None:
    _KNOWN[(kb.keys.meta, chunk_id)] = example
    _KNOWN.move_to_end((kb.keys.meta, chunk_id))
    while len(_KNOWN) > _KNOWN_SIZE:
        _KNOWN.popitem(last=False)


async def examples_in(kb: KnowledgeBase, chunk_ids: Sequence[str]) -> dict[str, Example]:
    """The examples the chunks `chunk_ids` hold, by chunk id: remembered ones, the rest read (one pipelined
    round trip) and remembered; a chunk no longer stored is left out."""
    found = {chunk_id: example for chunk_id in chunk_ids if (example := _cached(kb, chunk_id)) is not None}
    missing = [chunk_id for chunk_id in chunk_ids if chunk_id not in found]
    for chunk_id, (text, source, tokens) in zip(
        missing, await kb.chunk_fields(missing, ('text', 'source', 'ntok')), strict=True
    ):
        if text is not None and source is not None:
            found[chunk_id] = Example.from_stored(
                source.decode().removeprefix(_SOURCE), text.decode(), int(tokens or 0)
            )
            _remember(kb, chunk_id, found[chunk_id])
    return found


def fit_examples(candidates: Sequence[Example], *, k: int, budget_tokens: int) -> list[Example]:
    """The first `k` candidates that fit `budget_tokens` together, in the candidates' order; one that would
    overflow the budget is passed over for the next."""
    chosen: list[Example] = []
    used = 0
    for example in candidates:
        if len(chosen) == k:
            break
        if used + example.tokens > budget_tokens:
            continue
        chosen.append(example)
        used += example.tokens
    return chosen
