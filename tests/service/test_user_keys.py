"""Who the user is: keys bound to a user, which no header can override, and empty ids refused, not ignored.

Within a tenant, `X-Tandem-User` is what the caller says it is: a tenant key may act for any of its
users. A key bound to a user (`KEY:TENANT/USER`) acts for that user only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from tandem.agent.core.config import ApiKeyConfig, ServerConfig, Settings, parse_api_keys
from tandem.agent.server.app import create_app
from tests.service.conftest import AUTH_A, asgi
from tests.support.deps import scripted_backbone
from tests.support.scripted import scripted_model

CHAT = '/v1/chat/completions'
ALICE_KEY = 'sk-alice-0123456789'
AUTH_ALICE = {'Authorization': f'Bearer {ALICE_KEY}'}


def _turn(text: str, **body: object) -> dict[str, object]:
    return {'model': 'scripted', 'messages': [{'role': 'user', 'content': text}], **body}


def _app(tmp_path: Path, redis_url: str, *answers: str) -> FastAPI:
    model, _ = scripted_model(*answers)
    keys = [
        ApiKeyConfig(key=SecretStr('sk-acme-0123456789'), tenant='acme'),
        ApiKeyConfig(key=SecretStr(ALICE_KEY), tenant='acme', user='alice'),
    ]
    settings = Settings(home=tmp_path, redis_url=SecretStr(redis_url), server=ServerConfig(api_keys=keys))
    return create_app(settings, backbones={'scripted': scripted_backbone(model)})


def test_the_environment_form_binds_a_key_to_a_user() -> None:
    tenant_key, user_key = parse_api_keys('sk-one:acme,sk:with:colons:acme/alice')

    assert (tenant_key.tenant, tenant_key.user) == ('acme', None)
    assert (user_key.tenant, user_key.user) == ('acme', 'alice')
    with pytest.raises(ValueError, match='KEY:TENANT or KEY:TENANT/USER'):
        parse_api_keys('sk-three:acme/')


async def test_a_user_bound_key_acts_for_its_user_whatever_the_header_says(tmp_path: Path, redis_url: str) -> None:
    async with asgi(_app(tmp_path, redis_url, 'Noted.', 'Hello.')) as http:
        kept = await http.post(CHAT, json=_turn('my diary'), headers={**AUTH_ALICE, 'X-Tandem-Session': 'diary'})
        as_bob = await http.post(
            CHAT, json=_turn('let me in'), headers={**AUTH_ALICE, 'X-Tandem-User': 'bob', 'X-Tandem-Session': 'diary'}
        )
        bob_in_body = await http.post(CHAT, json=_turn('let me in', user='bob'), headers=AUTH_ALICE)
        read_as_bob = await http.get('/v1/sessions/diary/messages?user=bob', headers=AUTH_ALICE)
        own = await http.get('/v1/sessions', headers=AUTH_ALICE)
        same_user = await http.post(
            CHAT, json=_turn('me again'), headers={**AUTH_ALICE, 'X-Tandem-User': 'alice', 'X-Tandem-Session': 'diary'}
        )
        # The tenant's own key still names any user: the diary is alice's.
        tenant_listing = await http.get('/v1/sessions?user=alice', headers=AUTH_A)

    assert kept.status_code == 200
    for refused in (as_bob, bob_in_body, read_as_bob):
        assert refused.status_code == 403, refused.text
        assert refused.json()['error']['code'] == 'user_mismatch'
        assert "acts for user 'alice' only" in refused.json()['error']['message']
    assert [(s['id'], s['user'], s['message_count']) for s in own.json()['data']] == [('diary', 'alice', 2)]
    assert same_user.status_code == 200
    assert [(s['id'], s['message_count']) for s in tenant_listing.json()['data']] == [('diary', 4)]


@pytest.mark.parametrize(
    ('headers', 'body', 'param'),
    [
        ({'X-Tandem-Session': ''}, {}, 'X-Tandem-Session'),
        ({'X-Tandem-User': ''}, {}, 'X-Tandem-User'),
        ({}, {'user': ''}, 'user'),
    ],
    ids=['session-header', 'user-header', 'user-field'],
)
async def test_an_empty_id_is_a_400_not_an_absent_one(
    tmp_path: Path, redis_url: str, headers: dict[str, str], body: dict[str, object], param: str
) -> None:
    async with asgi(_app(tmp_path, redis_url, 'never')) as http:
        response = await http.post(CHAT, json=_turn('hi', **body), headers={**AUTH_A, **headers})
        listing = await http.get('/v1/sessions', headers=AUTH_A)

    assert response.status_code == 400, response.text
    assert response.json()['error']['param'] == param
    assert listing.json()['data'] == []


async def test_an_empty_session_id_to_create_is_a_400(tmp_path: Path, redis_url: str) -> None:
    async with asgi(_app(tmp_path, redis_url)) as http:
        response = await http.post('/v1/sessions', json={'id': ''}, headers=AUTH_A)
        listing = await http.get('/v1/sessions', headers=AUTH_A)

    assert (response.status_code, response.json()['error']['param']) == (400, 'id')
    assert listing.json()['data'] == []
