"""`POST /v1/knowledge`: documents uploaded as the request body, chunked into the tenant's knowledge base."""

from __future__ import annotations

from tests.service.conftest import AUTH_A, MakeApp, asgi
from tests.support.scripted import scripted_model

GUIDE = b'# Guide\n\n## Install\n\nRun the installer.\n\n## Upgrade\n\nRun it again.\n'


async def test_an_upload_is_added_then_unchanged_then_updated(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    async with asgi(make_app(model)) as http:
        added = await http.post('/v1/knowledge?filename=guide.md&kb=docs', content=GUIDE, headers=AUTH_A)
        again = await http.post('/v1/knowledge?filename=guide.md&kb=docs', content=GUIDE, headers=AUTH_A)
        changed = await http.post(
            '/v1/knowledge?filename=guide.md&kb=docs', content=GUIDE + b'\n## Remove\n\nDelete it.\n', headers=AUTH_A
        )
        info = await http.get('/v1/knowledge/docs', headers=AUTH_A)

    assert added.status_code == 201
    assert added.json() == {
        'object': 'knowledge.document',
        'kb': 'docs',
        'source': 'upload:guide.md',
        'filename': 'guide.md',
        'status': 'added',
        'chunks': added.json()['chunks'],
        'bytes': len(GUIDE),
    }
    assert added.json()['chunks'] >= 1
    assert (again.status_code, again.json()['status'], again.json()['chunks']) == (200, 'unchanged', 0)
    assert (changed.status_code, changed.json()['status']) == (201, 'updated')
    assert info.json()['documents'] == 1  # replaced, not added twice


async def test_a_users_own_knowledge_base_is_apart_from_the_shared_one(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    async with asgi(make_app(model)) as http:
        mine = await http.post(
            '/v1/knowledge?filename=notes.txt', content=b'My notes.', headers={**AUTH_A, 'X-Tandem-User': 'ann'}
        )
        shared = await http.get('/v1/knowledge/default', headers=AUTH_A)
        own = await http.get('/v1/knowledge/default?user=ann', headers=AUTH_A)
        listed = await http.get('/v1/knowledge?user=ann', headers=AUTH_A)

    assert (mine.status_code, mine.json()['kb']) == (201, 'ann/default')
    assert shared.status_code == 404
    assert own.json()['user'] == 'ann'
    assert [item['id'] for item in listed.json()['data']] == ['ann/default']


async def test_bad_uploads_are_refused_with_the_reason(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    async with asgi(make_app(model, max_upload_bytes=1_000)) as http:
        empty = await http.post('/v1/knowledge?filename=a.md', content=b'', headers=AUTH_A)
        no_name = await http.post('/v1/knowledge', content=GUIDE, headers=AUTH_A)
        bad_name = await http.post('/v1/knowledge?filename=%0A', content=GUIDE, headers=AUTH_A)
        bad_kb = await http.post('/v1/knowledge?filename=a.md&kb=a:b', content=GUIDE, headers=AUTH_A)
        unreadable = await http.post('/v1/knowledge?filename=scan.pdf', content=b'%PDF-1.4 not really', headers=AUTH_A)
        too_big = await http.post('/v1/knowledge?filename=big.txt', content=b'x' * 1_001, headers=AUTH_A)
        path = await http.post('/v1/knowledge?filename=../../etc/notes.md', content=GUIDE, headers=AUTH_A)

    assert (empty.status_code, empty.json()['error']['code']) == (400, 'empty_document')
    assert (no_name.status_code, no_name.json()['error']['param']) == (400, 'filename')
    assert bad_name.status_code == 400
    assert (bad_kb.status_code, bad_kb.json()['error']['code']) == (400, 'invalid_id')
    assert (unreadable.status_code, unreadable.json()['error']['code']) == (422, 'document_skipped')
    assert unreadable.json()['error']['message'].startswith('scan.pdf was not ingested: ')
    assert (too_big.status_code, too_big.json()['error']['message']) == (
        413,
        'request body over 1000 bytes: send less, or raise server.max_upload_bytes.',
    )
    assert (path.status_code, path.json()['source']) == (201, 'upload:notes.md')  # only the name is kept
