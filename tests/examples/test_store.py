"""Example sets: examples in the training format, stored per tenant and per user, searched by the KB's retriever."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.core.config import KnowledgeConfig
from tandem.agent.turn.run import run_turn, with_session
from tandem.memory.connection import connect
from tandem.memory.examples import Example, ExampleLibrary, ExampleSet, InvalidExample
from tandem.memory.knowledge.embeddings import openai_embedder
from tandem.memory.knowledge.store import list_knowledge_bases
from tests.examples.conftest import CALC_EXAMPLE, qa
from tests.support.deps import make_deps
from tests.support.fake_openai import FakeOpenAI
from tests.support.scripted import call, scripted_model

runner = CliRunner()
CONFIG = KnowledgeConfig()


def test_an_example_drops_its_system_message_and_keeps_its_tool_calls() -> None:
    example = Example.of({'messages': [{'role': 'system', 'content': 'be brief'}, *CALC_EXAMPLE['messages']]})

    assert [message['role'] for message in example.messages] == ['user', 'assistant', 'tool', 'assistant']
    assert example.messages[1]['tool_calls'][0]['function'] == {
        'name': 'calculate',
        'arguments': '{"expression": "0.17 * 2340"}',
    }
    assert example.question == 'What is 17% of 2,340?'
    assert example.tool_calls == 1
    assert example.tokens > 20


@pytest.mark.parametrize(
    ('messages', 'reason'),
    [
        ([{'role': 'assistant', 'content': 'hi'}], 'needs a user message'),
        ([{'role': 'user', 'content': 'hi'}], "ends with the assistant's answer"),
        (
            [
                {'role': 'user', 'content': 'hi'},
                {'role': 'tool', 'tool_call_id': 'x', 'content': '1'},
                {'role': 'assistant', 'content': 'ok'},
            ],
            "tool result 'x' answers no call",
        ),
        (
            [
                {'role': 'user', 'content': 'hi'},
                {'role': 'assistant', 'tool_calls': [{'id': 'c', 'function': {'name': 'f', 'arguments': '{'}}]},
            ],
            'the arguments of f are not JSON',
        ),
        ([{'role': 'narrator', 'content': 'hi'}], "role 'narrator'"),
    ],
)
def test_a_malformed_example_is_refused_with_the_reason(messages: list[dict[str, Any]], reason: str) -> None:
    with pytest.raises(InvalidExample, match=reason):
        Example.of({'messages': messages})


async def test_a_set_stores_each_example_once_in_the_order_added(redis: Redis) -> None:
    examples = ExampleSet(redis, tenant='acme')
    first = await examples.add(
        [qa('How do I reset my password?', 'Use the reset link.'), Example.of(CALC_EXAMPLE)], config=CONFIG
    )
    again = await examples.add([Example.of(CALC_EXAMPLE), qa('Where is my invoice?', 'Under Billing.')], config=CONFIG)

    assert len(first.added) == 2 and again.unchanged == [Example.of(CALC_EXAMPLE).id] and len(again.added) == 1
    assert await examples.count() == 3
    summaries = await examples.summaries()
    assert [summary.question for summary in summaries] == [
        'How do I reset my password?',
        'What is 17% of 2,340?',
        'Where is my invoice?',
    ]
    stored = await examples.get([summaries[1].id])
    assert stored == [Example.of(CALC_EXAMPLE)]  # tool calls, results and the origin come back as they went in

    assert await examples.remove([summaries[0].id, 'feedfeedfeed']) == [summaries[0].id]
    assert [summary.question for summary in await examples.summaries()] == [
        'What is 17% of 2,340?',
        'Where is my invoice?',
    ]


async def test_a_users_set_is_apart_from_the_tenants_and_neither_is_a_knowledge_base(redis: Redis) -> None:
    shared = ExampleSet(redis, tenant='acme')
    own = ExampleSet(redis, tenant='acme', user='ann')
    await shared.add([qa('shared question', 'shared answer')], config=CONFIG)
    await own.add([qa('own question', 'own answer')], config=CONFIG)

    assert [s.question for s in await shared.summaries()] == ['shared question']
    assert [s.question for s in await own.summaries()] == ['own question']
    assert await list_knowledge_bases(redis, tenant='acme', user='*') == []
    both = ExampleLibrary([shared, own], config=CONFIG)
    assert [example.question for example in await both.first(5)] == ['shared question', 'own question']
    other = ExampleLibrary(
        [ExampleSet(redis, tenant='acme'), ExampleSet(redis, tenant='acme', user='bob')], config=CONFIG
    )
    assert [example.question for example in await other.similar('own question', 5)] == ['shared question']


async def test_retrieval_finds_the_examples_whose_questions_are_most_alike(redis: Redis) -> None:
    examples = ExampleSet(redis, tenant='acme')
    await examples.add(
        [
            qa('How do I reset my password?', 'Use the reset link on the sign-in page.'),
            qa('Where can I download my invoices?', 'Under Billing, then Invoices.'),
            Example.of(CALC_EXAMPLE),
            qa('Can I change the invoice address?', 'Yes, in Billing settings.'),
        ],
        config=CONFIG,
    )
    library = ExampleLibrary([examples], config=CONFIG)

    found = await library.similar('I need last month invoice', 2)

    assert {example.question for example in found} == {
        'Where can I download my invoices?',
        'Can I change the invoice address?',
    }
    assert all(example.tokens > 0 for example in found)


# -- the CLI ------------------------------------------------------------------------------------------


def _write_training_file(path: Path) -> None:
    lines = [
        {'messages': [{'role': 'system', 'content': 'You are Tandem.'}, *CALC_EXAMPLE['messages']]},
        {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]},
    ]
    path.write_text('\n'.join(json.dumps(line) for line in lines) + '\nnot json\n', encoding='utf-8')


def test_import_list_export_and_rm_round_trip_a_training_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    training = tmp_path / 'train.jsonl'
    _write_training_file(training)
    curated = tmp_path / 'curated.yaml'
    curated.write_text(
        '- user: What is 2 to the 10th?\n'
        '  calls:\n'
        '    - tool: calculate\n'
        '      args: {expression: 2**10}\n'
        '      result: "1024"\n'
        '  assistant: 2 to the 10th is 1024.\n'
        '- user: No answer here\n',
        encoding='utf-8',
    )

    imported = runner.invoke(app, ['examples', 'import', str(training), str(curated)], env=cli_env)
    assert imported.exit_code == 0, imported.stderr
    assert 'train.jsonl line 3: not JSON' in imported.stderr
    assert "curated.yaml example 2: an example ends with the assistant's answer" in imported.stderr
    assert 'added 3 example(s) to default, 2 skipped' in imported.stderr

    listed = runner.invoke(app, ['examples', 'list', '--json'], env=cli_env)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [row['question'] for row in rows] == ['What is 17% of 2,340?', 'Hi', 'What is 2 to the 10th?']
    assert all(row['added_at'].startswith('20') and row['tokens'] > 0 for row in rows)

    out = tmp_path / 'back.jsonl'
    exported = runner.invoke(app, ['examples', 'export', '-o', str(out)], env=cli_env)
    assert exported.exit_code == 0, exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]['messages'] == CALC_EXAMPLE['messages']  # no system message: a turn brings its own
    assert lines[2]['messages'][1]['tool_calls'][0]['function'] == {
        'name': 'calculate',
        'arguments': '{"expression": "2**10"}',
    }
    validated = runner.invoke(app, ['tune', 'validate', str(out)], env=cli_env)
    assert validated.exit_code == 0, validated.stderr  # what a set exports, a fine-tune can train on

    again = runner.invoke(app, ['examples', 'import', str(out)], env=cli_env)
    assert 'added 0 example(s) to default, 3 already there' in again.stderr

    removed = runner.invoke(app, ['examples', 'rm', rows[1]['id'], 'nosuchid'], env=cli_env)
    assert removed.exit_code == 1
    assert 'nosuchid: no such example in' in removed.stderr and '(1 removed)' in removed.stderr
    cleared = runner.invoke(app, ['examples', 'rm', '--all', '--yes'], env=cli_env)
    assert 'removed 2 example(s) from default' in cleared.stderr
    empty = runner.invoke(app, ['examples', 'list'], env=cli_env)
    assert 'example set default is empty' in empty.stderr


def test_import_of_a_file_with_no_example_fails_in_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"prompt": "x", "completion": "y"}\n', encoding='utf-8')

    result = runner.invoke(app, ['examples', 'import', str(bad), str(tmp_path / 'missing.jsonl')], env=cli_env)

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith('error: cannot read examples from')
    assert 'Traceback' not in result.stderr


async def _store_sessions(redis_url: str, home: Path) -> None:
    client = await connect(redis_url, home=home)
    try:
        model, _ = scripted_model(call('calculate', expression='2+3'), 'It is 5. Mail ann@example.com.', 'Hello!')
        deps = make_deps(client, model, home=home, session='s1', user='alice')
        await run_turn(deps, 'what is 2+3?')
        await run_turn(with_session(deps, 's2'), 'hi')
    finally:
        await client.aclose()


def test_add_takes_stored_sessions_through_the_export_filters_and_scrubbing(
    redis_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    asyncio.run(_store_sessions(redis_url, tmp_path))

    added = runner.invoke(
        app, ['examples', 'add', '--user', 'alice', '--session', 's1', '--scrub-pii', '--owner', 'alice'], env=cli_env
    )
    assert added.exit_code == 0, added.stderr
    assert 'added 1 example(s) to alice/default' in added.stderr

    listed = runner.invoke(app, ['examples', 'list', '--owner', 'alice', '--json'], env=cli_env)
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row['question'] == 'what is 2+3?'
    out = tmp_path / 'alice.jsonl'
    runner.invoke(app, ['examples', 'export', '--owner', 'alice', '-o', str(out)], env=cli_env)
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert [message['role'] for message in line['messages']] == ['user', 'assistant', 'tool', 'assistant']
    assert 'ann@example.com' not in out.read_text()
    assert line['tools'][0]['function']['name'] == 'calculate'
    tenant_set = runner.invoke(app, ['examples', 'list', '--json'], env=cli_env)
    assert tenant_set.stdout == ''


async def test_examples_read_before_are_never_shown_once_removed_nor_across_tenants(redis: Redis) -> None:
    acme, other = ExampleSet(redis, tenant='acme'), ExampleSet(redis, tenant='other')
    same = {'messages': CALC_EXAMPLE['messages']}
    await acme.add([Example.of(same, origin='session acme/s1')], config=CONFIG)
    await other.add([Example.of(same, origin='session other/s9')], config=CONFIG)
    library = ExampleLibrary([acme], config=CONFIG)
    assert [e.origin for e in await library.first(3)] == ['session acme/s1']  # read, and remembered
    assert [e.origin for e in await library.similar('What is 17% of 2,340?', 3)] == ['session acme/s1']

    theirs = ExampleLibrary([other], config=CONFIG)
    assert [e.origin for e in await theirs.first(3)] == ['session other/s9']
    assert [e.origin for e in await theirs.chosen([Example.of(same).id])] == ['session other/s9']

    await acme.remove([Example.of(same).id])
    assert await library.first(3) == []
    assert await library.chosen([Example.of(same).id]) == []
    assert await library.similar('What is 17% of 2,340?', 3) == []


async def test_dense_and_hybrid_search_use_the_vectors_stored_with_the_examples(redis: Redis) -> None:
    examples = ExampleSet(redis, tenant='acme')
    with FakeOpenAI(embedding_models=['tiny-embed']) as server:
        embedder = openai_embedder('tiny-embed', base_url=server.url)
        await examples.add(
            [qa('How do I reset my password?', 'Settings, then Security.'), qa('Where are my invoices?', 'Billing.')],
            config=CONFIG,
            embedder=embedder,
        )
        stored = len(server.embedding_requests)
        info = await examples.kb.info()
        dense = ExampleLibrary([examples], config=CONFIG, embedder=embedder, search='dense')
        hybrid = ExampleLibrary([examples], config=CONFIG, embedder=embedder)

        found_dense = await dense.similar('Where are my invoices?', 1)
        found_hybrid = await hybrid.similar('Where are my invoices?', 2)

        assert len(server.embedding_requests) > stored  # the question was embedded, not only BM25-matched
    assert info is not None and (info.embed_model, info.vectors) == ('openai:tiny-embed', 2)
    assert type(dense.retriever).__name__ == 'DenseRetriever' and type(hybrid.retriever).__name__ == 'HybridRetriever'
    assert [e.question for e in found_dense] == ['Where are my invoices?']
    assert found_hybrid[0].question == 'Where are my invoices?' and len(found_hybrid) == 2
