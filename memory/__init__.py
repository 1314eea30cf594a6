"""Tandem memory: Redis key layout, connections, the embedded server, and conversation storage.

Import the submodules directly (`memory.keys`, `memory.connection`, `memory.redis_server`,
`memory.conversations`); this package imports nothing itself, so it stays cheap to import.
"""
