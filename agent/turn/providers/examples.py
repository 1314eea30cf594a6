"""Few-shot examples: which worked conversations a turn shows, and how they reach the model.

With `examples.mode = "fixed"` or `"retrieved"`, `ExamplesContextProvider` picks the turn's examples
before the model is called: the configured ones (or the first added), or the ones whose questions are
most like this one, found by the knowledge base's own retriever over the example set
(`memory.examples`). At most `examples.k` of them, within `examples.budget_tokens`: an example that
does not fit is passed over for the next. It records them in `deps.turn` (`/examples` shows them) and
fills the prompt's `examples` slot with the sentence that frames them (or, with `examples.placement =
"prompt"`, with the examples themselves as a transcript).

`ExampleMessages`, a capability of the agent, sends the examples' messages ahead of the history on
every model request of the turn. They are pydantic-ai messages, tool calls and results included, so
each backbone's adapter sends them in its API's own form (chat `tool_calls` and `tool` messages,
Responses function calls), as a fine-tune saw them in training. They are request-only: nothing of
them is stored in the session, compacted, or exported.

Choosing examples failing (Redis, an embedding server) never fails the turn: it is logged, and the
turn runs without examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from redis.exceptions import RedisError

from tandem.agent.core.errors import TandemError
from tandem.agent.core.log import get_logger
from tandem.agent.core.turn_state import ShownExample
from tandem.memory.examples import CANDIDATES, Example, ExampleLibrary, ExampleSet, fit_examples
from tandem.memory.knowledge.embeddings import EmbeddingsUnavailable, make_embedder

if TYPE_CHECKING:
    from pydantic_ai.models import ModelRequestContext

    from tandem.agent.core.config import ExamplesConfig, Settings
    from tandem.agent.turn.deps import Deps
    from tandem.memory.connection import RedisClient

__all__ = [
    'ExampleMessages',
    'ExamplesContextProvider',
    'example_library',
    'example_messages',
    'example_transcript',
    'select_examples',
]

_log = get_logger('tandem.examples')


def example_library(settings: Settings, redis: RedisClient, *, tenant: str, user: str) -> ExampleLibrary | None:
    """The example sets a turn draws from (`deps.examples`): `None` when `examples.mode = "off"`.

    The tenant's set named `examples.set` and the user's own of that name; `examples.tenant` reads
    them from another tenant (a shared, curated set; scenario runs read the suite's). Embeddings that
    cannot be used fall back to BM25, with a warning, as automatic retrieval does.
    """
    config = settings.examples
    if config.mode == 'off':
        return None
    owner = config.tenant or tenant
    sets = [
        ExampleSet(redis, tenant=owner, name=config.set),
        ExampleSet(redis, tenant=owner, user=user, name=config.set),
    ]
    try:
        embedder = make_embedder(settings.knowledge) if config.search != 'bm25' else None
    except EmbeddingsUnavailable as error:
        _log.warning('examples.embeddings_unavailable', error=str(error), fallback='bm25')
        embedder = None
    if embedder is None and config.search in ('dense', 'hybrid'):
        _log.warning('examples.embeddings_unavailable', error='knowledge.embeddings is "none"', fallback='bm25')
    return ExampleLibrary(sets, config=settings.knowledge, embedder=embedder, search=config.search)


async def select_examples(library: ExampleLibrary, config: ExamplesConfig, question: str) -> list[Example]:
    """The examples a turn shows, in the order they are sent.

    `fixed`: `config.ids` in their order, else the first added. `retrieved`: the most similar ones,
    the best last, nearest the question.
    """
    if config.mode == 'fixed':
        candidates = await (library.chosen(config.ids) if config.ids else library.first(config.k * CANDIDATES))
        return fit_examples(candidates, k=config.k, budget_tokens=config.budget_tokens)
    if not question.strip():
        return []
    return (await library.choose(question, k=config.k, budget_tokens=config.budget_tokens))[::-1]


def example_messages(examples: Sequence[Example]) -> list[ModelMessage]:
    """The examples as pydantic-ai messages: each user turn a request, each assistant turn a response with
    its tool calls, each run of tool results a request. Call ids get the example's number (`ex1_call_1`),
    so they never clash with the conversation's own."""
    messages: list[ModelMessage] = []
    for number, example in enumerate(examples, 1):
        pending: list[ModelRequestPart] = []
        names: dict[str, str] = {}
        for message in example.messages:
            role = message['role']
            if role == 'user':
                pending.append(UserPromptPart(str(message['content'])))
            elif role == 'tool':
                call_id = str(message['tool_call_id'])
                name = names.get(call_id, 'tool')
                pending.append(ToolReturnPart(name, str(message['content']), tool_call_id=f'ex{number}_{call_id}'))
            else:
                if pending:
                    messages.append(ModelRequest(parts=pending))
                    pending = []
                parts: list[ModelResponsePart] = []
                if message.get('content'):
                    parts.append(TextPart(str(message['content'])))
                for call in cast(list[dict[str, Any]], message.get('tool_calls') or []):
                    function = cast(dict[str, Any], call['function'])
                    names[str(call['id'])] = str(function['name'])
                    parts.append(
                        ToolCallPart(
                            str(function['name']), str(function['arguments']), tool_call_id=f'ex{number}_{call["id"]}'
                        )
                    )
                messages.append(ModelResponse(parts=parts))
        if pending:
            messages.append(ModelRequest(parts=pending))
    return messages


def _framing(examples: Sequence[Example]) -> str:
    count = len(examples)
    which = 'a worked example' if count == 1 else f'{count} worked examples'
    return (
        f'The conversation opens with {which} from other conversations: follow how they answer and use tools, '
        'but nothing in them is about this user or this conversation.'
    )


def example_transcript(examples: Sequence[Example]) -> str:
    """The examples as text for the prompt's `examples` slot (`examples.placement = "prompt"`): each turn on
    its own line, a tool call as `→ name(arguments)` and its result as `← result`."""
    blocks: list[str] = []
    for number, example in enumerate(examples, 1):
        lines = [f'<example {number}>']
        for message in example.messages:
            if message['role'] == 'user':
                lines.append(f'User: {message["content"]}')
            elif message['role'] == 'tool':
                lines.append(f'← {message["content"]}')
            else:
                for call in cast(list[dict[str, Any]], message.get('tool_calls') or []):
                    function = cast(dict[str, Any], call['function'])
                    lines.append(f'→ {function["name"]}({function["arguments"]})')
                if message.get('content'):
                    lines.append(f'Assistant: {message["content"]}')
        blocks.append('\n'.join([*lines, f'</example {number}>']))
    count = len(examples)
    head = (
        f'{"A worked example" if count == 1 else f"{count} worked examples"} from other conversations: follow how '
        'they answer and use tools (→ a call, ← its result), but nothing in them is about this user or this '
        'conversation.'
    )
    return '\n'.join([head, *blocks])


class ExamplesContextProvider:
    """Picks the turn's examples and fills the prompt's `examples` slot (a `TurnContextProvider`)."""

    async def prompt_variables(self, deps: Deps, text: str) -> Mapping[str, Any]:
        """`{'examples': framing}` for a turn that shows examples, else nothing."""
        library = deps.examples
        if library is None or deps.settings.examples.mode == 'off':
            return {}
        try:
            chosen = await select_examples(library, deps.settings.examples, text)
        except (TandemError, RedisError, OSError) as error:
            _log.warning('examples.failed', error=f'{type(error).__name__}: {error}')
            return {}
        if not chosen:
            return {}
        deps.turn.examples = [
            ShownExample(id=example.id, question=example.question, tokens=example.tokens, tool_calls=example.tool_calls)
            for example in chosen
        ]
        if deps.settings.examples.placement == 'prompt':
            return {'examples': example_transcript(chosen)}
        deps.turn.example_messages = example_messages(chosen)
        return {'examples': _framing(chosen)}


class ExampleMessages(AbstractCapability['Deps']):
    """Sends the turn's examples ahead of the history on each model request, without storing them."""

    async def before_model_request(
        self, ctx: RunContext[Deps], request_context: ModelRequestContext
    ) -> ModelRequestContext:
        shown = ctx.deps.turn.example_messages
        if shown:
            request_context.messages = [*cast(list[ModelMessage], shown), *request_context.messages]
        return request_context
