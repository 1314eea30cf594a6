"""Turn context providers: what fills the prompt's memory and retrieval slots before each turn."""
