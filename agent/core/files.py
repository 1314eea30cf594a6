"""Writing a file whole or not at all: the one helper every writer of user files uses."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tandem.agent.core.errors import TandemError

__all__ = ['write_atomically']


def write_atomically(path: Path, data: str | bytes | Iterable[str], *, mode: int = 0o600) -> None:
    """Write `data` to `path` through a temporary file in the same folder, synced, then renamed into place.

    Readers see the old file or the new one, never half of one, even if the process dies mid-write.
    Text is written as UTF-8, line endings untouched.

    Args:
        path: The file to write; its folder is created if need be.
        data: The contents: text, bytes, or pieces of text written in order (an export's lines).
        mode: The permissions of a new file (private by default); a file being replaced keeps its own.

    Raises:
        TandemError: The folder or the file cannot be written, with the reason.
    """
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            mode = path.stat().st_mode & 0o777
        fd, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
        with os.fdopen(fd, 'wb') as handle:
            if isinstance(data, bytes):
                handle.write(data)
            elif isinstance(data, str):
                handle.write(data.encode())
            else:
                for piece in data:
                    handle.write(piece.encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as error:
        raise TandemError(f'cannot write {path}: {error.strerror or error}.') from error
    finally:
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
