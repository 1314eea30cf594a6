"""Shared pieces of the example-set tests: examples in the training format, and the CLI's environment."""

from __future__ import annotations

from typing import Any

from tandem.memory.examples import Example

CALC_EXAMPLE: dict[str, Any] = {
    'messages': [
        {'role': 'user', 'content': 'What is 17% of 2,340?'},
        {
            'role': 'assistant',
            'tool_calls': [
                {
                    'id': 'call_1',
                    'type': 'function',
                    'function': {'name': 'calculate', 'arguments': '{"expression": "0.17 * 2340"}'},
                }
            ],
        },
        {'role': 'tool', 'tool_call_id': 'call_1', 'content': '397.8'},
        {'role': 'assistant', 'content': '17% of 2,340 is 397.8.'},
    ]
}


def qa(question: str, answer: str) -> Example:
    """A one-turn example with no tool call."""
    return Example.of({'messages': [{'role': 'user', 'content': question}, {'role': 'assistant', 'content': answer}]})
