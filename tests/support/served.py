"""`tandem serve` as a real process for tests: started on a free port, waited for, and always stopped."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.loopback_http import free_port


@dataclass
class Served:
    """A running server: where it answers, and (once stopped) how it exited."""

    base_url: str
    returncode: int | None = None


@contextmanager
def served(
    command: Callable[[int], list[str]],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    ready_path: str = '/healthz',
    start_timeout: float = 120.0,
) -> Iterator[Served]:
    """Run `command(port)` until `ready_path` answers 200, yield it, then stop it with SIGTERM.

    A server that outlives its graceful-shutdown window is killed, so a hung one fails the test and
    leaves nothing running.
    """
    import httpx

    port = free_port()
    server = Served(f'http://127.0.0.1:{port}')
    # stderr goes to a file, not a pipe: nobody reads a pipe while the test runs, and a full one blocks the server.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command(port), cwd=cwd, env=dict(env), stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + start_timeout  # start-up is mostly imports: slow on a loaded machine
            while process.poll() is None:
                try:
                    if httpx.get(f'{server.base_url}{ready_path}', timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f'the server did not answer {ready_path} in {start_timeout:.0f} s'
                time.sleep(0.1)
            else:
                stderr.seek(0)
                raise AssertionError(f'the server exited with {process.returncode}: {stderr.read().decode()}')
            yield server
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                server.returncode = process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()  # a hung server outlives its graceful-shutdown window: leave nothing running
                process.wait()
                raise
