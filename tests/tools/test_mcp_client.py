"""MCP servers as tools: a `[mcp.NAME]` server's tools run in turns under Tandem's policy.

The servers are real MCP servers (tests/support/mcp_server.py, written with the `mcp` SDK), started
over stdio by the client, or as a streamable-HTTP process by the test. Only the model is scripted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tandem.agent.core.config import Settings
from tandem.agent.core.errors import ConfigError
from tandem.agent.turn.build import selected_toolsets
from tandem.agent.turn.run import run_turn
from tandem.agent.turn.tool_status import ToolStatus, tool_statuses
from tandem.tools.mcp import McpServerToolset
from tests.support.deps import make_deps
from tests.support.scripted import call, scripted_model
from tests.support.served import Served, served

SERVER = Path(__file__).resolve().parents[1] / 'support' / 'mcp_server.py'


def stdio_server(notes: Path) -> dict[str, Any]:
    return {'command': sys.executable, 'args': [str(SERVER)], 'env': {'NOTES_FILE': str(notes)}}


def settings_with(tmp_path: Path, **servers: dict[str, Any]) -> Settings:
    return Settings.model_validate({'home': tmp_path, 'mcp': servers, 'tools': list(servers)})


async def run_with_server(redis: Redis, tmp_path: Path, server: dict[str, Any], *steps: Any, session: str = 's1'):
    settings = settings_with(tmp_path, demo=server)
    model, script = scripted_model(*steps)
    deps = make_deps(
        redis,
        model,
        home=tmp_path,
        tools=(),
        plugins=selected_toolsets(settings, ['demo']),
        mcp={'demo': server},
        session=session,
    )
    return await run_turn(deps, 'go'), script


async def demo_rows(settings: Settings) -> list[ToolStatus]:
    """The `tandem tools` rows of the server called demo."""
    return [row for row in await tool_statuses(settings) if row.toolset == 'demo']


async def test_a_read_only_tool_runs_and_its_result_taints_the_turn(redis: Redis, tmp_path: Path) -> None:
    notes = tmp_path / 'notes.txt'
    result, _ = await run_with_server(
        redis, tmp_path, stdio_server(notes), call('demo_add', a=2, b=3), call('demo_save_note', text='pwned'), 'Done.'
    )

    assert [(c.name, c.ok, c.result) for c in result.tool_calls] == [
        ('demo_add', True, '5'),
        ('demo_save_note', False, 'denied'),  # not read-only, in a turn an MCP result entered
    ]
    assert not notes.exists()
    assert result.answer == 'Done.'


async def test_a_read_only_tool_still_runs_in_a_tainted_turn(redis: Redis, tmp_path: Path) -> None:
    result, _ = await run_with_server(
        redis,
        tmp_path,
        stdio_server(tmp_path / 'notes.txt'),
        call('demo_add', a=1, b=2),
        call('demo_add', a=3, b=4),
        'Done.',
    )

    assert [(c.name, c.ok, c.result) for c in result.tool_calls] == [('demo_add', True, '3'), ('demo_add', True, '7')]


async def test_a_tool_not_marked_read_only_runs_in_an_untainted_turn(redis: Redis, tmp_path: Path) -> None:
    notes = tmp_path / 'notes.txt'
    result, _ = await run_with_server(redis, tmp_path, stdio_server(notes), call('demo_save_note', text='hi'), 'Saved.')

    assert [(c.name, c.ok) for c in result.tool_calls] == [('demo_save_note', True)]
    assert notes.read_text() == 'hi\n'


async def test_a_server_that_dies_mid_call_is_a_tool_error_and_the_next_turn_reconnects(
    redis: Redis, tmp_path: Path
) -> None:
    server = stdio_server(tmp_path / 'notes.txt')
    result, script = await run_with_server(redis, tmp_path, server, call('demo_crash'), 'The tool failed.')

    assert result.answer == 'The tool failed.'
    [crash] = result.tool_calls
    assert not crash.ok
    assert "The MCP server 'demo' stopped while running demo_crash." in str(script.seen[-1][0][-1])

    again, _ = await run_with_server(redis, tmp_path, server, call('demo_add', a=1, b=1), 'Two.', session='s2')
    assert [(c.name, c.ok, c.result) for c in again.tool_calls] == [('demo_add', True, '2')]


async def test_a_server_that_cannot_start_leaves_the_turn_without_its_tools(redis: Redis, tmp_path: Path) -> None:
    missing = {'command': str(tmp_path / 'no-such-server')}
    result, script = await run_with_server(redis, tmp_path, missing, 'Answered without it.')

    assert result.answer == 'Answered without it.'
    assert [tool.name for tool in script.seen[0][1].function_tools] == []

    [row] = await demo_rows(settings_with(tmp_path, demo=missing))
    assert (row.toolset, row.tool) == ('demo', '-')
    assert row.status.startswith('failed: ')


async def test_a_server_that_connects_but_cannot_list_its_tools_is_left_closed(redis: Redis, tmp_path: Path) -> None:
    server = stdio_server(tmp_path / 'notes.txt')
    server['env'] = {**server['env'], 'FAIL_LISTING': '1'}
    result, script = await run_with_server(redis, tmp_path, server, 'Answered without it.')

    assert result.answer == 'Answered without it.'
    assert [tool.name for tool in script.seen[0][1].function_tools] == []
    [plugin] = selected_toolsets(settings_with(tmp_path, demo=server), ['demo'])  # the same toolset, cached
    toolset = plugin.build()
    assert isinstance(toolset, McpServerToolset) and toolset.client is not None
    assert not toolset.client.is_running  # the run's connection was closed, not left open


async def test_tandem_tools_lists_a_connected_servers_tools_in_its_order(tmp_path: Path) -> None:
    rows = await demo_rows(settings_with(tmp_path, demo=stdio_server(tmp_path / 'notes.txt')))

    assert [(row.toolset, row.tool, row.status, row.description) for row in rows] == [
        ('demo', 'demo_add', 'connected, 3 tools', 'Add two integers.'),
        ('demo', 'demo_save_note', 'connected, 3 tools', 'Store a note.'),
        ('demo', 'demo_crash', 'connected, 3 tools', 'Stop the server in the middle of the call.'),
    ]


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Served]:
    env = {'MCP_TOKEN': 'sesame', 'NOTES_FILE': str(tmp_path / 'notes.txt'), 'PATH': '/usr/bin:/bin'}
    with served(lambda port: [sys.executable, str(SERVER), '--http', str(port)], env=env, start_timeout=30) as server:
        yield server


async def test_an_http_server_gets_its_secret_header_from_the_environment(
    redis: Redis, tmp_path: Path, http_server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('DEMO_TOKEN', 'sesame')
    server = {'url': f'{http_server.base_url}/mcp', 'headers': {'Authorization': 'Bearer ${DEMO_TOKEN}'}}
    result, _ = await run_with_server(redis, tmp_path, server, call('demo_add', a=20, b=22), 'Done.')

    assert [(c.name, c.ok, c.result) for c in result.tool_calls] == [('demo_add', True, '42')]

    monkeypatch.setenv('DEMO_TOKEN', 'wrong')
    server['headers'] = {'Authorization': 'Bearer ${DEMO_TOKEN}', 'X-Case': 'refused'}  # a new configuration
    [row] = await demo_rows(settings_with(tmp_path, demo=server))
    assert row.status.startswith('failed: ')


async def test_an_unset_secret_makes_that_server_unavailable_and_says_which(
    redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv('DEMO_TOKEN', raising=False)
    server = {'url': 'http://127.0.0.1:9/mcp', 'headers': {'Authorization': 'Bearer ${DEMO_TOKEN}'}}
    result, _ = await run_with_server(redis, tmp_path, server, 'Answered without it.')

    assert result.answer == 'Answered without it.'
    [row] = await demo_rows(settings_with(tmp_path, demo=server))
    assert row.status == (
        "failed: MCP server 'demo': headers.Authorization names ${DEMO_TOKEN}, which is not set in the environment."
    )


def test_a_server_may_not_take_an_installed_plugins_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[mcp.calc\] is named like the installed tool plugin 'calc'"):
        selected_toolsets(settings_with(tmp_path, calc={'command': 'x'}), ['calc'])


@pytest.mark.parametrize(
    ('server', 'message'),
    [
        ({}, 'either `command` \\(stdio\\) or `url`'),
        ({'command': 'x', 'url': 'http://h/mcp'}, 'either `command` \\(stdio\\) or `url`'),
        ({'url': 'ftp://h/mcp'}, 'must be an http:// or https:// address'),
        ({'url': 'http://h/mcp', 'env': {'A': 'b'}}, 'a `url` server takes `headers`'),
    ],
)
def test_a_server_is_a_command_or_a_url(tmp_path: Path, server: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_with(tmp_path, demo=server)


def test_secrets_in_mcp_tables_are_masked_unless_they_name_a_variable(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path, demo={'url': 'http://h/mcp', 'headers': {'Authorization': 'Bearer abc', 'X-Key': '${KEY}'}}
    )
    assert settings.masked()['mcp']['demo']['headers'] == {'Authorization': '***', 'X-Key': '${KEY}'}
