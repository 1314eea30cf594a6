"""The turn's capability: bounds, times and logs tool calls and model requests, and fits the history to its budget."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from pydantic_ai._utils import abandon_threads_on_cancel  # pyright: ignore[reportPrivateUsage]
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ApprovalRequired, ModelRetry
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.tools import RunContext, ToolDefinition

from tandem.agent.core.errors import IncompleteAnswerError
from tandem.agent.core.events import short
from tandem.agent.core.log import get_logger
from tandem.agent.core.turn_state import ToolCallRecord
from tandem.agent.turn.compaction import HistoryCompactor
from tandem.agent.turn.output_links import link_policy, neutralize_response
from tandem.tools.registry import returns_untrusted

if TYPE_CHECKING:
    from pydantic_ai.capabilities.abstract import (
        RawToolArgs,
        ValidatedToolArgs,
        WrapModelRequestHandler,
        WrapToolExecuteHandler,
    )
    from pydantic_ai.models import Model, ModelRequestContext

    from tandem.agent.turn.deps import Deps

_log = get_logger('tandem.turn')


@dataclass
class TurnGuard(AbstractCapability['Deps']):
    """Logs each model request (latency, tokens) and tool call (duration, outcome); never message contents.

    It bounds every tool call, whichever toolset it comes from: oversized arguments are refused
    before they are parsed, so the tool never runs on them; a call that outlives
    `limits.tool_timeout_seconds` is cancelled, so an async tool's side effect never lands late, and its
    result is never delivered: a sync tool's thread is abandoned at the deadline, and a result that
    comes back after it anyway (a tool that blocked the event loop) is dropped.
    Either way the model gets a tool error it can act on.

    It bounds every model request too: a history over `memory.compaction_tokens` is sent as a running
    summary plus the recent turns (`compaction`). And in a turn that untrusted content entered, it makes
    the answer's untrusted URLs inert as the response comes back (`output_links`).

    One capability does all of this because pydantic-ai calls every hook of every capability on each
    step of a run, each with its own copy of the `RunContext` (pydantic/pydantic-ai#8587): that costs
    a turn 0.1-0.2 ms per capability, whatever it overrides.

    Args:
        compactor: Fits the history to its budget; holds no per-run state, so the agent's one guard serves every run.
    """

    compactor: HistoryCompactor = field(default_factory=HistoryCompactor)

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds callables

    async def before_tool_validate(
        self,
        ctx: RunContext[Deps],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: RawToolArgs,
    ) -> RawToolArgs:
        limit = ctx.deps.settings.limits.tool_argument_bytes
        size = len(args.encode()) if isinstance(args, str) else len(json.dumps(args, default=str).encode())
        if size > limit:
            _log.warning('tool.arguments_too_large', tool=call.tool_name, bytes=size)
            raise ModelRetry(f'The arguments to {call.tool_name} are {size} bytes; the limit is {limit}. Send less.')
        return args

    async def wrap_model_request(
        self,
        ctx: RunContext[Deps],
        *,
        request_context: ModelRequestContext,
        handler: WrapModelRequestHandler,
    ) -> ModelResponse:
        # Fitted here, once per step and before any other hook sees the request, rather than in
        # `before_model_request`: each hook a capability overrides costs every step a dispatch, and
        # `prepare_model_request` (per attempt) would make pydantic-ai copy every tool's schema.
        request_context.messages = await self.compactor.compact(
            ctx.deps, request_context.model, list(request_context.messages)
        )
        # Set before the request, so a streamed answer is held to the same policy as it arrives (`run`).
        policy = ctx.deps.turn.link_policy = link_policy(ctx.deps, request_context.messages)
        parameters = request_context.model_request_parameters
        if parameters.output_tools:
            ctx.deps.turn.output_tools.update(tool.name for tool in parameters.output_tools)
        started = time.perf_counter()
        response = await handler(request_context)
        if policy is not None:
            neutralize_response(
                response,
                policy,
                json_text=parameters.output_object is not None,
                output_tools=ctx.deps.turn.output_tools,
            )
        unfinished = _unfinished(ctx.deps, request_context.model, response)
        if unfinished is not None:
            _log.warning('model.unfinished', finish_reason=response.finish_reason)
            raise unfinished
        _log.info(
            'model.request',
            model=response.model_name,
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
        )
        return response

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Deps],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: ValidatedToolArgs,
        handler: WrapToolExecuteHandler,
    ) -> Any:
        record = ctx.deps.turn.find_call(call.tool_call_id)
        if record is None:  # a call resumed after approval keeps its record
            record = ToolCallRecord(call_id=call.tool_call_id, name=call.tool_name, args=call.args_as_dict())
            ctx.deps.turn.tool_calls.append(record)
        started = time.perf_counter()
        timeout = ctx.deps.settings.limits.tool_timeout_seconds
        try:
            try:
                # At the deadline a sync tool's worker thread is abandoned, as pydantic-ai's own tool timeouts
                # do: only side-effect-free sync tools are let in (`agent.turn.agent`), so nothing lands late.
                with anyio.fail_after(timeout), abandon_threads_on_cancel():
                    result = await handler(args)
                if time.perf_counter() - started > timeout:
                    raise TimeoutError  # it blocked the event loop past the deadline: the result is late
            except TimeoutError:
                raise ModelRetry(f'{call.tool_name} timed out after {timeout:g} seconds and was cancelled.') from None
        except ApprovalRequired:
            record.ok, record.result = False, 'held for approval'
            raise
        except Exception as error:
            record.ok, record.result = False, short(f'{type(error).__name__}: {error}', 200)
            raise
        finally:
            record.duration_s = time.perf_counter() - started
            _log.info('tool.call', tool=call.tool_name, duration_ms=round(record.duration_s * 1000, 1), ok=record.ok)
        record.ok, record.result = True, short(result, 200)
        if returns_untrusted(tool_def):
            ctx.deps.turn.tainted = True  # a plugin's or MCP server's result, like a web page
        return result


_DOUBLES = frozenset({'test', 'function'})
"""The `system` of pydantic-ai's test models, which report no finish reason."""


def _unfinished(deps: Deps, model: Model, response: ModelResponse) -> IncompleteAnswerError | None:
    """Why `response` is not a finished answer, or `None` when it is.

    No finish reason means the response broke off, as a Responses stream cut before it completed does
    (a chat stream cut short is caught before this, in the model: see `backbones.base`). A fragment,
    or an answer stopped at a limit or by a filter, must not be stored as a turn.
    """
    reason = response.finish_reason
    if reason in ('stop', 'tool_call') or (reason is None and model.system in _DOUBLES):
        return None
    return IncompleteAnswerError(deps.backbone.name, reason)
