"""`tandem ask --schema` and `--schema-multi`: a JSON Schema file or llm's concise form in, JSON out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI, ToolCall
from tests.typed.conftest import PROSE, answer


def _ask(*args: str, server: FakeOpenAI, redis_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, 'OPENAI_BASE_URL': server.url, 'TANDEM_REDIS_URL': redis_url, 'TANDEM_HOME': str(home)}
    env.pop('OPENAI_API_KEY', None)
    env.pop('TANDEM_CONFIG', None)
    return subprocess.run(
        [sys.executable, '-m', 'tandem.agent', 'ask', '--model', 'openai-chat:tiny-chat', *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_concise_schema_prints_the_json_answer(server: FakeOpenAI, redis_url: str, tmp_path: Path) -> None:
    server.script = [answer(name='Ada', age=36, tags=['maths'])]

    done = _ask(
        '--schema',
        'name str, age int, tags list[str]',
        'Who wrote the first program?',
        server=server,
        redis_url=redis_url,
        home=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {'name': 'Ada', 'age': 36, 'tags': ['maths']}
    parameters = server.chat_requests[0]['tools'][-1]['function']['parameters']
    assert parameters['properties'] == {
        'name': {'type': 'string'},
        'age': {'type': 'integer'},
        'tags': {'type': 'array', 'items': {'type': 'string'}},
    }
    assert parameters['required'] == ['name', 'age', 'tags']


def test_a_schema_file_and_schema_multi_ask_for_a_list(server: FakeOpenAI, redis_url: str, tmp_path: Path) -> None:
    schema = tmp_path / 'dog.json'
    schema.write_text(json.dumps({'type': 'object', 'properties': {'name': {'type': 'string'}}, 'required': ['name']}))
    server.script = [ToolCall((('final_result', {'items': [{'name': 'Rex'}, {'name': 'Fido'}]}),))]

    done = _ask('--schema-multi', str(schema), 'Name two dogs.', server=server, redis_url=redis_url, home=tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {'items': [{'name': 'Rex'}, {'name': 'Fido'}]}


def test_json_output_carries_the_typed_answer_and_its_retries(
    server: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    server.script = [PROSE, answer(name='Ada')]

    done = _ask('--json', '--schema', 'name', 'Who?', server=server, redis_url=redis_url, home=tmp_path)

    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload['output'] == {'name': 'Ada'}
    assert payload['usage']['output_retries'] == 1


def test_a_model_that_keeps_answering_in_prose_is_one_line_and_exit_1(
    server: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    server.script = [PROSE, PROSE, PROSE]

    done = _ask('--schema', 'name str', 'Who?', server=server, redis_url=redis_url, home=tmp_path)

    assert done.returncode == 1
    assert done.stdout == ''
    assert done.stderr.startswith("error: backbone 'openai-chat:tiny-chat' gave no valid typed answer in 3 tries")
    assert 'Traceback' not in done.stderr


@pytest.mark.parametrize(
    ('schema', 'message'),
    [
        ('name strr', "error: field 'name' has unknown type 'strr': use str, int, float, bool or list[...]."),
        ('{"type": "object", "properties": 3}', 'error: invalid JSON Schema at properties: 3 is not of type'),
        ('{"type": "array"}', "error: the schema's root must be an object"),
        ('{"type": ', 'error: --schema is not valid JSON: '),
    ],
    ids=['concise', 'invalid', 'not-an-object', 'broken-json'],
)
def test_a_bad_schema_is_one_line_before_the_model_is_asked(
    server: FakeOpenAI, redis_url: str, tmp_path: Path, schema: str, message: str
) -> None:
    done = _ask('--schema', schema, 'Who?', server=server, redis_url=redis_url, home=tmp_path)

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert server.chat_requests == []


def test_schema_and_schema_multi_together_are_refused(server: FakeOpenAI, redis_url: str, tmp_path: Path) -> None:
    done = _ask('--schema', 'a', '--schema-multi', 'b', 'Who?', server=server, redis_url=redis_url, home=tmp_path)

    assert done.returncode == 2
    assert done.stderr.strip() == 'error: give --schema or --schema-multi, not both.'
