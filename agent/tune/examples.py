"""Example sets from the same sources as fine-tuning data: traces through `tune export`'s steps, or files.

`tandem examples add` runs stored sessions or a scenario report through `agent.tune.export.build_examples`,
with the same filters and scrubbing as `tandem tune export` and the system prompt dropped (a turn shows
examples under its own prompt). `tandem examples import` reads a training file (JSONL, one example per
line, as `tune export` writes and `tune submit` sends) or a curated YAML file:

```yaml
- user: What is 17% of 2,340?
  calls:
    - tool: calc
      args: {expression: 0.17 * 2340}
      result: '397.8'
  assistant: 17% of 2,340 is 397.8.
- messages: [...]          # or any example in the training format
```
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from tandem.agent.core.errors import TandemError
from tandem.agent.core.files import write_atomically
from tandem.memory.examples import Example, InvalidExample

__all__ = ['ReadResult', 'examples_from_lines', 'read_examples', 'write_examples']


@dataclass
class ReadResult:
    """The examples read, and what was skipped and why."""

    examples: list[Example] = field(default_factory=list[Example])
    skipped: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    """`(where, reason)`: `train.jsonl line 3`, `a tool result answers no call`."""


def examples_from_lines(lines: Iterable[tuple[str, Mapping[str, Any]]]) -> ReadResult:
    """Examples from `(where, training line)` pairs, each checked; the bad ones skipped with their reason."""
    result = ReadResult()
    for where, line in lines:
        try:
            result.examples.append(Example.of(line, origin=where))
        except InvalidExample as error:
            result.skipped.append((where, str(error)))
    return result


def read_examples(path: Path) -> ReadResult:
    """The examples in a JSONL training file, or a YAML list of examples (`.yaml`, `.yml`).

    Raises:
        TandemError: The file cannot be read, or is not JSONL or a YAML list.
    """
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise TandemError(f'cannot read examples from {path}: {reason}.') from error
    if path.suffix.lower() in ('.yaml', '.yml'):
        return examples_from_lines(_yaml_lines(path, text))
    result = ReadResult()
    lines: list[tuple[str, Mapping[str, Any]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f'{path.name} line {number}'
        try:
            data: Any = json.loads(raw)
        except json.JSONDecodeError as error:
            result.skipped.append((where, f'not JSON ({error.msg}); a training file has one example per line'))
            continue
        if not isinstance(data, dict):
            result.skipped.append((where, 'not an object with "messages"'))
            continue
        lines.append((where, cast(dict[str, Any], data)))
    found = examples_from_lines(lines)
    result.examples, result.skipped = found.examples, result.skipped + found.skipped
    return result


def _yaml_lines(path: Path, text: str) -> list[tuple[str, Mapping[str, Any]]]:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TandemError(f'{path} is not valid YAML: {error}') from error
    if not isinstance(data, list):
        raise TandemError(f'{path}: write the examples as a YAML list, one "- user: ..." entry each.')
    lines: list[tuple[str, Mapping[str, Any]]] = []
    for index, item in enumerate(cast(list[Any], data), 1):
        where = f'{path.name} example {index}'
        if isinstance(item, dict) and 'messages' in item:
            lines.append((where, cast(dict[str, Any], item)))
        else:
            lines.append((where, _shorthand(item)))
    return lines


def _shorthand(item: Any) -> Mapping[str, Any]:
    """`{user, calls?, assistant}` as a training line; anything malformed becomes a line `Example.of` refuses."""
    if not isinstance(item, dict):
        return {}
    entry = cast(dict[str, Any], item)
    messages: list[dict[str, Any]] = [{'role': 'user', 'content': entry.get('user')}]
    calls = cast(list[Any], entry.get('calls') or [])
    if calls:
        made: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for number, raw in enumerate(calls, 1):
            call = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
            call_id = f'call_{number}'
            arguments: Any = call.get('args') or {}
            made.append(
                {
                    'id': call_id,
                    'type': 'function',
                    'function': {'name': call.get('tool'), 'arguments': json.dumps(arguments, ensure_ascii=False)},
                }
            )
            result = call.get('result', '')
            content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
            results.append({'role': 'tool', 'tool_call_id': call_id, 'content': content})
        messages += [{'role': 'assistant', 'tool_calls': made}, *results]
    if entry.get('assistant') is not None:
        messages.append({'role': 'assistant', 'content': entry['assistant']})
    return {'messages': messages}


def write_examples(path: Path, examples: Sequence[Example]) -> None:
    """Write the examples as a training file, one JSON line each, atomically.

    Raises:
        TandemError: The folder cannot be written.
    """
    write_atomically(
        path,
        (json.dumps(example.training_line(), ensure_ascii=False, separators=(',', ':')) + '\n' for example in examples),
    )
