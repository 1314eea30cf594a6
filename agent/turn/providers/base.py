"""Turn-context providers: what fills the prompt's slots (memory, retrieval, the user's name) each turn.

Long-term memory and retrieval each implement `TurnContextProvider`; the runtime asks every
provider in `Deps.context_providers` before the model is called and merges their variables into
the prompt template's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tandem.agent.turn.deps import Deps


class TurnContextProvider(Protocol):
    """Contributes prompt variables for a turn, such as `memory` or `retrieval`."""

    async def prompt_variables(self, deps: Deps, text: str) -> Mapping[str, Any]:
        """Variables to merge into the prompt's for this turn.

        Args:
            deps: The turn's dependencies (identity, stores, settings).
            text: The user's message, to find what is relevant to it.

        Returns:
            Only the variables this provider owns, e.g. `{'memory': '- likes teal'}`.
        """
        ...
