"""One turn of the agent: its dependencies, the pydantic-ai Agent, capabilities, context providers, and the run itself."""
