"""Big matrices on many processes: `tandem run --distributed` queues each run, `tandem worker`s run them.

The queue is taskiq over a Redis stream (taskiq-redis's `RedisStreamBroker`, its reading loop
mended: see `_ClaimedStreamBroker`) in the Redis Tandem already uses. Why taskiq: it is
asyncio-native like the runner, so one worker runs several runs on one event loop
(`tandem worker -j`); and its stream broker acknowledges a job only once it ran, so the job of a
worker that dies stays pending until another worker claims it. arq re-runs a lost job only after
its whole timeout, and Celery and dramatiq would run each async run on a loop of its own.

A run is recorded once: the worker stores it with `HSETNX` and announces it on a stream, in one
script, so a job that two workers both ran (one was presumed dead) counts once.

The suite's process writes a spec (the scenario files with their documents; each backbone's and
judge's config, which holds no secret: keys come from each worker's environment; the replay
cassettes' directory), queues one job per run, and collects the runs as they are recorded. A worker
uses its own settings for the rest (prompts, toolsets, Redis): give workers the coordinator's config.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

from pydantic import BaseModel
from redis.asyncio import Redis
from taskiq import AckableMessage, AsyncBroker, SimpleRetryMiddleware
from taskiq.api import run_receiver_task
from taskiq.kicker import AsyncKicker
from taskiq_redis import RedisStreamBroker

from tandem.agent.backbones.base import Backbone, backbone_from_config
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.errors import TandemError
from tandem.agent.core.log import drop_records
from tandem.agent.core.prompts import PromptLibrary
from tandem.agent.scenarios.cassettes import Cassettes
from tandem.agent.scenarios.isolation import seed_scenario
from tandem.agent.scenarios.results import Cell, ScenarioRun
from tandem.agent.scenarios.runner import PlannedRun, RunHooks, SuiteEnv, run_planned
from tandem.agent.scenarios.schema import Scenario, ScenarioFileError, load_scenario
from tandem.memory.connection import mask_url
from tandem.memory.keys import SCENARIO_QUEUE, SuiteKeys
from tandem.memory.redis_server import EmbeddedRedis
from tandem.tools.installed import installed_plugins
from tandem.tools.registry import ToolsetPlugin

__all__ = ['DistributedEngine', 'Worker', 'broker_url', 'serve_worker']

TASK = 'tandem.scenario-run'
GROUP = 'tandem-workers'
_KICKS_AT_ONCE = 64

LEASE_S = 60.0
"""How long a suite's keys outlive its process: renewed while it waits, so a suite whose process died
(killed, or its machine lost) expires, and workers drop its queued runs instead of running them for no one."""

RECLAIM_AFTER_S = 60.0
"""A job held by no live worker for this long goes to another one (a held job's claim is renewed)."""

_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[3], '*', 'run', ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""
"""Record a run once, and announce it: -1 the suite is gone (ended or cancelled), 0 already recorded, 1 recorded."""


# --- the queue -------------------------------------------------------------------------------------


def broker_url(settings: Settings) -> str:
    """The Redis the queue lives in: the configured one, or the embedded server of the Tandem home.

    Raises:
        TandemError: A Redis Cluster URL (the queue needs one server).
    """
    url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
    if url is None:
        return EmbeddedRedis(settings.home).ensure_running()
    if '+cluster://' in url.split('?')[0]:
        raise TandemError(
            f'the run queue needs a single Redis server, and {mask_url(url)} is a cluster: '
            'point TANDEM_REDIS_URL at one server for `--distributed` and `tandem worker`.'
        )
    return url


class _ClaimedStreamBroker(RedisStreamBroker):
    """taskiq-redis's stream broker, with the claims of live and dead workers kept apart.

    A job stays pending until acknowledged, after it ran; one pending longer than `idle_timeout` is
    a dead worker's, and another worker claims it (`XAUTOCLAIM`). Two changes to the base broker:

    - While a job is held, its idle time is reset (`XCLAIM ... JUSTID`) every third of
      `idle_timeout`, so a run longer than that is not taken from its live worker.
    - Dead workers' jobs are claimed on every round, before new ones: taskiq-redis 1.2 claims them
      only after a round that read new jobs, so the last jobs of a suite would wait forever.

    A job is deleted once acknowledged, so the stream holds only what is queued or running.
    """

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._renewals: set[asyncio.Task[None]] = set()

    async def listen(self) -> AsyncGenerator[AckableMessage]:
        async with Redis(connection_pool=self.connection_pool) as redis:
            while True:
                claimed = await redis.xautoclaim(  # pyright: ignore[reportUnknownMemberType]
                    self.queue_name, self.consumer_group_name, self.consumer_name, self.idle_timeout, count=1
                )
                fetched: list[tuple[bytes, dict[bytes, bytes] | None]] = list(claimed[1])
                if not fetched:
                    read = cast(
                        list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
                        await redis.xreadgroup(  # pyright: ignore[reportUnknownMemberType]
                            self.consumer_group_name,
                            self.consumer_name,
                            {self.queue_name: '>'},
                            count=1,
                            block=self.block,
                        ),
                    )
                    fetched = [entry for _, entries in read or [] for entry in entries]
                for message_id, fields in fetched:
                    if fields is not None:  # None: deleted from the stream while pending
                        yield AckableMessage(data=fields[b'data'], ack=self._held(message_id))

    def _held(self, message_id: bytes) -> Callable[[], Awaitable[None]]:
        """Keep `message_id` claimed until the returned `ack` is awaited."""
        renewing = asyncio.create_task(self._renew(message_id))
        self._renewals.add(renewing)
        renewing.add_done_callback(self._renewals.discard)

        async def ack() -> None:
            renewing.cancel()
            async with Redis(connection_pool=self.connection_pool) as redis:
                await redis.xack(self.queue_name, self.consumer_group_name, message_id)  # pyright: ignore[reportUnknownMemberType]
                await redis.xdel(self.queue_name, message_id)  # pyright: ignore[reportUnknownMemberType]

        return ack

    async def _renew(self, message_id: bytes) -> None:
        while True:
            await asyncio.sleep(self.idle_timeout / 3000)
            async with Redis(connection_pool=self.connection_pool) as redis:
                await redis.xclaim(  # pyright: ignore[reportUnknownMemberType]
                    self.queue_name, self.consumer_group_name, self.consumer_name, 0, [message_id], justid=True
                )

    async def shutdown(self) -> None:
        for renewing in list(self._renewals):
            renewing.cancel()  # the jobs go back to the queue: another worker claims them
        await super().shutdown()


def _broker(url: str, *, consumer: str, reclaim_after_s: float = RECLAIM_AFTER_S) -> AsyncBroker:
    broker = _ClaimedStreamBroker(
        url,
        queue_name=SCENARIO_QUEUE,
        consumer_group_name=GROUP,
        consumer_name=consumer,
        consumer_id='0',  # a group created after jobs were queued still gets them
        idle_timeout=max(1, int(reclaim_after_s * 1000)),
        xread_block=max(1, min(2000, int(reclaim_after_s * 1000))),  # look for dead workers' jobs this often
    )
    # A job that raises (Redis gone while recording, say) is queued again rather than acknowledged and lost.
    return broker.with_middlewares(SimpleRetryMiddleware(default_retry_count=5, default_retry_label=True))


# --- what workers need to know of a suite ----------------------------------------------------------


class _ScenarioBundle(BaseModel):
    """A scenario file and the documents it names, so a worker on another machine can load it."""

    file: str
    """Where the coordinator read it: reports show this."""
    name: str
    text: str
    documents: dict[str, str]
    """Path relative to the scenario's folder → the file's bytes, base64."""

    @classmethod
    def of(cls, scenario: Scenario) -> _ScenarioBundle:
        path = scenario.path
        if path is None:
            raise TandemError(f'scenario {scenario.name!r} has no file: `--distributed` sends scenario files.')
        named = [*scenario.setup.documents, *(doc for other in scenario.setup.other_users for doc in other.documents)]
        documents = {
            os.path.relpath(document.path, path.parent.resolve()): base64.b64encode(document.path.read_bytes()).decode()
            for document in named
            if document.path is not None
        }
        return cls(file=str(path), name=path.name, text=path.read_text(encoding='utf-8'), documents=documents)

    def unpack(self, root: Path) -> Scenario:
        """Write the file and its documents under `root`, at the same relative places, and load it."""
        depth = max((Path(rel).parts.count('..') for rel in self.documents), default=0)
        folder = root.joinpath(*['d'] * depth)  # room for documents in `../`
        for rel, data in self.documents.items():
            target = Path(os.path.normpath(folder / rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(data))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.name).write_text(self.text, encoding='utf-8')
        return load_scenario(folder / self.name)


class _Named(BaseModel):
    name: str
    config: BackboneConfig


class _SuiteSpec(BaseModel):
    """What a worker needs to run any run of a suite."""

    scenarios: list[_ScenarioBundle]
    cells: list[Cell]
    backbones: list[_Named]
    judge: _Named | None = None
    judges: list[_Named] = []
    replay: str | None = None
    """The replay cassettes' directory, which workers must reach at this path."""


@dataclass(frozen=True)
class _Job:
    """A queued run: indexes into the spec's scenarios and cells."""

    scenario: int
    cell: int
    trial: int

    @property
    def id(self) -> str:
        return f'{self.cell}:{self.scenario}:{self.trial}'


# --- the coordinator -------------------------------------------------------------------------------


@dataclass
class DistributedEngine:
    """Queues every run of a suite for `tandem worker`s and collects them as they are recorded.

    Cancelling it (Ctrl-C) deletes the suite's spec, and workers drop its jobs still queued.
    """

    url: str
    """The queue's Redis (`broker_url`)."""
    on_queued: Callable[[int], None] | None = None
    """Told how many runs were queued."""
    lease_s: float = LEASE_S
    """How long the suite outlives this process (`LEASE_S`); renewed every quarter of it while it runs."""

    async def run(self, env: SuiteEnv, planned: Sequence[PlannedRun], hooks: RunHooks) -> list[ScenarioRun]:
        if env.cassettes is not None and env.cassettes.mode == 'record':
            raise TandemError(
                '--record runs in this process: record once without --distributed, then run --distributed --replay.'
            )
        scenarios = list({id(job.scenario): job.scenario for job in planned}.values())
        cells = list({job.cell.slug: job.cell for job in planned}.values())
        spec = _SuiteSpec(
            scenarios=[_ScenarioBundle.of(scenario) for scenario in scenarios],
            cells=cells,
            backbones=[_Named(name=name, config=backbone.config) for name, backbone in env.backbones.items()],
            judge=_Named(name=env.judge.name, config=env.judge.config) if env.judge is not None else None,
            judges=[_Named(name=name, config=judge.config) for name, judge in env.judges.items()],
            replay=str(env.cassettes.directory.resolve()) if env.cassettes is not None else None,
        )
        positions = {id(scenario): index for index, scenario in enumerate(scenarios)}
        cell_positions = {cell.slug: index for index, cell in enumerate(cells)}
        queued = [(_Job(positions[id(run.scenario)], cell_positions[run.cell.slug], run.trial), run) for run in planned]
        keys = SuiteKeys(uuid4().hex)
        await env.redis.set(keys.spec, spec.model_dump_json(), px=int(self.lease_s * 1000))
        holding = asyncio.create_task(_hold(env.redis, keys, self.lease_s))
        broker = _broker(self.url, consumer=f'suite-{keys.suite}')
        try:
            await broker.startup()  # creates the workers' group, from the stream's start
            kicker: AsyncKicker[Any, None] = AsyncKicker(TASK, broker, labels={})
            for start in range(0, len(queued), _KICKS_AT_ONCE):  # 12,000 one by one is 12,000 round trips
                batch = queued[start : start + _KICKS_AT_ONCE]
                await asyncio.gather(*(kicker.kiq(keys.suite, job.scenario, job.cell, job.trial) for job, _ in batch))
            if self.on_queued is not None:
                self.on_queued(len(queued))
            return await self._collect(env.redis, keys, {job.id: run for job, run in queued}, hooks)
        finally:
            holding.cancel()
            await env.redis.delete(*keys.all)
            await broker.shutdown()

    async def _collect(
        self, redis: Redis, keys: SuiteKeys, jobs: dict[str, PlannedRun], hooks: RunHooks
    ) -> list[ScenarioRun]:
        runs: dict[int, ScenarioRun] = {}
        last = '0-0'
        while len(runs) < len(jobs):
            replies = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                await redis.xread({keys.done: last}, count=100, block=1000),  # pyright: ignore[reportUnknownMemberType]
            )
            entries = [entry for _, batch in replies for entry in batch]
            if not entries:
                continue
            last = entries[-1][0].decode()
            ids = [fields[b'run'].decode() for _, fields in entries]
            stored = await redis.hmget(keys.runs, ids)  # pyright: ignore[reportUnknownMemberType]
            for job_id, data in zip(ids, cast(list[bytes | None], stored), strict=True):
                planned = jobs.get(job_id)
                if data is None or planned is None:
                    continue
                # What the run is comes from this process's plan, whatever the worker could load.
                run = ScenarioRun.model_validate_json(data).model_copy(
                    update={
                        'scenario': planned.scenario.name,
                        'file': str(planned.scenario.path),
                        'tags': list(planned.scenario.tags),
                        'description': planned.scenario.description,
                        'cell': planned.cell,
                        'trial': planned.trial,
                    }
                )
                runs[planned.index] = run
                if hooks.on_run is not None:
                    hooks.on_run(run)
        return [runs[index] for index in sorted(runs)]


async def _hold(redis: Redis, keys: SuiteKeys, lease_s: float) -> None:
    """Renew the suite's lease while its process lives."""
    while True:
        await asyncio.sleep(lease_s / 4)
        pipe = redis.pipeline(transaction=False)
        for key in keys.all:
            pipe.pexpire(key, int(lease_s * 1000))  # pyright: ignore[reportUnknownMemberType]
        await pipe.execute()  # pyright: ignore[reportUnknownMemberType]


# --- workers ---------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    env: SuiteEnv
    scenarios: list[Scenario]
    cells: list[Cell]


_SUITES_KEPT = 8
"""Suites a worker keeps loaded at once (their spec, backbones and unpacked files)."""

RunStartSink = Callable[[str, Scenario, Cell, int], None]
RunSink = Callable[[ScenarioRun, bool], None]


@dataclass
class Worker:
    """Runs the queued runs of any suite, with its own settings and Redis; see `serve_worker`."""

    settings: Settings
    redis: Redis
    name: str
    plugins: dict[str, ToolsetPlugin] | None = None
    on_start: RunStartSink | None = None
    """Told `(suite, scenario, cell, trial)` as a run starts."""
    on_run: RunSink | None = None
    """Told each finished run, and whether it was recorded (`False`: another worker had recorded it)."""
    _suites: dict[str, _Loaded | str] = field(default_factory=dict[str, '_Loaded | str'])
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _folder: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix='tandem-worker-')
    )

    def __post_init__(self) -> None:
        self._record = self.redis.register_script(_RECORD)

    async def job(self, suite: str, scenario: int, cell: int, trial: int) -> None:
        """Run one queued run and record it, unless the suite is gone or the run is recorded already."""
        keys = SuiteKeys(suite)
        job = _Job(scenario, cell, trial)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hexists(keys.runs, job.id)  # pyright: ignore[reportUnknownMemberType]
        pipe.exists(keys.spec)  # pyright: ignore[reportUnknownMemberType]
        recorded, alive = await pipe.execute()  # pyright: ignore[reportUnknownMemberType]
        if recorded:
            return  # a redelivered job another worker finished
        loaded = await self._load(keys) if alive else None
        if loaded is None:
            self._forget(suite)
            return  # the suite ended or was cancelled
        if isinstance(loaded, str):
            # Recorded as an error (the suite's process names the scenario), so the suite does not wait forever.
            run = ScenarioRun(scenario='', cell=Cell(backbone=''), trial=trial, status='error', error=loaded)
        else:
            planned = PlannedRun(0, loaded.scenarios[scenario], loaded.cells[cell], trial)
            if self.on_start is not None:
                self.on_start(suite, planned.scenario, planned.cell, trial)
            run = await run_planned(loaded.env, planned)
        run = run.model_copy(update={'worker': self.name})
        outcome = int(await self._record(keys=list(keys.all), args=[job.id, run.model_dump_json()]))
        if self.on_run is not None and outcome >= 0:
            self.on_run(run, outcome == 1)

    async def _load(self, keys: SuiteKeys) -> _Loaded | str | None:
        """The suite's runs' shared state, built once per suite; a string says why it cannot be built."""
        async with self._lock:
            if keys.suite not in self._suites:
                # The spec (scenario files and documents: it can be large) is read once per suite.
                raw = await self.redis.get(keys.spec)  # pyright: ignore[reportUnknownMemberType]
                if raw is None:
                    return None
                if len(self._suites) >= _SUITES_KEPT:
                    self._forget(next(iter(self._suites)))  # the oldest: most likely over
                try:
                    self._suites[keys.suite] = self._build(keys.suite, _SuiteSpec.model_validate_json(cast(bytes, raw)))
                except (TandemError, OSError, ValueError) as error:  # ValueError: a spec of another Tandem version
                    self._suites[keys.suite] = f'worker {self.name} cannot run this suite: {error}'
            return self._suites[keys.suite]

    def _forget(self, suite: str) -> None:
        """Drop a suite's state and its unpacked files."""
        self._suites.pop(suite, None)
        shutil.rmtree(Path(self._folder.name) / suite, ignore_errors=True)

    def _build(self, suite: str, spec: _SuiteSpec) -> _Loaded:
        root = Path(self._folder.name) / suite
        scenarios: list[Scenario] = []
        for index, bundle in enumerate(spec.scenarios):
            try:
                scenarios.append(bundle.unpack(root / str(index)))
            except ScenarioFileError as error:
                raise TandemError(f'{bundle.file}: {error}') from error
        cassettes = Cassettes(Path(spec.replay), 'replay') if spec.replay is not None else None

        def backbone(named: _Named, role: Any = 'backbone') -> Backbone:
            if cassettes is not None:
                return cassettes.offline_backbone(named.name, named.config, role=role)
            return backbone_from_config(named.name, named.config)

        settings = self.settings
        return _Loaded(
            env=SuiteEnv(
                settings=settings,
                redis=self.redis,
                prompts=PromptLibrary.default(settings.prompts_dir),
                plugins=dict(self.plugins) if self.plugins is not None else installed_plugins(settings),
                seed=seed_scenario,
                judge=backbone(spec.judge, 'judge') if spec.judge is not None else None,
                judges={named.name: backbone(named, 'judge') for named in spec.judges},
                backbones={named.name: backbone(named) for named in spec.backbones},
                cassettes=cassettes,
            ),
            scenarios=scenarios,
            cells=spec.cells,
        )

    def close(self) -> None:
        """Delete the unpacked scenario files."""
        self._folder.cleanup()


def _cancelled(record: logging.LogRecord) -> bool:
    return 'task was cancelled' in record.getMessage()


async def serve_worker(
    worker: Worker,
    url: str,
    *,
    concurrency: int = 4,
    reclaim_after_s: float = RECLAIM_AFTER_S,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Take runs from the queue in `url` and run them, `concurrency` at a time, until cancelled.

    A run cancelled with the worker (Ctrl-C, SIGTERM) is not acknowledged: it goes back to the
    queue, and another worker runs it after `reclaim_after_s`.
    """
    if concurrency < 1:
        raise TandemError('--concurrency must be at least 1.')
    drop_records('taskiq.receiver', _cancelled)  # how a worker stops, not a warning
    broker = _broker(url, consumer=worker.name, reclaim_after_s=reclaim_after_s)

    async def scenario_run(suite: str, scenario: int, cell: int, trial: int) -> None:
        await worker.job(suite, scenario, cell, trial)  # taskiq renames the function it registers: not a method

    broker.register_task(scenario_run, task_name=TASK)
    await broker.startup()
    try:
        if on_ready is not None:
            on_ready()
        await run_receiver_task(broker, max_async_tasks=concurrency, max_prefetch=0)
    finally:
        await broker.shutdown()
        worker.close()
