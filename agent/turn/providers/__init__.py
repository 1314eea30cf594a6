"""Turn-context providers: what fills the prompt's slots (memory, retrieval, the user's name) each turn.

Long-term memory and retrieval each implement `TurnContextProvider`; the runtime asks every
provider in `Deps.context_providers` before the model is called and merges their variables into
the prompt template's.
"""
