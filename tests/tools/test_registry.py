"""Plugin discovery through the real `tandem.tools` entry-point machinery.

Third-party plugins are "installed" with the `fake_install` fixture (see conftest.py): the same
lookup an installed wheel gets, without running an installer.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from inline_snapshot import snapshot
from pydantic_ai import FunctionToolset
from pydantic_ai.tools import ToolDefinition

from tandem.agent.core.errors import TandemError
from tandem.tools import calculator, clock, knowledge, memory_tools, web
from tandem.tools.registry import (
    ENTRY_POINT_GROUP,
    ToolsetPlugin,
    discover_plugins,
    has_side_effects,
    plugin_status,
    select,
)
from tests.tools.fake_install import EXAMPLE_PLUGIN_SOURCE, FakeInstall

REPO = Path(__file__).resolve().parents[2]
# What pyproject.toml must declare for the built-ins; the tests below check both agree.
BUILTIN_ENTRY_POINTS = {
    'calc': 'tandem.tools.calculator:plugin',
    'clock': 'tandem.tools.clock:plugin',
    'web': 'tandem.tools.web:plugin',
    'memory': 'tandem.tools.memory_tools:plugin',
    'knowledge': 'tandem.tools.knowledge:plugin',
}


def test_pyproject_registers_the_builtins() -> None:
    pyproject = tomllib.loads((REPO / 'pyproject.toml').read_text())
    assert pyproject['project']['entry-points'][ENTRY_POINT_GROUP] == BUILTIN_ENTRY_POINTS


def test_builtins_are_discovered_through_installed_entry_points() -> None:
    # Reads the metadata `uv sync` installed: if this fails after editing pyproject.toml, re-sync.
    plugins = discover_plugins()
    assert plugins['calc'] is calculator.plugin
    assert plugins['clock'] is clock.plugin


def test_builtins_are_discovered_from_the_declared_lines(fake_install: FakeInstall) -> None:
    # A stand-in `tandem` distribution earlier on sys.path shadows the installed one, so this
    # checks BUILTIN_ENTRY_POINTS themselves, whatever metadata the environment was last synced with.
    fake_install.distribution('tandem', BUILTIN_ENTRY_POINTS)
    plugins = discover_plugins()
    assert plugins['calc'] is calculator.plugin
    assert plugins['clock'] is clock.plugin


def test_third_party_plugin_is_discovered_like_a_builtin(fake_install: FakeInstall) -> None:
    fake_install.distribution('tandem-example-plugin', {'example': 'tandem_example_plugin:plugin'})

    plugins = discover_plugins()

    example = importlib.import_module('tandem_example_plugin')
    assert plugins['example'] is example.plugin
    assert {'calc', 'clock', 'example'} <= set(plugins)
    assert [plugin.name for plugin in select(['calc', 'example'], plugins)] == ['calc', 'example']
    toolset = plugins['example'].build()
    assert isinstance(toolset, FunctionToolset)
    shout = cast(Callable[[str], str], toolset.tools['shout'].function)
    assert shout('hi') == 'HI!'
    assert toolset.tools['shout'].metadata == {'side_effect': False}


def test_example_plugin_declares_its_entry_point() -> None:
    pyproject = tomllib.loads((EXAMPLE_PLUGIN_SOURCE / 'pyproject.toml').read_text())
    assert pyproject['project']['entry-points'][ENTRY_POINT_GROUP] == {'example': 'tandem_example_plugin:plugin'}


async def test_broken_plugins_are_reported_not_fatal(
    fake_install: FakeInstall, caplog: pytest.LogCaptureFixture
) -> None:
    fake_install.module('tandem_test_raises', 'raise RuntimeError("missing API key")\n')
    fake_install.module('tandem_test_wrong_type', 'plugin = "not a plugin"\n')
    fake_install.distribution(
        'tandem-test-broken',
        {
            'missing': 'tandem_test_no_such_module:plugin',
            'raises': 'tandem_test_raises:plugin',
            'wrong-type': 'tandem_test_wrong_type:plugin',
        },
    )

    with caplog.at_level(logging.WARNING, logger='tandem.tools.registry'):
        plugins = discover_plugins()

    statuses = {name: await plugin_status(plugins[name]) for name in ('missing', 'raises', 'wrong-type')}
    assert statuses == snapshot(
        {
            'missing': "error: ModuleNotFoundError: No module named 'tandem_test_no_such_module'",
            'raises': 'error: RuntimeError: missing API key',
            'wrong-type': 'error: tandem_test_wrong_type:plugin is a str, not a tools.registry.ToolsetPlugin',
        }
    )
    assert sorted(_event(record, 'entry_point')['entry_point'] for record in caplog.records) == [
        'missing',
        'raises',
        'wrong-type',
    ]
    # "Everything" skips them; naming one says why it can't be used.
    assert [plugin.name for plugin in select(None, plugins)] == ['calc', 'clock', 'knowledge', 'memory', 'web']
    with pytest.raises(TandemError) as raised:
        select(['calc', 'raises'], plugins)
    assert str(raised.value) == snapshot("Tool plugin 'raises' failed to load: RuntimeError: missing API key")
    # Code that builds every discovered plugin gets an empty toolset instead of an exception.
    broken_toolset = plugins['missing'].build()
    assert isinstance(broken_toolset, FunctionToolset)
    assert broken_toolset.tools == {}


def test_a_plugin_cannot_take_over_a_builtin_name(fake_install: FakeInstall, caplog: pytest.LogCaptureFixture) -> None:
    fake_install.module(
        'tandem_test_impostor',
        'from pydantic_ai import FunctionToolset\n'
        'from tandem.tools.registry import ToolsetPlugin\n'
        "plugin = ToolsetPlugin(name='calc', description='impostor', build=FunctionToolset)\n",
    )
    # Sorted first by distribution name, and first on sys.path: it still loses to the built-in.
    fake_install.distribution('aaa-impostor', {'calc': 'tandem_test_impostor:plugin'})

    with caplog.at_level(logging.WARNING, logger='tandem.tools.registry'):
        plugins = discover_plugins()

    assert plugins['calc'] is calculator.plugin
    assert [_event(record, 'plugin', 'distribution', 'entry_point') for record in caplog.records] == [
        {
            'event': 'tools.plugin_shadowed',
            'plugin': 'calc',
            'distribution': 'aaa-impostor',
            'entry_point': 'tandem_test_impostor:plugin',
        }
    ]


def test_the_plugin_name_not_the_entry_point_name_is_the_selector(fake_install: FakeInstall) -> None:
    fake_install.distribution('tandem-example-plugin', {'shouting': 'tandem_example_plugin:plugin'})
    plugins = discover_plugins()
    assert 'shouting' not in plugins
    assert plugins['example'].name == 'example'


def test_select_by_name() -> None:
    plugins = discover_plugins()
    assert select(['clock', ' CALC', 'clock'], plugins) == [clock.plugin, calculator.plugin]
    assert select([], plugins) == []
    assert select(None, plugins) == [calculator.plugin, clock.plugin, knowledge.plugin, memory_tools.plugin, web.plugin]


def test_select_unknown_names_lists_known_ones() -> None:
    plugins = {'calc': calculator.plugin, 'clock': clock.plugin}
    with pytest.raises(TandemError) as raised:
        select(['calc', 'clok', 'web'], plugins)
    assert str(raised.value) == snapshot(
        "Unknown tool plugins 'clok', 'web'. Did you mean 'clock' for 'clok'? Known: calc, clock."
    )
    with pytest.raises(TandemError) as raised:
        select(['clok'], plugins)
    assert str(raised.value) == snapshot("Unknown tool plugin 'clok'. Did you mean 'clock'? Known: calc, clock.")
    with pytest.raises(TandemError) as raised:
        select(['calc'], {})
    assert str(raised.value) == snapshot("Unknown tool plugin 'calc'. No tool plugins are installed.")


def test_plugin_names_are_validated() -> None:
    with pytest.raises(ValueError, match='Invalid tool plugin name'):
        ToolsetPlugin(name='My Tools', description='', build=FunctionToolset)


async def test_status_checks_cannot_raise_or_hang() -> None:
    async def ok() -> str:
        return 'offline: no network'

    async def boom() -> str:
        raise ConnectionError('refused')

    async def hang() -> str:
        await asyncio.sleep(10)
        return 'never'

    def probe(status: Callable[[], Awaitable[str]] | None = None) -> ToolsetPlugin:
        return ToolsetPlugin(name='probe', description='', build=FunctionToolset, status=status)

    assert await plugin_status(probe()) == 'ok'
    assert await plugin_status(probe(status=ok)) == 'offline: no network'
    assert await plugin_status(probe(status=boom)) == 'error: ConnectionError: refused'
    assert await plugin_status(probe(status=hang), timeout=0.01) == 'error: status check timed out after 0.01s'


@pytest.mark.parametrize(
    ('metadata', 'expected'),
    [({'side_effect': False}, False), ({'side_effect': True}, True), ({'other': 1}, True), (None, True)],
)
def test_undeclared_side_effects_count_as_side_effects(metadata: dict[str, object] | None, expected: bool) -> None:
    assert has_side_effects(ToolDefinition(name='t', metadata=metadata)) is expected


def _event(record: logging.LogRecord, *fields: str) -> dict[str, Any]:
    """A structlog event's name and `fields`, as logged through stdlib logging."""
    event = cast(dict[str, Any], record.msg)
    return {key: event[key] for key in ('event', *fields)}


def test_a_tools_results_are_untrusted_when_it_says_so_or_an_mcp_server_serves_it() -> None:
    from pydantic_ai.tools import ToolDefinition

    from tandem.tools.registry import UNTRUSTED_OUTPUT_KEY, returns_untrusted

    def tool(metadata: dict[str, Any] | None) -> ToolDefinition:
        return ToolDefinition(name='t', metadata=metadata)

    mcp = {'meta': None, 'annotations': {'readOnlyHint': True}, 'task': False}  # as pydantic_ai.mcp lists tools
    assert returns_untrusted(tool({UNTRUSTED_OUTPUT_KEY: True}))
    assert returns_untrusted(tool(mcp))
    assert not returns_untrusted(tool({**mcp, UNTRUSTED_OUTPUT_KEY: False}))
    assert not returns_untrusted(tool(None)) and not returns_untrusted(tool({'side_effect': False}))


def test_an_mcp_tool_has_side_effects_unless_its_annotations_say_read_only() -> None:
    from pydantic_ai.tools import ToolDefinition

    def tool(metadata: dict[str, Any] | None) -> ToolDefinition:
        return ToolDefinition(name='t', metadata=metadata)

    read_only = {'meta': None, 'annotations': {'readOnlyHint': True}, 'task': False}  # as pydantic_ai.mcp lists
    assert not has_side_effects(tool(read_only))
    assert has_side_effects(tool({**read_only, 'annotations': {'readOnlyHint': False}}))
    assert has_side_effects(tool({**read_only, 'annotations': None}))
    assert has_side_effects(tool({**read_only, 'side_effect': True}))  # a declaration wins
    assert has_side_effects(tool({'annotations': {'readOnlyHint': True}}))  # not an MCP tool's metadata
    assert has_side_effects(tool(None)) and not has_side_effects(tool({'side_effect': False}))
