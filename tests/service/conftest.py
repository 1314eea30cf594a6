"""Fixtures for the HTTP service and the Python API: real Redis, scripted backbones, real servers.

- `make_app(model, **server)`: `create_app` with two tenants' keys (`KEY_A` for `acme`, `KEY_B`
  for `beta`) and `model` served as the backbone `scripted`, on the flushed test Redis.
- `asgi(app)`: an `httpx.AsyncClient` on the app in-process (lifespan run), for fast tests.
- `live(app)`: the app under a real uvicorn server on a loopback port, in a thread, for the
  openai SDK and for disconnects.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from pydantic_ai.models import Model

from tandem.agent.core.config import ApiKeyConfig, ServerConfig, Settings
from tandem.agent.server.app import create_app
from tests.support.deps import scripted_backbone

KEY_A = 'sk-acme-0123456789'
KEY_B = 'sk-beta-9876543210'
AUTH_A = {'Authorization': f'Bearer {KEY_A}'}
AUTH_B = {'Authorization': f'Bearer {KEY_B}'}


def service_settings(
    home: Path, redis_url: str, *, overrides: Mapping[str, Any] | None = None, **server: Any
) -> Settings:
    """Settings that read no config file: the test Redis, two tenants' keys, calc and clock tools."""
    keys = [ApiKeyConfig(key=SecretStr(KEY_A), tenant='acme'), ApiKeyConfig(key=SecretStr(KEY_B), tenant='beta')]
    options: dict[str, Any] = {'tools': ['calc', 'clock'], **(overrides or {})}
    return Settings(home=home, redis_url=SecretStr(redis_url), server=ServerConfig(api_keys=keys, **server), **options)


MakeApp = Callable[..., FastAPI]


@pytest.fixture
def make_app(redis_url: str, tmp_path: Path) -> MakeApp:
    """`make_app(model, name='scripted', allow_anonymous=False, overrides=None, **server_settings)`."""

    def make(
        model: Model,
        *,
        name: str = 'scripted',
        allow_anonymous: bool = False,
        overrides: Mapping[str, Any] | None = None,
        **server: Any,
    ) -> FastAPI:
        settings = service_settings(tmp_path, redis_url, overrides=overrides, **server)
        return create_app(settings, backbones={name: scripted_backbone(model, name)}, allow_anonymous=allow_anonymous)

    return make


@asynccontextmanager
async def asgi(app: FastAPI, *, client: tuple[str, int] = ('127.0.0.1', 50000)) -> AsyncIterator[httpx.AsyncClient]:
    """A client on `app` in this process, its lifespan (Redis connection) run around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url='http://tandem.test', timeout=30) as http:
            yield http


@contextmanager
def live(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields the base URL (`.../v1`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level='warning', lifespan='on', timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={'sockets': [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError('the test server did not start')
        time.sleep(0.01)
    try:
        yield f'http://127.0.0.1:{port}/v1'
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
