"""Parsing documents into blocks (headings, paragraphs, pages): Markdown, text, HTML, PDF, JSON and CSV."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal['markdown', 'text', 'html', 'pdf', 'json', 'csv']


SUPPORTED_SUFFIXES: dict[str, Kind] = {
    '.md': 'markdown',
    '.markdown': 'markdown',
    '.txt': 'text',
    '.text': 'text',
    '.rst': 'text',
    '.html': 'html',
    '.htm': 'html',
    '.pdf': 'pdf',
    '.json': 'json',
    '.csv': 'csv',
}
"""File types read by default, by suffix (case-insensitive)."""


@dataclass(frozen=True)
class Block:
    """A unit of a document's structure that chunking never cuts unless it is too big alone.

    Attributes:
        text: Its text.
        heading: The heading path it is under, e.g. `Guide > Install`.
        page: The PDF page it is on, or `None`.
        separator: What joins it to the block before it in a chunk.
    """

    text: str
    heading: str = ''
    page: int | None = None
    separator: str = '\n\n'


@dataclass
class ParsedDocument:
    """A document read and split into blocks."""

    kind: Kind
    title: str
    blocks: list[Block]
    prefix: str = ''
    """Repeated at the top of every chunk (a CSV's header row)."""
    note: str = ''


class SkipDocument(Exception):
    """The document can't be ingested; the message is the reason shown in the summary."""


_HEADING = re.compile(r'^(#{1,6})[ \t]+(.+?)[ \t#]*$')


_FENCE = re.compile(r'^(```|~~~)')


_SETEXT = re.compile(r'^(=+|-+)[ \t]*$')


def _markdown_blocks(text: str) -> tuple[str, list[Block]]:
    """Blocks of Markdown: paragraphs (and code fences) with the heading path they sit under."""
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    title = ''
    paragraph: list[str] = []
    fence: str | None = None

    def heading_path() -> str:
        return ' > '.join(name for _, name in stack)

    def flush() -> None:
        if paragraph:
            body = '\n'.join(paragraph).strip('\n')
            if body.strip():
                blocks.append(Block(body, heading_path()))
            paragraph.clear()

    def push(level: int, name: str) -> None:
        nonlocal title
        flush()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, name))
        if not title and level == 1:
            title = name

    for line in text.splitlines():
        if fence is not None:
            paragraph.append(line)
            if line.startswith(fence):
                fence = None
                flush()
            continue
        match = _FENCE.match(line)
        if match:
            flush()
            fence = match.group(1)
            paragraph.append(line)
            continue
        heading = _HEADING.match(line)
        if heading:
            push(len(heading.group(1)), heading.group(2).strip())
            continue
        if _SETEXT.match(line) and len(paragraph) == 1 and paragraph[0].strip():
            name = paragraph.pop().strip()
            push(1 if line.lstrip().startswith('=') else 2, name)
            continue
        if not line.strip():
            flush()
            continue
        paragraph.append(line.rstrip())
    flush()
    return title, blocks


def _paragraph_blocks(text: str, *, page: int | None = None, heading: str = '') -> list[Block]:
    paragraphs = re.split(r'\n[ \t]*\n', text)
    blocks: list[Block] = []
    for paragraph in paragraphs:
        body = paragraph.strip('\n')
        if not body.strip():
            continue
        lines = body.split('\n')
        if len(lines) > 30:  # no blank lines (PDF text, logs): let lines be the blocks
            blocks += [Block(line, heading, page, '\n') for line in lines if line.strip()]
        else:
            blocks.append(Block(body, heading, page))
    return blocks


def _decode_text(data: bytes) -> str:
    if data.startswith((b'\xff\xfe', b'\xfe\xff')):
        return data.decode('utf-16', errors='replace')
    if b'\x00' in data[:8192]:
        raise SkipDocument('binary file')
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode('cp1252')
    except UnicodeDecodeError:
        raise SkipDocument('not text (neither UTF-8 nor Windows-1252)') from None
    controls = sum(1 for char in text[:8192] if ord(char) < 32 and char not in '\t\n\r\f')
    if controls > len(text[:8192]) // 100:
        raise SkipDocument('binary file')
    return text


def looks_like_text(sample: bytes) -> bool:
    """Whether the first bytes of a file without a known suffix (LICENSE, README, copyright) read as text."""
    if b'\x00' in sample:
        return sample.startswith((b'\xff\xfe', b'\xfe\xff'))
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            sample[: len(sample) - cut].decode('utf-8')
        except UnicodeDecodeError:
            continue
        return True
    try:
        _decode_text(sample)
    except SkipDocument:
        return False
    return True


def _clean(text: str) -> str:
    text = text.replace('\r\n', '\n').replace('\r', '\n')
    return re.sub(r'[\x00-\x08\x0b\x0e-\x1f\x7f]', '', text)


def _pdf(data: bytes, name: str) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                decrypted = reader.decrypt('')
            except (DependencyError, NotImplementedError) as error:
                raise SkipDocument(f'encrypted PDF that cannot be decrypted here ({error})') from None
            if not decrypted:
                raise SkipDocument('encrypted PDF (it needs a password)')
        metadata = reader.metadata
        title = str(metadata.title).strip() if metadata is not None and metadata.title else ''
        blocks: list[Block] = []
        for number, page in enumerate(reader.pages, 1):
            text = _clean(page.extract_text() or '')
            blocks += _paragraph_blocks(text, page=number)
    except SkipDocument:
        raise
    except FileNotDecryptedError:
        raise SkipDocument('encrypted PDF (it needs a password)') from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError) as error:
        raise SkipDocument(f'unreadable PDF ({type(error).__name__}: {str(error)[:120]})') from None
    if not blocks:
        raise SkipDocument('PDF without extractable text (scanned images?)')
    return ParsedDocument('pdf', title or name, blocks)


def _csv(text: str, name: str) -> ParsedDocument:
    rows = list(csv.reader(io.StringIO(text)))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return ParsedDocument('csv', name, [])
    header = ', '.join(cell.strip() for cell in rows[0])
    blocks = [Block(', '.join(cell.strip() for cell in row), separator='\n') for row in rows[1:]]
    return ParsedDocument('csv', name, blocks or [Block(header)], prefix=header if blocks else '')


def parse_document(data: bytes, *, name: str, kind: Kind, base_url: str = '') -> ParsedDocument:
    """Read a document's bytes into blocks.

    Args:
        data: The raw bytes.
        name: The file name (a fallback title).
        kind: How to read it.
        base_url: For HTML: where relative links point; without one (a local file) they are dropped,
            their text kept.

    Raises:
        SkipDocument: Binary, encrypted, unreadable or empty; the message says which.
    """
    if kind == 'pdf':
        return _pdf(data, name)
    text = _clean(_decode_text(data))
    if kind == 'html':
        from tandem.agent.core.fetch import _html_to_text  # pyright: ignore[reportPrivateUsage]

        # A local file has no base URL: its relative links lead nowhere a reader can follow, so
        # `_html_to_text` keeps their text and drops them.
        title, text = _html_to_text(text, base_url)
        heading_title, blocks = _markdown_blocks(text)
        return ParsedDocument('html', title or heading_title or name, blocks)
    if kind == 'markdown':
        title, blocks = _markdown_blocks(text)
        return ParsedDocument('markdown', title or name, blocks)
    if kind == 'csv':
        return _csv(text, name)
    if kind == 'json':
        with contextlib.suppress(ValueError, RecursionError):  # invalid JSON is still text
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        return ParsedDocument('json', name, [Block(line, separator='\n') for line in text.split('\n') if line.strip()])
    return ParsedDocument('text', name, _paragraph_blocks(text))
