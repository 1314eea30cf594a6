"""Connecting: URL schemes, failing fast with a clear message, and never printing a password."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from tandem.agent.core.errors import ConfigError, RedisUnavailableError
from tandem.memory.connection import _client, _ClusterNodeConnection, connect, mask_url
from tandem.memory.conversations import RedisConversationStore
from tests.conftest import RedisTestServer
from tests.support.loopback_http import refused_port


async def test_a_tcp_url_connects_with_bytes_responses(redis_url: str, tmp_path: Path) -> None:
    client = await connect(redis_url, home=tmp_path)
    await client.set('k', 'v')

    assert await client.get('k') == b'v'
    await client.aclose()


async def test_an_unreachable_server_fails_fast_with_the_password_masked(tmp_path: Path) -> None:
    with refused_port() as closed, pytest.raises(RedisUnavailableError) as caught:
        await connect(f'redis://:hunter2@127.0.0.1:{closed}/0', home=tmp_path, retries=1)

    message = str(caught.value)
    assert message.startswith(f'cannot reach Redis at redis://:***@127.0.0.1:{closed}')
    assert 'hunter2' not in message
    assert message.endswith('Start it, fix TANDEM_REDIS_URL, or unset it to use the embedded server.')
    assert '\n' not in message


@pytest.mark.parametrize('url', ['http://localhost:6379', 'localhost:6379', 'redis+sentinel://localhost:26379'])
async def test_a_url_that_is_not_redis_is_a_config_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='invalid Redis URL'):
        await connect(url, home=tmp_path)


@pytest.mark.parametrize(
    ('url', 'masked'),
    [
        ('redis://:secret@host:6379/0', 'redis://:***@host:6379/0'),
        ('rediss://user:secret@host:6380', 'rediss://user:***@host:6380'),
        ('unix:///run/redis.sock?db=1&password=secret', 'unix:///run/redis.sock?db=1&password=***'),
        ('redis+cluster://:p%40ss@node1:7000', 'redis+cluster://:***@node1:7000'),
        ('redis://host:6379/0', 'redis://host:6379/0'),
    ],
)
def test_mask_url_hides_passwords_only(url: str, masked: str) -> None:
    assert mask_url(url) == masked


async def test_a_client_reconnects_by_itself_after_the_server_restarts(
    redis: Redis, redis_control: RedisTestServer
) -> None:
    await redis.set('before', '1')

    redis_control.restart()  # the client's pooled connection is now dead

    assert await redis.set('after', '1') is True  # retried on a fresh connection


async def test_a_server_that_stays_down_is_a_clear_error(
    redis_server_factory: Callable[..., RedisTestServer], tmp_path: Path
) -> None:
    server = redis_server_factory(appendonly=False)
    client = await connect(server.url, home=tmp_path, retries=2)
    store = RedisConversationStore(client, tenant='acme')
    server.kill()

    with pytest.raises(RedisUnavailableError, match='lost the connection to Redis while reading a session'):
        await store.load('chat-1')
    await client.aclose()


@pytest.mark.parametrize(('url', 'tls'), [('redis+cluster://node1:7000', False), ('rediss+cluster://node1:7000', True)])
async def test_a_cluster_clients_nodes_ride_out_a_slot_map_reload_and_keep_tls(url: str, tls: bool) -> None:
    # Their connections report a socket closed under a command as a lost connection (tests/cluster
    # proves it on a real cluster); swapping in that class must not drop TLS, nor send a password in clear.
    client = _client(url, retries=3)
    assert isinstance(client, RedisCluster)
    classes = {client.connection_kwargs['connection_class']}
    classes |= {node.connection_class for node in client.nodes_manager.startup_nodes.values()}
    await client.aclose()

    assert len(classes) == 1
    (connection_class,) = classes
    assert issubclass(connection_class, _ClusterNodeConnection)
    assert issubclass(connection_class, SSLConnection) is tls
