"""Shared pieces of the example-set tests: examples in the training format, and the CLI's environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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


@pytest.fixture
def cli_env(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'TANDEM_CONFIG', 'TANDEM_BACKBONE'):
        monkeypatch.delenv(name, raising=False)
    return {
        'TANDEM_HOME': str(tmp_path / 'home'),
        'TANDEM_REDIS_URL': redis_url,
        'TANDEM_TENANT': 'acme',
        'XDG_CONFIG_HOME': str(tmp_path),
    }
