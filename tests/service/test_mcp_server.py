"""`tandem mcp`: Tandem's knowledge search, memory and `ask` served to MCP clients, checked with the `mcp` SDK's own client.

The server runs as a real `tandem mcp` process, over stdio and over streamable HTTP, on the test
Redis; the only double is the model, a loopback OpenAI-compatible server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from tests.support.fake_openai import FakeOpenAI, Reply, Text, ToolCall, last_tool_result
from tests.support.served import Served, served

TANDEM = str(Path(sys.executable).with_name('tandem'))
TOOLS = ['ask', 'forget', 'recall', 'remember', 'search_knowledge']


@pytest.fixture
def model() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=['tiny-chat']) as server:
        yield server


@pytest.fixture
def tandem_env(tmp_path: Path, redis_url: str, model: FakeOpenAI) -> dict[str, str]:
    """A user's environment: the test Redis, a home of its own, the loopback model, a document ingested."""
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith(('TANDEM_', 'OPENAI_'))},
        'TANDEM_HOME': str(tmp_path / 'home'),
        'TANDEM_REDIS_URL': redis_url,
        'TANDEM_TENANT': 'acme',
        'TANDEM_USER': 'ada',
        'TANDEM_TOOLS': 'calc',
        'OPENAI_BASE_URL': model.url,
        'OPENAI_API_KEY': 'sk-local',
        'XDG_CONFIG_HOME': str(tmp_path),
    }
    docs = tmp_path / 'docs'
    docs.mkdir()
    (docs / 'returns.md').write_text('# Returns\n\nCustomers may return a product within 30 days for a refund.\n')
    subprocess.run([TANDEM, 'ingest', str(docs)], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    return env


def error_text(result: Any) -> str:
    """A failed tool call's message."""
    assert result.is_error
    [content] = result.content
    assert isinstance(content, TextContent)
    return content.text


def payload(result: Any) -> dict[str, Any]:
    """A successful tool call's structured content."""
    assert not result.is_error, result.content
    return result.structured_content


async def test_over_stdio_the_tools_act_for_the_configured_user(tandem_env: dict[str, str], model: FakeOpenAI) -> None:
    async with Client(StdioServerParameters(command=TANDEM, args=['mcp'], env=tandem_env)) as client:
        assert sorted(tool.name for tool in (await client.list_tools()).tools) == TOOLS

        found = payload(await client.call_tool('search_knowledge', {'query': 'refund within how many days'}))
        [first, *_] = found['passages']
        assert (first['n'], first['title']) == (1, 'Returns')
        assert first['source'].endswith('returns.md') and '30 days' in first['text']

        stored = payload(await client.call_tool('remember', {'fact': "The user's favourite colour is teal."}))
        assert stored['outcome'] == 'created'
        recalled = payload(await client.call_tool('recall', {'query': 'favourite colour'}))
        assert [fact['text'] for fact in recalled['facts']] == ["The user's favourite colour is teal."]
        forgotten = payload(await client.call_tool('forget', {'fact_id': stored['fact']['id']}))
        assert forgotten['forgotten']['text'] == "The user's favourite colour is teal."
        assert payload(await client.call_tool('recall', {'query': 'favourite colour'}))['facts'] == []

        first_turn = payload(await client.call_tool('ask', {'question': 'Hello there'}))
        assert first_turn['answer'] == 'You said: Hello there'
        second = payload(await client.call_tool('ask', {'question': 'Again', 'session': first_turn['session']}))
        assert second['session'] == first_turn['session']

    last_request = model.chat_requests[-1]
    assert [m['content'] for m in last_request['messages'] if m['role'] == 'user'][-2:] == ['Hello there', 'Again']


async def test_bad_arguments_are_one_line_tool_errors(tandem_env: dict[str, str]) -> None:
    async with Client(StdioServerParameters(command=TANDEM, args=['mcp'], env=tandem_env)) as client:
        not_an_id = await client.call_tool('forget', {'fact_id': 'drop table'})
        secret = await client.call_tool('remember', {'fact': 'The password is hunter2-XYZ-98765-abcdef'})

    assert "'drop table' is not a fact id" in error_text(not_an_id)
    assert 'looks like a secret' in error_text(secret)


@pytest.fixture
def http_server(tandem_env: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    env = {**tandem_env, 'TANDEM_API_KEYS': 'sk-team:acme,sk-bob:acme/bob'}
    with served(lambda port: [TANDEM, 'mcp', '--http', str(port)], env=env, cwd=tmp_path, start_timeout=60) as server:
        yield server


@asynccontextmanager
async def http_client(server: Served, **headers: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers=headers, timeout=30) as transport_client:
        transport = streamable_http_client(f'{server.base_url}/mcp', http_client=transport_client)
        async with Client(transport) as client:
            yield client


async def test_over_http_api_keys_name_the_tenant_and_user_as_in_tandem_serve(http_server: Served) -> None:
    async with http_client(http_server, Authorization='Bearer sk-team', **{'X-Tandem-User': 'ada'}) as ada:
        await ada.call_tool('remember', {'fact': 'The user works on the billing service.'})
        assert len(payload(await ada.call_tool('recall', {'query': 'billing'}))['facts']) == 1
    async with http_client(http_server, Authorization='Bearer sk-bob') as bob:  # a key bound to bob
        assert payload(await bob.call_tool('recall', {'query': 'billing'}))['facts'] == []

    async with httpx.AsyncClient(base_url=http_server.base_url, timeout=10) as raw:
        anonymous = await raw.post('/mcp', json={})
        wrong_user = await raw.post('/mcp', json={}, headers={'Authorization': 'Bearer sk-bob', 'X-Tandem-User': 'ada'})
    assert (anonymous.status_code, anonymous.json()['error']) == (
        401,
        'missing API key: send the header "Authorization: Bearer YOUR_KEY".',
    )
    assert (wrong_user.status_code, wrong_user.json()['error']) == (
        403,
        "this API key acts for user 'bob' only: leave the user out, or use a key of the tenant.",
    )


async def test_over_http_each_key_has_tandem_serves_rate_limit(tandem_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **tandem_env,
        'TANDEM_API_KEYS': 'sk-team:acme,sk-other:acme',
        'TANDEM_SERVER__RATE_LIMIT_REQUESTS': '2',
        'TANDEM_SERVER__RATE_LIMIT_WINDOW_SECONDS': '60',
    }
    with served(lambda port: [TANDEM, 'mcp', '--http', str(port)], env=env, cwd=tmp_path, start_timeout=60) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as raw:
            team = {'Authorization': 'Bearer sk-team'}
            allowed = [(await raw.post('/mcp', json={}, headers=team)).status_code for _ in range(2)]
            refused = await raw.post('/mcp', json={}, headers=team)
            other = await raw.post('/mcp', json={}, headers={'Authorization': 'Bearer sk-other'})

    assert 429 not in allowed and other.status_code != 429
    assert refused.status_code == 429 and 1 <= int(refused.headers['retry-after']) <= 60
    assert refused.json()['error'].startswith('rate limit reached: 2 requests per 60 s for this key; retry in ')


def test_http_without_keys_says_how_to_add_them(tandem_env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [TANDEM, 'mcp', '--http', '9'], env=tandem_env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (1, '')
    assert done.stderr.startswith('error: no API keys: set TANDEM_API_KEYS="KEY:TENANT"')


async def test_ask_returns_the_sources_its_answer_was_given(tandem_env: dict[str, str], model: FakeOpenAI) -> None:
    def cite(body: dict[str, Any]) -> Reply:
        if last_tool_result(body) is None:
            return ToolCall.one('search_knowledge', query='refund days')
        return Text('Within 30 days [1].')

    model.script = cite
    env = {**tandem_env, 'TANDEM_TOOLS': 'knowledge'}
    async with Client(StdioServerParameters(command=TANDEM, args=['mcp'], env=env)) as client:
        answer = payload(await client.call_tool('ask', {'question': 'How long do I have to return a product?'}))

    assert (answer['answer'], answer['tools']) == ('Within 30 days [1].', ['search_knowledge'])
    [source] = answer['sources']
    assert (source['n'], source['title']) == (1, 'Returns') and source['source'].endswith('returns.md')
