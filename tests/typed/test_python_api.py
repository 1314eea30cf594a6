"""`Assistant.chat(..., output_type=T)` and `stream(..., output_type=T)`: data, not prose."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.messages import ModelResponse
from pydantic_ai.profiles.openai import OpenAIModelProfile
from typing_extensions import TypedDict

from tandem.agent import Assistant
from tandem.agent.api import PartialOutput, TurnFinished
from tandem.agent.cli.transcript import render_transcript
from tandem.agent.core.errors import BackboneError, InvalidOutputError
from tandem.agent.core.events import TextDelta
from tandem.agent.turn.output import ANSWER_METADATA, OutputSchemaError
from tests.support.fake_openai import FakeOpenAI, Reply, Text
from tests.typed.conftest import PROSE, answer, loopback_backbone, loopback_settings


class Person(BaseModel):
    name: str
    age: int
    tags: list[str] = []


@dataclasses.dataclass
class Place:
    city: str
    country: str


class Pet(TypedDict):
    species: str
    legs: int


async def test_chat_returns_the_validated_object_and_its_json(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [answer(name='Ada', age=36, tags=['maths'])]
    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        result = await assistant.chat('Who wrote the first program?', session='s1', output_type=Person)

    assert result.output == Person(name='Ada', age=36, tags=['maths'])
    assert json.loads(result.answer) == {'name': 'Ada', 'age': 36, 'tags': ['maths']}
    assert result.usage.output_retries == 0
    sent = server.chat_requests[0]
    output_tool = next(tool for tool in sent['tools'] if tool['function']['name'] == 'final_result')
    assert output_tool['function']['parameters']['required'] == ['name', 'age']


@pytest.mark.parametrize(
    ('output_type', 'reply', 'expected', 'sent'),
    [
        (
            Place,
            answer(city='Paris', country='France'),
            Place('Paris', 'France'),
            {'city': 'Paris', 'country': 'France'},
        ),
        (Pet, answer(species='cat', legs=4), {'species': 'cat', 'legs': 4}, {'species': 'cat', 'legs': 4}),
        (
            Person | Place,
            answer('final_result_Place', city='Oslo', country='Norway'),
            Place('Oslo', 'Norway'),
            {'city': 'Oslo', 'country': 'Norway'},
        ),
    ],
    ids=['dataclass', 'typeddict', 'union'],
)
async def test_dataclasses_typeddicts_and_unions_are_answers_too(
    tmp_path: Path, redis_url: str, server: FakeOpenAI, output_type: Any, reply: Reply, expected: object, sent: object
) -> None:
    server.script = [reply]
    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        result = await assistant.chat('Tell me one.', output_type=output_type)

    assert result.output == expected
    assert json.loads(result.answer) == sent


async def test_an_invalid_answer_is_sent_back_and_each_retry_is_counted(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [PROSE, answer(name='Ada', age='thirty-six'), answer(name='Ada', age=36)]
    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        result = await assistant.chat('Who?', output_type=Person)

    assert result.output == Person(name='Ada', age=36)
    assert result.usage.output_retries == 2
    assert result.usage.requests == 3
    assert 'age' in json.dumps(server.chat_requests[2]['messages'][-1])  # the validation error went back


async def test_a_model_that_keeps_answering_in_prose_gets_one_clear_error_and_nothing_is_saved(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [PROSE, PROSE, PROSE]
    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        await assistant.create_session('s1')
        with pytest.raises(InvalidOutputError) as raised:
            await assistant.chat('Who?', session='s1', output_type=Person)
        stored = await assistant.messages('s1')

    message = str(raised.value)
    assert "backbone 'loop' gave no valid typed answer in 3 tries" in message
    assert 'limits.output_retries' in message and '\n' not in message
    assert len(server.chat_requests) == 3  # limits.output_retries = 2, after the first try
    assert stored == []


async def test_the_output_retries_are_a_setting(tmp_path: Path, redis_url: str, server: FakeOpenAI) -> None:
    server.script = [PROSE, PROSE]
    settings = loopback_settings(tmp_path, redis_url, server)
    settings.limits.output_retries = 1
    async with Assistant(settings) as assistant:
        with pytest.raises(InvalidOutputError, match='in 2 tries'):
            await assistant.chat('Who?', output_type=Person)
    assert len(server.chat_requests) == 2


async def test_stream_yields_growing_validated_objects_then_the_whole_one(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [answer(name='Ada', age=36, tags=['maths', 'poetry', 'engines'])]
    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        events = [event async for event in assistant.stream('Who?', output_type=Person)]

    partials = [event.output for event in events if isinstance(event, PartialOutput)]
    assert not any(isinstance(event, TextDelta) for event in events)
    assert partials and all(isinstance(partial, Person) for partial in partials)
    assert isinstance(events[-1], TurnFinished)
    assert events[-1].output == Person(name='Ada', age=36, tags=['maths', 'poetry', 'engines'])
    assert partials[-1] == events[-1].output


async def test_a_streamed_turn_that_never_validates_raises_from_the_stream(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [PROSE, PROSE, PROSE]
    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        events: list[object] = []
        with pytest.raises(InvalidOutputError):
            async for event in assistant.stream('Who?', output_type=Person):
                events.append(event)

    assert not any(isinstance(event, TextDelta) for event in events)  # no prose reached the reader


@pytest.mark.parametrize('mode', ['native', 'prompted'])
async def test_the_backbones_output_mode_decides_how_the_answer_is_asked_for(
    tmp_path: Path, redis_url: str, server: FakeOpenAI, mode: str
) -> None:
    server.script = [Text('{"name": "Ada"}'), Text('{"name": "Ada", "age": 36}')]
    async with Assistant(loopback_settings(tmp_path, redis_url, server, output_mode=mode)) as assistant:
        result = await assistant.chat('Who?', output_type=Person)

    assert result.output == Person(name='Ada', age=36)
    assert result.usage.output_retries == 1
    sent = server.chat_requests[0]
    assert 'tools' not in sent or not any(t['function']['name'] == 'final_result' for t in sent['tools'])
    expected = 'json_schema' if mode == 'native' else 'json_object'
    assert sent['response_format']['type'] == expected


async def test_a_type_without_a_json_schema_is_refused_before_the_model_is_asked(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    class Opaque:
        def __init__(self, handle: object) -> None:
            self.handle = handle

    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        with pytest.raises(OutputSchemaError) as raised:
            await assistant.chat('Who?', output_type=Opaque)

    assert str(raised.value) == (
        'cannot ask for Opaque as a typed answer: it has no JSON Schema; use a pydantic model, a dataclass, '
        'a TypedDict or a union of them'
    )
    assert server.chat_requests == []


async def test_typed_answers_are_stored_as_sent_and_the_session_goes_on(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [answer(name='Ada', age=36), Text('She was 36.')]
    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        typed = await assistant.chat('Who?', session='s1', output_type=Person)
        prose = await assistant.chat('How old, in words?', session='s1')
        stored = await assistant.messages('s1')

    assert prose.answer == 'She was 36.'
    answers = [m.metadata.get(ANSWER_METADATA) for m in stored if isinstance(m, ModelResponse) and m.metadata]
    assert answers == [typed.answer]
    assert list(render_transcript(stored)) == [
        'you: Who?',
        'assistant: {"name":"Ada","age":36,"tags":[]}',
        'you: How old, in words?',
        'assistant: She was 36.',
    ]
    roles = [message['role'] for message in server.chat_requests[1]['messages']]
    assert roles == ['system', 'user', 'assistant', 'tool', 'user']


async def test_native_output_on_a_model_that_cannot_follow_it_is_one_clear_error(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    no_json_schema = OpenAIModelProfile(supports_json_schema_output=False)
    backbones = {'plain': loopback_backbone(server, 'plain', profile=no_json_schema, output_mode='native')}
    async with Assistant(loopback_settings(tmp_path, redis_url, server), backbones=backbones) as assistant:
        with pytest.raises(BackboneError) as raised:
            await assistant.chat('Who?', backbone='plain', output_type=Person)

    assert str(raised.value) == (
        "backbone 'plain' cannot give typed answers in output_mode 'native': its model has no JSON-schema output "
        "(OpenAI's response_format). Set output_mode to 'prompted' (or remove it) under [backbones.plain] in "
        'tandem.toml.'
    )
    assert server.chat_requests == []


async def test_a_prose_turn_that_spends_its_output_retries_is_not_called_a_typed_failure(
    tmp_path: Path, redis_url: str, server: FakeOpenAI
) -> None:
    server.script = [Text(''), Text(''), Text('')]  # empty answers: pydantic-ai retries them too
    async with Assistant(loopback_settings(tmp_path, redis_url, server)) as assistant:
        with pytest.raises(BackboneError) as raised:
            await assistant.chat('Who?')

    assert not isinstance(raised.value, InvalidOutputError)
    assert str(raised.value).startswith("backbone 'loop' misbehaved: Exceeded maximum output retries (2)")
