"""Token counts of fine-tuning examples, the way OpenAI's cookbook counts them (the counter is `agent.core.tokens`')."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from tandem.agent.core.tokens import TokenCounter

__all__ = ['count_example_tokens']


def count_example_tokens(example: Mapping[str, Any], counter: TokenCounter) -> int:
    """Tokens of one chat example, counted the way OpenAI's fine-tuning cookbook does.

    Each message costs 3 tokens plus its role, content and name (a name one more); each tool call
    its function name and arguments; the reply is primed with 3 more. The tool definitions are
    counted once, as their JSON: OpenAI does not document the exact overhead of function
    definitions, so counts with tools are within a few percent.
    """
    total = 3
    for raw in cast(list[Any], example.get('messages') or []):
        if not isinstance(raw, dict):
            continue
        message = cast(dict[str, Any], raw)
        total += 3
        for key in ('role', 'content', 'name'):
            value = message.get(key)
            if isinstance(value, str):
                total += counter.count(value)
                if key == 'name':
                    total += 1
            elif isinstance(value, list):
                for part in cast(list[Any], value):
                    if isinstance(part, dict) and isinstance(text := cast(dict[str, Any], part).get('text'), str):
                        total += counter.count(text)
        for call in cast(list[Any], message.get('tool_calls') or []):
            function: Any = cast(dict[str, Any], call).get('function') if isinstance(call, dict) else None
            if isinstance(function, dict):
                fields = cast(dict[str, Any], function)
                total += 3 + sum(counter.count(str(fields.get(key) or '')) for key in ('name', 'arguments'))
    tools = example.get('tools')
    if tools:
        total += counter.count(json.dumps(tools, separators=(',', ':'), ensure_ascii=False))
    return total
