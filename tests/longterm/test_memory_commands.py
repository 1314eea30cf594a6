"""User control: `tandem memory list|forget|export|import` (typer's runner) and the REPL's `/memory`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.core.config import Settings
from tandem.agent.turn.request import TurnRequest
from tandem.memory.connection import connect
from tandem.memory.facts import FactStore
from tests.support.fake_openai import FakeOpenAI, Text
from tests.support.repl import drive_repl

runner = CliRunner()
T = TypeVar('T')


@pytest.fixture
def env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.chdir(tmp_path)
    for name in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'TANDEM_CONFIG', 'TANDEM_BACKBONE', 'TANDEM_USER'):
        monkeypatch.delenv(name, raising=False)
    yield {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}


def _with_store(redis_url: str, tmp_path: Path, work: Callable[[FactStore], Awaitable[T]]) -> T:
    """Run `work` on a fact store of its own client: CLI tests are synchronous, as typer's runner is."""

    async def body() -> T:
        client = await connect(redis_url, home=tmp_path)
        try:
            return await work(FactStore(client))
        finally:
            await client.aclose()

    return asyncio.run(body())


async def _seed_store(store: FactStore) -> dict[str, str]:
    ids = {}
    for text in ("The user's name is Alice.", 'The user likes teal.', 'The user has two cats.'):
        ids[text] = (await store.remember('default', 'alice', text, session='s1', turn=1)).fact.id
    await store.remember('default', 'bob', 'The user likes coffee.')
    return ids


def _seed(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return _with_store(redis_url, tmp_path, _seed_store)


def _texts(redis_url: str, tmp_path: Path, user: str) -> list[str]:
    async def work(store: FactStore) -> list[str]:
        return [fact.text for fact in await store.list_facts('default', user)]

    return _with_store(redis_url, tmp_path, work)


def test_list_shows_one_users_facts(env: dict[str, str], redis_url: str, tmp_path: Path) -> None:
    ids = _seed(redis_url, tmp_path)

    listed = runner.invoke(app, ['memory', 'list', '--user', 'alice', '--json'], env=env)
    table = runner.invoke(app, ['memory', 'list', '--user', 'alice'], env=env)
    empty = runner.invoke(app, ['memory', 'list', '--user', 'carol'], env=env)

    assert listed.exit_code == 0, listed.stderr
    assert [(f['id'], f['text'], f['source']) for f in json.loads(listed.stdout)] == [
        (fact_id, text, 'user-stated') for text, fact_id in ids.items()
    ]
    assert 'coffee' not in listed.stdout and 'coffee' not in table.stdout
    assert 'The user likes teal.' in table.stdout and ids['The user likes teal.'] in table.stdout
    assert empty.stdout.strip() == 'nothing is remembered about user carol'


def test_the_configured_user_is_the_default(env: dict[str, str], redis_url: str, tmp_path: Path) -> None:
    _seed(redis_url, tmp_path)

    listed = runner.invoke(app, ['memory', 'list', '--json'], env={**env, 'TANDEM_USER': 'bob'})

    assert [f['text'] for f in json.loads(listed.stdout)] == ['The user likes coffee.']


def test_forget_by_id_and_all(env: dict[str, str], redis_url: str, tmp_path: Path) -> None:
    ids = _seed(redis_url, tmp_path)
    teal = ids['The user likes teal.']

    forgot = runner.invoke(app, ['memory', 'forget', teal, '--user', 'alice'], env=env)
    assert forgot.exit_code == 0 and f'forgot {teal}: The user likes teal.' in forgot.stderr
    again = runner.invoke(app, ['memory', 'forget', teal, '--user', 'alice'], env=env)
    assert again.exit_code == 1 and f'user alice has no fact {teal}' in again.stderr
    other = runner.invoke(app, ['memory', 'forget', ids["The user's name is Alice."], '--user', 'bob'], env=env)
    assert other.exit_code == 1  # bob can't forget alice's facts

    declined = runner.invoke(app, ['memory', 'forget', '--all', '--user', 'alice'], env=env, input='n\n')
    assert 'nothing was forgotten' in declined.stderr
    assert len(_texts(redis_url, tmp_path, 'alice')) == 2
    confirmed = runner.invoke(app, ['memory', 'forget', '--all', '--user', 'alice'], env=env, input='y\n')
    assert confirmed.exit_code == 0 and 'forgot 2 facts of user alice' in confirmed.stderr
    assert _texts(redis_url, tmp_path, 'alice') == []
    assert len(_texts(redis_url, tmp_path, 'bob')) == 1

    neither = runner.invoke(app, ['memory', 'forget', '--user', 'alice'], env=env)
    assert neither.exit_code == 1 and 'or pass --all' in neither.stderr


def test_export_then_import_into_another_user(env: dict[str, str], redis_url: str, tmp_path: Path) -> None:
    _seed(redis_url, tmp_path)
    target = tmp_path / 'backup' / 'alice.json'

    exported = runner.invoke(app, ['memory', 'export', '--user', 'alice', '-o', str(target)], env=env)
    assert exported.exit_code == 0 and 'exported 3 facts of user alice' in exported.stderr
    data = json.loads(target.read_text())
    assert data['format'] == 'tandem.facts' and len(data['facts']) == 3
    assert 'coffee' not in target.read_text()

    imported = runner.invoke(app, ['memory', 'import', str(target), '--user', 'carol'], env=env)
    assert imported.exit_code == 0, imported.stderr
    assert 'imported into user carol: 3 new, 0 already known (updated), 0 skipped' in imported.stderr
    twice = runner.invoke(app, ['memory', 'import', '-', '--user', 'carol'], env=env, input=target.read_text())
    assert '0 new, 3 already known' in twice.stderr
    carol = runner.invoke(app, ['memory', 'export', '--user', 'carol'], env=env)
    assert [f['text'] for f in json.loads(carol.stdout)['facts']] == [f['text'] for f in data['facts']]


def test_import_errors_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / 'bad.json').write_text('{not json')
    (tmp_path / 'other.json').write_text('{"format": "something"}')

    for args, message in [
        (['missing.json'], 'cannot read missing.json'),
        ([str(tmp_path / 'bad.json')], 'is not JSON (line 1, column 2'),
        ([str(tmp_path / 'other.json')], 'not a Tandem fact export'),
        ([str(tmp_path / 'bad.json'), '--user', 'no:colons'], "invalid user id 'no:colons'"),
    ]:
        result = runner.invoke(app, ['memory', 'import', *args], env=env)
        assert result.exit_code == 1 and message in result.stderr, result.stderr
        assert 'Traceback' not in result.stderr


def test_ask_knows_what_another_session_remembered(env: dict[str, str], redis_url: str, tmp_path: Path) -> None:
    async def seed(store: FactStore) -> None:
        await store.remember('default', 'alice', "The user's favourite colour is teal.")

    _with_store(redis_url, tmp_path, seed)
    with FakeOpenAI(lambda body: Text('Teal.'), models=['tiny']) as server:
        result = runner.invoke(
            app,
            ['ask', '--model', 'openai-chat:tiny', '--user', 'alice', 'What colour do I like?'],
            env={**env, 'OPENAI_BASE_URL': server.url},
        )
        [request] = server.chat_requests

    assert result.exit_code == 0, result.stderr
    system = request['messages'][0]
    assert system['role'] == 'system' and "The user's favourite colour is teal." in system['content']


# --- the REPL --------------------------------------------------------------------------------------


async def _drive(settings: Settings, lines: list[str], options: TurnRequest) -> str:
    return await drive_repl(settings, lines, options, timeout=30)


async def test_repl_memory_list_forget_n_and_forget_all(tmp_path: Path, redis_url: str, redis: Redis) -> None:
    ids = await _seed_store(FactStore(redis))
    with FakeOpenAI(lambda body: Text('ok'), models=['tiny']) as server:
        settings = Settings(
            home=tmp_path,
            redis_url=redis_url,  # type: ignore[arg-type]
            backbones={'tiny': {'model': 'openai-chat:tiny', 'base_url': server.url}},  # type: ignore[dict-item]
            backbone='tiny',
            user='alice',
        )
        screen = await _drive(
            settings,
            [
                '/memory',
                '/memory forget 2',
                '/memory',
                '/memory forget 9',
                '/memory forget',
                '/memory forget all',
                'n',
                '/memory forget all',
                'y',
                '/memory',
            ],
            TurnRequest(session='r1'),
        )

    name_id = ids["The user's name is Alice."]
    first, after = screen.split('forgot: The user likes teal.')
    assert f"  1. The user's name is Alice.  ({name_id} · stated" in first
    assert '  2. The user likes teal.' in first and '  3. The user has two cats.' in first
    assert '  2. The user has two cats.' in after and 'teal' not in after  # renumbered once teal is gone
    assert 'error: no fact number 9: /memory lists 2.' in after
    assert 'error: usage: /memory, /memory forget N' in after
    assert (
        after.index('nothing was forgotten') < after.index('forgot 2 facts') < after.index('(nothing remembered yet)')
    )
    assert 'coffee' not in screen
    assert [f.text for f in await FactStore(redis).list_facts('default', 'bob')] == ['The user likes coffee.']
