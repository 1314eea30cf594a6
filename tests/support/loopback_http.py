"""A small threaded HTTP server on 127.0.0.1 for tests that must not touch the network.

```python
with LoopbackHTTPServer({'/': html_reply('<title>Hi</title><p>hello</p>')}) as server:
    fetch(server.url('/'))
    assert server.request_count == 1
```

Routes map a path (query string ignored) to a `Reply`, or to a function from the
`RecordedRequest` to a `Reply`; unknown paths get a 404. Helpers build the replies tests need:
`html_reply`, `json_reply`, `text_reply`, `redirect_reply`, `slow_reply` (waits before answering),
`streamed_reply` (a huge body sent in chunks, counting what actually went out) and
`gzip_bomb_reply`.

The server counts accepted TCP connections separately from parsed requests, so a "canary"
server can prove that nothing even connected to it. It speaks HTTP/1.0 (one request per
connection), so bodies without a `Content-Length` simply end when the connection closes.
"""

from __future__ import annotations

import json
import socket
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

__all__ = [
    'LoopbackHTTPServer',
    'RecordedRequest',
    'Reply',
    'Route',
    'free_port',
    'gzip_bomb_reply',
    'html_reply',
    'json_reply',
    'redirect_reply',
    'refused_port',
    'slow_reply',
    'streamed_reply',
    'text_reply',
]


@dataclass(frozen=True)
class Reply:
    """What the server sends back.

    Attributes:
        status: The HTTP status code.
        headers: Response headers. `Content-Length` is added for a `bytes` body unless given.
        body: The body, or a function returning an iterable of chunks to stream.
        delay: Seconds to wait before sending anything; cut short when the server stops.
        chunk_delay: Seconds to wait between streamed chunks.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    body: bytes | Callable[[], Iterable[bytes]] = b''
    delay: float = 0.0
    chunk_delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


Route = Reply | Callable[[RecordedRequest], Reply]


def html_reply(markup: str, *, status: int = 200, charset: str = 'utf-8') -> Reply:
    """An HTML page."""
    return Reply(status, {'Content-Type': f'text/html; charset={charset}'}, markup.encode(charset))


def json_reply(data: object, *, status: int = 200) -> Reply:
    """A compact JSON document."""
    return Reply(status, {'Content-Type': 'application/json'}, json.dumps(data, separators=(',', ':')).encode())


def text_reply(text: str, *, status: int = 200, content_type: str = 'text/plain; charset=utf-8') -> Reply:
    """A text body with any content type."""
    return Reply(status, {'Content-Type': content_type}, text.encode('utf-8'))


def redirect_reply(location: str, *, status: int = 302) -> Reply:
    """A redirect to `location`."""
    return Reply(status, {'Location': location})


def slow_reply(reply: Reply, delay: float) -> Reply:
    """`reply`, sent after `delay` seconds."""
    return replace(reply, delay=delay)


def streamed_reply(
    total_bytes: int,
    *,
    chunk_size: int = 64 * 1024,
    content_type: str = 'text/plain; charset=utf-8',
    fill: bytes = b'a',
    content_length: bool = True,
    chunk_delay: float = 0.0,
) -> Reply:
    """A `total_bytes` body generated chunk by chunk, never held in memory whole."""

    def chunks() -> Iterator[bytes]:
        block = (fill * (chunk_size // len(fill) + 1))[:chunk_size]
        remaining = total_bytes
        while remaining > 0:
            piece = block[: min(chunk_size, remaining)]
            remaining -= len(piece)
            yield piece

    headers = {'Content-Type': content_type}
    if content_length:
        headers['Content-Length'] = str(total_bytes)
    return Reply(200, headers, chunks, chunk_delay=chunk_delay)


def gzip_bomb_reply(decompressed_bytes: int, *, content_type: str = 'text/html; charset=utf-8') -> Reply:
    """A gzip-encoded body of `decompressed_bytes` zero bytes: a few KB on the wire per MB inflated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b'\0' * (1024 * 1024)
    parts: list[bytes] = []
    remaining = decompressed_bytes
    while remaining > 0:
        piece = block[: min(len(block), remaining)]
        remaining -= len(piece)
        parts.append(compressor.compress(piece))
    parts.append(compressor.flush())
    return Reply(200, {'Content-Type': content_type, 'Content-Encoding': 'gzip'}, b''.join(parts))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


@contextmanager
def refused_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that refuses connections until the block ends.

    Held bound and never listening: a port from `free_port` is free only when asked, and a server
    the test starts next may be given it, so a "down" address would answer.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        yield int(sock.getsockname()[1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler stuck in a slow reply must not hold up stop()
    owner: LoopbackHTTPServer

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner._count_connection()
        super().process_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    def _handle(self) -> None:
        owner = cast(_Server, self.server).owner
        length = int(self.headers.get('Content-Length') or 0)
        split = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=split.query,
            headers={key.lower(): value for key, value in self.headers.items()},
            body=self.rfile.read(length) if length else b'',
        )
        reply = owner._record(request)
        if reply.delay and owner.stopping.wait(reply.delay):
            return  # the server is stopping: hang up without answering
        try:
            self.send_response(reply.status)
            headers = dict(reply.headers)
            if isinstance(reply.body, bytes) and not any(key.lower() == 'content-length' for key in headers):
                headers['Content-Length'] = str(len(reply.body))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == 'HEAD':
                return
            chunks = [reply.body] if isinstance(reply.body, bytes) else reply.body()
            for chunk in chunks:
                self.wfile.write(chunk)  # unbuffered: returns once the kernel took every byte
                owner._count_sent(len(chunk))
                if reply.chunk_delay and owner.stopping.wait(reply.chunk_delay):
                    return
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, which is what cap tests want it to do

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class LoopbackHTTPServer:
    """A threaded HTTP server on 127.0.0.1 with canned routes and counters.

    Args:
        routes: Path to `Reply` (or to a function of the request returning one).
        default: The reply for unknown paths; a 404 when not given.

    Use it as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self, routes: Mapping[str, Route] | None = None, *, default: Route | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.default: Route = default or text_reply('not found', status=404)
        self.requests: list[RecordedRequest] = []
        self.connection_count = 0
        self.bytes_sent = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(('127.0.0.1', 0), _Handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1`."""
        return '127.0.0.1'

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    @property
    def netloc(self) -> str:
        """`127.0.0.1:<port>`, the form allow-lists take."""
        return f'{self.host}:{self.port}'

    def url(self, path: str = '/') -> str:
        """An absolute `http://127.0.0.1:<port><path>` URL."""
        return f'http://{self.netloc}{path}'

    @property
    def request_count(self) -> int:
        """How many requests were received."""
        with self._lock:
            return len(self.requests)

    def route(self, path: str, reply: Route) -> None:
        """Add or replace the reply for `path`."""
        with self._lock:
            self.routes[path] = reply

    def reset(self) -> None:
        """Forget the recorded requests and zero the counters."""
        with self._lock:
            self.requests.clear()
            self.connection_count = 0
            self.bytes_sent = 0

    def start(self) -> LoopbackHTTPServer:
        """Start serving in a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f'loopback-http-{self.port}', daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake any slow replies, and close the socket."""
        self.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> LoopbackHTTPServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            route = self.routes.get(request.path, self.default)
        return route if isinstance(route, Reply) else route(request)

    def _count_connection(self) -> None:
        with self._lock:
            self.connection_count += 1

    def _count_sent(self, count: int) -> None:
        with self._lock:
            self.bytes_sent += count
