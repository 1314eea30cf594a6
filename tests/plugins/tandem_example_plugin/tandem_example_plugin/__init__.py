"""An example Tandem tool plugin: one `shout` tool.

Tandem finds it through the `tandem.tools` entry point in this package's `pyproject.toml`, exactly
as it finds its built-in calculator and clock.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import FunctionToolset

from tandem.tools.registry import SIDE_EFFECT_KEY, ToolsetPlugin

__all__ = ['build_toolset', 'plugin', 'shout']


def shout(text: str) -> str:
    """Shout the text back: upper case with an exclamation mark. Use it when the user asks you to shout something.

    Args:
        text: The text to shout.
    """
    return f'{text.upper()}!'


def build_toolset() -> FunctionToolset[Any]:
    """A fresh toolset with the `shout` tool, which changes nothing outside the conversation."""
    toolset = FunctionToolset[Any](id='example')
    toolset.add_function(shout, metadata={SIDE_EFFECT_KEY: False})
    return toolset


async def _status() -> str:
    # A real plugin would check its API key or network here and say what's wrong, e.g. "offline: no network".
    return 'ok'


plugin = ToolsetPlugin(
    name='example',
    description='Shouts text back (an example third-party plugin).',
    build=build_toolset,
    status=_status,
)
