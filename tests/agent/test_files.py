"""Every user file Tandem writes is written whole or not at all, through one helper."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.agent.core.errors import TandemError
from tandem.agent.core.files import write_atomically


def test_text_bytes_and_pieces_are_written_in_a_new_private_file(tmp_path: Path) -> None:
    target = tmp_path / 'new' / 'folder' / 'out.jsonl'

    write_atomically(target, (f'{n}\n' for n in range(3)))
    assert target.read_text() == '0\n1\n2\n'
    assert os.stat(target).st_mode & 0o777 == 0o600

    write_atomically(target, b'bytes\r\n')
    assert target.read_bytes() == b'bytes\r\n'
    write_atomically(target, 'caf\u00e9\n')
    assert target.read_bytes() == 'caf\u00e9\n'.encode()


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / 'config.toml'
    target.write_text('old')
    target.chmod(0o640)

    write_atomically(target, 'new')

    assert target.read_text() == 'new'
    assert os.stat(target).st_mode & 0o777 == 0o640


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / 'export.jsonl'
    target.write_text('the old export\n')

    def pieces() -> Iterator[str]:
        yield 'half of a new '
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, pieces())

    assert target.read_text() == 'the old export\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ['export.jsonl']


def test_an_unwritable_place_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / 'a-file').write_text('')

    with pytest.raises(TandemError, match=r'^cannot write .*a-file/out\.json: '):
        write_atomically(tmp_path / 'a-file' / 'out.json', '{}')
