"""`tandem tune export` writes typed answers as the assistant's JSON content, so a fine-tune learns the format."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from redis.asyncio import Redis

from tandem.agent import Assistant
from tandem.agent.tune.export import ExportOptions, SessionQuery, build_examples, session_traces
from tests.support.fake_openai import FakeOpenAI, Text
from tests.typed.conftest import PROSE, answer, loopback_settings


class Person(BaseModel):
    name: str
    age: int


async def test_typed_answers_export_as_json_content_without_their_failed_attempts(
    redis: Redis, redis_url: str, tmp_path: Path, server: FakeOpenAI
) -> None:
    server.script = [PROSE, answer(name='Ada', age='old'), answer(name='Ada', age=36), Text('She was 36.')]
    settings = loopback_settings(tmp_path, redis_url, server)
    async with Assistant(settings, redis=redis) as assistant:
        typed = await assistant.chat('Who?', session='s1', output_type=Person)
        await assistant.chat('How old, in words?', session='s1')
    assert typed.usage.output_retries == 2

    traces = await session_traces(redis, SessionQuery(tenant=settings.tenant))
    result = build_examples(traces, ExportOptions(tools=[], dedup=False))

    (example,) = result.train + result.validation
    messages = example['messages']
    assert [m['role'] for m in messages] == ['system', 'user', 'assistant', 'user', 'assistant']
    assert messages[2] == {'role': 'assistant', 'content': typed.answer}
    assert messages[2]['content'] == '{"name":"Ada","age":36}'
    assert messages[4] == {'role': 'assistant', 'content': 'She was 36.'}
