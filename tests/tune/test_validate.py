"""`tandem tune validate`: every error names its line; tokens, limits, epochs and cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.core.tokens import TokenCounter, count_example_tokens, token_counter
from tandem.agent.tune.pricing import price_for
from tandem.agent.tune.validate import auto_epochs, validate_file

runner = CliRunner()

GOOD = {'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}]}
TOOLS = [{'type': 'function', 'function': {'name': 'calculate', 'parameters': {'type': 'object'}}}]


def _call(call_id: str = 'c1', arguments: str = '{"expression": "2+3"}', name: str = 'calculate') -> dict[str, Any]:
    return {'id': call_id, 'type': 'function', 'function': {'name': name, 'arguments': arguments}}


def _write(path: Path, *lines: Any) -> Path:
    path.write_text(''.join((line if isinstance(line, str) else json.dumps(line)) + '\n' for line in lines))
    return path


@pytest.fixture
def byte_counter() -> TokenCounter:
    """A real tiktoken encoding with one token per byte: exact, and needs no download."""
    encoding = tiktoken.Encoding(
        name='bytes', pat_str=r'[\s\S]', mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={}
    )
    return TokenCounter('bytes', 'bytes', True, encoding.encode, encoding.decode)


def _errors(path: Path, **options: Any) -> list[str]:
    return [str(problem) for problem in validate_file(path, min_examples=1, **options).errors]


def test_a_good_file_has_no_errors(tmp_path: Path) -> None:
    with_tools = {
        'messages': [
            {'role': 'system', 'content': 'Be exact.'},
            {'role': 'user', 'content': '2+3?'},
            {'role': 'assistant', 'tool_calls': [_call()]},
            {'role': 'tool', 'tool_call_id': 'c1', 'content': '5'},
            {'role': 'assistant', 'content': '5', 'weight': 1},
        ],
        'tools': TOOLS,
    }
    assert _errors(_write(tmp_path / 'a.jsonl', GOOD, with_tools)) == []


@pytest.mark.parametrize(
    ('line', 'error'),
    [
        ('not json', 'line 2: invalid JSON: Expecting value at column 1'),
        ('', 'line 2: empty line: every line must hold one example'),
        ([1, 2], 'line 2: an example must be a JSON object, not a list'),
        ({'messages': []}, 'line 2: "messages" must be a non-empty list'),
        (
            {'messages': [{'role': 'robot', 'content': 'x'}, {'role': 'assistant', 'content': 'y'}]},
            "line 2: messages[0] has role 'robot'; allowed: system, user, assistant, tool",
        ),
        (
            {'messages': [{'role': 'user', 'content': 'x'}]},
            "line 2: the last message must be the assistant's, not 'user'",
        ),
        (
            {'messages': [{'role': 'user', 'content': '  '}, {'role': 'assistant', 'content': 'y'}]},
            'line 2: messages[0] (user) has empty content',
        ),
        (
            {'messages': [{'role': 'user', 'content': 'x'}, {'role': 'assistant'}]},
            'line 2: messages[1] (assistant) has neither content nor tool calls',
        ),
        (
            {
                'messages': [
                    {'role': 'user', 'content': 'x'},
                    {'role': 'assistant', 'tool_calls': [_call(arguments='{expression: 1}')]},
                    {'role': 'tool', 'tool_call_id': 'c1', 'content': '1'},
                    {'role': 'assistant', 'content': '1'},
                ]
            },
            'line 2: messages[1].tool_calls[0] (calculate) arguments are not valid JSON: '
            'Expecting property name enclosed in double quotes at column 2',
        ),
        (
            {
                'messages': [
                    {'role': 'user', 'content': 'x'},
                    {'role': 'assistant', 'tool_calls': [_call(arguments='[1]')]},
                    {'role': 'tool', 'tool_call_id': 'c1', 'content': '1'},
                    {'role': 'assistant', 'content': '1'},
                ]
            },
            'line 2: messages[1].tool_calls[0] (calculate) arguments must be a JSON object, not a list',
        ),
        (
            {
                'messages': [
                    {'role': 'user', 'content': 'x'},
                    {'role': 'assistant', 'tool_calls': [_call()]},
                    {'role': 'assistant', 'content': '5'},
                ]
            },
            "line 2: tool call 'c1' (calculate) has no tool message answering it before messages[2]",
        ),
        (
            {
                'messages': [
                    {'role': 'user', 'content': 'x'},
                    {'role': 'tool', 'tool_call_id': 'nope', 'content': '5'},
                    {'role': 'assistant', 'content': '5'},
                ]
            },
            "line 2: messages[1] (tool) with tool_call_id 'nope' answers no preceding tool call",
        ),
        (
            {
                'messages': [
                    {'role': 'user', 'content': 'x'},
                    {'role': 'assistant', 'tool_calls': [_call(name='launch')]},
                    {'role': 'tool', 'tool_call_id': 'c1', 'content': 'ok'},
                    {'role': 'assistant', 'content': 'done'},
                ],
                'tools': TOOLS,
            },
            "line 2: messages[1].tool_calls[0] (launch) calls 'launch', which the line's \"tools\" do not define",
        ),
        (
            {'messages': [{'role': 'user', 'content': 'x'}, {'role': 'assistant', 'content': 'y', 'weight': 0}]},
            'line 2: no assistant message has weight 1: there is nothing to train on',
        ),
    ],
)
def test_each_error_names_its_line(tmp_path: Path, line: Any, error: str) -> None:
    path = _write(tmp_path / 'bad.jsonl', GOOD, line, GOOD | {'messages': [*GOOD['messages']]})
    assert _errors(path) == [error]


def test_a_tool_call_answered_twice_is_an_error(tmp_path: Path) -> None:
    twice = {
        'messages': [
            {'role': 'user', 'content': 'x'},
            {'role': 'assistant', 'tool_calls': [_call()]},
            {'role': 'tool', 'tool_call_id': 'c1', 'content': '5'},
            {'role': 'tool', 'tool_call_id': 'c1', 'content': '5'},
            {'role': 'assistant', 'content': '5'},
        ]
    }
    assert _errors(_write(tmp_path / 'x.jsonl', twice)) == [
        "line 1: messages[3] (tool) with tool_call_id 'c1' answers it a second time"
    ]


def test_non_utf8_lines_are_errors_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / 'latin1.jsonl'
    path.write_bytes(json.dumps(GOOD).encode() + b'\n' + '{"messages": "caf\xe9"}'.encode('latin-1') + b'\n')
    assert _errors(path) == ['line 2: not UTF-8 (byte 18 of the line)']


def test_too_few_examples_and_duplicates_are_warnings(tmp_path: Path) -> None:
    report = validate_file(_write(tmp_path / 'few.jsonl', GOOD, GOOD))
    assert report.ok
    assert [str(problem) for problem in report.warnings] == [
        'file: only 2 example(s): OpenAI needs at least 10, and 50-100 good ones is where a fine-tune starts to pay off',
        'line 2: duplicate of line 1',
    ]


def test_tokens_are_counted_with_tiktoken_the_cookbook_way(byte_counter: TokenCounter) -> None:
    # 3 for the reply priming, then 3 per message plus role and content.
    assert count_example_tokens(GOOD, byte_counter) == 3 + (3 + 4 + 2) + (3 + 9 + 2)
    with_call = {'messages': [{'role': 'assistant', 'tool_calls': [_call(arguments='{}')]}], 'tools': TOOLS}
    tools_json = json.dumps(TOOLS, separators=(',', ':'))
    assert count_example_tokens(with_call, byte_counter) == 3 + (3 + 9) + (3 + 9 + 2) + len(tools_json)


def test_examples_over_the_context_limit_are_errors_and_billing_caps_them(
    tmp_path: Path, byte_counter: TokenCounter
) -> None:
    long = {'messages': [{'role': 'user', 'content': 'x' * 200}, {'role': 'assistant', 'content': 'y'}]}
    path = _write(tmp_path / 'long.jsonl', GOOD, long)
    report = validate_file(path, context_limit=100, counter=byte_counter, epochs=2, price_per_mtok=10.0, min_examples=1)
    assert [str(problem) for problem in report.errors] == [
        'line 2: 223 tokens, over the 100-token example limit of gpt-4.1-mini-2025-04-14: '
        'OpenAI truncates it, which can cut off the answer; shorten or split it'
    ]
    assert report.token_counts == [26, 223]
    assert report.billed_tokens_per_epoch == 26 + 100
    assert report.training_tokens == 2 * 126
    assert report.cost_usd == pytest.approx(2 * 126 * 10.0 / 1e6)


def test_epochs_default_like_openai_and_the_price_table_applies(tmp_path: Path, byte_counter: TokenCounter) -> None:
    assert [auto_epochs(n) for n in (5, 10, 34, 100, 8333, 8334, 20000)] == [20, 10, 3, 3, 3, 2, 1]
    report = validate_file(
        _write(tmp_path / 'a.jsonl', *[GOOD] * 12), counter=byte_counter, model='gpt-4o-mini-2024-07-18'
    )
    assert report.epochs == 8 and report.epochs_auto
    assert report.price_per_mtok == 3.0 and report.context_limit == 65_536
    assert report.cost_usd == pytest.approx(12 * 26 * 8 * 3.0 / 1e6)
    unknown = validate_file(_write(tmp_path / 'b.jsonl', GOOD), counter=byte_counter, model='my-own-model')
    assert unknown.price_per_mtok is None and unknown.cost_usd is None


def test_price_table_matches_dated_and_fine_tuned_names() -> None:
    assert price_for('gpt-4.1-mini-2025-04-14').model == 'gpt-4.1-mini'  # type: ignore[union-attr]
    assert price_for('gpt-4.1-2025-04-14').model == 'gpt-4.1'  # type: ignore[union-attr]
    assert price_for('openai:ft:gpt-4o-mini-2024-07-18:acme:support:abc').model == 'gpt-4o-mini'  # type: ignore[union-attr]
    assert price_for('qwen2.5') is None


def test_offline_counts_say_they_are_estimates() -> None:
    counter = token_counter('o200k_base')
    assert not counter.exact
    assert 'estimate' in counter.label or 'standing in' in counter.label
    assert 0 < counter.count('hello world, how are you?') < 20


def test_cli_exits_non_zero_on_errors_and_prints_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('TANDEM_HOME', str(tmp_path / 'home'))
    monkeypatch.delenv('TANDEM_CONFIG', raising=False)
    monkeypatch.chdir(tmp_path)
    bad = _write(tmp_path / 'bad.jsonl', GOOD, 'oops')
    result = runner.invoke(app, ['tune', 'validate', str(bad)])
    assert result.exit_code == 1
    assert 'line 2: invalid JSON' in result.stderr
    assert 'has 1 error(s); each names its line above' in result.stderr

    good = _write(tmp_path / 'good.jsonl', *[GOOD] * 10)
    result = runner.invoke(app, ['tune', 'validate', str(good), '--json', '--epochs', '2', '--price-per-mtok', '1'])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data['ok'] and data['examples'] == 10 and data['epochs'] == 2 and not data['epochs_auto']
    assert data['tokens']['exact'] is False
    assert data['estimated_cost_usd'] == pytest.approx(data['training_tokens'] / 1e6, abs=1e-4)

    missing = runner.invoke(app, ['tune', 'validate', str(tmp_path / 'nope.jsonl')])
    assert missing.exit_code == 1 and 'cannot read' in missing.stderr
