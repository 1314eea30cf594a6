"""Health, readiness, the OpenAPI docs, and a real OpenAI-compatible backbone behind the service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from tandem.agent.core.config import ApiKeyConfig, BackboneConfig, ServerConfig, Settings
from tandem.agent.server.app import create_app
from tests.conftest import RedisTestServer
from tests.service.conftest import AUTH_A, KEY_A, MakeApp, asgi
from tests.support.fake_openai import FakeOpenAI
from tests.support.loopback_http import refused_port
from tests.support.scripted import scripted_model


def _settings(tmp_path: Path, redis_url: str, **backbones: BackboneConfig) -> Settings:
    return Settings(
        home=tmp_path,
        redis_url=SecretStr(redis_url),
        tools=['calc'],
        backbones=backbones,
        server=ServerConfig(
            api_keys=[ApiKeyConfig(key=SecretStr(KEY_A), tenant='acme')], readiness_timeout_seconds=0.5
        ),
    )


async def test_healthz_and_readyz_need_no_key_and_docs_list_every_endpoint(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    async with asgi(make_app(model)) as http:
        health = await http.get('/healthz')
        ready = await http.get('/readyz')
        spec = await http.get('/openapi.json')
        docs = await http.get('/docs')

    assert (health.status_code, health.json()) == (200, {'status': 'ok'})
    assert (ready.status_code, ready.json()) == (
        200,
        {'status': 'ready', 'redis': 'ok', 'backbones': {'scripted': 'ok'}},
    )
    assert sorted(spec.json()['paths']) == [
        '/healthz',
        '/readyz',
        '/v1/chat/completions',
        '/v1/knowledge',
        '/v1/knowledge/{kb}',
        '/v1/models',
        '/v1/sessions',
        '/v1/sessions/{session_id}',
        '/v1/sessions/{session_id}/messages',
    ]
    assert 'HTTPBearer' in spec.json()['components']['securitySchemes']
    assert docs.status_code == 200


async def test_readyz_fails_when_the_backbone_or_redis_is_down(
    tmp_path: Path, redis_server_factory: Callable[..., RedisTestServer]
) -> None:
    redis = redis_server_factory(appendonly=False)
    with refused_port() as closed, FakeOpenAI() as fake:
        down = BackboneConfig(model='openai-chat:tiny', base_url=f'http://127.0.0.1:{closed}/v1')
        up = BackboneConfig(model='openai-chat:tiny-chat', base_url=fake.url)
        app = create_app(_settings(tmp_path, redis.url, local=up, spare=down))
        async with asgi(app) as http:
            ready = await http.get('/readyz')
            redis.kill()
            not_ready = await http.get('/readyz')
            refused = await http.get('/v1/models', headers=AUTH_A)

    # Only the default backbone (the first configured) decides; the others are reported.
    assert (ready.status_code, ready.json()['backbones']) == (200, {'local': 'ok', 'spare': 'unreachable'})
    assert (not_ready.status_code, not_ready.json()['redis']) == (503, 'unavailable')
    assert (refused.status_code, refused.json()['error']['code']) == (503, 'redis_unavailable')


async def test_an_openai_compatible_backbone_serves_turns_end_to_end(tmp_path: Path, redis_url: str) -> None:
    with FakeOpenAI() as fake:
        app = create_app(
            _settings(tmp_path, redis_url, local=BackboneConfig(model='openai-chat:tiny-chat', base_url=fake.url))
        )
        async with asgi(app) as http:
            models = await http.get('/v1/models', headers=AUTH_A)
            answer = await http.post(
                '/v1/chat/completions',
                json={'model': 'local', 'messages': [{'role': 'user', 'content': 'Hello there'}]},
                headers={**AUTH_A, 'X-Tandem-Session': 'real'},
            )

    assert [m['id'] for m in models.json()['data']] == ['local']
    assert answer.json()['choices'][0]['message']['content'] == 'You said: Hello there'
    assert fake.chat_requests[0]['model'] == 'tiny-chat'


async def test_without_configured_backbones_models_lists_the_detected_default(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    with FakeOpenAI(models=['qwen-small']) as fake:
        monkeypatch.setenv('OPENAI_BASE_URL', fake.url)
        async with asgi(create_app(_settings(tmp_path, redis_url))) as http:
            models = await http.get('/v1/models', headers=AUTH_A)

    assert [m['id'] for m in models.json()['data']] == ['openai-chat:qwen-small']
