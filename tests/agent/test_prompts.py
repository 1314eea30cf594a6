"""Prompt templates: versioned files rendered with StrictUndefined."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.agent.core.errors import PromptError
from tandem.agent.core.prompts import PromptLibrary

VARIABLES = {
    'date': '2026-11-28',
    'tools': [],
    'user_name': None,
    'memory': '',
    'retrieval': '',
    'examples': '',
    'backbone': 'x',
}


def _write(directory: Path, name: str, version: str, body: str) -> None:
    (directory / name).mkdir(parents=True, exist_ok=True)
    (directory / name / f'{version}.md.j2').write_text(
        f'---\nname: {name}\nversion: {version}\ndescription: d\n---\n{body}'
    )


def test_the_latest_version_is_the_default_and_versions_can_be_pinned(tmp_path: Path) -> None:
    _write(tmp_path, 'helper', '1', 'one {{ date }}')
    _write(tmp_path, 'helper', '2', 'two {{ date }}')
    _write(tmp_path, 'helper', '10', 'ten {{ date }}')
    library = PromptLibrary([tmp_path])

    assert library.get('helper').ref == 'helper@10'
    assert library.get('helper@2').render(VARIABLES) == 'two 2026-11-28\n'


def test_a_missing_variable_fails_loudly(tmp_path: Path) -> None:
    _write(tmp_path, 'helper', '1', 'Hello {{ nickname }}')
    with pytest.raises(PromptError, match=r"helper@1 .*undefined variable: 'nickname' is undefined"):
        PromptLibrary([tmp_path]).get('helper').render(VARIABLES)


def test_unknown_prompts_and_versions_list_what_exists(tmp_path: Path) -> None:
    _write(tmp_path, 'helper', '1', 'x')
    library = PromptLibrary([tmp_path])
    with pytest.raises(PromptError, match=r"unknown prompt 'nope': choose one of helper"):
        library.get('nope')
    with pytest.raises(PromptError, match=r"no version '9': choose one of 1"):
        library.get('helper@9')


def test_user_prompts_override_bundled_ones(tmp_path: Path) -> None:
    _write(tmp_path, 'assistant', '1', 'custom {{ date }}')
    library = PromptLibrary.default(tmp_path)
    assert library.get('assistant@1').render(VARIABLES) == 'custom 2026-11-28\n'
    assert 'short' in library.names()


def test_bundled_prompts_render_with_every_slot_filled() -> None:
    library = PromptLibrary.default()
    rendered = library.get('assistant').render(
        {
            **VARIABLES,
            'user_name': 'Ada',
            'memory': '- likes teal',
            'retrieval': '[1] doc',
            'tools': [{'name': 'now', 'description': 'clock'}],
        }
    )
    assert 'Ada' in rendered and 'likes teal' in rendered and '[1] doc' in rendered and '- now: clock' in rendered


def test_front_matter_is_required(tmp_path: Path) -> None:
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / '1.md.j2').write_text('no front matter')
    with pytest.raises(PromptError, match='no front matter'):
        PromptLibrary([tmp_path])
