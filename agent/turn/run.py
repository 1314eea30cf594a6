"""The one runtime every front end calls: load history, run (streaming events), persist, report.

The REPL, `tandem ask`, the Python API, the HTTP service and the scenario runner each build a
`TurnRequest`, turn it into `Deps` (`agent.turn.build`), and render the `TurnEvent`s; the turn itself
always goes through `run_turn`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Generic, cast

import structlog
from pydantic_ai import exceptions as ai_errors
from pydantic_ai.conversation import Conversation
from pydantic_ai.messages import (
    AgentStreamEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.result import AgentStream
from pydantic_ai.tools import RunContext
from pydantic_ai.usage import RunUsage, UsageLimits
from typing_extensions import TypeVar

from tandem.agent.core.errors import BackboneError, IncompleteAnswerError, InvalidOutputError, TandemError
from tandem.agent.core.events import PartialOutput, TextDelta, ToolCallFinished, ToolCallStarted, TurnEvent, short
from tandem.agent.core.links import StreamNeutralizer
from tandem.agent.core.log import get_logger
from tandem.agent.core.turn_state import Citation, ShownExample
from tandem.agent.turn.agent import plugin_toolsets, run_capabilities, run_toolsets, tandem_agent
from tandem.agent.turn.deps import Deps, ToolCallRecord, TurnState
from tandem.agent.turn.extraction import schedule_extraction
from tandem.agent.turn.output import answer_json, check_output_type, mark_answer, output_retries, output_spec
from tandem.agent.turn.persist import load_conversation, save_turn
from tandem.agent.turn.prepare import render_instructions
from tandem.agent.turn.titles import schedule_title

EventSink = Callable[[TurnEvent], Awaitable[None] | None]
OutputT = TypeVar('OutputT', default=str)

PARTIAL_INTERVAL = 0.1
"""Seconds between validations of a typed answer as it streams, as pydantic-ai's `stream_output` debounces."""

_log = get_logger('tandem.runtime')


@dataclass(frozen=True)
class TurnUsage:
    """What one turn spent."""

    requests: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    """`None` when the backbone's price is unknown."""
    output_retries: int = 0
    """How often the model was sent back because its answer did not validate (a typed answer that failed its
    schema, prose where a typed answer was due): a cost of prompting that a fine-tune may remove."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TurnUsage) -> TurnUsage:
        cost = (
            None if self.cost_usd is None and other.cost_usd is None else (self.cost_usd or 0) + (other.cost_usd or 0)
        )
        return TurnUsage(
            requests=self.requests + other.requests,
            tool_calls=self.tool_calls + other.tool_calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=cost,
            output_retries=self.output_retries + other.output_retries,
        )


@dataclass(frozen=True)
class TurnResult(Generic[OutputT]):
    """The outcome of one turn."""

    answer: str
    """The answer as sent: its text, or a typed answer's JSON."""
    output: OutputT
    """The answer as its type: the text, or the validated object a typed turn asked for."""
    session: str
    backbone: str
    prompt: str
    run_id: str
    usage: TurnUsage
    duration_s: float
    tool_calls: list[ToolCallRecord] = field(default_factory=list[ToolCallRecord])
    citations: dict[int, Citation] = field(default_factory=dict[int, Citation])
    """The knowledge-base passages the model was shown, by the number `[n]` the answer cites them with."""
    examples: list[ShownExample] = field(default_factory=list[ShownExample])
    """The few-shot examples the model was shown, in the order they were sent."""


async def _emit(sink: EventSink | None, event: TurnEvent) -> None:
    if sink is None:
        return
    outcome = sink(event)
    if outcome is not None:
        await outcome


def _stream_handler(
    sink: EventSink, deps: Deps, *, typed: bool
) -> Callable[[RunContext[Deps], AsyncIterable[AgentStreamEvent]], Awaitable[None]]:
    async def handle(ctx: RunContext[Deps], events: AsyncIterable[AgentStreamEvent]) -> None:
        # A tainted turn's text is held to its link policy as it streams: each text part has its own
        # neutralizer, which holds back an unfinished construct until it is whole.
        texts: dict[int, StreamNeutralizer | None] = {}

        async def text(index: int, piece: str) -> None:
            neutralizer = texts.get(index)
            shown = neutralizer.feed(piece) if neutralizer is not None else piece
            if shown:
                await _emit(sink, TextDelta(shown))

        async def end_text(index: int) -> None:
            neutralizer = texts.pop(index, None)
            if neutralizer is not None and (rest := neutralizer.finish()):
                await _emit(sink, TextDelta(rest))

        shown: Any = None  # the last partial typed answer sent
        validated_at = -PARTIAL_INTERVAL

        async def partial(stream: AgentStream[Deps, Any], *, part_done: bool) -> None:
            # pydantic-ai's own partial validation, as its `stream_output` does; the text deltas of a typed
            # answer are not sent, since an attempt that fails validation would leave the reader invalid JSON.
            nonlocal shown, validated_at
            now = time.monotonic()
            if not part_done and now - validated_at < PARTIAL_INTERVAL:
                return  # each validation parses the whole answer so far: at most one per interval
            validated_at = now
            try:
                output = await stream.validate_response_output(stream.response, allow_partial=True)
            except Exception:  # noqa: BLE001 - an unfinished answer fails in many ways; only the final one counts
                return
            if output != shown:
                shown = output
                await _emit(sink, PartialOutput(output))

        async for event in events:
            if typed and isinstance(event, PartStartEvent | PartDeltaEvent | PartEndEvent):
                # In a tainted turn only the final answer is given, its links made inert as the response returns.
                if isinstance(events, AgentStream) and deps.turn.link_policy is None:
                    await partial(cast(AgentStream[Deps, Any], events), part_done=isinstance(event, PartEndEvent))
            elif isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                policy = deps.turn.link_policy
                texts[event.index] = StreamNeutralizer(policy) if policy is not None else None
                if event.part.content:
                    await text(event.index, event.part.content)
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                if event.delta.content_delta:
                    await text(event.index, event.delta.content_delta)
            elif isinstance(event, PartEndEvent) and event.index in texts:
                await end_text(event.index)
            elif isinstance(event, FunctionToolCallEvent):
                part = event.part
                await _emit(sink, ToolCallStarted(part.tool_call_id, part.tool_name, part.args_as_dict()))
            elif isinstance(event, FunctionToolResultEvent):
                part = event.part
                record = deps.turn.find_call(part.tool_call_id)
                await _emit(
                    sink,
                    ToolCallFinished(
                        call_id=part.tool_call_id,
                        name=part.tool_name,
                        duration_s=record.duration_s if record else 0.0,
                        ok=part.outcome == 'success',
                        result=short(part.model_response_str(wrap_if_error=False), 200),
                    ),
                )
        for index in list(texts):  # a stream that ended without closing its parts
            await end_text(index)

    return handle


def _retry_reason(content: Any) -> str:
    """`Unknown tool name: 'x'`, or `expression: Field required; formula: Extra inputs are not permitted`:
    why a call was sent back, from its retry's content (a message, or pydantic's error details)."""
    if isinstance(content, list):
        errors = cast(list[dict[str, Any]], content)
        return '; '.join(
            f'{".".join(str(step) for step in error.get("loc", ())) or "arguments"}: {error.get("msg", "")}'
            for error in errors
        )
    return str(content)


def _every_call(turn: TurnState, messages: Sequence[ModelMessage]) -> list[ToolCallRecord]:
    """The turn's tool calls in the order the model made them, attempts that never ran included.

    A call to a tool that does not exist, or with arguments that do not validate, never reaches a tool
    (so `wrap_tool_execute` keeps no record of it), yet the model made it: it is recorded here as
    failed, with the reason the model was sent back, so budgets count it and transcripts show it.
    """
    reasons: dict[str, str] = {}
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if not isinstance(part, ToolReturnPart):
                    continue
                if part.outcome == 'retried':  # an unknown tool, or arguments that did not validate
                    reasons[part.tool_call_id] = _retry_reason(part.content)
                else:  # e.g. skipped once a final answer was given
                    reasons.setdefault(part.tool_call_id, part.model_response_str())
    ordered: list[ToolCallRecord] = []
    seen: set[str] = set()
    for message in messages:
        if not isinstance(message, ModelResponse):
            continue
        for part in message.parts:
            if not isinstance(part, ToolCallPart) or part.tool_name in turn.output_tools:
                continue
            seen.add(part.tool_call_id)
            record = turn.find_call(part.tool_call_id)
            if record is None:
                try:
                    args = part.args_as_dict()
                except ValueError:
                    args = {'arguments': str(part.args)}  # not even JSON: kept as the model sent it
                reason = reasons.get(part.tool_call_id, 'not run')
                record = ToolCallRecord(
                    call_id=part.tool_call_id, name=part.tool_name, args=args, ok=False, result=short(reason, 200)
                )
            ordered.append(record)
    # Calls resumed after an approval began in an earlier run: their parts are not among these messages.
    return [record for record in turn.tool_calls if record.call_id not in seen] + ordered


def _turn_usage(deps: Deps, responses: list[ModelResponse]) -> TurnUsage:
    input_tokens = sum(response.usage.input_tokens for response in responses)
    output_tokens = sum(response.usage.output_tokens for response in responses)
    return TurnUsage(
        requests=len(responses),
        tool_calls=len(deps.turn.tool_calls),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=_cost(deps, responses, input_tokens, output_tokens),
    )


def _cost(deps: Deps, responses: list[ModelResponse], input_tokens: int, output_tokens: int) -> float | None:
    config = deps.backbone.config
    if config.input_price_per_mtok is not None and config.output_price_per_mtok is not None:
        return (input_tokens * config.input_price_per_mtok + output_tokens * config.output_price_per_mtok) / 1e6
    total = Decimal(0)
    for response in responses:
        try:
            total += response.cost().total_price
        except Exception:  # noqa: BLE001 - genai-prices knows no price for local and fine-tuned models
            return None
    return float(total)


def _not_found_message(deps: Deps, error: ai_errors.ModelNotFoundError) -> str:
    """Tell "no such model" from "no such API": a server without the endpoint also answers 404."""
    name, model = deps.backbone.name, deps.backbone.config.model
    body = str(error.body or '').lower()
    if 'model' in body:
        return (
            f'backbone {name!r}: the server does not know model {model!r} (HTTP 404): '
            'check the model name; `tandem backbones` shows what each server lists.'
        )
    prefix, _, model_name = model.partition(':')
    if prefix in ('openai', 'openai-responses'):
        return (
            f"backbone {name!r}: the server has no Responses API (POST /responses answered 404), which '{prefix}:' "
            f"models use; OpenAI-compatible servers speak chat completions: use 'openai-chat:{model_name}'."
        )
    return (
        f'backbone {name!r}: the server has no chat-completions API (POST /chat/completions answered 404): '
        "check its base_url, which usually ends in '/v1'."
    )


_CUT_STREAM = 'ended without a `finish_reason`'
"""What pydantic-ai says of a chat stream that ended without one (`openai_chat_streaming_requires_finish_reason`)."""


def _as_tandem_error(deps: Deps, error: Exception, *, typed: bool = False) -> TandemError | None:
    """The user-facing error for a model-side failure, or `None` to let it propagate."""
    name = deps.backbone.name
    if isinstance(error, ai_errors.ModelAuthenticationError):
        key = deps.backbone.config.api_key_env or 'OPENAI_API_KEY'
        return BackboneError(f'backbone {name!r} rejected the API key (HTTP 401): check {key}.')
    if isinstance(error, ai_errors.ModelNotFoundError):
        return BackboneError(_not_found_message(deps, error))
    if isinstance(error, ai_errors.ModelConnectionError):
        where = deps.backbone.config.base_url or 'the OpenAI API (or OPENAI_BASE_URL)'
        return BackboneError(f'cannot reach backbone {name!r} at {where}: start the server or fix its base_url.')
    if isinstance(error, ai_errors.ModelHTTPError):
        return BackboneError(f'backbone {name!r} answered HTTP {error.status_code}: {short(error.body, 160)}')
    if isinstance(error, ai_errors.ModelAPIError) and _CUT_STREAM in error.message:
        return IncompleteAnswerError(name, None)
    if isinstance(error, ai_errors.ModelAPIError):
        return BackboneError(f'backbone {name!r} failed: {short(str(error), 160)}')
    if isinstance(error, ai_errors.UsageLimitExceeded):
        limits = deps.settings.limits
        # pydantic-ai names the limit it checked, which counts from the session's earlier turns.
        over = [
            f'the {name} of {value} per turn (limits.{setting})'
            for name, setting, value in (
                ('request_limit', 'requests', limits.requests),
                ('tool_calls_limit', 'tool_calls', limits.tool_calls),
                ('total_tokens_limit', 'total_tokens', limits.total_tokens),
            )
            if name in str(error)
        ]
        return TandemError(
            f'turn stopped and not saved: it would exceed {" and ".join(over) or "its limits"}. '
            'Raise the [limits] table in tandem.toml if it needs more.'
        )
    # pydantic-ai has no exception of its own for spent output retries: its message is what tells them apart.
    if typed and isinstance(error, ai_errors.UnexpectedModelBehavior) and 'maximum output retries' in error.message:
        tries = deps.settings.limits.output_retries + 1
        why = short(str(error.__cause__), 160) if error.__cause__ is not None else 'no valid answer'
        return InvalidOutputError(
            f'backbone {name!r} gave no valid typed answer in {tries} tries (the last: {why}); the turn was not '
            'saved. Try again, simplify the schema, or raise limits.output_retries.'
        )
    if isinstance(error, ai_errors.UnexpectedModelBehavior):
        return BackboneError(f'backbone {name!r} misbehaved: {short(str(error), 160)}')
    return None


def usage_limits(deps: Deps, spent: RunUsage | None = None) -> UsageLimits:
    """The per-turn limits from the config, on top of what the conversation had `spent` before the turn.

    pydantic-ai checks the limits against the run's usage, which starts from the conversation's:
    without the offset, a session would hit the per-turn limits after a few turns in all.
    """
    limits = deps.settings.limits
    spent = spent or RunUsage()
    return UsageLimits(
        request_limit=spent.requests + limits.requests,
        tool_calls_limit=spent.tool_calls + limits.tool_calls,
        total_tokens_limit=spent.total_tokens + limits.total_tokens,
    )


async def run_turn(
    deps: Deps,
    text: str,
    *,
    on_event: EventSink | None = None,
    history: Sequence[ModelMessage] | None = None,
    output_type: Any = None,
    strict: bool | None = None,
) -> TurnResult[Any]:
    """Run one turn of the session in `deps`: load its history, run, persist, report.

    The turn is saved whole or not at all: a failure or a cancellation (Ctrl-C, a client that
    disconnects) before the final save leaves the stored session as it was.

    Args:
        deps: Who the turn is for and what it runs on. Its `turn` state is replaced by a fresh one.
        text: The user's message.
        on_event: Called with text deltas and tool-call events as they happen; when given, the
            model is asked to stream.
        history: Run on these messages instead of the session's, and save nothing: a stateless
            turn (the HTTP service's requests that name no session).
        output_type: Ask for a typed answer of this type (see `agent.turn.output`): `output` is the
            validated object, `answer` its JSON, and `on_event` gets `PartialOutput`s in place of text.
        strict: Whether the server should hold a typed answer to its schema as it decodes.

    Raises:
        OutputSchemaError: `output_type` cannot be asked for.
        InvalidOutputError: The model gave no valid typed answer within `limits.output_retries`.
        TandemError: A user-facing failure (backbone, Redis, limits), with an actionable message.
    """
    typed = output_type is not None
    if typed:
        check_output_type(output_type)
    spec = output_spec(output_type, deps.backbone, strict=strict) if typed else None
    run_id = str(uuid.uuid4())
    deps.turn = TurnState(run_id=run_id)
    identity = deps.identity
    structlog.contextvars.bind_contextvars(
        run_id=run_id, tenant=identity.tenant, user=identity.user, session=identity.session
    )
    started = time.perf_counter()
    try:
        _log.info('turn.start', backbone=deps.backbone.name, prompt=deps.prompt.ref)
        if history is None:
            conversation = await load_conversation(deps)
        else:
            conversation = Conversation(conversation_id=identity.session, messages=list(history))
        try:
            result = await tandem_agent().run(
                text,
                conversation=conversation,
                deps=deps,
                model=deps.backbone.model,
                model_settings=deps.backbone.model_settings,
                output_type=spec,
                retries={'tools': deps.settings.limits.tool_retries, 'output': deps.settings.limits.output_retries},
                toolsets=run_toolsets(deps.toolsets),
                capabilities=run_capabilities(deps.toolsets, examples=deps.examples is not None),
                instructions=await render_instructions(deps, plugin_toolsets(deps.toolsets), text),
                usage_limits=usage_limits(deps, conversation.usage),
                event_stream_handler=_stream_handler(on_event, deps, typed=typed) if on_event is not None else None,
                run_id=run_id,
            )
        except Exception as error:
            mapped = _as_tandem_error(deps, error, typed=typed)
            _log.warning('turn.failed', error=type(error).__name__)
            if mapped is None:
                raise
            raise mapped from error
        new_messages = result.new_messages()
        responses = [m for m in new_messages if isinstance(m, ModelResponse)]
        usage = replace(
            _turn_usage(deps, responses), output_retries=output_retries(new_messages, deps.turn.output_tools)
        )
        answer = answer_json(result.output) if typed else result.output
        if typed:
            mark_answer(result.response, answer, deps.turn.output_tools)
        run_usage = RunUsage(requests=usage.requests, tool_calls=usage.tool_calls)
        for response in responses:
            run_usage = run_usage + response.usage
        if history is None:  # a stateless turn leaves nothing behind: no session, no facts
            await save_turn(deps, result, run_usage)
            schedule_extraction(deps, result)  # memory.extract: in the background, off the latency path
            schedule_title(deps, result)  # memory.generate_titles: likewise
        duration = time.perf_counter() - started
        _log.info('turn.end', duration_ms=round(duration * 1000, 1), tokens=usage.total_tokens, tools=usage.tool_calls)
        return TurnResult(
            answer=answer,
            output=result.output,
            session=identity.session,
            backbone=deps.backbone.name,
            prompt=deps.prompt.ref,
            run_id=run_id,
            usage=usage,
            duration_s=duration,
            tool_calls=_every_call(deps.turn, new_messages),
            citations=dict(deps.turn.citations),
            examples=list(deps.turn.examples),
        )
    finally:
        structlog.contextvars.unbind_contextvars('run_id', 'tenant', 'user', 'session')


def with_session(deps: Deps, session: str) -> Deps:
    """A copy of `deps` for another session of the same user."""
    return replace(deps, identity=replace(deps.identity, session=session), turn=TurnState())


def summarize_args(args: dict[str, Any]) -> str:
    """Tool arguments as a short one-liner for the REPL."""
    return short(', '.join(f'{key}={value!r}' for key, value in args.items()), 60)
