"""Auth and tenants: keys, 401s, 404s across tenants and users, id validation, every key under its tenant."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from inline_snapshot import snapshot
from pydantic import SecretStr
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo
from redis.asyncio import Redis
from typer.testing import CliRunner

from tandem.agent.cli.main import app as cli_app
from tandem.agent.core.config import ApiKeyConfig, ServerConfig, Settings
from tandem.agent.core.errors import ConfigError
from tandem.agent.server.app import create_app
from tandem.agent.server.auth import load_api_keys
from tests.service.conftest import AUTH_A, AUTH_B, KEY_A, MakeApp, asgi, service_settings
from tests.support.deps import scripted_backbone
from tests.support.scripted import scripted_model

CHAT = '/v1/chat/completions'


def _turn(text: str) -> dict[str, object]:
    return {'model': 'scripted', 'messages': [{'role': 'user', 'content': text}]}


async def test_a_missing_or_wrong_key_is_a_401_in_openai_shape(make_app: MakeApp) -> None:
    model, script = scripted_model('hi')
    async with asgi(make_app(model)) as http:
        missing = await http.post(CHAT, json=_turn('hello'))
        wrong = await http.post(CHAT, json=_turn('hello'), headers={'Authorization': 'Bearer sk-acme-012345678'})
        basic = await http.get('/v1/models', headers={'Authorization': f'Basic {KEY_A}'})
        right = await http.post(CHAT, json=_turn('hello'), headers=AUTH_A)

    assert (missing.status_code, missing.json()) == snapshot(
        (
            401,
            {
                'error': {
                    'message': 'missing API key: send the header "Authorization: Bearer YOUR_KEY".',
                    'type': 'invalid_request_error',
                    'param': None,
                    'code': 'missing_api_key',
                }
            },
        )
    )
    assert missing.headers['www-authenticate'] == 'Bearer'
    assert (wrong.status_code, wrong.json()['error']['code']) == (401, 'invalid_api_key')
    assert basic.status_code == 401
    assert right.status_code == 200
    assert len(script.seen) == 1  # the refused requests never reached the model


async def test_another_tenants_session_is_a_404_and_stays_untouched(make_app: MakeApp) -> None:
    model, script = scripted_model('Stored for acme.', 'A fresh start for beta.')
    async with asgi(make_app(model)) as http:
        await http.post(CHAT, json=_turn('acme secret: 42'), headers={**AUTH_A, 'X-Tandem-Session': 'shared-name'})

        read = await http.get('/v1/sessions/shared-name/messages', headers=AUTH_B)
        delete = await http.delete('/v1/sessions/shared-name', headers=AUTH_B)
        listing = await http.get('/v1/sessions', headers=AUTH_B)
        # The same id under beta is beta's own, empty session: acme's history is not in it.
        await http.post(CHAT, json=_turn('what is the secret?'), headers={**AUTH_B, 'X-Tandem-Session': 'shared-name'})
        acme_after = await http.get('/v1/sessions/shared-name/messages', headers=AUTH_A)
        beta_after = await http.get('/v1/sessions/shared-name/messages', headers=AUTH_B)

    assert (read.status_code, read.json()['error']['code']) == (404, 'session_not_found')
    assert (delete.status_code, delete.json()['error']['code']) == (404, 'session_not_found')
    assert listing.json() == {'object': 'list', 'data': []}
    assert len(script.seen[1][0]) == 1  # beta's turn saw only its own message
    assert [m['content'] for m in acme_after.json()['data']] == ['acme secret: 42', 'Stored for acme.']
    assert [m['content'] for m in beta_after.json()['data']] == ['what is the secret?', 'A fresh start for beta.']


async def test_another_users_session_is_a_404_within_a_tenant(make_app: MakeApp) -> None:
    model, script = scripted_model("Alice's answer.")
    async with asgi(make_app(model)) as http:
        alice = {**AUTH_A, 'X-Tandem-User': 'alice', 'X-Tandem-Session': 'diary'}
        await http.post(CHAT, json=_turn('dear diary'), headers=alice)
        bob = {**AUTH_A, 'X-Tandem-User': 'bob', 'X-Tandem-Session': 'diary'}
        chat_as_bob = await http.post(CHAT, json=_turn('let me in'), headers=bob)
        read_as_bob = await http.get('/v1/sessions/diary/messages', headers={**AUTH_A, 'X-Tandem-User': 'bob'})
        delete_as_bob = await http.delete('/v1/sessions/diary?user=bob', headers=AUTH_A)
        read_as_alice = await http.get('/v1/sessions/diary/messages?user=alice', headers=AUTH_A)

    assert (chat_as_bob.status_code, chat_as_bob.json()['error']['code']) == (404, 'session_not_found')
    assert read_as_bob.status_code == 404
    assert delete_as_bob.status_code == 404
    assert len(read_as_alice.json()['data']) == 2
    assert len(script.seen) == 1


async def test_another_tenants_knowledge_base_is_a_404_and_never_reaches_its_turns(make_app: MakeApp) -> None:
    seen: list[str] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> str:
        seen.append(info.instructions or '')
        return 'ok'

    model, _ = scripted_model(answer, answer)
    document = b'# Handbook\n\nHolidays: every employee gets 31 days of paid leave.\n'
    app = make_app(model, overrides={'retrieval': 'auto'})
    async with asgi(app) as http:
        upload = await http.post('/v1/knowledge?filename=handbook.md', content=document, headers=AUTH_A)
        own = await http.get('/v1/knowledge/default', headers=AUTH_A)
        other = await http.get('/v1/knowledge/default', headers=AUTH_B)
        other_list = await http.get('/v1/knowledge', headers=AUTH_B)
        # Retrieval puts matching passages into the prompt: acme's turn gets them, beta's does not.
        await http.post(CHAT, json=_turn('How many days of paid leave?'), headers=AUTH_A)
        await http.post(CHAT, json=_turn('How many days of paid leave?'), headers=AUTH_B)
        anonymous_upload = await http.post('/v1/knowledge?filename=x.md', content=b'x')

    assert (upload.status_code, upload.json()['kb'], upload.json()['status']) == (201, 'default', 'added')
    assert (own.status_code, own.json()['documents']) == (200, 1)
    assert (other.status_code, other.json()['error']['code']) == (404, 'kb_not_found')
    assert other_list.json()['data'] == []
    assert '31 days of paid leave' in seen[0]
    assert '31 days' not in seen[1]
    assert anonymous_upload.status_code == 401


@pytest.mark.parametrize(
    ('method', 'path', 'headers'),
    [
        ('POST', CHAT, {'X-Tandem-Session': 'no spaces'}),
        ('POST', CHAT, {'X-Tandem-User': 'a:b'}),
        ('GET', '/v1/sessions/{x}/messages', {}),
        ('DELETE', '/v1/sessions/a*', {}),
        ('GET', '/v1/knowledge/a{b}', {}),
    ],
)
async def test_ids_are_validated_before_redis(
    make_app: MakeApp, method: str, path: str, headers: dict[str, str]
) -> None:
    model, script = scripted_model()
    async with asgi(make_app(model)) as http:
        response = await http.request(method, path, json=_turn('hi'), headers={**AUTH_A, **headers})

    assert response.status_code == 400
    assert response.json()['error']['code'] == 'invalid_id'
    assert script.seen == []


async def test_every_redis_key_lives_under_its_tenants_prefix(make_app: MakeApp, redis: Redis) -> None:
    model, _ = scripted_model(*['ok'] * 4)
    async with asgi(make_app(model)) as http:
        for auth, tenant_session in ((AUTH_A, 'a1'), (AUTH_B, 'b1')):
            await http.post(CHAT, json=_turn('hi'), headers={**auth, 'X-Tandem-Session': tenant_session})
            await http.post('/v1/sessions', json={'id': f'{tenant_session}-new'}, headers=auth)
            await http.post(CHAT, json=_turn('stateless'), headers=auth)

    keys = sorted([key.decode() async for key in redis.scan_iter('*')])
    assert keys
    assert all(key.startswith(('tandem:{acme}', 'tandem:{acme:', 'tandem:{beta}', 'tandem:{beta:')) for key in keys)
    assert any(key.startswith('tandem:{acme}:ratelimit:') for key in keys)
    assert KEY_A not in ''.join(keys) and KEY_A[-10:] not in ''.join(keys)


async def test_keys_may_be_given_as_sha256_digests_or_in_the_environment(redis_url: str, tmp_path: Path) -> None:
    digest = hashlib.sha256(b'sk-from-digest').hexdigest()
    settings = Settings(
        home=tmp_path,
        redis_url=SecretStr(redis_url),
        server=ServerConfig(api_keys=[ApiKeyConfig(tenant='acme', sha256=digest)]),
    )
    keys = load_api_keys(settings, {'TANDEM_API_KEYS': 'sk-env:with:colons:beta, sk-other:gamma'})
    model, _ = scripted_model()
    app = create_app(settings, backbones={'scripted': scripted_backbone(model)}, api_keys=keys)
    async with asgi(app) as http:
        statuses = [
            (await http.get('/v1/models', headers={'Authorization': f'Bearer {key}'})).status_code
            for key in ('sk-from-digest', 'sk-env:with:colons', 'sk-other', 'sk-env')
        ]

    assert [(k.tenant, k.key is None) for k in keys] == [('acme', True), ('beta', False), ('gamma', False)]
    assert statuses == [200, 200, 200, 401]
    with pytest.raises(ConfigError, match='TANDEM_API_KEYS is invalid'):
        load_api_keys(settings, {'TANDEM_API_KEYS': 'no-tenant-here'})
    with pytest.raises(ConfigError, match='no API keys'):
        create_app(Settings(home=tmp_path), api_keys=[])
    with pytest.raises(ConfigError, match='two tenants'):
        create_app(
            Settings(home=tmp_path),
            api_keys=[ApiKeyConfig(key=SecretStr('k'), tenant='a'), ApiKeyConfig(key=SecretStr('k'), tenant='b')],
        )


async def test_without_auth_only_loopback_clients_are_served(make_app: MakeApp) -> None:
    model, _ = scripted_model('local answer')
    app = make_app(model, allow_anonymous=True)
    async with asgi(app) as http:
        local = await http.post(CHAT, json=_turn('hi'), headers={'Authorization': 'Bearer anything'})
        sessions = await http.get('/v1/sessions')
    async with asgi(app, client=('203.0.113.9', 40000)) as http:
        remote = await http.get('/v1/models')
        remote_keyed = await http.get('/v1/models', headers=AUTH_A)  # a real key still works from anywhere

    assert local.status_code == 200
    assert sessions.status_code == 200
    assert (remote.status_code, remote.json()['error']['type']) == (403, 'permission_error')
    assert remote_keyed.status_code == 200


def test_tandem_serve_refuses_no_auth_off_loopback_and_a_keyless_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('TANDEM_HOME', str(tmp_path))
    monkeypatch.delenv('TANDEM_API_KEYS', raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    exposed = runner.invoke(cli_app, ['serve', '--host', '0.0.0.0', '--no-auth'])
    keyless = runner.invoke(cli_app, ['serve', '--host', '127.0.0.1'])

    assert exposed.exit_code == 1
    assert 'refusing --no-auth on 0.0.0.0' in exposed.output
    assert keyless.exit_code == 1
    assert 'no API keys: set TANDEM_API_KEYS="KEY:TENANT"' in keyless.output


def test_the_settings_hold_keys_masked() -> None:
    settings = service_settings(Path('/tmp'), 'redis://127.0.0.1:1/0')
    assert KEY_A not in str(settings.masked())
