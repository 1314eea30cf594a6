"""The embedded server: one per home, shared by every process, persistent, and stopped cleanly."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from tandem.memory.connection import connect
from tandem.memory.redis_server import EmbeddedRedis

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def embedded() -> Iterator[Callable[[Path], EmbeddedRedis]]:
    """`embedded(home)`: an `EmbeddedRedis`, stopped after the test whatever happens."""
    made: list[EmbeddedRedis] = []

    def make(home: Path) -> EmbeddedRedis:
        made.append(EmbeddedRedis(home))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A home short enough for a Unix socket, whatever pytest's tmp_path looks like."""
    with tempfile.TemporaryDirectory(prefix='tdm-') as home:
        yield Path(home)
        EmbeddedRedis(Path(home)).stop()  # before its files go, or it would be left running


@pytest.fixture
def long_home(tmp_path: Path) -> Path:
    """A home whose socket path would exceed what the OS allows."""
    home = tmp_path / ('deep-' * 20)
    assert len(os.fsencode(home / 'redis' / 'redis.sock')) > 108
    return home


def _get(url: str, key: str) -> bytes | None:
    client = sync_redis.Redis.from_url(url)
    try:
        return client.get(key)  # type: ignore[return-value]
    finally:
        client.close()


def _set(url: str, key: str, value: str) -> None:
    client = sync_redis.Redis.from_url(url)
    try:
        client.set(key, value)
    finally:
        client.close()


def _server_processes(data_dir: Path) -> list[int]:
    """Live server processes working in `data_dir` (a server chdirs to its `dir`)."""
    pids: list[int] = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (
                Path(os.readlink(entry / 'cwd')) == data_dir.resolve()
                and b'-server' in (entry / 'cmdline').read_bytes()
            ):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_the_server_listens_on_a_private_unix_socket(
    embedded: Callable[[Path], EmbeddedRedis], short_home: Path
) -> None:
    server = embedded(short_home)

    url = server.ensure_running()

    assert url == f'unix://{short_home}/redis/redis.sock'
    assert stat.S_IMODE((short_home / 'redis' / 'redis.sock').stat().st_mode) == 0o700
    assert stat.S_IMODE((short_home / 'redis').stat().st_mode) == 0o700
    assert server.status().running and server.status().transport == 'unix'


def test_ensure_running_twice_attaches_to_the_same_server(
    embedded: Callable[[Path], EmbeddedRedis], short_home: Path
) -> None:
    first = embedded(short_home).ensure_running()
    pid = embedded(short_home).pid()

    second = embedded(short_home).ensure_running()

    assert second == first
    assert embedded(short_home).pid() == pid is not None
    assert _server_processes(short_home / 'redis') == [pid]


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='counts server processes through /proc')
async def test_concurrent_processes_start_exactly_one_server(
    embedded: Callable[[Path], EmbeddedRedis], short_home: Path
) -> None:
    embedded(short_home)  # stops it after the test
    code = (
        'import sys; from pathlib import Path; from tandem.memory.redis_server import EmbeddedRedis; '
        'print(EmbeddedRedis(Path(sys.argv[1])).ensure_running())'
    )

    async def start() -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, '-c', code, str(short_home), cwd=REPO, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await process.communicate()
        assert process.returncode == 0
        return stdout.decode().strip()

    urls = await asyncio.gather(*(start() for _ in range(4)))

    assert len(set(urls)) == 1
    assert len(_server_processes(short_home / 'redis')) == 1


def test_data_survives_stop_and_start(embedded: Callable[[Path], EmbeddedRedis], short_home: Path) -> None:
    server = embedded(short_home)
    url = server.ensure_running()
    _set(url, 'tandem:probe', 'kept')

    assert server.stop() is True
    assert not server.is_running()
    url = server.ensure_running()

    assert _get(url, 'tandem:probe') == b'kept'


def test_stop_is_clean(embedded: Callable[[Path], EmbeddedRedis], short_home: Path) -> None:
    server = embedded(short_home)
    server.ensure_running()
    pid = server.pid()

    server.stop()

    assert pid is not None and _server_processes(short_home / 'redis') == []
    assert not (short_home / 'redis' / 'redis.sock').exists()
    assert server.pid() is None
    assert 'ready to exit' in server.log_path.read_text()  # a SHUTDOWN, not a kill
    assert server.stop() is False  # nothing left to stop


def test_a_home_too_deep_for_a_socket_falls_back_to_loopback_tcp_with_a_password(
    embedded: Callable[[Path], EmbeddedRedis], long_home: Path
) -> None:
    server = embedded(long_home)

    url = server.ensure_running()

    assert server.transport == 'tcp'
    assert url.startswith('redis://:') and '@127.0.0.1:' in url
    address = long_home / 'redis' / 'address'
    assert address.read_text().strip() == url
    assert stat.S_IMODE(address.stat().st_mode) == 0o600
    anonymous = url.replace(url[len('redis://') : url.index('@') + 1], '')
    with pytest.raises(sync_redis.AuthenticationError):
        _get(anonymous, 'anything')
    client = sync_redis.Redis.from_url(url)
    assert client.config_get('bind') == {'bind': '127.0.0.1'}
    client.close()
    assert embedded(long_home).ensure_running() == url  # and another process attaches to it


async def test_connect_without_a_url_starts_the_embedded_server(
    embedded: Callable[[Path], EmbeddedRedis], short_home: Path
) -> None:
    embedded(short_home)  # stops it after the test

    client = await connect(None, home=short_home)

    assert await client.ping() is True
    assert EmbeddedRedis(short_home).is_running()
    await client.aclose()
