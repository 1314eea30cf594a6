"""A real Redis Cluster for tests: 3 masters and 3 replicas on loopback ports, made by `--cluster create`.

The nodes are `valkey-server` processes (the binary Tandem bundles) and the cluster is formed by its
`valkey-cli --cluster create ... --cluster-replicas 1`, as an operator would. Slots spread over the
three masters, so keys of different tenants and sessions land on different nodes, and a failover
moves a master's slots to its replica under a running client.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import cast

import redis as sync_redis

from tandem.memory.redis_server import find_server_binary
from tests.conftest import RedisTestServer

_READY_TIMEOUT = 30.0


def _cli() -> str:
    bundled = find_server_binary().with_name('valkey-cli')
    found = str(bundled) if bundled.exists() else shutil.which('valkey-cli') or shutil.which('redis-cli')
    if found is None:
        raise RuntimeError('no valkey-cli or redis-cli to create the test cluster with')
    return found


class RedisClusterTestBed:
    """Six cluster nodes, three masters with a replica each, reached through `url`."""

    def __init__(self, root: Path) -> None:
        self.nodes = [
            RedisTestServer(root / f'node-{index}', appendonly=False, cluster=True, claim_slots=False)
            for index in range(6)
        ]

    @property
    def url(self) -> str:
        """`redis+cluster://` of one node: the client discovers the rest."""
        return f'redis+cluster://127.0.0.1:{self.nodes[0].port}'

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [
                _cli(), '--cluster', 'create', *(f'127.0.0.1:{node.port}' for node in self.nodes),
                '--cluster-replicas', '1', '--cluster-yes',
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f'--cluster create failed:\n{created.stdout[-2000:]}\n{created.stderr[-2000:]}')
        self.wait_until_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def wait_until_healthy(self) -> None:
        """Until every node says the cluster is ok, and three masters each have a replica in sync."""
        deadline = time.monotonic() + _READY_TIMEOUT
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError('the test cluster did not become healthy')
            time.sleep(0.05)

    def _healthy(self) -> bool:
        for node in self.nodes:
            if b'cluster_state:ok' not in cast(bytes, self._command(node, 'CLUSTER', 'INFO')):
                return False
        linked = [node for node in self.nodes if self._replication(node).get('master_link_status') == 'up']
        return len(self.masters()) == 3 and len(linked) == 3

    def _replication(self, node: RedisTestServer) -> dict[str, object]:
        return cast(dict[str, object], self._command(node, 'INFO', 'replication'))

    def role(self, node: RedisTestServer) -> str:
        return cast(list[bytes], self._command(node, 'ROLE'))[0].decode()

    def masters(self) -> list[RedisTestServer]:
        """The nodes that are masters now."""
        return [node for node in self.nodes if self.role(node) == 'master']

    def master_of(self, key: str) -> RedisTestServer:
        """The master that holds `key`'s slot now."""
        slot = cast(int, self._command(self.nodes[0], 'CLUSTER', 'KEYSLOT', key))
        for shard in cast(list[list[object]], self._command(self.nodes[0], 'CLUSTER', 'SLOTS')):
            start, end, master = cast(int, shard[0]), cast(int, shard[1]), cast(list[object], shard[2])
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == master[1])
        raise LookupError(f'no master holds slot {slot}')

    def replica_of(self, master: RedisTestServer) -> RedisTestServer:
        for node in self.nodes:
            info = self._replication(node)
            if info.get('role') == 'slave' and info.get('master_port') == master.port:
                return node
        raise LookupError(f'master on port {master.port} has no replica')

    def key_counts(self) -> dict[int, int]:
        """Keys on each master, by port."""
        return {node.port: cast(int, self._command(node, 'DBSIZE')) for node in self.masters()}

    def fail_over(self, master: RedisTestServer) -> RedisTestServer:
        """Promote `master`'s replica with `CLUSTER FAILOVER`, as an operator does for maintenance; the new master."""
        replica = self.replica_of(master)
        self._command(replica, 'CLUSTER', 'FAILOVER')
        deadline = time.monotonic() + _READY_TIMEOUT
        while self.role(replica) != 'master' or not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError('the failover did not complete')
            time.sleep(0.05)
        return replica

    def flushall(self) -> None:
        for node in self.masters():
            self._command(node, 'FLUSHALL')

    @staticmethod
    def _command(node: RedisTestServer, *args: object) -> object:
        client = sync_redis.Redis(host='127.0.0.1', port=node.port, socket_timeout=5)
        try:
            return client.execute_command(*args)
        finally:
            client.close()
