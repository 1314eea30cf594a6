"""Tool plugins: the one extension point for adding tools to Tandem.

Built-in toolsets and third-party ones register the same way, through the `tandem.tools`
entry-point group (in the style of simonw/llm). Each entry point names a module attribute that
holds a `ToolsetPlugin`:

```toml
[project.entry-points."tandem.tools"]
calc = "tandem.tools.calculator:plugin"
```

Side effects are declared per tool, not per plugin: a tool that changes anything outside the
conversation (writes files, sends mail, spends money, ...) carries
`metadata={SIDE_EFFECT_KEY: True}` on its definition, and a pure tool carries `False`. The approval
policy reads it from `ToolDefinition.metadata` through `has_side_effects`, which treats an
undeclared tool as side-effecting so that a plugin that forgets to declare fails safe.

A tool that requests a URL it is given (`web_fetch`) names that argument with
`metadata={OUTBOUND_URL_KEY: 'url'}`: the request itself can carry data out, in its address, so the
approval policy treats a call to an address nobody trusted as a side effect (`outbound_url_argument`).

A tool whose result comes from outside the conversation (a page, a mailbox, a ticket) declares
`metadata={UNTRUSTED_OUTPUT_KEY: True}`: its result taints the turn, as the built-in web and knowledge
tools' do (`returns_untrusted`). A tool served by an MCP server counts as one unless it says otherwise,
and has side effects unless its annotations say `readOnlyHint: true`.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib.metadata
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset

from tandem.agent.core.errors import TandemError
from tandem.agent.core.log import get_logger

__all__ = [
    'ENTRY_POINT_GROUP',
    'OUTBOUND_URL_KEY',
    'SIDE_EFFECT_KEY',
    'UNTRUSTED_OUTPUT_KEY',
    'ToolsetPlugin',
    'discover_plugins',
    'has_side_effects',
    'outbound_url_argument',
    'plugin_status',
    'returns_untrusted',
    'select',
]

ENTRY_POINT_GROUP = 'tandem.tools'
"""The entry-point group that built-in and third-party tool plugins register in."""

SIDE_EFFECT_KEY = 'side_effect'
"""The `ToolDefinition.metadata` key that says whether a tool has side effects (a bool)."""

OUTBOUND_URL_KEY = 'outbound_url'
"""The `ToolDefinition.metadata` key naming the argument that holds a URL the tool requests (a str)."""

UNTRUSTED_OUTPUT_KEY = 'untrusted_output'
"""The `ToolDefinition.metadata` key that says whether a tool's result is untrusted content (a bool)."""

_MCP_METADATA = frozenset({'meta', 'annotations'})
"""The keys pydantic-ai's MCP toolsets put in every tool definition they list."""

_OWN_DISTRIBUTION = 'tandem'
_NAME_PATTERN = re.compile(r'[a-z][a-z0-9_-]{0,31}')

_log = get_logger('tandem.tools.registry')


@dataclass(frozen=True, kw_only=True)
class ToolsetPlugin:
    """A named, selectable source of tools.

    Attributes:
        name: Short selector users type, e.g. `calc` in `--tools calc,clock`: lowercase letters,
            digits, `-` and `_`, starting with a letter, at most 32 characters.
        description: One line for `tandem tools`-style listings.
        build: Returns a pydantic-ai toolset (usually a `FunctionToolset`). Turns call it once per
            process and share the toolset, on any event loop: keep per-call state in the tools or in
            `ctx.deps`. Declare side effects on each tool with `metadata={SIDE_EFFECT_KEY: ...}`.
        status: Optional async health check returning a short line such as `"ok"` or
            `"offline: no network"`; `None` means the plugin is always available.
        listing: For tools known only once connected (an MCP server's): connects once and returns the
            status line and each tool's name and description, for `tandem tools`; it does not raise, and
            takes the place of `status`.
    """

    name: str
    description: str
    build: Callable[[], AbstractToolset[Any]]
    status: Callable[[], Awaitable[str]] | None = None
    listing: Callable[[], Awaitable[tuple[str, list[tuple[str, str]]]]] | None = None

    def __post_init__(self) -> None:
        # Names end up in comma-separated CLI flags and config lists, so keep them boring.
        if not _NAME_PATTERN.fullmatch(self.name):
            raise ValueError(
                f'Invalid tool plugin name {self.name!r}: use 1-32 lowercase letters, digits, "-" or "_", '
                'starting with a letter.'
            )


@dataclass(frozen=True, kw_only=True)
class _BrokenPlugin(ToolsetPlugin):
    """Stands in for a plugin whose entry point failed to load, so listings can show why."""

    error: str


def _broken(name: str, error: str) -> _BrokenPlugin:
    def build() -> AbstractToolset[Any]:
        # No tools rather than an exception: code that builds every discovered plugin (listings,
        # "enable everything") keeps working, and the warning was logged at discovery.
        return FunctionToolset[Any](id=name)

    async def status() -> str:
        return f'error: {error}'

    return _BrokenPlugin(name=name, description=f'(failed to load: {error})', build=build, status=status, error=error)


def discover_plugins() -> dict[str, ToolsetPlugin]:
    """Load every plugin registered in the `tandem.tools` entry-point group.

    A plugin that fails to import, or whose entry point doesn't name a `ToolsetPlugin`, is logged
    and kept as a placeholder so listings can show it: its status is `"error: ..."`, its `build`
    returns an empty toolset, selecting it by name raises a `TandemError` that says why, and
    `select(None, ...)` skips it.

    Returns:
        Plugins keyed by `ToolsetPlugin.name`, sorted by name. When two plugins share a name,
        Tandem's own wins, then the one from the distribution whose name sorts first; the other is
        logged and skipped, so installing a package can't silently replace a built-in tool.
    """
    found: dict[str, ToolsetPlugin] = {}
    for entry_point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=_precedence):
        plugin = _load(entry_point)
        existing = found.get(plugin.name)
        if existing is not None and not isinstance(existing, _BrokenPlugin):
            if not isinstance(plugin, _BrokenPlugin):
                _log.warning(
                    'tools.plugin_shadowed',
                    plugin=plugin.name,
                    distribution=_distribution_name(entry_point),
                    entry_point=entry_point.value,
                )
            continue
        found[plugin.name] = plugin  # a working plugin replaces a broken one of the same name
    return dict(sorted(found.items()))


def _distribution_name(entry_point: importlib.metadata.EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist is not None else '?'


def _precedence(entry_point: importlib.metadata.EntryPoint) -> tuple[bool, str, str]:
    # sys.path and directory-listing order aren't stable, so conflicts are settled by name instead.
    distribution = _distribution_name(entry_point)
    return (distribution != _OWN_DISTRIBUTION, distribution, entry_point.name)


def _load(entry_point: importlib.metadata.EntryPoint) -> ToolsetPlugin:
    try:
        loaded: object = entry_point.load()
    except Exception as exc:  # noqa: BLE001 -- plugin code can raise anything at import time
        return _report_broken(entry_point, f'{type(exc).__name__}: {exc}', exc)
    if not isinstance(loaded, ToolsetPlugin):
        return _report_broken(
            entry_point, f'{entry_point.value} is a {type(loaded).__name__}, not a tools.registry.ToolsetPlugin', None
        )
    # The entry-point name is only a label; users select the plugin by its own `name`.
    return loaded


def _report_broken(entry_point: importlib.metadata.EntryPoint, error: str, exc: BaseException | None) -> ToolsetPlugin:
    _log.warning('tools.plugin_broken', entry_point=entry_point.name, target=entry_point.value, error=error)
    if exc is not None:
        _log.debug('tools.plugin_traceback', entry_point=entry_point.name, exc_info=exc)
    # The entry-point name may not be a valid plugin name; fall back to one that is, so the
    # failure still shows up in listings instead of raising from here.
    name = entry_point.name if _NAME_PATTERN.fullmatch(entry_point.name) else 'invalid-plugin-name'
    return _broken(name, error)


def select(names: Sequence[str] | None, available: Mapping[str, ToolsetPlugin]) -> list[ToolsetPlugin]:
    """Pick the plugins to enable.

    Args:
        names: Plugin names in the order wanted, or `None` for every plugin that loaded
            (plugins that failed to load are skipped). Case, surrounding spaces and duplicates are ignored.
        available: What `discover_plugins` returned.

    Returns:
        The selected plugins: in `names` order, or by name when `names` is `None`.

    Raises:
        TandemError: A name is unknown (the message lists the known ones), or names a plugin that
            failed to load (the message says why).
    """
    if names is None:
        return [plugin for plugin in available.values() if not isinstance(plugin, _BrokenPlugin)]
    wanted = list(dict.fromkeys(name.strip().lower() for name in names if name.strip()))
    unknown = [name for name in wanted if name not in available]
    if unknown:
        hints = [
            f'{match[0]!r} for {name!r}' if len(unknown) > 1 else repr(match[0])
            for name in unknown
            if (match := difflib.get_close_matches(name, list(available), n=1))
        ]
        raise TandemError(
            f'Unknown tool plugin{"s" if len(unknown) > 1 else ""} {", ".join(map(repr, unknown))}.'
            + (f' Did you mean {", ".join(hints)}?' if hints else '')
            + (f' Known: {", ".join(sorted(available))}.' if available else ' No tool plugins are installed.')
        )
    selected = [available[name] for name in wanted]
    for plugin in selected:
        if isinstance(plugin, _BrokenPlugin):
            raise TandemError(f'Tool plugin {plugin.name!r} failed to load: {plugin.error}')
    return selected


async def plugin_status(plugin: ToolsetPlugin, *, timeout: float = 5.0) -> str:
    """Run a plugin's health check without letting it raise or hang.

    Args:
        plugin: The plugin to check.
        timeout: Seconds to wait for the check.

    Returns:
        `"ok"` when the plugin has no check, otherwise what the check returned, or
        `"error: ..."` if it raised or timed out.
    """
    if plugin.status is None:
        return 'ok'
    try:
        async with asyncio.timeout(timeout):
            return await plugin.status()
    except TimeoutError:
        return f'error: status check timed out after {timeout:g}s'
    except Exception as exc:  # noqa: BLE001 -- a broken health check must not break the listing
        return f'error: {type(exc).__name__}: {exc}'


def has_side_effects(tool_def: ToolDefinition) -> bool:
    """Whether a tool may change anything outside the conversation, so approval policies can gate it.

    A tool says so with `metadata={SIDE_EFFECT_KEY: ...}`. Undeclared, a tool an MCP server serves is
    side-effect free only when its annotations say `readOnlyHint: true`, and any other tool has side effects.
    """
    metadata = tool_def.metadata or {}
    declared = metadata.get(SIDE_EFFECT_KEY)
    if isinstance(declared, bool):
        return declared
    annotations = metadata.get('annotations') if metadata.keys() >= _MCP_METADATA else None
    return not (isinstance(annotations, dict) and cast(dict[str, Any], annotations).get('readOnlyHint') is True)


def outbound_url_argument(tool_def: ToolDefinition) -> str | None:
    """The name of the argument holding a URL the tool requests, if it declares one."""
    name = (tool_def.metadata or {}).get(OUTBOUND_URL_KEY)
    return name if isinstance(name, str) else None


def returns_untrusted(tool_def: ToolDefinition) -> bool:
    """Whether a tool's result is untrusted content, which taints the turn it enters.

    A tool says so with `metadata={UNTRUSTED_OUTPUT_KEY: ...}`; undeclared, a tool an MCP server serves
    counts as untrusted (its results come from a process Tandem does not control), any other as trusted.
    """
    metadata = tool_def.metadata or {}
    declared = metadata.get(UNTRUSTED_OUTPUT_KEY)
    if isinstance(declared, bool):
        return declared
    return metadata.keys() >= _MCP_METADATA
