"""`tandem tune export`: stored conversations turned into OpenAI chat fine-tuning JSONL.

Sources are stored sessions (filtered by tenant, user, session id or date) or a scenario report
(its passing runs with `only_passing`). Each conversation becomes one example: its messages in
OpenAI's chat format, the assistant's `tool_calls` each followed by its `tool` result, and the
`tools` the assistant could call. Then, in order:

1. the system prompt is kept, replaced by a short prompt (`short`: the `short` template, rendered
   for the conversation's date and tools, so training matches inference with that prompt), or
   dropped; baking the long prompt's behaviour into the weights is the point of a fine-tune;
2. every string goes through the PII scrubbers (tool-call arguments as parsed JSON);
3. tool-call ids are renumbered `call_1`, `call_2`, ... per example (local servers often reuse
   `call_0` every turn, which would make ids ambiguous);
4. the example is checked with `agent.tune.validate.check_example`, and dropped (with the reason
   reported) if it has errors, so every exported line passes `tandem tune validate`;
5. duplicates are dropped (same messages and tools, ignoring whitespace differences);
6. a seeded shuffle splits off a validation set, when asked.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, cast

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryFeedbackPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.toolsets import FunctionToolset

from tandem.agent.core.errors import TandemError
from tandem.agent.core.files import write_atomically
from tandem.agent.core.prompts import PromptLibrary
from tandem.agent.tune.scrub import Scrubber
from tandem.agent.tune.validate import check_example
from tandem.agent.turn.output import as_sent

__all__ = [
    'ExportOptions',
    'ExportResult',
    'SessionQuery',
    'SystemMode',
    'Trace',
    'build_examples',
    'openai_messages',
    'report_traces',
    'session_traces',
    'tool_definitions',
    'validation_path',
    'write_jsonl',
]

SystemMode = Literal['keep', 'short', 'drop']


@dataclass(frozen=True)
class Trace:
    """One stored conversation, before it becomes an example."""

    source: str
    """Where it came from, for reports: `session acme/s1`, `scenario refund run 2`."""
    messages: Sequence[ModelMessage]
    started: datetime | None = None
    """When it started: the `date` a re-rendered short prompt gets."""
    tools: Sequence[Mapping[str, Any]] | None = None
    """The tools it ran with (OpenAI format), when the source recorded them."""


@dataclass(frozen=True)
class SessionQuery:
    """Which stored sessions to export."""

    tenant: str
    user: str | None = None
    sessions: Sequence[str] = ()
    """Only these session ids; every session of the tenant (or user) when empty."""
    since: datetime | None = None
    """Only sessions last active at or after this time."""
    until: datetime | None = None
    """Only sessions last active before this time."""


@dataclass(frozen=True)
class ExportOptions:
    """How traces become examples."""

    tools: Sequence[Mapping[str, Any]] = ()
    """Tool definitions (OpenAI format) given to every example, for traces that did not record theirs."""
    system: SystemMode = 'keep'
    short_prompt: str = 'short'
    """The prompt template (`NAME` or `NAME@VERSION`) rendered for `system='short'`."""
    system_text: str | None = None
    """A literal system prompt for every example; overrides `system`."""
    prompts_dir: Path | None = None
    scrubbers: Sequence[Scrubber] = ()
    dedup: bool = True
    validation_fraction: float = 0.0
    seed: int = 0


@dataclass
class ExportResult:
    """The examples, and what was left out and why."""

    train: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    validation: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    dropped: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    """`(source, reason)` for each trace that did not become an example."""
    duplicates: int = 0
    undefined_tools: set[str] = field(default_factory=set[str])
    """Tools called in the traces that no tool definition describes (given a bare definition)."""

    @property
    def examples(self) -> int:
        """Examples written, both files together."""
        return len(self.train) + len(self.validation)


# -- sources -----------------------------------------------------------------------------------------


async def session_traces(redis: Any, query: SessionQuery) -> list[Trace]:
    """The stored sessions `query` selects, oldest first.

    Raises:
        InvalidIdError: An id in `query` is invalid.
        SessionNotFoundError: A session named in `query.sessions` does not exist (for that user).
        RedisUnavailableError: Redis cannot be reached.
    """
    from tandem.memory.conversations import RedisConversationStore
    from tandem.memory.keys import validate_id

    store = RedisConversationStore(redis, tenant=query.tenant)
    user = validate_id('user', query.user) if query.user else None
    if query.sessions:
        wanted = [(validate_id('session', session), None) for session in query.sessions]
    else:
        infos = await store.list_sessions(user=user)
        wanted = [
            (info.id, info.updated_at)
            for info in sorted(infos, key=lambda info: info.updated_at)
            if (query.since is None or info.updated_at >= query.since)
            and (query.until is None or info.updated_at < query.until)
        ]
    traces: list[Trace] = []
    for session, _ in wanted:
        messages = await store.export_messages(session, user=user)
        traces.append(Trace(f'session {query.tenant}/{session}', messages, _started(messages)))
    return traces


def _started(messages: Sequence[ModelMessage]) -> datetime | None:
    for message in messages:
        stamp = getattr(message, 'timestamp', None)
        if isinstance(stamp, datetime):
            return stamp
    return None


def tool_definitions(toolsets: Iterable[Any]) -> list[dict[str, Any]]:
    """OpenAI tool definitions for the function tools of built toolsets (other toolsets are skipped)."""
    definitions: list[dict[str, Any]] = []
    for toolset in toolsets:
        if not isinstance(toolset, FunctionToolset):
            continue
        for tool in cast(FunctionToolset[Any], toolset).tools.values():
            spec = tool.tool_def
            function: dict[str, Any] = {'name': spec.name}
            if spec.description:
                function['description'] = spec.description
            function['parameters'] = spec.parameters_json_schema
            definitions.append({'type': 'function', 'function': function})
    return definitions


# -- conversion --------------------------------------------------------------------------------------


class _Unexportable(Exception):
    """A conversation that has no faithful OpenAI chat form."""


def openai_messages(messages: Sequence[ModelMessage]) -> tuple[str | None, list[dict[str, Any]]]:
    """A conversation's system prompt and its other messages in OpenAI's chat format.

    The system prompt is the conversation's first instructions (with any system-prompt parts
    before them). Thinking, native (provider-side) tool parts and framework bookkeeping parts are
    left out: they are not part of the chat format. Typed answers are the assistant's JSON, as they
    were sent (`agent.turn.output.as_sent`): no output tool calls, no failed attempts or their retries.

    Raises:
        _Unexportable: A user message holds images or files, or a tool result is a file.
    """
    system: str | None = None
    out: list[dict[str, Any]] = []
    first_request = True
    for message in as_sent(messages):
        if isinstance(message, ModelRequest):
            leading: list[str] = []
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    if first_request and not out:
                        leading.append(part.content)
                    else:
                        out.append({'role': 'system', 'content': part.content})
                elif isinstance(part, UserPromptPart):
                    out.append({'role': 'user', 'content': _user_text(part)})
                elif isinstance(part, ToolReturnPart):
                    content = part.model_response_str()
                    out.append({'role': 'tool', 'tool_call_id': part.tool_call_id, 'content': content})
                elif isinstance(part, RetryFeedbackPart):
                    out.append({'role': 'user', 'content': part.model_response()})
            if first_request:
                pieces = [*leading, *([message.instructions] if message.instructions else [])]
                system = '\n\n'.join(piece.strip() for piece in pieces) or None
                first_request = False
        elif isinstance(message, ModelResponse):  # pyright: ignore[reportUnnecessaryIsInstance]
            text = ''.join(part.content for part in message.parts if isinstance(part, TextPart))
            calls = [
                {
                    'id': part.tool_call_id,
                    'type': 'function',
                    'function': {'name': part.tool_name, 'arguments': part.args_as_json_str()},
                }
                for part in message.parts
                if isinstance(part, ToolCallPart)
            ]
            if not text.strip() and not calls:
                continue
            assistant: dict[str, Any] = {'role': 'assistant'}
            if text.strip():
                assistant['content'] = text
            if calls:
                assistant['tool_calls'] = calls
            out.append(assistant)
    return system, out


def _user_text(part: UserPromptPart) -> str:
    if isinstance(part.content, str):
        return part.content
    texts: list[str] = []
    for item in part.content:
        if not isinstance(item, str):
            raise _Unexportable(f'a user message holds {type(item).__name__}, which the text chat format cannot carry')
        texts.append(item)
    return '\n'.join(texts)


def _renumber_calls(messages: list[dict[str, Any]]) -> None:
    """Give each tool call a fresh id, `call_1`, `call_2`, ..., and point its result at it."""
    waiting: dict[str, list[str]] = {}
    counter = 0
    for message in messages:
        if message['role'] == 'assistant':
            for call in message.get('tool_calls', ()):
                counter += 1
                new_id = f'call_{counter}'
                waiting.setdefault(str(call['id']), []).append(new_id)
                call['id'] = new_id
        elif message['role'] == 'tool':
            queue = waiting.get(str(message.get('tool_call_id')))
            if queue:
                message['tool_call_id'] = queue.pop(0)


def _scrub(messages: list[dict[str, Any]], scrubber: Scrubber) -> None:
    for message in messages:
        if isinstance(message.get('content'), str):
            message['content'] = scrubber(message['content'])
        for call in message.get('tool_calls', ()):
            function = call['function']
            try:
                arguments: Any = json.loads(function['arguments'])
            except json.JSONDecodeError:
                function['arguments'] = scrubber(function['arguments'])
            else:
                function['arguments'] = json.dumps(_scrub_value(arguments, scrubber), ensure_ascii=False)


def _scrub_value(value: Any, scrubber: Scrubber) -> Any:
    if isinstance(value, str):
        return scrubber(value)
    if isinstance(value, list):
        return [_scrub_value(item, scrubber) for item in cast(list[Any], value)]
    if isinstance(value, dict):
        return {key: _scrub_value(item, scrubber) for key, item in cast(dict[str, Any], value).items()}
    return value


def _system_prompt(
    trace: Trace, original: str | None, tools: Sequence[Mapping[str, Any]], options: ExportOptions
) -> str | None:
    if options.system_text is not None:
        return options.system_text
    if options.system == 'drop':
        return None
    if options.system == 'keep':
        return original
    template = PromptLibrary.default(options.prompts_dir).get(options.short_prompt)
    day = (trace.started or datetime.now(UTC)).date()
    return template.render(_prompt_variables(day, tools)).strip()


def _prompt_variables(day: date, tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    described: list[dict[str, str]] = []
    for tool in tools:
        function = cast(dict[str, Any], tool.get('function') or {})
        lines = str(function.get('description') or '').strip().splitlines()
        described.append({'name': str(function.get('name')), 'description': lines[0] if lines else ''})
    return {
        'date': day.isoformat(),
        'tools': described,
        'user_name': None,
        'memory': '',
        'retrieval': '',
        'examples': '',
        'backbone': '',
    }


def _dedup_key(example: Mapping[str, Any]) -> str:
    def squash(value: Any) -> Any:
        if isinstance(value, str):
            return ' '.join(value.split())
        if isinstance(value, list):
            return [squash(item) for item in cast(list[Any], value)]
        if isinstance(value, dict):
            return {key: squash(item) for key, item in cast(dict[str, Any], value).items()}
        return value

    return json.dumps(squash(example), sort_keys=True, separators=(',', ':'), ensure_ascii=False)


def _example(trace: Trace, options: ExportOptions, result: ExportResult) -> dict[str, Any]:
    """One trace as an example; raises `_Unexportable` with the reason it cannot be one."""
    original_system, messages = openai_messages(trace.messages)
    tools = [dict(tool) for tool in (trace.tools if trace.tools is not None else options.tools)]
    defined = {str(cast(dict[str, Any], tool.get('function') or {}).get('name')) for tool in tools}
    for message in messages:
        for call in message.get('tool_calls', ()):
            name = str(call['function']['name'])
            if name not in defined:
                result.undefined_tools.add(name)
                defined.add(name)
                tools.append({'type': 'function', 'function': {'name': name, 'parameters': {'type': 'object'}}})
    system = _system_prompt(trace, original_system, tools, options)
    if system:
        messages.insert(0, {'role': 'system', 'content': system})
    if options.scrubbers:
        from tandem.agent.tune.scrub import compose

        _scrub(messages, compose(options.scrubbers))
    _renumber_calls(messages)
    example: dict[str, Any] = {'messages': messages}
    if tools:
        example['tools'] = tools
    errors, _ = check_example(example)
    if errors:
        raise _Unexportable(errors[0] + (f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''))
    return example


def build_examples(traces: Iterable[Trace], options: ExportOptions) -> ExportResult:
    """Turn traces into examples: system prompt, scrubbing, ids, checks, dedup and split (see the module docs).

    Raises:
        TandemError: `validation_fraction` is not in [0, 1), or the short prompt cannot be rendered.
    """
    if not 0 <= options.validation_fraction < 1:
        raise TandemError('--validation-fraction must be at least 0 and below 1, e.g. 0.1.')
    result = ExportResult()
    examples: list[dict[str, Any]] = []
    seen: set[str] = set()
    for trace in traces:
        try:
            example = _example(trace, options, result)
        except _Unexportable as error:
            result.dropped.append((trace.source, str(error)))
            continue
        if options.dedup:
            key = _dedup_key(example)
            if key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
        examples.append(example)
    count = round(len(examples) * options.validation_fraction)
    if options.validation_fraction > 0 and len(examples) >= 2:
        count = min(max(count, 1), len(examples) - 1)
    if count:
        order = list(range(len(examples)))
        random.Random(options.seed).shuffle(order)
        held = set(order[:count])
        result.validation = [example for index, example in enumerate(examples) if index in held]
        result.train = [example for index, example in enumerate(examples) if index not in held]
    else:
        result.train = examples
    return result


def write_jsonl(path: Path, examples: Sequence[Mapping[str, Any]]) -> None:
    """Write one example per line, atomically (a temporary file renamed into place).

    Raises:
        TandemError: The folder cannot be written.
    """
    write_atomically(
        path, (json.dumps(example, ensure_ascii=False, separators=(',', ':')) + '\n' for example in examples)
    )


def validation_path(out: Path) -> Path:
    """Where the validation split goes by default: `data.jsonl` -> `data.validation.jsonl`."""
    stem = re.sub(r'\.jsonl?$', '', out.name)
    return out.with_name(f'{stem}.validation.jsonl')


def report_traces(path: Path, *, only_passing: bool = False, backbone: str | None = None) -> list[Trace]:
    """The conversations of a scenario report (`SuiteReport` JSON), one trace per session of each run.

    Args:
        path: The report file `tandem run --report DIR` wrote (`DIR/report.json`), or that directory.
        only_passing: Keep only the runs whose every check held.
        backbone: Keep only the runs of this backbone's cells (the "teacher" whose answers to train on).

    Raises:
        TandemError: The file cannot be read or is not a scenario report.
    """
    from pydantic import ValidationError
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    from tandem.agent.scenarios.results import SuiteReport

    if path.is_dir():  # `tandem run --report DIR` writes DIR/report.json
        path = path / 'report.json'
    try:
        report = SuiteReport.model_validate_json(path.read_bytes())
    except OSError as error:
        raise TandemError(f'cannot read scenario report {path}: {error.strerror or error}.') from error
    except ValidationError as error:
        raise TandemError(
            f'{path} is not a scenario report (`tandem run --report FILE` writes one): {error.errors()[0]["msg"]}'
        ) from error
    traces: list[Trace] = []
    for run in report.runs:
        if only_passing and run.status != 'passed':
            continue
        if backbone is not None and run.cell.backbone != backbone:
            continue
        for session, raw in run.messages.items():
            messages = ModelMessagesTypeAdapter.validate_python(raw)
            label = f'scenario {run.scenario} · {run.cell.label} · session {session}'
            traces.append(Trace(label, messages, _started(messages) or report.started_at))
    return traces
