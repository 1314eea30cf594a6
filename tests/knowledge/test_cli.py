"""`tandem ingest` and `tandem kb ...` through typer's runner, against the real test Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tests.knowledge.conftest import make_pdf, write_tree

runner = CliRunner()

GUIDE = '# Guide\n\n## Keys\n\nRevoke the old API key within 24 hours of deploying the new one.'
FAQ = 'The office is in Lisbon, next to the river.'


@pytest.fixture
def env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.chdir(tmp_path)
    for name in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'TANDEM_CONFIG'):
        monkeypatch.delenv(name, raising=False)
    yield {'TANDEM_HOME': str(tmp_path / 'home'), 'TANDEM_REDIS_URL': redis_url, 'XDG_CONFIG_HOME': str(tmp_path)}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / 'docs',
        {'guide.md': GUIDE, 'faq.txt': FAQ, 'locked.pdf': make_pdf(['x'], password='pw'), 'blob.txt': b'\x00\x01'},
    )


def _json(env: dict[str, str], *args: str) -> object:
    result = runner.invoke(app, [*args, '--json'], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ingest_prints_a_summary_with_reasons_and_is_idempotent(env: dict[str, str], docs: Path) -> None:
    first = runner.invoke(app, ['ingest', str(docs)], env=env)
    assert first.exit_code == 0, first.output
    assert 'default: 2 added, 0 updated, 0 unchanged, 2 skipped' in first.stderr
    assert 'locked.pdf — encrypted PDF (it needs a password)' in first.stderr
    assert 'blob.txt — binary file' in first.stderr

    again = _json(env, 'ingest', str(docs))
    assert isinstance(again, dict)
    assert (again['added'], again['unchanged'], again['skipped']) == (0, 2, 2)
    assert {item['reason'] for item in again['skipped_files']} == {'encrypted PDF (it needs a password)', 'binary file'}

    (docs / 'faq.txt').write_text('The office moved to Porto.')
    updated = _json(env, 'ingest', str(docs), '--kb', 'default', '--exclude', '*.pdf', '--exclude', 'blob.txt')
    assert isinstance(updated, dict) and (updated['updated'], updated['unchanged'], updated['skipped']) == (1, 1, 0)


def test_ingest_says_how_many_files_of_other_types_it_left_and_how_to_include_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    docs = write_tree(tmp_path / 'site', {'index.md': 'home', 'LICENSE': 'MIT licence text', 'app.js': 'x()'})
    result = runner.invoke(app, ['ingest', str(docs)], env=env)
    assert result.exit_code == 0, result.output
    assert 'default: 2 added, 0 updated, 0 unchanged, 1 skipped' in result.stderr
    assert "skipped 1 file of unsupported types (.js 1): add --include '*.js' to read such files as text." in (
        ' '.join(result.stderr.split())
    )
    included = _json(env, 'ingest', str(docs), '--include', '*.js')
    assert isinstance(included, dict) and included['added'] == 1 and included['unsupported_types'] == {}


def test_ingest_of_a_missing_path_fails_with_one_line(env: dict[str, str], tmp_path: Path) -> None:
    result = runner.invoke(app, ['ingest', str(tmp_path / 'nope')], env=env)
    assert result.exit_code == 1
    assert 'error: nothing ingested:' in result.stderr and 'Traceback' not in result.output


def test_kb_list_show_search_stats_and_rm(env: dict[str, str], docs: Path) -> None:
    assert runner.invoke(app, ['ingest', str(docs), '--kb', 'handbook'], env=env).exit_code == 0
    assert runner.invoke(app, ['ingest', str(docs / 'faq.txt'), '--user', 'alice'], env=env).exit_code == 0

    listed = _json(env, 'kb', 'list', '--all-users')
    assert [(row['kb'], row['user'], row['docs']) for row in listed] == [('handbook', None, 2), ('default', 'alice', 1)]  # type: ignore[index, union-attr]
    assert 'handbook' in runner.invoke(app, ['kb', 'list'], env=env).stdout

    shown = _json(env, 'kb', 'show', 'handbook')
    assert isinstance(shown, dict)
    assert sorted(Path(doc['source']).name for doc in shown['documents']) == ['faq.txt', 'guide.md']

    found = _json(env, 'kb', 'search', 'revoke API key', '--kb', 'handbook', '-k', '1')
    assert isinstance(found, list) and Path(found[0]['source']).name == 'guide.md' and found[0]['n'] == 1
    printed = runner.invoke(app, ['kb', 'search', 'where is the office', '--kb', 'handbook'], env=env)
    assert printed.exit_code == 0 and '[1] faq.txt' in printed.stdout and 'Lisbon' in printed.stdout
    empty = runner.invoke(app, ['kb', 'search', 'anything', '--kb', 'nothing-here'], env=env)
    assert empty.exit_code == 1 and 'is empty' in empty.stderr
    dense = runner.invoke(app, ['kb', 'search', 'x', '--kb', 'handbook', '--mode', 'dense'], env=env)
    assert dense.exit_code == 1 and 'needs embeddings' in dense.stderr

    stats = _json(env, 'kb', 'stats', 'handbook')
    assert isinstance(stats, dict)
    assert (stats['docs'], stats['vectors'], stats['vector_search']) == (2, 0, 'exact, in process')
    assert stats['bm25_index_load_ms'] >= 0 and stats['tokenizer']

    removed = runner.invoke(app, ['kb', 'rm', 'handbook', str(docs / 'faq.txt')], env=env)
    assert removed.exit_code == 0 and 'removed 1 document from handbook' in removed.stderr
    refused = runner.invoke(app, ['kb', 'rm', 'handbook'], env=env)  # not a terminal: needs --yes
    assert refused.exit_code == 1 and '--yes' in refused.stderr
    assert runner.invoke(app, ['kb', 'rm', 'handbook', '--yes'], env=env).exit_code == 0
    assert [row['kb'] for row in _json(env, 'kb', 'list')] == []  # type: ignore[union-attr]
    gone = runner.invoke(app, ['kb', 'show', 'handbook'], env=env)
    assert gone.exit_code == 1 and "no knowledge base 'handbook'" in gone.stderr


def test_bad_names_are_refused_before_redis(env: dict[str, str], docs: Path) -> None:
    result = runner.invoke(app, ['ingest', str(docs), '--kb', 'bad name!'], env=env)
    assert result.exit_code == 1 and "invalid knowledge base id 'bad name!'" in result.stderr
