"""`tandem serve`: the OpenAI-compatible HTTP service."""
