"""`tandem tune validate`: check a chat fine-tuning JSONL file line by line, count tokens, estimate the cost.

Each line must be one example in OpenAI's chat fine-tuning format:

```json
{"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
              {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "calculate", "arguments": "{\\"expression\\": \\"2+3\\"}"}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": "5"},
              {"role": "assistant", "content": "2 + 3 = 5."}],
 "tools": [{"type": "function", "function": {"name": "calculate", "parameters": {...}}}]}
```

Errors (each naming its line): invalid JSON, unknown or misplaced roles, empty contents, tool calls
whose arguments are not a JSON object, tool calls no tool message answers (or answers twice),
calls of tools the line does not define, a last message that is not the assistant's, and examples
longer than the base model's limit. Warnings: too few examples, duplicates, unknown keys.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from tandem.agent.core.errors import TandemError
from tandem.agent.core.tokens import TokenCounter, count_example_tokens, token_counter
from tandem.agent.tune.pricing import DEFAULT_BASE_MODEL, price_for

__all__ = [
    'MIN_EXAMPLES',
    'DatasetReport',
    'Problem',
    'auto_epochs',
    'check_example',
    'validate_file',
    'validate_lines',
]

MIN_EXAMPLES = 10
"""OpenAI refuses a training file with fewer examples; 50-100 good ones is where tuning starts to pay."""

_ROLES = ('system', 'user', 'assistant', 'tool')
_TOP_KEYS = ('messages', 'tools', 'parallel_tool_calls')
_TOOL_NAME = re.compile(r'[A-Za-z0-9_-]{1,64}')
_DEFAULT_CONTEXT_LIMIT = 65_536

# OpenAI's default epochs for a dataset of n examples (from its fine-tuning data-preparation cookbook).
_TARGET_EPOCHS = 3
_MIN_TARGET_EXAMPLES = 100
_MAX_TARGET_EXAMPLES = 25_000
_MAX_DEFAULT_EPOCHS = 25


@dataclass(frozen=True)
class Problem:
    """One finding: an error makes the file unusable, a warning is worth a look."""

    line: int
    """1-based line number; 0 for the file as a whole."""
    message: str
    level: Literal['error', 'warning'] = 'error'

    def __str__(self) -> str:
        where = f'line {self.line}' if self.line else 'file'
        return f'{where}: {self.message}'


@dataclass
class DatasetReport:
    """What `validate_file` found, and what training on the file would cost."""

    path: Path
    model: str
    examples: int = 0
    problems: list[Problem] = field(default_factory=list[Problem])
    token_counts: list[int] = field(default_factory=list[int])
    counter_label: str = ''
    exact_tokens: bool = True
    context_limit: int = _DEFAULT_CONTEXT_LIMIT
    epochs: int = _TARGET_EPOCHS
    epochs_auto: bool = True
    price_per_mtok: float | None = None
    """USD per million training tokens; `None` when the model is not in the price table and none was given."""

    @property
    def errors(self) -> list[Problem]:
        """The problems that make the file unusable."""
        return [problem for problem in self.problems if problem.level == 'error']

    @property
    def warnings(self) -> list[Problem]:
        """The problems worth a look."""
        return [problem for problem in self.problems if problem.level == 'warning']

    @property
    def ok(self) -> bool:
        """Whether there are no errors."""
        return not self.errors

    @property
    def billed_tokens_per_epoch(self) -> int:
        """Tokens OpenAI bills per epoch: each example's, capped at the context limit."""
        return sum(min(count, self.context_limit) for count in self.token_counts)

    @property
    def training_tokens(self) -> int:
        """Tokens billed for the whole job."""
        return self.billed_tokens_per_epoch * self.epochs

    @property
    def cost_usd(self) -> float | None:
        """The estimated training cost, or `None` without a price."""
        if self.price_per_mtok is None:
            return None
        return self.training_tokens * self.price_per_mtok / 1e6

    def as_dict(self) -> dict[str, Any]:
        """Everything, as JSON-ready data."""
        counts = self.token_counts
        return {
            'path': str(self.path),
            'ok': self.ok,
            'examples': self.examples,
            'errors': [str(problem) for problem in self.errors],
            'warnings': [str(problem) for problem in self.warnings],
            'model': self.model,
            'tokens': {
                'counted_with': self.counter_label,
                'exact': self.exact_tokens,
                'min': min(counts, default=0),
                'median': int(statistics.median(counts)) if counts else 0,
                'max': max(counts, default=0),
                'context_limit': self.context_limit,
                'billed_per_epoch': self.billed_tokens_per_epoch,
            },
            'epochs': self.epochs,
            'epochs_auto': self.epochs_auto,
            'training_tokens': self.training_tokens,
            'price_per_mtok': self.price_per_mtok,
            'estimated_cost_usd': None if self.cost_usd is None else round(self.cost_usd, 4),
        }


def auto_epochs(examples: int) -> int:
    """The epochs OpenAI picks by default for `examples` training examples."""
    if examples <= 0:
        return _TARGET_EPOCHS
    if examples * _TARGET_EPOCHS < _MIN_TARGET_EXAMPLES:
        return min(_MAX_DEFAULT_EPOCHS, _MIN_TARGET_EXAMPLES // examples)
    if examples * _TARGET_EPOCHS > _MAX_TARGET_EXAMPLES:
        return max(1, _MAX_TARGET_EXAMPLES // examples)
    return _TARGET_EPOCHS


def check_example(data: Any) -> tuple[list[str], list[str]]:
    """The errors and warnings of one parsed example (without line numbers)."""
    errors: list[str] = []
    warnings: list[str] = []
    if not isinstance(data, dict):
        return [f'an example must be a JSON object, not {_kind(data)}'], []
    example = cast(dict[str, Any], data)
    unknown = [key for key in example if key not in _TOP_KEYS]
    if unknown:
        warnings.append(f'unknown key(s) {", ".join(map(repr, unknown))} will be ignored')
    tool_names = _check_tools(example.get('tools'), errors)
    messages: Any = example.get('messages')
    if not isinstance(messages, list) or not messages:
        errors.append('"messages" must be a non-empty list')
        return errors, warnings
    _check_messages(cast(list[Any], messages), tool_names, errors, warnings)
    return errors, warnings


def _check_tools(tools: Any, errors: list[str]) -> set[str] | None:
    """The names the line's tools define, or `None` when it defines none."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        errors.append('"tools" must be a list')
        return None
    names: set[str] = set()
    for index, raw in enumerate(cast(list[Any], tools)):
        where = f'tools[{index}]'
        tool = cast(dict[str, Any], raw) if isinstance(raw, dict) else None
        if tool is None or tool.get('type') != 'function' or not isinstance(tool.get('function'), dict):
            errors.append(f'{where} must be {{"type": "function", "function": {{...}}}}')
            continue
        function = cast(dict[str, Any], tool['function'])
        name = function.get('name')
        if not isinstance(name, str) or _TOOL_NAME.fullmatch(name) is None:
            errors.append(f'{where} has an invalid function name {name!r} (1-64 letters, digits, _ or -)')
            continue
        if name in names:
            errors.append(f'{where} defines {name!r} twice')
        names.add(name)
        parameters = function.get('parameters')
        if parameters is not None and not isinstance(parameters, dict):
            errors.append(f'{where} ({name}): "parameters" must be a JSON schema object')
        description = function.get('description')
        if description is not None and not isinstance(description, str):
            errors.append(f'{where} ({name}): "description" must be a string')
    return names


def _check_messages(messages: list[Any], tool_names: set[str] | None, errors: list[str], warnings: list[str]) -> None:
    pending: dict[str, str] = {}  # call id -> tool name, waiting for its tool message
    seen_ids: set[str] = set()
    trained = 0
    last_role: str | None = None
    for index, raw in enumerate(messages):
        where = f'messages[{index}]'
        if not isinstance(raw, dict):
            errors.append(f'{where} must be an object, not {_kind(raw)}')
            continue
        message = cast(dict[str, Any], raw)
        role = message.get('role')
        if role not in _ROLES:
            errors.append(f'{where} has role {role!r}; allowed: {", ".join(_ROLES)}')
            last_role = None  # reported already: no second error about the same message
            continue
        if role != 'tool' and pending:
            for call_id, name in pending.items():
                errors.append(f'tool call {call_id!r} ({name}) has no tool message answering it before {where}')
            pending.clear()
        if role in ('system', 'user'):
            _check_text(message.get('content'), f'{where} ({role})', errors, allow_parts=role == 'user')
            if role == 'system' and index > 0 and last_role != 'system':
                warnings.append(f'{where} is a system message after the conversation started')
        elif role == 'assistant':
            trained += _check_assistant(message, where, tool_names, pending, seen_ids, errors)
        else:
            _check_tool_message(message, where, pending, seen_ids, errors)
        last_role = role
    for call_id, name in pending.items():
        errors.append(f'tool call {call_id!r} ({name}) has no tool message answering it')
    if last_role is not None and last_role != 'assistant':
        errors.append(f"the last message must be the assistant's, not {last_role!r}")
    elif trained == 0 and last_role == 'assistant':
        errors.append('no assistant message has weight 1: there is nothing to train on')
    if not any(isinstance(m, dict) and cast(dict[str, Any], m).get('role') == 'user' for m in messages):
        warnings.append('there is no user message')


def _check_text(content: Any, where: str, errors: list[str], *, allow_parts: bool = False) -> None:
    if isinstance(content, str):
        if not content.strip():
            errors.append(f'{where} has empty content')
        return
    if allow_parts and isinstance(content, list) and content:
        for part in cast(list[Any], content):
            if not isinstance(part, dict) or cast(dict[str, Any], part).get('type') not in ('text', 'image_url'):
                errors.append(f'{where}: content parts must be {{"type": "text"|"image_url", ...}}')
                return
        return
    errors.append(f'{where} must have string content, not {_kind(content)}')


def _check_assistant(
    message: dict[str, Any],
    where: str,
    tool_names: set[str] | None,
    pending: dict[str, str],
    seen_ids: set[str],
    errors: list[str],
) -> int:
    """Check an assistant message; 1 if it is trained on (weight 1), else 0."""
    content = message.get('content')
    calls: Any = message.get('tool_calls')
    if content is not None and not isinstance(content, str):
        errors.append(f'{where} (assistant) content must be a string or null, not {_kind(content)}')
    if calls is not None and not isinstance(calls, list):
        errors.append(f'{where} (assistant) "tool_calls" must be a list')
        calls = None
    if not (isinstance(content, str) and content.strip()) and not calls:
        errors.append(f'{where} (assistant) has neither content nor tool calls')
    for position, raw in enumerate(cast(list[Any], calls or [])):
        _check_call(raw, f'{where}.tool_calls[{position}]', tool_names, pending, seen_ids, errors)
    weight: Any = message.get('weight', 1)
    if isinstance(weight, bool) or weight not in (0, 1):
        errors.append(f'{where} (assistant) weight must be 0 or 1, not {weight!r}')
        return 0
    return int(weight)


def _check_call(
    raw: Any,
    where: str,
    tool_names: set[str] | None,
    pending: dict[str, str],
    seen_ids: set[str],
    errors: list[str],
) -> None:
    call = cast(dict[str, Any], raw) if isinstance(raw, dict) else None
    function = cast(dict[str, Any], call['function']) if call and isinstance(call.get('function'), dict) else None
    if call is None or function is None:
        errors.append(
            f'{where} must be {{"id": ..., "type": "function", "function": {{"name": ..., "arguments": ...}}}}'
        )
        return
    call_id = call.get('id')
    name = function.get('name')
    label = f'{where} ({name})' if isinstance(name, str) else where
    if not isinstance(call_id, str) or not call_id:
        errors.append(f'{label} has no "id"')
    elif call_id in seen_ids:
        errors.append(f'{label} reuses tool call id {call_id!r}')
    if call.get('type', 'function') != 'function':
        errors.append(f'{label} has type {call.get("type")!r}; only "function" is supported')
    if not isinstance(name, str) or not name:
        errors.append(f'{where} has no function name')
    elif tool_names is not None and name not in tool_names:
        errors.append(f'{label} calls {name!r}, which the line\'s "tools" do not define')
    arguments = function.get('arguments')
    if not isinstance(arguments, str):
        errors.append(f'{label} arguments must be a JSON string, not {_kind(arguments)}')
    else:
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as error:
            errors.append(f'{label} arguments are not valid JSON: {error.msg} at column {error.colno}')
        else:
            if not isinstance(parsed, dict):
                errors.append(f'{label} arguments must be a JSON object, not {_kind(parsed)}')
    if isinstance(call_id, str) and call_id and call_id not in seen_ids:
        seen_ids.add(call_id)
        pending[call_id] = name if isinstance(name, str) else '?'


def _check_tool_message(
    message: dict[str, Any], where: str, pending: dict[str, str], seen_ids: set[str], errors: list[str]
) -> None:
    call_id = message.get('tool_call_id')
    if not isinstance(call_id, str) or not call_id:
        errors.append(f'{where} (tool) has no "tool_call_id"')
    elif call_id not in pending:
        reason = 'answers it a second time' if call_id in seen_ids else 'answers no preceding tool call'
        errors.append(f'{where} (tool) with tool_call_id {call_id!r} {reason}')
    else:
        del pending[call_id]
    content = message.get('content')
    if not isinstance(content, str):
        errors.append(f'{where} (tool) content must be a string, not {_kind(content)}')


def _kind(value: Any) -> str:
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, dict):
        return 'an object'
    if isinstance(value, list):
        return 'a list'
    return 'a string' if isinstance(value, str) else 'a number'


def validate_lines(
    lines: list[tuple[int, str]],
    *,
    path: Path,
    model: str = DEFAULT_BASE_MODEL,
    epochs: int | None = None,
    context_limit: int | None = None,
    price_per_mtok: float | None = None,
    counter: TokenCounter | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> DatasetReport:
    """Validate `(line number, text)` pairs; see `validate_file`."""
    row = price_for(model)
    counter = counter or token_counter(row.encoding if row else 'o200k_base', allow_download=True)
    limit = context_limit or (row.context_limit if row else _DEFAULT_CONTEXT_LIMIT)
    report = DatasetReport(
        path=path,
        model=model,
        counter_label=counter.label,
        exact_tokens=counter.exact,
        context_limit=limit,
        price_per_mtok=price_per_mtok if price_per_mtok is not None else (row.training_per_mtok if row else None),
    )
    seen: dict[str, int] = {}
    for number, text in lines:
        if not text.strip():
            report.problems.append(Problem(number, 'empty line: every line must hold one example'))
            continue
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as error:
            report.problems.append(Problem(number, f'invalid JSON: {error.msg} at column {error.colno}'))
            continue
        report.examples += 1
        errors, warnings = check_example(data)
        report.problems += [Problem(number, message) for message in errors]
        report.problems += [Problem(number, message, 'warning') for message in warnings]
        canonical = json.dumps(data, sort_keys=True, separators=(',', ':'))
        if canonical in seen:
            report.problems.append(Problem(number, f'duplicate of line {seen[canonical]}', 'warning'))
        else:
            seen[canonical] = number
        if isinstance(data, Mapping):
            tokens = count_example_tokens(cast(Mapping[str, Any], data), counter)
            report.token_counts.append(tokens)
            if tokens > limit:
                report.problems.append(
                    Problem(
                        number,
                        f'{tokens:,} tokens, over the {limit:,}-token example limit of {model}: '
                        'OpenAI truncates it, which can cut off the answer; shorten or split it',
                    )
                )
    if report.examples < min_examples:
        report.problems.append(
            Problem(
                0,
                f'only {report.examples} example(s): OpenAI needs at least {MIN_EXAMPLES}, '
                'and 50-100 good ones is where a fine-tune starts to pay off',
                'warning',
            )
        )
    report.epochs_auto = epochs is None
    report.epochs = epochs if epochs is not None else auto_epochs(report.examples)
    return report


def validate_file(
    path: Path,
    *,
    model: str = DEFAULT_BASE_MODEL,
    epochs: int | None = None,
    context_limit: int | None = None,
    price_per_mtok: float | None = None,
    counter: TokenCounter | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> DatasetReport:
    """Validate a chat fine-tuning JSONL file.

    Args:
        path: The file.
        model: The base model it is meant for: sets the example limit, the encoding and the price.
        epochs: Epochs to price; OpenAI's default for the dataset size when omitted.
        context_limit: Overrides the model's example limit.
        price_per_mtok: Overrides the table's training price (USD per million tokens).
        counter: How to count tokens; tiktoken's encoding for `model` when omitted.
        min_examples: Fewer examples than this is a warning.

    Raises:
        TandemError: The file cannot be read.
    """
    if epochs is not None and epochs < 1:
        raise TandemError('--epochs must be at least 1.')
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise TandemError(f'cannot read {path}: {error.strerror or error}.') from error
    lines: list[tuple[int, str]] = []
    problems: list[Problem] = []
    chunks = raw.split(b'\n')
    if chunks and chunks[-1] == b'':
        chunks.pop()  # the newline that ends the last line
    for number, chunk in enumerate(chunks, start=1):
        try:
            lines.append((number, chunk.decode('utf-8').removesuffix('\r')))
        except UnicodeDecodeError as error:
            problems.append(Problem(number, f'not UTF-8 (byte {error.start + 1} of the line)'))
    report = validate_lines(
        lines,
        path=path,
        model=model,
        epochs=epochs,
        context_limit=context_limit,
        price_per_mtok=price_per_mtok,
        counter=counter,
        min_examples=min_examples,
    )
    report.problems = sorted([*problems, *report.problems], key=lambda problem: problem.line)
    return report
