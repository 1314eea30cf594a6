"""Few-shot examples in a turn: which are chosen, within what budget, and how they reach the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolCallPart, ToolReturnPart, UserPromptPart
from redis.asyncio import Redis

from tandem.agent.core.config import BackboneConfig, ExamplesConfig, KnowledgeConfig, Settings
from tandem.agent.turn.agent import run_capabilities
from tandem.agent.turn.build import build_deps
from tandem.agent.turn.providers.examples import ExampleMessages, example_messages, select_examples
from tandem.agent.turn.request import TurnRequest
from tandem.agent.turn.run import TurnResult, run_turn, with_session
from tandem.memory.examples import Example, ExampleLibrary, ExampleSet, fit_examples
from tests.examples.conftest import CALC_EXAMPLE, qa
from tests.support.deps import scripted_backbone
from tests.support.fake_openai import FakeOpenAI, Text
from tests.support.repl import drive_repl
from tests.support.scripted import scripted_model

CONFIG = KnowledgeConfig()
SUPPORT = [
    qa('How do I reset my password?', 'Open Settings, then Security, and choose Reset password.'),
    qa('Where can I download my invoices?', 'Under Billing, then Invoices: each has a PDF link.'),
    qa('Can I change the address on an invoice?', 'Yes: Billing, then Details, before the invoice is issued.'),
    qa('How do I delete my account?', 'Settings, then Account, then Delete; it takes 30 days.'),
]


def _sized(tokens: int, name: str) -> Example:
    example = qa(name, 'answer')
    return Example(id=example.id, messages=example.messages, tokens=tokens)


def test_examples_fit_the_count_and_the_token_budget_passing_over_long_ones() -> None:
    candidates = [_sized(300, 'a'), _sized(900, 'b'), _sized(400, 'c'), _sized(200, 'd'), _sized(100, 'e')]

    assert [e.question for e in fit_examples(candidates, k=3, budget_tokens=1000)] == ['a', 'c', 'd']
    assert [e.question for e in fit_examples(candidates, k=2, budget_tokens=1000)] == ['a', 'c']
    assert [e.question for e in fit_examples(candidates, k=5, budget_tokens=250)] == ['d']
    assert fit_examples(candidates, k=3, budget_tokens=50) == []


def test_a_tool_call_example_becomes_a_call_and_its_result_with_ids_of_its_own() -> None:
    messages = example_messages([Example.of(CALC_EXAMPLE), qa('Hi', 'Hello!')])

    kinds = [(type(m).__name__, [type(p).__name__ for p in m.parts]) for m in messages]
    assert kinds == [
        ('ModelRequest', ['UserPromptPart']),
        ('ModelResponse', ['ToolCallPart']),
        ('ModelRequest', ['ToolReturnPart']),
        ('ModelResponse', ['TextPart']),
        ('ModelRequest', ['UserPromptPart']),
        ('ModelResponse', ['TextPart']),
    ]
    call, result = messages[1].parts[0], messages[2].parts[0]
    assert isinstance(call, ToolCallPart) and isinstance(result, ToolReturnPart)
    assert (call.tool_name, call.args_as_dict(), call.tool_call_id) == (
        'calculate',
        {'expression': '0.17 * 2340'},
        'ex1_call_1',
    )
    assert (result.tool_name, result.content, result.tool_call_id) == ('calculate', '397.8', 'ex1_call_1')


def _user_texts(messages: list[ModelMessage]) -> list[str]:
    return [
        str(part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart)
    ]


async def _deps(redis: Redis, tmp_path: Path, model: Any, **examples: Any) -> Any:
    settings = Settings(home=tmp_path, tenant='acme', tools=['calc'], examples=ExamplesConfig(**examples))
    request = TurnRequest(tenant='acme', user='ann', tools=['calc'])
    return await build_deps(settings, redis, request, session='s1', backbone=scripted_backbone(model))


async def test_retrieved_examples_are_the_most_alike_sent_before_the_history_and_never_stored(
    redis: Redis, tmp_path: Path
) -> None:
    await ExampleSet(redis, tenant='acme').add([*SUPPORT, Example.of(CALC_EXAMPLE)], config=CONFIG)
    model, script = scripted_model('Under Billing.', 'Done.')
    deps = await _deps(redis, tmp_path, model, mode='retrieved', k=2)

    result = await run_turn(deps, 'I cannot find my invoice PDF')
    follow_up = await run_turn(deps, 'And the address on it?')

    assert {shown.question for shown in result.examples} == {
        'Where can I download my invoices?',
        'Can I change the address on an invoice?',
    }
    first, second = (messages for messages, _ in script.seen)
    assert _user_texts(first)[-1] == 'I cannot find my invoice PDF'
    assert set(_user_texts(first)[:2]) == {e.question for e in result.examples}
    assert _user_texts(first)[1] == result.examples[-1].question  # the most alike is nearest the question
    # The second turn shows its own examples, then the stored history: the first turn without examples.
    texts = _user_texts(second)
    assert [e.question for e in follow_up.examples] == ['Can I change the address on an invoice?']
    assert texts == [
        'Can I change the address on an invoice?',
        'I cannot find my invoice PDF',
        'And the address on it?',
    ]
    stored = await deps.conversations.export_messages('s1')
    assert _user_texts(stored) == ['I cannot find my invoice PDF', 'And the address on it?']
    instructions = next(m.instructions for m in reversed(first) if isinstance(m, ModelRequest) and m.instructions)
    assert 'The conversation opens with 2 worked examples from other conversations' in (instructions or '')


async def test_fixed_examples_are_the_ones_named_within_the_budget(redis: Redis, tmp_path: Path) -> None:
    await ExampleSet(redis, tenant='acme').add([*SUPPORT, Example.of(CALC_EXAMPLE)], config=CONFIG)
    calc = Example.of(CALC_EXAMPLE)
    model, _ = scripted_model('ok', 'ok')
    named = await _deps(redis, tmp_path, model, mode='fixed', ids=[calc.id, SUPPORT[3].id, SUPPORT[0].id], k=2)

    result = await run_turn(named, 'anything at all')

    assert [shown.id for shown in result.examples] == [calc.id, SUPPORT[3].id]
    assert result.examples[0].tool_calls == 1
    budget = SUPPORT[0].tokens + SUPPORT[1].tokens
    first_added = await _deps(redis, tmp_path, model, mode='fixed', k=3, budget_tokens=budget)
    shown = (await run_turn(with_session(first_added, 's2'), 'anything')).examples
    assert [e.question for e in shown] == [SUPPORT[0].question, SUPPORT[1].question]  # a third would overflow
    assert sum(e.tokens for e in shown) <= budget


async def test_examples_off_send_nothing_and_fill_no_slot(redis: Redis, tmp_path: Path) -> None:
    await ExampleSet(redis, tenant='acme').add(SUPPORT, config=CONFIG)
    model, script = scripted_model('ok')
    deps = await _deps(redis, tmp_path, model)

    result = await run_turn(deps, 'Where can I download my invoices?')

    assert result.examples == [] and deps.examples is None
    ((messages, _),) = script.seen
    assert _user_texts(messages) == ['Where can I download my invoices?']
    assert 'worked example' not in (messages[-1].instructions or '')  # pyright: ignore[reportAttributeAccessIssue]


async def _one_turn_on_a_chat_server(
    redis: Redis, redis_url: str, tmp_path: Path, examples: ExamplesConfig
) -> tuple[dict[str, Any], TurnResult[Any]]:
    """The calculator example stored; one turn on `openai-chat:` against a loopback server: its request body."""
    await ExampleSet(redis, tenant='acme').add([Example.of(CALC_EXAMPLE)], config=CONFIG)
    with FakeOpenAI(lambda body: Text('It is 12.')) as server:
        settings = Settings(
            home=tmp_path,
            redis_url=SecretStr(redis_url),
            tenant='acme',
            tools=['calc'],
            backbones={'loop': BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url)},
            backbone='loop',
            examples=examples,
        )
        deps = await build_deps(settings, redis, TurnRequest(tenant='acme', user='ann', tools=['calc']))
        result = await run_turn(deps, 'What is 5% of 240?')
        (body,) = server.chat_requests
    return body, result


async def test_tool_call_examples_reach_a_chat_server_as_tool_calls_and_tool_messages(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    body, _ = await _one_turn_on_a_chat_server(redis, redis_url, tmp_path, ExamplesConfig(mode='retrieved', k=1))

    roles = [message['role'] for message in body['messages']]
    assert roles == ['system', 'user', 'assistant', 'tool', 'assistant', 'user']
    call = body['messages'][2]['tool_calls'][0]
    assert (call['id'], call['type'], call['function']['name']) == ('ex1_call_1', 'function', 'calculate')
    assert json.loads(call['function']['arguments']) == {'expression': '0.17 * 2340'}
    assert body['messages'][3] == {'role': 'tool', 'tool_call_id': 'ex1_call_1', 'content': '397.8'}
    assert body['messages'][4]['content'] == '17% of 2,340 is 397.8.'
    assert 'opens with a worked example' in body['messages'][0]['content']


async def test_dense_search_without_embeddings_falls_back_to_bm25(redis: Redis, tmp_path: Path) -> None:
    await ExampleSet(redis, tenant='acme').add(SUPPORT, config=CONFIG)
    model, _ = scripted_model('ok')
    deps = await _deps(redis, tmp_path, model, mode='retrieved', search='dense', k=1)  # no embeddings configured

    result = await run_turn(deps, 'How do I delete my account?')

    assert [shown.question for shown in result.examples] == ['How do I delete my account?']


async def test_an_unreachable_example_set_leaves_the_turn_without_examples(redis: Redis, tmp_path: Path) -> None:
    model, _ = scripted_model('ok')
    deps = await _deps(redis, tmp_path, model, mode='retrieved')
    await redis.set('tandem:{acme:examples:default}:meta', 'not a hash')  # every read of the set now fails

    result = await run_turn(deps, 'hello')

    assert result.answer == 'ok' and result.examples == []


async def test_the_repl_examples_command_shows_what_the_last_turn_was_shown(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    await ExampleSet(redis, tenant='default').add([*SUPPORT, Example.of(CALC_EXAMPLE)], config=CONFIG)
    with FakeOpenAI(lambda body: Text('Under Billing.')) as server:
        settings = Settings(
            home=tmp_path / 'home',
            redis_url=SecretStr(redis_url),
            backbones={'base': BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url)},
            backbone='base',
            tools=[],
            examples={'mode': 'retrieved', 'k': 2},  # pyright: ignore[reportArgumentType]
        )
        screen = await drive_repl(settings, ['/examples', 'where are my invoices?', '/examples'], width=300)
        off = await drive_repl(
            settings.model_copy(update={'examples': ExamplesConfig()}), ['hi', '/examples'], width=300
        )

    before, after = screen.split('Under Billing.', 1)
    assert "The last turn was shown no examples: none of example set 'default' was chosen" in before
    assert 'retrieved examples' in after and SUPPORT[1].id in after and 'Where can I download my invoices?' in after
    assert 'What is 17% of 2,340?' not in after
    assert 'examples are off (set examples.mode to fixed or retrieved)' in off


async def test_retrieved_examples_are_sent_best_last_nearest_the_question(redis: Redis) -> None:
    examples = ExampleSet(redis, tenant='acme')
    await examples.add(SUPPORT, config=CONFIG)
    library = ExampleLibrary([examples], config=CONFIG)
    config = ExamplesConfig(mode='retrieved', k=2)

    best = (await library.similar('Where can I download my invoices?', 1))[0]
    chosen = await select_examples(library, config, 'Where can I download my invoices?')

    assert best.question == 'Where can I download my invoices?'
    assert [e.question for e in chosen] == ['Can I change the address on an invoice?', best.question]
    assert await select_examples(library, config, '   ') == []


async def test_prompt_placement_writes_the_examples_into_the_prompt_and_sends_no_extra_turns(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    body, result = await _one_turn_on_a_chat_server(
        redis, redis_url, tmp_path, ExamplesConfig(mode='fixed', placement='prompt')
    )

    assert [message['role'] for message in body['messages']] == ['system', 'user']
    system = body['messages'][0]['content']
    assert (
        'A worked example from other conversations: follow how they answer and use tools (→ a call, ← its result)'
        in system
    )
    assert (
        '<example 1>\nUser: What is 17% of 2,340?\n→ calculate({"expression": "0.17 * 2340"})\n← 397.8\n'
        'Assistant: 17% of 2,340 is 397.8.\n</example 1>'
    ) in system
    assert [shown.question for shown in result.examples] == ['What is 17% of 2,340?']


def test_only_a_run_with_examples_on_carries_the_examples_capability() -> None:
    assert run_capabilities([]) == []  # every hook costs each step a dispatch
    assert [type(capability) for capability in run_capabilities([], examples=True)] == [ExampleMessages]
