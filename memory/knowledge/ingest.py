"""Ingestion: files, folders and URLs into a knowledge base, as structure-aware, token-sized chunks.

What is read:

- files, and folders recursively (hidden entries, `node_modules` and `__pycache__` skipped), with
  `include` / `exclude` globs: a glob without `/` matches file (or folder) names, one with `/`
  matches the path relative to the folder given, and `*` crosses folders there;
- `.md`/`.markdown`, `.txt`/`.text`/`.rst`, `.html`/`.htm`, `.pdf` (pypdf), `.json` and `.csv`;
  files without an extension (LICENSE, README, copyright) when their first bytes read as text; a
  file matched by an explicit `include` glob is read as text whatever its extension. Files of other
  types are counted by extension, so the report can say what was left and how to include it;
- a file reached twice in one ingest (through a symlink, say) is read once and reported as a duplicate;
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
When an ingest ends, the KB's index snapshots are brought up to date, so the next process to search
it starts from them.

Parsing is `memory.knowledge.parse`, chunking `memory.knowledge.chunk`; this module walks, batches
and writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tandem.agent.core.errors import TandemError
from tandem.agent.core.tokens import token_counter
from tandem.memory.connection import query_engine_available
from tandem.memory.knowledge.chunk import CHUNKER_VERSION, ChunkDraft, chunk_blocks
from tandem.memory.knowledge.embeddings import TextEmbedder
from tandem.memory.knowledge.index import Analyzer, save_snapshots
from tandem.memory.knowledge.parse import (
    SUPPORTED_SUFFIXES,
    Kind,
    ParsedDocument,
    SkipDocument,
    looks_like_text,
    parse_document,
)
from tandem.memory.knowledge.store import ChunkData, DocumentRecord, EmbeddingModelMismatch, KnowledgeBase, document_id

__all__ = (
    'IngestOptions',
    'IngestProgress',
    'IngestReport',
    'Ingestor',
    'Skipped',
    'ingest_error',
)

_SERVED_SIG = '|served-v1'
"""Ends the signature of documents written with the Query Engine's fields in their chunk hashes."""


_SKIPPED_DIRS = frozenset({'node_modules', '__pycache__'})
_MAX_REPORTED = 1000
"""Most skipped files (and per-outcome sources) a report keeps by name; counts stay exact."""
_BATCH_FILES = 64
_BATCH_BYTES = 16_000_000
_SNIFF_BYTES = 8192
NO_EXTENSION = '(no extension)'
"""How `IngestReport.unsupported` names files without an extension that are not text."""


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
        language: The documents' language, for BM25's stop words and stemming (`knowledge.language`).
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
    language: str = 'english'
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
    duplicates: int = 0
    """Files reached again in the same ingest (a symlink to a file already read): read once."""
    chunks: int = 0
    """Chunks written (of added and updated documents)."""
    skipped: list[Skipped] = field(default_factory=list[Skipped])
    skipped_total: int = 0
    reasons: Counter[str] = field(default_factory=Counter[str])
    """How many files were skipped for each reason (the reason's kind, before any detail)."""
    unsupported: Counter[str] = field(default_factory=Counter[str])
    """Files of types not read by default, by extension (`NO_EXTENSION` for binary files without
    one): counted in `skipped_total`, not listed one by one."""
    sources: dict[str, list[str]] = field(default_factory=dict[str, list[str]])
    """`added`, `updated`, `unchanged`, `removed`, `duplicate` → sources (capped)."""
    notes: list[str] = field(default_factory=list[str])
    missing_targets: list[str] = field(default_factory=list[str])
    """Paths or URLs given explicitly that could not be read at all."""
    interrupted: bool = False
    seconds: float = 0.0

    def record(self, outcome: Literal['added', 'updated', 'unchanged', 'removed', 'duplicate'], source: str) -> None:
        counter = 'duplicates' if outcome == 'duplicate' else outcome
        setattr(self, counter, getattr(self, counter) + 1)
        names = self.sources.setdefault(outcome, [])
        if len(names) < _MAX_REPORTED:
            names.append(source)

    def skip(self, source: str, reason: str) -> None:
        self.skipped_total += 1
        self.reasons[reason.split(' (', 1)[0]] += 1
        if len(self.skipped) < _MAX_REPORTED:
            self.skipped.append(Skipped(source, reason))

    def skip_unsupported(self, suffix: str) -> None:
        """Count a file of a type not read by default."""
        self.skipped_total += 1
        self.reasons['unsupported type'] += 1
        self.unsupported[suffix] += 1

    def include_hint(self) -> str:
        """One line on the files of unsupported types, naming the most common and how to read them; `''` for none."""
        if not self.unsupported:
            return ''
        common = sorted(self.unsupported.items(), key=lambda item: (-item[1], item[0] == NO_EXTENSION, item[0]))
        listed = ', '.join(f'{suffix} {count}' for suffix, count in common[:5])
        more = f', {len(common) - 5} more types' if len(common) > 5 else ''
        example = next((suffix for suffix, _ in common if suffix != NO_EXTENSION), None)
        how = f"add --include '*{example}' to read such files as text" if example else 'they are not text'
        total = sum(self.unsupported.values())
        return f'{total} file{"s" if total != 1 else ""} of unsupported types ({listed}{more}): {how}.'

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for `--json`)."""
        return {
            'added': self.added,
            'updated': self.updated,
            'unchanged': self.unchanged,
            'removed': self.removed,
            'duplicates': self.duplicates,
            'skipped': self.skipped_total,
            'unsupported_types': dict(self.unsupported.most_common()),
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
        self.analyzer = Analyzer(self.options.language)
        self.sig = '|'.join(
            [
                CHUNKER_VERSION,
                self.counter.name,
                str(self.options.chunk_tokens),
                str(self.options.chunk_overlap),
                self.analyzer.name,
                embedder.model_id if embedder is not None else 'none',
            ]
        )
        self._files_total = 0
        self._files_done = 0
        self._started = 0.0
        self._on_progress: ProgressCallback | None = None
        self._seen: set[int] = set()

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
        await self._sign_for_server()
        self._seen: set[int] = set()
        self._files_total = sum(self._count(target) for target in targets)
        self._progress('')
        try:
            for target in targets:
                await self._ingest_target(target)
            await save_snapshots(self.kb)
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
        await self._sign_for_server()
        label = name or source
        kind = SUPPORTED_SUFFIXES.get(Path(label).suffix.lower(), 'text')
        item = _Item(source=source, name=Path(label).name or label, kind=kind, data=data, size=len(data))
        self._files_total = 1
        await self._process([item])
        await save_snapshots(self.kb)
        self.report.seconds = time.perf_counter() - self._started
        return self.report

    async def _sign_for_server(self) -> None:
        """On a server with the Query Engine, chunk hashes also carry what it indexes: a document
        written without (before the server had it) gets another signature, so it is written again."""
        if await query_engine_available(self.kb.redis) and not self.sig.endswith(_SERVED_SIG):
            self.sig += _SERVED_SIG

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
            return sum(1 for _, kind in self._walk(path) if kind is not None)
        return 1

    def _walk(self, root: Path) -> Iterator[tuple[Path, Kind | None]]:
        """Files under `root` that no glob leaves out, depth first in name order, with how to read
        them (`None`: a type not read by default); lazily, so memory stays flat."""
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
                elif kind is None and not path.suffix and _sniffs_as_text(path):
                    kind = 'text'
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
                if kind is None:
                    self.report.skip_unsupported(file.suffix.lower() or NO_EXTENSION)
                    continue
                item = _Item(source=str(file.resolve()), name=file.name, kind=kind, path=file)
                if self._seen_before(item.source, file):
                    continue
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
        if self._seen_before(str(path), Path(target)):
            return
        kind = SUPPORTED_SUFFIXES.get(path.suffix.lower(), 'text')
        await self._process([_Item(source=str(path), name=path.name, kind=kind, path=path, size=_size(path))])

    def _seen_before(self, source: str, shown: Path) -> bool:
        """Whether this ingest already read `source` (through a symlink, or named twice); if so, report
        `shown` as a duplicate. Keeps a 64-bit hash per file, so memory stays small for big folders."""
        digest = hash(source)
        if digest not in self._seen:
            self._seen.add(digest)
            return False
        self.report.record('duplicate', str(shown) if str(shown) == source else f'{shown} → {source}')
        self._files_done += 1
        return True

    async def _fetch(self, url: str) -> _Item | None:
        from tandem.agent.core.fetch import Fetcher, FetchError, PrivateHostError, parse_allowed_hosts

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
            reason = str(error)
            if isinstance(error, PrivateHostError):
                reason += '; to ingest from it, add its host to web.allowed_hosts (TANDEM_WEB__ALLOWED_HOSTS)'
            self.report.skip(url, f'fetch failed ({reason})')
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
                        terms=self.analyzer.terms(texts[cursor]),
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
        task = asyncio.ensure_future(self.kb.put_documents(writes, embed_model=model, analyzer=self.analyzer.name))
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
            result = (
                await self.kb.put_documents([(fresh, chunks, current)], embed_model=model, analyzer=self.analyzer.name)
            )[0]
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


def _sniffs_as_text(path: Path) -> bool:
    try:
        with path.open('rb') as handle:
            return looks_like_text(handle.read(_SNIFF_BYTES))
    except OSError:
        return True  # let the read report why it cannot
