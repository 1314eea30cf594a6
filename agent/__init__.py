"""Tandem's agent package: the runtime, its front ends, and the public Python API.

Imports are lazy so `import agent` stays cheap for the CLI and for embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem.agent.api import Assistant
    from tandem.agent.core.errors import TandemError
    from tandem.agent.core.turn_state import Identity
    from tandem.agent.turn.deps import Deps
    from tandem.agent.turn.request import TurnRequest
    from tandem.agent.turn.run import TurnResult, TurnUsage, run_turn

__all__ = ['Assistant', 'Deps', 'Identity', 'TandemError', 'TurnRequest', 'TurnResult', 'TurnUsage', 'run_turn']

_EXPORTS = {
    'Assistant': 'tandem.agent.api',
    'Deps': 'tandem.agent.turn.deps',
    'Identity': 'tandem.agent.core.turn_state',
    'TandemError': 'tandem.agent.core.errors',
    'TurnRequest': 'tandem.agent.turn.request',
    'TurnResult': 'tandem.agent.turn.run',
    'TurnUsage': 'tandem.agent.turn.run',
    'run_turn': 'tandem.agent.turn.run',
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib

    return getattr(importlib.import_module(module), name)
