"""`tandem ingest` and `tandem kb ...`: filling, inspecting and searching knowledge bases.

Registered on the main app by `agent.cli.main`; the shared helpers (settings, error handling, consoles)
come from there.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from tandem.agent.cli import _app as cli

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from redis.asyncio import Redis
    from rich.progress import Progress

    from tandem.agent.core.config import Settings
    from tandem.memory.knowledge.ingest import IngestProgress, IngestReport
    from tandem.memory.knowledge.store import KbInfo, KnowledgeBase

__all__ = ['ingest', 'kb_app']

kb_app = typer.Typer(
    help='Knowledge bases (what `tandem ingest` fills): list, show, search, rm, stats.', no_args_is_help=True
)

KbOpt = Annotated[str | None, typer.Option('--kb', help='Knowledge base name; knowledge.default_kb when omitted.')]
KbUserOpt = Annotated[
    str | None, typer.Option('--user', '-u', help="A user's own knowledge base instead of the tenant's shared one.")
]
JsonOpt = Annotated[bool, typer.Option('--json', help='Print JSON on stdout.')]
Mode = Literal['auto', 'bm25', 'dense', 'hybrid']


def _open_redis(settings: Settings) -> AbstractAsyncContextManager[Redis]:
    """A Redis client for `settings`, closed on exit. Knowledge-base commands run no turn, so they
    need none of the turn layer's set-up (importing it alone takes most of a second)."""
    from tandem.memory.connection import opened

    url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
    return opened(url, home=settings.home)


def _kb_name(settings: Settings, name: str | None) -> str:
    from tandem.memory.keys import validate_id

    return validate_id('knowledge base', name or settings.knowledge.default_kb)


async def _existing_kb(
    redis: Redis, settings: Settings, kb_name: str, user: str | None
) -> tuple[KnowledgeBase, KbInfo]:
    """A knowledge base that must exist, and its summary; a clear error when it doesn't."""
    from tandem.agent.core.errors import TandemError
    from tandem.memory.knowledge.store import KnowledgeBase

    base = KnowledgeBase(redis, tenant=settings.tenant, name=kb_name, user=user or None)
    info = await base.info()
    if info is None:
        raise TandemError(f'no knowledge base {base.label!r}: `tandem kb list` shows them.')
    return base, info


# --- ingest ----------------------------------------------------------------------------------------


def ingest(
    targets: Annotated[list[str], typer.Argument(help='Files, folders (recursively) and http(s):// URLs.')],
    kb: KbOpt = None,
    user: KbUserOpt = None,
    include: Annotated[
        list[str] | None,
        typer.Option('--include', help='Only files matching this glob, read as text if not a known type (repeatable).'),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option('--exclude', help='Leave out files and folders matching this glob (repeatable).')
    ] = None,
    prune: Annotated[
        bool, typer.Option('--prune', help='Remove documents of a folder whose files are gone from it.')
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add documents to a knowledge base: .md .txt .html .pdf .json .csv files, folders and URLs.

    Unchanged documents are skipped; changed ones replace their old chunks atomically.
    """
    settings: Settings = cli.cli_settings()

    async def body() -> None:
        import asyncio

        from tandem.memory.keys import validate_id
        from tandem.memory.knowledge.embeddings import make_embedder
        from tandem.memory.knowledge.ingest import IngestOptions, Ingestor, ingest_error
        from tandem.memory.knowledge.store import KnowledgeBase

        tenant = validate_id('tenant', settings.tenant)
        owner = validate_id('user', user) if user else None
        name = _kb_name(settings, kb)
        config = settings.knowledge
        options = IngestOptions(
            include=include or (),
            exclude=exclude or (),
            chunk_tokens=config.chunk_tokens,
            chunk_overlap=config.chunk_overlap,
            max_file_bytes=config.max_file_bytes,
            language=config.language,
            allowed_hosts=settings.web.allowed_hosts,
            prune=prune,
        )
        embedder = make_embedder(config)
        async with _open_redis(settings) as redis:
            base = KnowledgeBase(redis, tenant=tenant, name=name, user=owner)
            ingestor = Ingestor(base, embedder=embedder, options=options)
            with _ProgressBar(as_json) as (progress, update):
                try:
                    report = await ingestor.ingest(targets, on_progress=update)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    progress.stop()
                    _print_report(ingestor.report, base.label, as_json)
                    raise
            _print_report(report, base.label, as_json)
        error = ingest_error(report)
        if error is not None:
            raise error
        if report.missing_targets:
            raise typer.Exit(1)

    cli.async_command(body)()


class _NoProgress:
    def stop(self) -> None:
        pass


class _ProgressBar:
    """A rich progress bar on stderr (files, chunks, rate), or nothing for `--json` or a non-terminal."""

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> tuple[Any, Any]:
        console = cli.stderr
        if self._quiet or not console.is_terminal:
            return _NoProgress(), None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn('[bold]ingesting[/]'),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn('files · {task.fields[chunks]} chunks · {task.fields[rate]}'),
            TimeElapsedColumn(),
            TextColumn('[dim]{task.fields[current]}[/]'),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task('ingest', total=None, chunks=0, rate='', current='')
        self._progress.start()
        return self._progress, self.update

    def update(self, event: IngestProgress) -> None:
        assert self._progress is not None
        rate = f'{event.chunks / event.elapsed:.0f} chunks/s' if event.elapsed > 0.5 and event.chunks else ''
        self._progress.update(
            self._task,
            total=event.files_total or None,
            completed=event.files_done,
            chunks=event.chunks,
            rate=rate,
            current=escape(event.current[-40:]),
        )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _print_report(report: IngestReport, label: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({'kb': label, **report.as_dict()}, indent=2) + '\n')
        return
    err = cli.stderr
    rate = f' ({report.chunks / report.seconds:.0f} chunks/s)' if report.seconds > 0 and report.chunks else ''
    status = '[yellow]interrupted[/] — ' if report.interrupted else ''
    removed = f', {report.removed} removed' if report.removed else ''
    duplicates = f', {report.duplicates} duplicates (read once)' if report.duplicates else ''
    err.print(
        f'{status}[bold]{escape(label)}[/]: {report.added} added, {report.updated} updated, '
        f'{report.unchanged} unchanged, {report.skipped_total} skipped{removed}{duplicates} · '
        f'{report.chunks} chunks in {report.seconds:.1f} s{rate}',
        highlight=False,
        soft_wrap=True,
    )
    listed = report.skipped_total - sum(report.unsupported.values())
    if listed:
        err.print('skipped:', highlight=False, soft_wrap=True)
        for item in report.skipped[:20]:
            err.print(f'  {escape(item.source)} — {escape(item.reason)}', highlight=False, soft_wrap=True)
        if listed > 20:
            summary = ', '.join(
                f'{reason}: {count}' for reason, count in report.reasons.most_common() if reason != 'unsupported type'
            )
            err.print(f'  … {listed - 20} more ({escape(summary)})', highlight=False, soft_wrap=True)
    if hint := report.include_hint():
        err.print(f'[yellow]skipped[/] {escape(hint)}', highlight=False, soft_wrap=True)
    for note in report.notes[:10]:
        err.print(f'[yellow]note:[/] {escape(note)}', highlight=False, soft_wrap=True)
    if report.interrupted:
        err.print(
            'Documents written so far are complete; run the same command again to finish.',
            highlight=False,
            soft_wrap=True,
        )


# --- kb --------------------------------------------------------------------------------------------


def _info_row(info: KbInfo) -> dict[str, Any]:
    return {
        'kb': info.name,
        'user': info.user,
        'docs': info.docs,
        'chunks': info.chunks,
        'tokens': info.tokens,
        'vectors': info.vectors,
        'embed_model': info.embed_model,
        'dims': info.dims,
        'created_at': info.created_at,
        'updated_at': info.updated_at,
    }


@kb_app.command('list')
def kb_list(
    user: KbUserOpt = None,
    all_users: Annotated[bool, typer.Option('--all-users', help="Every user's own KBs too.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the knowledge bases: the tenant's shared ones, and a user's own with --user."""
    settings: Settings = cli.cli_settings()

    async def body() -> None:
        from tandem.memory.knowledge.store import list_knowledge_bases

        async with _open_redis(settings) as redis:
            infos = await list_knowledge_bases(redis, tenant=settings.tenant, user='*' if all_users else user or None)
        if as_json:
            sys.stdout.write(json.dumps([_info_row(info) for info in infos], indent=2) + '\n')
            return
        if not infos:
            cli.stdout.print('No knowledge bases yet: `tandem ingest PATH_OR_URL` creates one.')
            return
        table = Table('kb', 'docs', 'chunks', 'tokens', 'vectors', 'updated')
        for info in infos:
            vectors = f'{info.vectors} ({info.embed_model})' if info.vectors else '-'
            table.add_row(
                escape(info.label), str(info.docs), str(info.chunks), str(info.tokens), vectors, info.updated_at
            )
        cli.stdout.print(table)

    cli.async_command(body)()


@kb_app.command('show')
def kb_show(
    name: Annotated[str | None, typer.Argument(help='Knowledge base; knowledge.default_kb when omitted.')] = None,
    user: KbUserOpt = None,
    limit: Annotated[int, typer.Option(help='At most this many documents.')] = 200,
    as_json: JsonOpt = False,
) -> None:
    """List a knowledge base's documents: title, source, chunks, when ingested."""
    settings: Settings = cli.cli_settings()

    async def body() -> None:

        kb_name = _kb_name(settings, name)
        async with _open_redis(settings) as redis:
            base, info = await _existing_kb(redis, settings, kb_name, user)
            records = [record async for batch in base.iter_documents() for record in batch]
        records.sort(key=lambda record: record.source)
        if as_json:
            rows = [
                {
                    'id': r.id,
                    'source': r.source,
                    'title': r.title,
                    'kind': r.kind,
                    'chunks': len(r.chunks),
                    'tokens': r.tokens,
                    'hash': r.hash,
                    'ingested_at': r.ingested_at,
                }
                for r in records[:limit]
            ]
            sys.stdout.write(json.dumps({**_info_row(info), 'documents': rows}, indent=2) + '\n')
            return
        cli.stderr.print(
            f'[bold]{escape(base.label)}[/]: {info.docs} documents, {info.chunks} chunks, {info.tokens} tokens',
            highlight=False,
        )
        table = Table('title', 'source', 'kind', 'chunks', 'ingested')
        for record in records[:limit]:
            table.add_row(
                escape(record.title), escape(record.source), record.kind, str(len(record.chunks)), record.ingested_at
            )
        cli.stdout.print(table)
        if len(records) > limit:
            cli.stderr.print(f'… {len(records) - limit} more (--limit)', markup=False)

    cli.async_command(body)()


@kb_app.command('search')
def kb_search(
    query: Annotated[str, typer.Argument(help='What to look for.')],
    kb: KbOpt = None,
    user: KbUserOpt = None,
    k: Annotated[int, typer.Option('-k', help='How many passages.')] = 5,
    mode: Annotated[
        str, typer.Option('--mode', help='auto (hybrid with embeddings, else bm25), bm25, dense or hybrid.')
    ] = 'auto',
    as_json: JsonOpt = False,
) -> None:
    """Search a knowledge base as the assistant would, and print the passages with their sources."""
    settings: Settings = cli.cli_settings()

    async def body() -> None:
        from tandem.agent.core.errors import TandemError
        from tandem.memory.knowledge.retrieval import build_retriever

        if mode not in ('auto', 'bm25', 'dense', 'hybrid'):
            raise TandemError(f'--mode must be auto, bm25, dense or hybrid, not {mode!r}.')
        if not 1 <= k <= 100:
            raise TandemError('-k must be between 1 and 100.')
        async with _open_redis(settings) as redis:
            retriever = build_retriever(
                settings.knowledge,
                redis,
                tenant=settings.tenant,
                user=user or None,
                kbs=[_kb_name(settings, kb)],
                mode=mode,  # type: ignore[arg-type]
            )
            started = time.perf_counter()
            passages = await retriever.search(query, k)
            elapsed = time.perf_counter() - started
            if not passages and await retriever.count() == 0:
                raise TandemError(
                    f'knowledge base {_kb_name(settings, kb)!r} is empty: `tandem ingest PATH_OR_URL` adds documents.'
                )
        if as_json:
            rows = [{'n': n, **passage.__dict__} for n, passage in enumerate(passages, 1)]
            sys.stdout.write(json.dumps(rows, indent=2) + '\n')
            return
        cli.stderr.print(
            f'{retriever.name} · {len(passages)} passages · {elapsed * 1000:.1f} ms', style='dim', markup=False
        )
        if not passages:
            cli.stdout.print('No passage matches; try other words.')
        for n, passage in enumerate(passages, 1):
            where = ' · '.join(
                part for part in (passage.heading, f'page {passage.page}' if passage.page else '') if part
            )
            cli.stdout.print(
                f'[bold][{n}][/] {escape(passage.title)} [dim]— {escape(passage.source)}'
                f'{" · " + escape(where) if where else ""} · {passage.score:.3f}[/]',
                highlight=False,
            )
            snippet = ' '.join(passage.text.split())
            cli.stdout.print(f'    {escape(snippet[:300])}{"…" if len(snippet) > 300 else ""}', highlight=False)

    cli.async_command(body)()


@kb_app.command('rm')
def kb_rm(
    name: Annotated[str, typer.Argument(help='Knowledge base.')],
    sources: Annotated[
        list[str] | None,
        typer.Argument(help='Only these documents: file paths, folders (everything under them) or URLs.'),
    ] = None,
    user: KbUserOpt = None,
    yes: Annotated[bool, typer.Option('--yes', '-y', help='Remove a whole knowledge base without asking.')] = False,
) -> None:
    """Remove a knowledge base, or some of its documents; each document goes atomically."""
    settings: Settings = cli.cli_settings()

    async def body() -> None:
        from tandem.agent.core.errors import TandemError

        kb_name = _kb_name(settings, name)
        async with _open_redis(settings) as redis:
            base, info = await _existing_kb(redis, settings, kb_name, user)
            if sources:
                exact, prefixes = _resolve_sources(sources)
                removed = await base.remove_sources(exact, prefixes=prefixes)
                if not removed:
                    raise TandemError(
                        f'none of those documents is in {base.label!r}: `tandem kb show {kb_name}` lists them.'
                    )
                cli.stderr.print(
                    f'removed {len(removed)} document{"s" if len(removed) != 1 else ""} from {escape(base.label)}'
                )
                return
            if not yes:
                if not sys.stdin.isatty():
                    raise TandemError(
                        f'removing all of {base.label!r} ({info.docs} documents) needs --yes when not run interactively.'
                    )
                typer.confirm(f'Remove knowledge base {base.label!r} and its {info.docs} documents?', abort=True)
            removed_count = await base.drop()
            cli.stderr.print(f'removed knowledge base {escape(base.label)} ({removed_count} documents)')

    cli.async_command(body)()


def _resolve_sources(sources: list[str]) -> tuple[list[str], list[str]]:
    """Exact sources (files as absolute paths, URLs as given) and folder prefixes."""
    import os

    exact: list[str] = []
    prefixes: list[str] = []
    for source in sources:
        if source.lower().startswith(('http://', 'https://')):
            exact.append(source.strip())
            continue
        path = Path(source).expanduser().resolve()
        if path.is_dir():
            prefixes.append(str(path) + os.sep)
        else:
            exact.append(str(path))
    return exact, prefixes


@kb_app.command('stats')
def kb_stats(
    name: Annotated[str | None, typer.Argument(help='Knowledge base; knowledge.default_kb when omitted.')] = None,
    user: KbUserOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sizes, embedding model, where vectors are searched, and how long the search index takes to load."""
    settings: Settings = cli.cli_settings()

    async def body() -> None:
        from tandem.agent.core.tokens import token_counter
        from tandem.memory.connection import query_engine_available
        from tandem.memory.knowledge.index import clear_index_cache
        from tandem.memory.knowledge.retrieval import Bm25Retriever

        kb_name = _kb_name(settings, name)
        async with _open_redis(settings) as redis:
            base, info = await _existing_kb(redis, settings, kb_name, user)
            engine = await query_engine_available(redis)
            clear_index_cache()
            started = time.perf_counter()
            await Bm25Retriever([base]).rank('warm up the index', 1)
            load_ms = (time.perf_counter() - started) * 1000
        configured = settings.knowledge.embeddings
        stats: dict[str, Any] = {
            **_info_row(info),
            'generation': info.gen,
            'configured_embeddings': configured,
            'vector_search': 'redis query engine (FT.SEARCH KNN)'
            if engine and settings.knowledge.vector_search != 'exact'
            else 'exact, in process',
            'tokenizer': token_counter().name,
            'bm25_index_load_ms': round(load_ms, 1),
        }
        if as_json:
            sys.stdout.write(json.dumps(stats, indent=2) + '\n')
            return
        table = Table('', '', show_header=False)
        for key, value in stats.items():
            table.add_row(key, escape(str(value)))
        cli.stdout.print(table)
        if (
            info.embed_model
            and configured not in ('none', '')
            and not info.embed_model.endswith(configured.split(':')[-1])
        ):
            cli.stderr.print(
                f'[yellow]note:[/] the vectors come from {escape(info.embed_model)}, but knowledge.embeddings is '
                f'{escape(repr(configured))}: '
                'dense search skips this knowledge base until they match.'
            )

    cli.async_command(body)()
