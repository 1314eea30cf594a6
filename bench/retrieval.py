"""Knowledge-base ingestion and retrieval: throughput, query latency, recall, and bm25s vs rank-bm25.

Run: `uv run python bench/retrieval.py` (or `make bench`); about five minutes on the 2-core machine.
`--quality`, `--cold` or `--ingest` runs only the labelled quality set, the cold command-line search
or the ingest with local embeddings.
Ends with `bench: NAME value=… baseline=… ratio=… target=… PASS|FAIL` lines; the notes before them
say what each baseline is.

What is measured, all in this run, against an embedded Valkey started for it:

- ingestion, BM25 only: 2,000 Markdown files (~10k chunks) through `Ingestor` (read, hash, chunk,
  BM25 terms, one atomic script per document) against the same files parsed and chunked in memory;
- ingestion with local embeddings (all-MiniLM-L6-v2): the whole pipeline against the model's raw
  `encode` of exactly the texts the pipeline embeds (target: at most 1.2x the raw encode time);
- query p50/p95 at 10k and 100k chunks for BM25, exact dense and hybrid, end to end through the
  retrievers (Redis state check, in-process index, reading the winning chunks). Encoding 10k or
  100k chunks with the local model takes far longer than this benchmark may (about 25 chunks/s
  here), so those corpora carry random unit vectors; the query is still embedded by the real
  model on every search, so the timing is real (the ranking of random vectors is not);
- recall@10 of each method on a labelled set: the labelled documents of the tests among 200
  distractor chunks, all embedded by the real model; plus BM25 recall@10 on synthetic queries at 100k;
- bm25s against rank-bm25 (and Tandem's incremental index) on the same 10k-chunk corpus.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus.questions import CORPUS as QUALITY_CORPUS
from bench.corpus.questions import QUESTIONS as QUALITY_QUESTIONS
from tandem.agent.core.tokens import token_counter
from tandem.memory.connection import connect
from tandem.memory.knowledge.chunk import chunk_blocks
from tandem.memory.knowledge.embeddings import PydanticAIEmbedder, local_embedder
from tandem.memory.knowledge.index import Analyzer, Bm25Index, bm25_terms, clear_index_cache, save_snapshots
from tandem.memory.knowledge.ingest import Ingestor
from tandem.memory.knowledge.parse import parse_document
from tandem.memory.knowledge.retrieval import Bm25Retriever, DenseRetriever, HybridRetriever
from tandem.memory.knowledge.store import ChunkData, KnowledgeBase
from tandem.memory.redis_server import EmbeddedRedis
from tests.knowledge.labelled import DOCUMENTS, QUERIES

RNG = np.random.default_rng(42)
DIMS = 384
notes: list[str] = []


def line(
    name: str, value: float, baseline: float, target: float, unit: str = '', *, higher_is_better: bool = False
) -> str:
    ratio = value / baseline if baseline else float('inf')
    ok = ratio >= target if higher_is_better else ratio <= target
    return (
        f'bench: {name} value={value:.3f}{unit} baseline={baseline:.3f}{unit} ratio={ratio:.2f} '
        f'target={">=" if higher_is_better else "<="}{target} {"PASS" if ok else "FAIL"}'
    )


def percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


# --- a synthetic corpus ----------------------------------------------------------------------------

SYLLABLES = ['ka', 'lo', 'mi', 'ren', 'tus', 'vor', 'sel', 'dun', 'pra', 'qui', 'zen', 'bal', 'tor', 'ny', 'fe', 'gra']


def vocabulary(size: int) -> list[str]:
    words: list[str] = []
    for n in range(size):
        word, value = '', n + 17
        while value:
            word += SYLLABLES[value % len(SYLLABLES)]
            value //= len(SYLLABLES)
        words.append(word)
    return words


VOCAB = vocabulary(30_000)


def passages(count: int, words: int = 110) -> list[str]:
    """Zipf-distributed pseudo-English passages (a few real words keep the stop-word filter busy)."""
    ranks = np.minimum(RNG.zipf(1.15, size=(count, words)) - 1, len(VOCAB) - 1)
    filler = np.array(['the', 'of', 'and', 'to', 'in', 'a', 'is', 'that'])
    out: list[str] = []
    for row in range(count):
        tokens = [VOCAB[r] for r in ranks[row]]
        for position in range(0, words, 9):
            tokens.insert(position, str(filler[(row + position) % len(filler)]))
        out.append(' '.join(tokens) + '.')
    return out


def markdown_files(root: Path, files: int, sections: int = 5) -> list[str]:
    """`files` Markdown files of `sections` sections each; returns every section's text."""
    root.mkdir(parents=True, exist_ok=True)
    texts = passages(files * sections)
    for n in range(files):
        body = [f'# Document {n}']
        for s in range(sections):
            body += [f'## Section {s}', texts[n * sections + s]]
        (root / f'doc{n:05}.md').write_text('\n\n'.join(body) + '\n')
    return texts


def synthetic_queries(texts: Sequence[str], count: int, *, offset: int = 0) -> list[tuple[str, int]]:
    """Queries made of rare words of one passage, labelled with that passage's index."""
    frequency: dict[str, int] = {}
    sample = texts[:: max(1, len(texts) // 5000)]
    for text in sample:
        for term in set(bm25_terms(text)):
            frequency[term] = frequency.get(term, 0) + 1
    targets = RNG.choice(len(texts), size=count, replace=False)
    queries: list[tuple[str, int]] = []
    for target in cast(list[int], targets.tolist()):
        terms = sorted(set(bm25_terms(texts[target])), key=lambda term: (frequency.get(term, 0), term))
        queries.append((' '.join(terms[1:5]), target + offset))
    return queries


def unit_vectors(count: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    vectors = RNG.standard_normal((count, DIMS), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


class RealQueryEmbedder:
    """Embeds queries with the real local model, under the id of the random vectors' 'model'.

    With `precomputed`, queries embedded beforehand are served from memory: what retrieval costs
    apart from the model.
    """

    model_id = 'bench:random-unit-384'

    def __init__(self, real: PydanticAIEmbedder) -> None:
        self.real = real
        self.precomputed: dict[str, np.ndarray[Any, np.dtype[np.float32]]] | None = None

    async def embed_documents(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        raise NotImplementedError

    async def embed_query(self, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        if self.precomputed is not None:
            return self.precomputed[text]
        self.real._queries.clear()  # no query cache: every search pays for its embedding
        return await self.real.embed_query(text)


async def write_synthetic(kb: KnowledgeBase, texts: Sequence[str], *, per_doc: int = 10) -> float:
    """Store `texts` as chunks (random unit vectors) straight through `put_documents`, analyzed as an
    ingest would (the default analyzer, recorded in the KB); returns seconds."""
    started = time.perf_counter()
    vectors = unit_vectors(len(texts))
    writes: list[Any] = []
    for start in range(0, len(texts), per_doc):
        chunks = [
            ChunkData(
                position=n,
                text=texts[start + n],
                heading='',
                page=None,
                tokens=len(texts[start + n].split()),
                terms=bm25_terms(texts[start + n]),
                vector=vectors[start + n].tobytes(),
            )
            for n in range(min(per_doc, len(texts) - start))
        ]
        record = kb.new_record(
            source=f'synthetic:{start // per_doc}',
            title=f'Synthetic {start // per_doc}',
            kind='text',
            content_hash=str(start),
            sig='bench',
            chunks=chunks,
            size=0,
            previous=None,
        )
        writes.append((record, chunks, None))
        if len(writes) == 200:
            await kb.put_documents(writes, embed_model=RealQueryEmbedder.model_id, analyzer=Analyzer().name)
            writes = []
    if writes:
        await kb.put_documents(writes, embed_model=RealQueryEmbedder.model_id, analyzer=Analyzer().name)
    return time.perf_counter() - started


# --- measurements ----------------------------------------------------------------------------------


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    samples: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def bench_ingest_bm25(redis: Any, root: Path) -> tuple[list[str], list[str], KnowledgeBase]:
    docs = root / 'bm25'
    texts = markdown_files(docs, 2000)
    counter = token_counter()
    started = time.perf_counter()
    chunks = 0
    for path in sorted(docs.iterdir()):
        parsed = parse_document(path.read_bytes(), name=path.name, kind='markdown')
        drafts = chunk_blocks(parsed.blocks, counter, size=256, overlap=32)
        for draft in drafts:
            bm25_terms(draft.text)
        chunks += len(drafts)
    in_memory = chunks / (time.perf_counter() - started)

    kb = KnowledgeBase(redis, tenant='bench', name='bm25')
    report = await Ingestor(kb).ingest([str(docs)])
    rate = report.chunks / report.seconds
    notes.append(
        f'ingest_bm25: {report.added} files, {report.chunks} chunks in {report.seconds:.1f} s; '
        f'baseline: the same files parsed, chunked and tokenized in memory ({in_memory:.0f} chunks/s)'
    )
    return [line('ingest_bm25_chunks_per_s', rate, in_memory, 0.25, higher_is_better=True)], texts, kb


async def bench_ingest_local(redis: Any, root: Path, embedder: PydanticAIEmbedder) -> tuple[list[str], KnowledgeBase]:
    docs = root / 'local'
    markdown_files(docs, 24)
    for name, text in DOCUMENTS.items():
        (docs / name).write_text(text)
    # Load the weights, and warm BLAS for these text lengths, outside the timing of both sides:
    # encode passages like the ones measured (not the same ones).
    await embedder.embed_documents(passages(64))
    encoder = (await embedder._get())._model.encoder  # the MiniLMEncoder behind the pydantic-ai model

    embedded: list[str] = []
    original = embedder.embed_documents

    async def recording(texts: Sequence[str]) -> Any:
        embedded.extend(texts)
        return await original(texts)

    # Two rounds, pipeline then raw encode, each side keeping its best: the machine's load varies.
    pipeline: list[float] = []
    raw: list[float] = []
    kb = KnowledgeBase(redis, tenant='bench', name='local')
    chunks = 0
    for round_ in range(2):
        embedded.clear()
        target = kb if round_ == 0 else KnowledgeBase(redis, tenant='bench', name='local-again')
        embedder.embed_documents = recording  # type: ignore[method-assign]
        try:
            report = await Ingestor(target, embedder=embedder).ingest([str(docs)])
        finally:
            embedder.embed_documents = original  # type: ignore[method-assign]
        pipeline.append(report.seconds)
        chunks = report.chunks
        started = time.perf_counter()
        encoder.encode(list(embedded), batch_size=32)
        raw.append(time.perf_counter() - started)
    best, base = min(pipeline), min(raw)
    notes.append(
        f'ingest_local_embeddings: {chunks} chunks, best of 2 runs {best:.1f} s ({chunks / best:.1f} chunks/s), '
        f'whole pipeline (read, chunk, embed, write); baseline: MiniLMEncoder.encode of exactly the texts the '
        f'pipeline embedded, batch 32, best of 2 ({base:.1f} s, {chunks / base:.1f} chunks/s)'
    )
    return [line('ingest_local_embeddings_time', best, base, 1.2, 's')], kb


async def bench_recall(kb: KnowledgeBase, embedder: PydanticAIEmbedder) -> list[str]:
    import bm25s

    retrievers = {
        'bm25': Bm25Retriever([kb], bm25_search='process'),
        'dense': DenseRetriever([kb], embedder, vector_search='exact'),
        'hybrid': HybridRetriever(
            [Bm25Retriever([kb], bm25_search='process'), DenseRetriever([kb], embedder, vector_search='exact')]
        ),
    }
    recall: dict[str, float] = {}
    for name, retriever in retrievers.items():
        hits = 0
        for query, answer in QUERIES:
            found = [Path(p.source).name for p in await retriever.search(query, 10)]
            hits += answer in found
        recall[name] = hits / len(QUERIES)

    # The same set through the bm25s library, indexed from scratch: the BM25 baseline.
    records = [record async for batch in kb.iter_documents() for record in batch]
    stored = await kb.document_fields([record.id for record in records], 'terms')
    corpus: list[list[str]] = []
    sources: list[str] = []
    for record, raw in zip(records, stored, strict=True):
        for chunk_terms in (raw or b'').decode().split('\n'):
            corpus.append(chunk_terms.split())
            sources.append(Path(record.source).name)
    reference = bm25s.BM25()
    reference.index(corpus, show_progress=False)
    hits = 0
    for query, answer in QUERIES:
        terms = [term for term in bm25_terms(query) if term in reference.vocab_dict]
        scores = reference.get_scores(terms) if terms else np.zeros(len(corpus))
        top = np.argsort(-scores, kind='stable')[:10]
        hits += answer in {sources[i] for i in top.tolist() if scores[i] > 0}
    library = hits / len(QUERIES)
    info = await kb.info()
    notes.append(
        f'recall@10: {len(QUERIES)} labelled queries over {info.chunks if info else 0} chunks (labelled documents '
        f'and distractors, embedded by all-MiniLM-L6-v2); bm25 baseline: the bm25s library on the same chunks, '
        f'dense and hybrid baseline: Tandem BM25'
    )
    return [
        line('recall10_bm25', recall['bm25'], library, 1.0, higher_is_better=True),
        line('recall10_dense', recall['dense'], recall['bm25'], 1.0, higher_is_better=True),
        line('recall10_hybrid', recall['hybrid'], recall['bm25'], 1.0, higher_is_better=True),
    ]


async def bench_queries(
    kb: KnowledgeBase, texts: Sequence[str], embedder: RealQueryEmbedder, label: str, *, repeat: int = 100
) -> list[str]:
    queries = [query for query, _ in synthetic_queries(texts, repeat)]
    bm25 = Bm25Retriever([kb], bm25_search='process')
    dense = DenseRetriever([kb], embedder, vector_search='exact')
    hybrid = HybridRetriever(
        [Bm25Retriever([kb], bm25_search='process'), DenseRetriever([kb], embedder, vector_search='exact')]
    )
    clear_index_cache()
    started = time.perf_counter()
    await bm25.search(queries[0], 5)
    await dense.search(queries[0], 5)
    load = time.perf_counter() - started

    results: dict[str, list[float]] = {}
    for name, retriever in (('bm25', bm25), ('dense', dense), ('hybrid', hybrid)):
        cursor = iter(queries * 2)
        await retriever.search(queries[1], 5)
        results[name] = await timed(lambda r=retriever, c=cursor: r.search(next(c), 5), repeat)
    embedder.precomputed = {query: await embedder.embed_query(query) for query in queries}
    cursor = iter(queries * 2)
    results['hybrid_retrieval'] = await timed(lambda c=cursor: hybrid.search(next(c), 5), repeat)
    embedder.precomputed = None

    # Baselines: the bm25s library over the same chunks in memory, and a bare exact dense search
    # (embed the query, one matrix-vector product, a partial sort) over the same vectors.
    import bm25s

    reference = bm25s.BM25()
    reference.index([bm25_terms(text) for text in texts], show_progress=False)
    lib: list[float] = []
    for query in queries:
        started = time.perf_counter()
        reference.retrieve([bm25_terms(query) or ['']], k=5, show_progress=False)
        lib.append((time.perf_counter() - started) * 1000)
    matrix = np.ascontiguousarray(unit_vectors(len(texts)).T)
    encode: list[float] = []
    for query in queries:
        started = time.perf_counter()
        await embedder.embed_query(query)
        encode.append((time.perf_counter() - started) * 1000)
    bare: list[float] = []
    for query in queries:
        started = time.perf_counter()
        vector = await embedder.embed_query(query)
        scores = vector @ matrix
        top = np.argpartition(-scores, 5)[:5]
        top[np.argsort(-scores[top])]
        bare.append((time.perf_counter() - started) * 1000)
    notes.append(
        f'queries_{label}: {len(texts)} chunks; cold load of the BM25 and vector indexes from Redis {load:.1f} s; '
        f'bm25 baseline: the bm25s library in memory (p50 {percentile(lib, 50):.2f} ms); dense baseline: embed '
        f'the query + numpy matrix-vector product + partial sort (p50 {percentile(bare, 50):.2f} ms); '
        f'hybrid: the issue budget, p50 20 ms (p95 budget 40 ms); query embedding alone (all-MiniLM-L6-v2, '
        f'one short query, 2 cores) p50 {percentile(encode, 50):.1f} ms; "without_query_embedding": the same '
        f'searches with the query vectors computed beforehand'
    )
    out = []
    for name, baseline, target in (('bm25', lib, 1.2), ('dense', bare, 3.0)):
        out.append(
            line(f'query_{name}_{label}_p50', percentile(results[name], 50), percentile(baseline, 50), target, 'ms')
        )
        out.append(
            line(f'query_{name}_{label}_p95', percentile(results[name], 95), percentile(baseline, 95), 3.0, 'ms')
        )
    out.append(line(f'query_hybrid_{label}_p50', percentile(results['hybrid'], 50), 20.0, 1.0, 'ms'))
    out.append(line(f'query_hybrid_{label}_p95', percentile(results['hybrid'], 95), 40.0, 1.0, 'ms'))
    retrieval_only = results['hybrid_retrieval']
    out.append(
        line(f'query_hybrid_{label}_without_query_embedding_p50', percentile(retrieval_only, 50), 20.0, 1.0, 'ms')
    )
    out.append(
        line(f'query_hybrid_{label}_without_query_embedding_p95', percentile(retrieval_only, 95), 40.0, 1.0, 'ms')
    )
    return out


def page_ranking(sources: Sequence[str]) -> list[str]:
    """Pages (corpus-relative paths) in the order their first chunk was ranked."""
    return list(dict.fromkeys(str(Path(source).relative_to(QUALITY_CORPUS)) for source in sources))


def quality_scores(rankings: Sequence[Sequence[str]]) -> tuple[float, float, float]:
    """hit@1, hit@5 and MRR@10 of page rankings, one per question of `QUALITY_QUESTIONS`."""
    hit1 = hit5 = reciprocal = 0.0
    for ranking, (_, page) in zip(rankings, QUALITY_QUESTIONS, strict=True):
        rank = ranking.index(page) + 1 if page in ranking[:10] else 0
        hit1 += rank == 1
        hit5 += 0 < rank <= 5
        reciprocal += 1 / rank if rank else 0.0
    count = len(QUALITY_QUESTIONS)
    return hit1 / count, hit5 / count, reciprocal / count


async def bench_quality(redis: Any, embedder: PydanticAIEmbedder) -> list[str]:
    """Page-level retrieval quality on a real corpus (llama.cpp's docs) and 34 labelled questions."""
    import bm25s
    import Stemmer  # pyright: ignore[reportMissingTypeStubs]

    from tandem.memory.connection import query_engine_available
    from tandem.memory.knowledge import query_engine

    kb = KnowledgeBase(redis, tenant='bench', name='llamacpp')
    started = time.perf_counter()
    report = await Ingestor(kb, embedder=embedder).ingest([str(QUALITY_CORPUS)])
    ingest_seconds = time.perf_counter() - started
    on_server = await query_engine_available(redis)
    retrievers: dict[str, Any] = {
        'bm25': Bm25Retriever([kb], bm25_search='process'),
        'dense': DenseRetriever([kb], embedder, vector_search='exact'),
        'hybrid': HybridRetriever(
            [Bm25Retriever([kb], bm25_search='process'), DenseRetriever([kb], embedder, vector_search='exact')]
        ),
    }
    if on_server:
        retrievers['bm25_query_engine'] = Bm25Retriever([kb], bm25_search='redis')
        retrievers['hybrid_query_engine'] = HybridRetriever(
            [Bm25Retriever([kb], bm25_search='redis'), DenseRetriever([kb], embedder, vector_search='redis')]
        )
        probe = await embedder.embed_query('probe')
        for _ in range(200):  # the server builds its indexes in the background
            text = await query_engine.bm25_search(kb, 'gpu', 1, analyzer=Analyzer())
            vector = await query_engine.vector_search(kb, probe, 1)
            if text is not None and vector is not None:
                break
            await asyncio.sleep(0.05)
    scores: dict[str, tuple[float, float, float]] = {}
    for name, retriever in retrievers.items():
        rankings = [page_ranking([p.source for p in await retriever.search(q, 50)]) for q, _ in QUALITY_QUESTIONS]
        scores[name] = quality_scores(rankings)

    # The anchor: the bm25s library with its English stemmer over exactly the chunks Tandem indexed.
    texts: list[str] = []
    sources: list[str] = []
    async for batch in kb.iter_documents():
        for record in batch:
            for chunk in await kb.chunks(record.chunks):
                if chunk is not None:
                    texts.append(' — '.join(part for part in (chunk.title, chunk.heading) if part) + '\n' + chunk.text)
                    sources.append(chunk.source)
    stemmer = Stemmer.Stemmer('english')
    anchor = bm25s.BM25()
    anchor.index(bm25s.tokenize(texts, stopwords='en', stemmer=stemmer, show_progress=False), show_progress=False)
    rankings = []
    for question, _ in QUALITY_QUESTIONS:
        tokens = bm25s.tokenize([question], stopwords='en', stemmer=stemmer, show_progress=False)
        found, _ = anchor.retrieve(tokens, k=min(50, len(texts)), show_progress=False)
        rankings.append(page_ranking([sources[i] for i in found[0].tolist()]))
    scores['bm25s_stemmed'] = quality_scores(rankings)

    table = '; '.join(f'{name} hit@1 {h1:.3f} hit@5 {h5:.3f} MRR {mrr:.3f}' for name, (h1, h5, mrr) in scores.items())
    notes.append(
        f'quality: llama.cpp docs, {report.added} pages, {report.chunks} chunks (ingested with local embeddings in '
        f'{ingest_seconds:.0f} s), {len(QUALITY_QUESTIONS)} labelled questions, page-level; {table}; '
        f'{"Query Engine rows on the embedded server with RediSearch" if on_server else "no Query Engine here"}'
    )
    anchor_mrr = scores['bm25s_stemmed'][2]
    out = [
        line('quality_mrr_bm25', scores['bm25'][2], anchor_mrr, 1.0, higher_is_better=True),
        line(
            'quality_mrr_hybrid',
            scores['hybrid'][2],
            max(anchor_mrr, scores['bm25'][2]),
            1.01,
            higher_is_better=True,
        ),
    ]
    for mode in ('bm25', 'hybrid') if on_server else ():
        # Agreement with the in-process path: the same labelled set ranked by the server.
        on_server_mrr, in_process_mrr = scores[f'{mode}_query_engine'][2], scores[mode][2]
        out.append(line(f'quality_mrr_{mode}_query_engine', on_server_mrr, in_process_mrr, 0.95, higher_is_better=True))
    return out


def wall_times(argv: Sequence[str], env: dict[str, str], repeat: int) -> list[float]:
    """Seconds each run of a command takes as a whole process (it must succeed)."""
    samples: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(list(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        samples.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f'{argv[1:]} failed: {done.stderr.decode()[-500:]}')
    return samples


async def bench_cold_cli_search(kb: KnowledgeBase, url: str, home: Path, texts: Sequence[str], label: str) -> list[str]:
    """`tandem kb search --mode bm25` as a new process, against `tandem --version` (Python's start-up)
    and `tandem kb list` (the same command line and Redis connection, no search)."""
    from tandem.memory.connection import query_engine_available
    from tandem.memory.knowledge import query_engine

    await save_snapshots(kb)  # what an ingest leaves behind (the bench wrote through put_documents)
    tandem = str(Path(sys.executable).with_name('tandem'))
    # Python caches compiled modules on a user's first run; a shell that forbids it would time compiling.
    user_env = {name: value for name, value in os.environ.items() if name != 'PYTHONDONTWRITEBYTECODE'}
    env = {**user_env, 'TANDEM_REDIS_URL': url, 'TANDEM_TENANT': kb.keys.tenant, 'TANDEM_HOME': str(home)}
    in_process = {**env, 'TANDEM_KNOWLEDGE__BM25_SEARCH': 'process'}
    query = synthetic_queries(texts, 1)[0][0]
    search = [tandem, 'kb', 'search', query, '--kb', kb.name, '--mode', 'bm25']
    wall_times(search, in_process, 1)  # the OS's file cache, as for any command run before
    version = wall_times([tandem, '--version'], env, 7)
    listing = wall_times([tandem, 'kb', 'list'], env, 7)
    cold = wall_times(search, in_process, 7)
    await kb.redis.delete(kb.keys.snapshots)
    rebuilt = wall_times(search, in_process, 1)[0]  # no snapshot: built from every chunk's terms (and stored)
    server = ''
    lines = [
        line(f'cold_kb_search_bm25_{label}', statistics.median(cold), statistics.median(version), 1.5, 's'),
        line(f'cold_kb_search_bm25_{label}_vs_kb_list', statistics.median(cold), statistics.median(listing), 1.5, 's'),
    ]
    if await query_engine_available(kb.redis):
        for _ in range(1200):  # the server indexes the chunks in the background
            if await query_engine.bm25_search(kb, query, 5, analyzer=Analyzer()):
                break
            await asyncio.sleep(0.1)
        on_server = wall_times(search, env, 7)
        server = f'; on the Query Engine (the embedded server with RediSearch) {statistics.median(on_server):.2f} s'
        lines.append(
            line(
                f'cold_kb_search_bm25_{label}_query_engine_vs_kb_list',
                statistics.median(on_server),
                statistics.median(listing),
                1.5,
                's',
            )
        )
    notes.append(
        f'cold_kb_search_{label}: `tandem kb search --mode bm25` as a new process, median of 7 runs: in process, '
        f'restoring the BM25 snapshot, {statistics.median(cold):.2f} s; without a snapshot (built from every '
        f"chunk's stored terms, as before) {rebuilt:.2f} s{server}; baselines, median of 7: `tandem --version` "
        f"{statistics.median(version):.3f} s (it answers before importing anything: Python's own start-up) and "
        f'`tandem kb list` {statistics.median(listing):.2f} s (the same command line and Redis connection, no search)'
    )
    return lines


async def bench_bm25_recall_at_scale(kb: KnowledgeBase, texts: Sequence[str]) -> list[str]:
    labelled = synthetic_queries(texts, 200)
    records = [record async for batch in kb.iter_documents() for record in batch]
    position = {}
    for record in records:
        base = int(record.source.split(':', 1)[1]) * 10
        for n, chunk_id in enumerate(record.chunks):
            position[chunk_id] = base + n
    retriever = Bm25Retriever([kb], bm25_search='process')
    hits = 0
    for query, target in labelled:
        found = [position.get(p.chunk_id) for p in await retriever.search(query, 10)]
        hits += target in found
    recall = hits / len(labelled)
    notes.append('recall10_bm25_synthetic_100k: 200 queries of four rare words of one chunk each; baseline: 1.0')
    return [line('recall10_bm25_synthetic_100k', recall, 1.0, 0.9, higher_is_better=True)]


def bench_libraries(texts: Sequence[str]) -> list[str]:
    import bm25s
    from rank_bm25 import BM25Okapi  # pyright: ignore[reportMissingTypeStubs]

    corpus = [bm25_terms(text) for text in texts]
    queries = [bm25_terms(query) for query, _ in synthetic_queries(texts, 100)]

    started = time.perf_counter()
    fast = bm25s.BM25()
    fast.index(corpus, show_progress=False)
    index_bm25s = time.perf_counter() - started
    started = time.perf_counter()
    okapi = BM25Okapi(corpus)
    index_rank = time.perf_counter() - started
    started = time.perf_counter()
    ours = Bm25Index()
    for n, terms in enumerate(corpus):
        ours.add(str(n), terms, defer=True)
    ours.finish()
    index_ours = time.perf_counter() - started

    def timing(fn: Callable[[list[str]], Any]) -> list[float]:
        samples = []
        for query in queries:
            started = time.perf_counter()
            fn(query)
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    lib = timing(lambda q: fast.retrieve([q], k=10, show_progress=False))
    rank = timing(lambda q: np.argsort(-okapi.get_scores(q))[:10])
    mine = timing(lambda q: ours.search(q, 10))
    # Agreement that allows for ties: how many of Tandem's top 10 score at least bm25s's tenth score.
    agree = []
    for query in queries:
        _, scores = fast.retrieve([query], k=10, show_progress=False)
        positive = int((scores[0] > 0).sum())
        if positive == 0:
            continue
        tenth = float(scores[0][positive - 1])
        good = sum(1 for _, score in ours.search(query, 10) if score >= tenth - 1e-4)
        agree.append(min(good, positive) / positive)
    notes.append(
        f'bm25 libraries on the same {len(texts)} chunks: index bm25s {index_bm25s:.2f} s, rank-bm25 '
        f'{index_rank:.2f} s, Tandem incremental {index_ours:.2f} s; query p50 bm25s {percentile(lib, 50):.2f} ms, '
        f'rank-bm25 {percentile(rank, 50):.2f} ms, Tandem {percentile(mine, 50):.2f} ms; '
        f'top-10 agreement Tandem vs bm25s {statistics.mean(agree):.3f} (a tie at the tenth place counts as agreeing)'
    )
    return [
        line('bm25s_vs_rank_bm25_query_p50', percentile(lib, 50), percentile(rank, 50), 0.5, 'ms'),
        line(
            'bm25s_vs_rank_bm25_index_plus_100_queries',
            index_bm25s + sum(lib) / 1000,
            index_rank + sum(rank) / 1000,
            1.0,
            's',
        ),
        line('tandem_vs_bm25s_query_p50', percentile(mine, 50), percentile(lib, 50), 1.5, 'ms'),
        line('tandem_vs_bm25s_top10_agreement', statistics.mean(agree), 1.0, 0.99, higher_is_better=True),
    ]


async def main() -> None:
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    started = time.perf_counter()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = EmbeddedRedis(root / 'home')
        url = server.ensure_running()
        redis = await connect(url, home=root / 'home')
        try:
            if '--quality' in sys.argv:  # only the labelled quality set (about a minute)
                lines += await bench_quality(redis, local_embedder())
                print('\n'.join(f'note: {note}' for note in notes))
                print('\n'.join(lines))
                return
            if '--cold' in sys.argv:  # only the cold command-line search (about a minute)
                kb = KnowledgeBase(redis, tenant='bench', name='synthetic100k')
                texts = passages(100_000)
                await write_synthetic(kb, texts)
                lines += await bench_cold_cli_search(kb, url, root / 'home', texts, '100k')
                print('\n'.join(f'note: {note}' for note in notes))
                print('\n'.join(lines))
                return
            if '--ingest' in sys.argv:  # only the ingest with local embeddings (about a minute)
                lines += (await bench_ingest_local(redis, root, local_embedder()))[0]
                print('\n'.join(f'note: {note}' for note in notes))
                print('\n'.join(lines))
                return
            embedder = local_embedder()
            started_load = time.perf_counter()
            await embedder.embed_query('load the encoder')
            notes.append(
                f'encoder_load: all-MiniLM-L6-v2 on NumPy, first query in a process (weights read, tokenizer '
                f'built): {time.perf_counter() - started_load:.2f} s, once per process'
            )
            bm25_lines, texts_10k, _ = await bench_ingest_bm25(redis, root)
            lines += bm25_lines
            local_lines, local_kb = await bench_ingest_local(redis, root, embedder)
            lines += local_lines
            lines += await bench_recall(local_kb, embedder)
            lines += bench_libraries(texts_10k)
            lines += await bench_quality(redis, embedder)

            query_embedder = RealQueryEmbedder(embedder)
            for size, label in ((10_000, '10k'), (100_000, '100k')):
                kb = KnowledgeBase(redis, tenant='bench', name=f'synthetic{label}')
                texts = passages(size)
                seconds = await write_synthetic(kb, texts)
                notes.append(
                    f'synthetic_{label}: {size} chunks written in {seconds:.1f} s ({size / seconds:.0f} chunks/s)'
                )
                lines += await bench_queries(kb, texts, query_embedder, label)
                if size == 100_000:
                    lines += await bench_bm25_recall_at_scale(kb, texts)
                    lines += await bench_cold_cli_search(kb, url, root / 'home', texts, label)
                clear_index_cache()  # the temporary server goes away with its data
        finally:
            await redis.aclose()
            server.stop()
    notes.append(f'total {time.perf_counter() - started:.0f} s')
    print('\n'.join(f'note: {note}' for note in notes))
    print('\n'.join(lines))


if __name__ == '__main__':
    asyncio.run(main())
