"""A slot-map reload under running commands: redis-py's cluster client closes every connection, in use or not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tandem.memory.connection import connect
from tests.support.cluster import RedisClusterTestBed


async def test_commands_running_while_the_client_reloads_the_slot_map_are_retried_not_crashed(
    cluster: RedisClusterTestBed, tmp_path: Path
) -> None:
    # A failover makes the client reload its map with `aclose()` (on a MOVED streak or CLUSTERDOWN),
    # which closes the connections other commands are using at that moment. Before the fix a command
    # caught mid-send raised AttributeError; then, as a lost connection, it could still spend its
    # immediate retries within the burst of reconnects. SET, since a retried write may land twice.
    client = await connect(cluster.url, home=tmp_path)
    keys = [f'tandem:{{acme:s{n}}}:probe' for n in range(24)]

    async def writes(key: str) -> None:
        for turn in range(40):
            await client.set(key, turn)

    async def reloads() -> None:
        for _ in range(8):
            await asyncio.sleep(0.025)
            await client.aclose()

    try:
        await asyncio.gather(*(writes(key) for key in keys), reloads())
        assert [await client.get(key) for key in keys] == [b'39'] * len(keys)
    finally:
        await client.aclose()


async def test_a_script_a_master_has_not_seen_is_loaded_again_and_run(
    cluster: RedisClusterTestBed, tmp_path: Path
) -> None:
    # A replica promoted by a failover has none of its old master's scripts, and redis-py reloads a
    # script only once, on the primaries its slot map knew of then. The client loads it again itself.
    client = await connect(cluster.url, home=tmp_path)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    key = 'tandem:{acme:s1}:counter'
    try:
        assert await script(keys=[key]) == 1
        await client.script_flush()  # every primary forgets it, as a promoted replica never knew it

        assert await client.evalsha(script.sha, 1, key) == 2  # EVALSHA alone, with no redis-py reload
    finally:
        await client.aclose()
