"""The `llama-cpp:` backbone on a tiny random-weight GGUF: the real llama.cpp loading and generation path.

The model is generated at test time (`tests/tune/gguf_model.py`); its output is gibberish, so these
tests check the plumbing: it loads, generates exactly as many tokens as asked, streams, goes through
the runtime with tools offered (and answers in text when the output is not a tool call), applies a
LoRA adapter, and forced tool calls come out well-formed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from redis.asyncio import Redis
from typer.testing import CliRunner

from tandem.agent.backbones import base as backbones
from tandem.agent.backbones.base import Backbone
from tandem.agent.backbones.llama_cpp import (
    InProcessTransport,
    LlamaCppResolver,
    StreamSplitter,
    engine_for,
    parse_spec,
    parse_tool_calls,
)
from tandem.agent.cli.main import app
from tandem.agent.core.config import BackboneConfig
from tandem.agent.core.errors import BackboneError
from tandem.agent.core.events import TextDelta
from tandem.agent.turn.run import run_turn
from tests.support.deps import make_deps
from tests.tune.gguf_model import write_tiny_llama, write_tiny_lora

TOOLS: Any = [
    {
        'type': 'function',
        'function': {
            'name': 'calculate',
            'description': 'Evaluate arithmetic.',
            'parameters': {
                'type': 'object',
                'properties': {'expression': {'type': 'string', 'maxLength': 12}},
                'required': ['expression'],
                'additionalProperties': False,
            },
        },
    },
    {'type': 'function', 'function': {'name': 'now', 'parameters': {'type': 'object', 'properties': {}}}},
]


@pytest.fixture(scope='module')
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp('gguf') / 'tiny.gguf', context_length=8192)


@pytest.fixture(scope='module')
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_lora(tmp_path_factory.mktemp('lora') / 'adapter.gguf')


def _spec(gguf: Path, **options: Any) -> str:
    query = '&'.join(f'{key}={value}' for key, value in {'n_ctx': 8192, 'seed': 3, **options}.items())
    return f'llama-cpp:{gguf}?{query}'


def _client(model: str) -> AsyncOpenAI:
    engine = engine_for(parse_spec(model))
    http_client: Any = httpx.AsyncClient(transport=InProcessTransport(engine))  # the SDK accepts legacy httpx
    return AsyncOpenAI(base_url='http://in-process/v1', api_key='x', http_client=http_client)


async def test_the_generated_gguf_loads_and_generates_exactly_n_tokens(gguf: Path) -> None:
    client = _client(_spec(gguf))
    reply = await client.chat.completions.create(
        model='tiny', messages=[{'role': 'user', 'content': 'Say something.'}], max_tokens=12
    )
    choice = reply.choices[0]
    assert choice.finish_reason == 'length'
    assert reply.usage is not None and reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens > 0
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.message.tool_calls is None

    listed = await client.models.list()
    assert [model.id for model in listed.data] == ['tiny']


async def test_streaming_gives_the_same_text_as_one_shot_with_a_seed(gguf: Path) -> None:
    client = _client(_spec(gguf))
    messages: Any = [{'role': 'user', 'content': 'Again.'}]
    whole = await client.chat.completions.create(model='tiny', messages=messages, max_tokens=10, temperature=0)
    pieces: list[str] = []
    stream = await client.chat.completions.create(
        model='tiny', messages=messages, max_tokens=10, temperature=0, stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert ''.join(pieces) == whole.choices[0].message.content


async def test_a_turn_with_tools_runs_through_the_runtime_and_answers_in_text(
    redis: Redis, tmp_path: Path, gguf: Path
) -> None:
    config = BackboneConfig(model=_spec(gguf), settings={'max_tokens': 16})
    model = LlamaCppResolver().resolve(config)
    deps = make_deps(redis, model, home=tmp_path, tools=('calc', 'clock'))
    deps = replace(deps, backbone=Backbone(name='tiny', config=config, model=model))

    result = await run_turn(deps, 'What is 2+3?')
    assert result.tool_calls == [] and result.answer
    assert 0 < result.usage.output_tokens <= 16 and result.usage.input_tokens > 1000  # the tools are in the prompt

    events: list[object] = []
    streamed = await run_turn(deps, 'And now?', on_event=events.append)
    assert ''.join(event.text for event in events if isinstance(event, TextDelta)) == streamed.answer
    stored = await deps.conversations.export_messages('s1')
    assert len(stored) == 4


async def test_forced_tool_calls_are_well_formed_even_from_random_weights(gguf: Path) -> None:
    client = _client(_spec(gguf))
    messages: Any = [{'role': 'user', 'content': '2+3?'}]
    required = await client.chat.completions.create(
        model='tiny',
        messages=messages,
        tools=TOOLS,
        tool_choice='required',
        max_tokens=200,  # type: ignore[arg-type]
    )
    choice = required.choices[0]
    assert choice.finish_reason == 'tool_calls' and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name in ('calculate', 'now')  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments), dict)  # type: ignore[union-attr]

    named = await client.chat.completions.create(
        model='tiny', messages=messages, tools=TOOLS, max_tokens=200,  # type: ignore[arg-type]
        tool_choice={'type': 'function', 'function': {'name': 'calculate'}},
    )  # fmt: skip
    call = named.choices[0].message.tool_calls[0]  # type: ignore[index]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert call.function.name == 'calculate' and isinstance(arguments['expression'], str)  # type: ignore[union-attr]

    # The call's result goes back into the conversation and the model answers again.
    messages += [
        {'role': 'assistant', 'tool_calls': [call.model_dump()]},
        {'role': 'tool', 'tool_call_id': call.id, 'content': '5'},
    ]
    after = await client.chat.completions.create(model='tiny', messages=messages, tools=TOOLS, max_tokens=5)  # type: ignore[arg-type]
    assert after.choices[0].message.content is not None


async def test_a_lora_adapter_changes_what_the_model_says(gguf: Path, lora: Path) -> None:
    async def greedy(model: str) -> str | None:
        reply = await _client(model).chat.completions.create(
            model='tiny', messages=[{'role': 'user', 'content': 'hello'}], max_tokens=12, temperature=0
        )
        return reply.choices[0].message.content

    plain, again, adapted = await greedy(_spec(gguf)), await greedy(_spec(gguf)), await greedy(_spec(gguf, lora=lora))
    assert plain == again
    assert adapted != plain
    assert parse_spec(_spec(gguf, lora=lora, lora_scale=0.5)).name == 'tiny+adapter'


async def test_a_prompt_over_the_context_is_a_clear_backbone_error(redis: Redis, tmp_path: Path, gguf: Path) -> None:
    config = BackboneConfig(model=_spec(gguf, n_ctx=256))
    model = LlamaCppResolver().resolve(config)
    deps = replace(
        make_deps(redis, model, home=tmp_path, tools=()), backbone=Backbone(name='tiny', config=config, model=model)
    )
    with pytest.raises(BackboneError, match=r'over the model context of 256: raise n_ctx in the model string'):
        await run_turn(deps, 'x' * 400)
    assert await deps.conversations.read_record('s1') is None  # nothing half-saved


def test_cli_ask_with_a_llama_cpp_model_string(
    gguf: Path, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Until pyproject registers the entry point, put the resolver where `build_model` looks.
    resolvers = dict(backbones._resolvers())
    resolvers['llama-cpp'] = LlamaCppResolver()
    monkeypatch.setattr(backbones, '_resolvers', lambda: resolvers)
    monkeypatch.chdir(tmp_path)
    env = {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}
    result = CliRunner().invoke(app, ['ask', '--model', _spec(gguf), '--tools', 'calc', '--json', 'hi'], env=env)
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload['answer'] and payload['tool_calls'] == [] and payload['usage']['output_tokens'] > 0


# -- the model string ---------------------------------------------------------------------------------


def test_spec_options_and_errors(gguf: Path, tmp_path: Path) -> None:
    spec = parse_spec(f'llama-cpp:{gguf}?n_ctx=4096&n_threads=2&n_gpu_layers=0&seed=7&lora_scale=0.5')
    assert (spec.path, spec.n_ctx, spec.n_threads, spec.seed, spec.lora_scale) == (gguf, 4096, 2, 7, 0.5)
    assert parse_spec('llama-cpp:tiny.gguf', directory=gguf.parent).path == gguf
    with pytest.raises(BackboneError, match=r'unknown option\(s\) ctx; known:'):
        parse_spec(f'llama-cpp:{gguf}?ctx=1')
    with pytest.raises(BackboneError, match="n_ctx='big' is not a number"):
        parse_spec(f'llama-cpp:{gguf}?n_ctx=big')
    with pytest.raises(BackboneError, match=r'GGUF file .*missing\.gguf not found'):
        parse_spec(f'llama-cpp:{tmp_path}/missing.gguf')
    with pytest.raises(BackboneError, match=r'LoRA adapter .* not found'):
        parse_spec(f'llama-cpp:{gguf}?lora={tmp_path}/nope.gguf')
    with pytest.raises(
        BackboneError, match=r"model 'qwen2.5-0.5b-instruct' is not downloaded yet: run `tandem models pull"
    ):
        parse_spec('llama-cpp:qwen2.5-0.5b-instruct', directory=tmp_path)


# -- tool calls in text -------------------------------------------------------------------------------

NAMES = {'calculate', 'now'}


@pytest.mark.parametrize(
    ('text', 'content', 'calls'),
    [
        (
            'Let me compute.\n<tool_call>\n{"name": "calculate", "arguments": {"expression": "2+3"}}\n</tool_call>',
            'Let me compute.',
            [('calculate', '{"expression": "2+3"}')],
        ),
        (
            '<tool_call>{"name": "now", "arguments": {}}</tool_call><tool_call>{"name": "calculate", "arguments": {"expression": "1"}}</tool_call>',
            '',
            [('now', '{}'), ('calculate', '{"expression": "1"}')],
        ),
        ('{"name": "calculate", "parameters": {"expression": "6*7"}}', '', [('calculate', '{"expression": "6*7"}')]),
        ('<|python_tag|>{"name": "now", "parameters": {"timezone": "UTC"}}', '', [('now', '{"timezone": "UTC"}')]),
        ('[TOOL_CALLS] [{"name": "now", "arguments": {}}]', '', [('now', '{}')]),
        ('```json\n{"name": "now", "arguments": {}}\n```', '', [('now', '{}')]),
        ('{"name": "launch_missiles", "arguments": {}}', '{"name": "launch_missiles", "arguments": {}}', []),
        (
            '<tool_call>{"name": "calculate", "arguments": {bad json}}</tool_call>',
            '<tool_call>{"name": "calculate", "arguments": {bad json}}</tool_call>',
            [],
        ),
        ('{"answer": 42}', '{"answer": 42}', []),
        ('Plain prose, {braces} and all.', 'Plain prose, {braces} and all.', []),
    ],
)
def test_tool_calls_are_parsed_from_the_common_open_model_forms(
    text: str, content: str, calls: list[tuple[str, str]]
) -> None:
    assert parse_tool_calls(text, NAMES) == (content, calls)


def _split(pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    splitter = StreamSplitter(NAMES)
    shown = ''.join(splitter.feed(piece) for piece in pieces)
    rest, calls = splitter.finish()
    return shown, rest, calls


def test_the_stream_shows_prose_at_once_and_holds_back_tool_calls() -> None:
    assert _split(['Hel', 'lo ', 'there']) == ('Hello there', '', [])
    shown, rest, calls = _split(['Sure. <to', 'ol_call>{"name": "now", ', '"arguments": {}}</tool_call>'])
    assert (shown, rest, calls) == ('Sure. ', '', [('now', '{}')])
    assert _split(['a <b', '>c']) == ('a <b>c', '', [])  # a `<` that turned out not to be a marker
    assert _split(['{"name": "now"', ', "arguments": {}}']) == ('', '', [('now', '{}')])
    assert _split(['{not a call}', ' at all']) == ('', '{not a call} at all', [])
    assert StreamSplitter(set()).feed('<tool_call>') == '<tool_call>'  # no tools offered: nothing to hold
