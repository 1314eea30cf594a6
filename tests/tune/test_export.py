"""`tandem tune export`: sessions really stored through the runtime become valid fine-tuning JSONL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.tune.export import (
    ExportOptions,
    SessionQuery,
    build_examples,
    openai_messages,
    session_traces,
    tool_definitions,
    write_jsonl,
)
from tandem.agent.tune.scrub import scrub_pii
from tandem.agent.tune.validate import validate_file
from tandem.agent.turn.run import run_turn, with_session
from tandem.memory.connection import connect
from tandem.tools.registry import discover_plugins
from tests.support.deps import make_deps
from tests.support.scripted import Call, call, scripted_model

runner = CliRunner()


def _tools() -> list[dict[str, Any]]:
    plugins = discover_plugins()
    return tool_definitions([plugins['calc'].build(), plugins['clock'].build()])


async def _store_sessions(redis: Redis, home: Path) -> None:
    """Three sessions through the real runtime: tool calls, parallel calls, a plain answer, two users."""
    model, _ = scripted_model(
        call('calculate', expression='2+3'),
        'It is 5. Mail me at ann@example.com.',
        Call((('calculate', {'expression': '6*7'}), ('now', {'timezone': 'UTC'}))),
        '42, and it is noon.',
        'Hello!',
        call('calculate', expression='2+3'),
        'It is 5. Mail me at ann@example.com.',
    )
    deps = make_deps(redis, model, home=home, session='s1', user='alice')
    await run_turn(deps, 'what is 2+3?')
    await run_turn(deps, 'what is 6*7, and the time?')
    await run_turn(with_session(deps, 's2'), 'hi')
    bob = make_deps(redis, model, home=home, session='s3', user='bob')
    await run_turn(bob, 'what is 2+3?')


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_stored_sessions_export_to_lines_that_all_pass_validation(redis: Redis, tmp_path: Path) -> None:
    await _store_sessions(redis, tmp_path)
    traces = await session_traces(redis, SessionQuery(tenant='acme'))
    result = build_examples(traces, ExportOptions(tools=_tools(), dedup=False))
    out = tmp_path / 'data.jsonl'
    write_jsonl(out, result.train)

    report = validate_file(out, min_examples=1)
    assert report.ok, [str(problem) for problem in report.errors]
    assert report.examples == 3 and not result.dropped

    examples = _lines(out)
    s1 = examples[0]['messages']
    assert [m['role'] for m in s1] == [
        'system',
        'user',
        'assistant',
        'tool',
        'assistant',
        'user',
        'assistant',
        'tool',
        'tool',
        'assistant',
    ]
    assert s1[0]['content'].startswith('You are Tandem, a careful, concise assistant.')
    assert s1[2]['tool_calls'] == [
        {'id': 'call_1', 'type': 'function', 'function': {'name': 'calculate', 'arguments': '{"expression":"2+3"}'}}
    ]
    assert s1[3] == {'role': 'tool', 'tool_call_id': 'call_1', 'content': '5'}
    assert [c['id'] for c in s1[6]['tool_calls']] == ['call_2', 'call_3']
    assert {m['tool_call_id'] for m in s1[7:9]} == {'call_2', 'call_3'}
    assert {tool['function']['name'] for tool in examples[0]['tools']} == {'calculate', 'now'}


async def test_every_tool_call_has_its_result_right_after_it(redis: Redis, tmp_path: Path) -> None:
    await _store_sessions(redis, tmp_path)
    result = build_examples(await session_traces(redis, SessionQuery(tenant='acme')), ExportOptions(tools=_tools()))
    for example in result.train:
        messages = example['messages']
        for index, message in enumerate(messages):
            for number, tool_call in enumerate(message.get('tool_calls', [])):
                answer = messages[index + 1 + number]
                assert answer['role'] == 'tool' and answer['tool_call_id'] == tool_call['id']
                json.loads(tool_call['function']['arguments'])


async def test_filters_by_user_session_and_date(redis: Redis, tmp_path: Path) -> None:
    await _store_sessions(redis, tmp_path)

    async def sources(**query: Any) -> list[str]:
        return [trace.source for trace in await session_traces(redis, SessionQuery(tenant='acme', **query))]

    assert await sources(user='bob') == ['session acme/s3']
    assert await sources(sessions=['s2']) == ['session acme/s2']
    assert await sources(since=datetime.now(UTC) + timedelta(days=1)) == []
    assert await sources(until=datetime.now(UTC) - timedelta(days=1)) == []
    assert len(await sources(since=datetime.now(UTC) - timedelta(days=1))) == 3
    assert await session_traces(redis, SessionQuery(tenant='other')) == []


async def test_system_prompt_kept_shortened_or_dropped(redis: Redis, tmp_path: Path) -> None:
    await _store_sessions(redis, tmp_path)
    traces = await session_traces(redis, SessionQuery(tenant='acme', sessions=['s2']))

    def first(**options: Any) -> dict[str, Any]:
        return build_examples(traces, ExportOptions(tools=_tools(), **options)).train[0]['messages'][0]

    assert 'careful, concise' in first(system='keep')['content']
    short = first(system='short')
    today = traces[0].started.date().isoformat() if traces[0].started else ''
    assert short == {'role': 'system', 'content': f'You are Tandem, a concise assistant. Today is {today}.'}
    assert first(system='drop')['role'] == 'user'
    assert first(system_text='Be brief.') == {'role': 'system', 'content': 'Be brief.'}


async def test_pii_is_scrubbed_everywhere_and_arguments_stay_json(redis: Redis, tmp_path: Path) -> None:
    model, _ = scripted_model(call('calculate', expression='1+1 # ann@example.com'), 'Call +44 20 7946 0958.')
    await run_turn(make_deps(redis, model, home=tmp_path, session='p1'), 'I am ann@example.com, 555-123-4567')
    traces = await session_traces(redis, SessionQuery(tenant='acme'))
    example = build_examples(traces, ExportOptions(tools=_tools(), scrubbers=[scrub_pii])).train[0]
    text = json.dumps(example)
    assert 'ann@example.com' not in text and '555-123-4567' not in text and '7946' not in text
    messages = example['messages']
    assert messages[1]['content'] == 'I am [EMAIL], [PHONE]'
    assert json.loads(messages[2]['tool_calls'][0]['function']['arguments']) == {'expression': '1+1 # [EMAIL]'}
    assert messages[-1]['content'] == 'Call [PHONE].'


async def test_duplicates_are_dropped_and_the_split_is_seeded(redis: Redis, tmp_path: Path) -> None:
    await _store_sessions(redis, tmp_path)  # s1 and s3 differ; s3 repeats s1's first turn only
    steps = ['Same answer.'] * 12
    model, _ = scripted_model(*steps)
    deps = make_deps(redis, model, home=tmp_path)
    for index in range(12):
        await run_turn(with_session(deps, f'd{index}'), 'same question' if index < 6 else f'question {index}')
    traces = await session_traces(redis, SessionQuery(tenant='acme'))
    options = ExportOptions(tools=_tools(), system='drop', validation_fraction=0.25, seed=7)
    result = build_examples(traces, options)
    assert result.duplicates == 5  # six identical sessions keep one
    assert result.examples == 15 - 5
    assert len(result.validation) == round(10 * 0.25) and len(result.train) == 10 - len(result.validation)
    again = build_examples(traces, options)
    assert again.validation == result.validation
    other = build_examples(traces, ExportOptions(tools=_tools(), system='drop', validation_fraction=0.25, seed=8))
    assert other.validation != result.validation


def test_a_conversation_that_cannot_be_an_example_is_reported_not_written() -> None:
    from pydantic_ai.messages import ModelRequest, ModelResponse, ToolCallPart, UserPromptPart

    from tandem.agent.tune.export import Trace

    dangling = [
        ModelRequest(parts=[UserPromptPart('go')]),
        ModelResponse(parts=[ToolCallPart('calculate', {'expression': '1'}, tool_call_id='x')]),
    ]
    result = build_examples([Trace('session acme/broken', dangling)], ExportOptions(tools=_tools()))
    assert result.train == []
    assert result.dropped == [
        ('session acme/broken', "tool call 'call_1' (calculate) has no tool message answering it")
    ]


def test_openai_messages_leaves_out_thinking_and_keeps_text_with_calls() -> None:
    from pydantic_ai.messages import (
        ModelRequest,
        ModelResponse,
        TextPart,
        ThinkingPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )

    system, messages = openai_messages(
        [
            ModelRequest(parts=[UserPromptPart('q')], instructions='Be exact.'),
            ModelResponse(
                parts=[ThinkingPart('hmm'), TextPart('Let me check.'), ToolCallPart('now', {}, tool_call_id='a')]
            ),
            ModelRequest(parts=[ToolReturnPart('now', 'noon', tool_call_id='a')], instructions='Be exact (2).'),
            ModelResponse(parts=[TextPart('Noon.')]),
        ]
    )
    assert system == 'Be exact.'
    assert messages == [
        {'role': 'user', 'content': 'q'},
        {
            'role': 'assistant',
            'content': 'Let me check.',
            'tool_calls': [{'id': 'a', 'type': 'function', 'function': {'name': 'now', 'arguments': '{}'}}],
        },
        {'role': 'tool', 'tool_call_id': 'a', 'content': 'noon'},
        {'role': 'assistant', 'content': 'Noon.'},
    ]


async def _seed_for_cli(redis_url: str, home: Path) -> None:
    client = await connect(redis_url, home=home)
    try:
        await _store_sessions(client, home)
        model, _ = scripted_model(*[f'answer {n}' for n in range(10)])
        deps = make_deps(client, model, home=home)
        for index in range(10):
            await run_turn(with_session(deps, f'e{index}'), f'question {index}')
    finally:
        await client.aclose()


def test_cli_export_writes_train_and_validation_files_then_validate_passes(
    redis_url: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    asyncio.run(_seed_for_cli(redis_url, tmp_path))
    # A deep folder, as in a checkout at a long path: the message must not wrap whatever the lengths.
    deep = tmp_path.joinpath(*['a-rather-long-directory-name'] * 8)
    out = deep / 'out' / 'data.jsonl'
    result = runner.invoke(
        app,
        [
            'tune',
            'export',
            '--out',
            str(out),
            '--tools',
            'calc,clock',
            '--scrub-pii',
            '--validation-fraction',
            '0.2',
            '--system',
            'short',
        ],
        env=cli_env,
    )
    assert result.exit_code == 0, result.stderr
    held = deep / 'out' / 'data.validation.jsonl'
    assert f'wrote 10 example(s) to {out} and 3 to {held}' in result.stderr
    assert len(_lines(out)) == 10 and len(_lines(held)) == 3
    assert 'ann@example.com' not in out.read_text() + held.read_text()

    checked = runner.invoke(app, ['tune', 'validate', str(out)], env=cli_env)
    assert checked.exit_code == 0, checked.stderr
    assert 'examples' in checked.stdout and 'estimated cost' in checked.stdout


def test_cli_export_with_nothing_stored_fails_plainly(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = runner.invoke(app, ['tune', 'export', '--out', str(tmp_path / 'x.jsonl')], env=cli_env)
    assert result.exit_code == 1
    assert 'no examples from tenant acme (0 conversation(s) found)' in result.stderr
    assert not (tmp_path / 'x.jsonl').exists()


def test_cli_export_rejects_a_bad_scrubber(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = runner.invoke(
        app, ['tune', 'export', '--out', str(tmp_path / 'x.jsonl'), '--scrub', 'nosuchmod:f'], env=cli_env
    )
    assert result.exit_code == 1
    assert "cannot import scrubber module 'nosuchmod'" in result.stderr


def test_cli_export_loads_a_scrubber_hook_from_the_current_directory(cli_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / 'my_scrub.py').write_text('def no_alice(text):\n    return text.replace("alice", "[NAME]")\n')
    result = runner.invoke(
        app, ['tune', 'export', '--out', str(tmp_path / 'x.jsonl'), '--scrub', 'my_scrub:no_alice'], env=cli_env
    )
    assert 'my_scrub' not in result.stderr  # it imported; with nothing stored, the export then finds nothing
    assert 'no examples from' in result.stderr
