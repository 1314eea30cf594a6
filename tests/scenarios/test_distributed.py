"""`tandem run --distributed` and `tandem worker`: the same results as a local run, with a worker killed mid-run.

Everything is a real process on a real Redis: three `tandem worker`s, the suite's `tandem run`, and a
loopback OpenAI-compatible server that answers with the scripted policy (`openai_policy`), slowly
enough that a worker is killed while its runs are in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from tandem.agent.backbones.base import Backbone, backbone_from_config
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.scenarios.distributed import DistributedEngine, Worker, serve_worker
from tandem.agent.scenarios.results import ScenarioRun, SuiteReport
from tandem.agent.scenarios.runner import run_suite
from tandem.agent.scenarios.schema import Scenario, load_scenario
from tandem.memory.keys import SCENARIO_QUEUE, SuiteKeys
from tests.scenarios.conftest import STARTER, WriteScenario
from tests.scenarios.scripted_backbone import openai_policy
from tests.support.fake_openai import FakeOpenAI, Text

_VARYING = re.compile(r'\bf-[0-9a-f]{12}\b|\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?([+-]\d\d:\d\d|Z)?|\d\d?:\d\d( ?[AP]M)?')

TANDEM = [sys.executable, '-m', 'tandem.agent']
MODEL = ['-m', 'openai-chat:tiny-chat']


@dataclass
class Process:
    """A running command whose stderr lines are collected as they come."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list[str])

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            assert self.popen.poll() is None, ''.join(self.lines)
            time.sleep(0.02)
        raise AssertionError(f'no {text!r} in: {"".join(self.lines)}')

    @property
    def started(self) -> set[tuple[str, int]]:
        """The runs this worker started (`→ NAME [CELL] trial N`), as (scenario, trial)."""
        return {_run(line) for line in list(self.lines) if line.startswith('→ ')}

    @property
    def finished(self) -> set[tuple[str, int]]:
        """The runs it finished (`passed: NAME [CELL] trial N`)."""
        return {_run(line) for line in list(self.lines) if line.startswith(('passed: ', 'failed: ', 'error: '))}


def _run(line: str) -> tuple[str, int]:
    words = line.split()
    return words[1], int(words[-1])


@contextmanager
def started(command: list[str], env: dict[str, str]) -> Iterator[Process]:
    popen = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    process = Process(popen)

    def read() -> None:
        assert popen.stderr is not None
        for line in popen.stderr:
            process.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield process
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)
            try:
                popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


@pytest.fixture
def model() -> Iterator[FakeOpenAI]:
    """The scripted policy behind a loopback server: each request takes 0.3 s, as a model's would."""
    with FakeOpenAI(script=openai_policy, delay_s=0.3) as server:
        yield server


@pytest.fixture
def env(model: FakeOpenAI, redis_url: str, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        'OPENAI_BASE_URL': model.url,
        'OPENAI_API_KEY': 'not-needed',
        'TANDEM_REDIS_URL': redis_url,
        'TANDEM_HOME': str(tmp_path / 'home'),
        'COLUMNS': '120',
    }
    env.pop('TANDEM_CONFIG', None)
    return env


def _outcomes(report: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """What each run did, by (scenario, trial): its status, checks, tool calls and answers.

    Two runs' answers differ only in what differs between any two runs: the time told, and new facts' ids.
    """
    data = json.loads((report / 'report.json').read_text())
    return {
        (run['scenario'], run['trial']): {
            'status': run['status'],
            'checks': [(check['kind'], check['passed']) for turn in run['turns'] for check in turn['checks']],
            'calls': [(call['name'], call['args']) for turn in run['turns'] for call in turn['tool_calls']],
            'answers': [_VARYING.sub('…', turn['answer']) for turn in run['turns']],
        }
        for run in data['runs']
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_distributed_run_with_a_worker_killed_mid_run_matches_a_local_run(
    env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    local = subprocess.run(
        [*TANDEM, 'run', str(STARTER), *MODEL, '-n', '2', '--report', str(tmp_path / 'local')],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert local.returncode == 0, local.stdout + local.stderr

    worker = [*TANDEM, 'worker', '-j', '2', '--reclaim-after', '2']
    with (
        started([*worker, '--name', 'w1'], env) as w1,
        started([*worker, '--name', 'w2'], env) as w2,
        started([*worker, '--name', 'w3'], env) as w3,
    ):
        for each in (w1, w2, w3):
            each.wait_for('taking scenario runs')
        with started(
            [*TANDEM, 'run', str(STARTER), *MODEL, '-n', '2', '--distributed', '--report', str(tmp_path / 'dist')],
            env,
        ) as suite:
            w1.wait_for('→ ')
            w1.popen.kill()  # mid-run: each model request takes 0.3 s
            w1.popen.wait()
            lost = w1.started - w1.finished
            assert lost, 'w1 finished its runs before it was killed'
            assert suite.popen.wait(timeout=180) == 0, ''.join(suite.lines)

    assert _outcomes(tmp_path / 'dist') == _outcomes(tmp_path / 'local')
    runs = json.loads((tmp_path / 'dist' / 'report.json').read_text())['runs']
    assert len(runs) == 24  # 12 scenarios × 2 trials
    by_worker = {(run['scenario'], run['trial']): run['worker'] for run in runs}
    assert {by_worker[run] for run in lost} <= {'w2', 'w3'}
    assert set(by_worker.values()) == {'w2', 'w3'}
    # Each run was recorded once, and nothing of the suite or its queue is left in Redis.
    client = SyncRedis.from_url(redis_url)
    assert [key for key in client.scan_iter('tandem:suite:*')] == []
    assert client.xlen('tandem:queue:{scenario-runs}') == 0


# --- the engine and workers in one process ------------------------------------------------------------


@pytest.fixture
def scenario(write_scenario: WriteScenario) -> Scenario:
    path = write_scenario(
        """
        name: greeting
        setup: {tools: []}
        turns:
          - user: Say hello.
            expect: {contains: hello}
        """
    )
    return load_scenario(path)


def _loopback(model: FakeOpenAI) -> Backbone:
    return backbone_from_config('loop', BackboneConfig(model='openai-chat:tiny-chat', base_url=model.url))


def _queued(
    scenario: Scenario, settings: Settings, redis: Redis, redis_url: str, model: FakeOpenAI, trials: int = 1
) -> asyncio.Task[SuiteReport]:
    """The suite's process: `scenario` queued on the distributed engine, waiting for workers to run it."""
    return asyncio.create_task(
        run_suite(
            [scenario],
            settings=settings,
            redis=redis,
            backbones=[_loopback(model)],
            engine=DistributedEngine(redis_url),
            trials=trials,
        )
    )


async def _suite_id(redis: Redis) -> str:
    """The id of the one suite queued in Redis, once it is."""
    for _ in range(200):
        keys = [key async for key in redis.scan_iter(match='tandem:suite:*:spec')]
        if keys:
            return keys[0].decode().split('{')[1].split('}')[0]
        await asyncio.sleep(0.02)
    raise AssertionError('no suite was queued')


async def test_a_run_longer_than_reclaim_after_is_not_taken_from_its_live_worker(
    scenario: Scenario, settings: Settings, redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('OPENAI_API_KEY', 'not-needed')
    with FakeOpenAI(script=lambda body: Text('hello'), delay_s=1.5) as model:
        workers = [
            asyncio.create_task(serve_worker(Worker(settings, redis, name), redis_url, reclaim_after_s=0.3))
            for name in ('a', 'b')
        ]
        try:
            report = await _queued(scenario, settings, redis, redis_url, model)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    assert report.passed and len(report.runs) == 1
    # Held for 1.5 s against a reclaim time of 0.3 s, the run's claim was renewed: nobody ran it again.
    assert len(model.chat_requests) == 1


async def test_a_suite_outlives_its_lease_while_its_process_renews_it(
    scenario: Scenario, settings: Settings, redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('OPENAI_API_KEY', 'not-needed')
    with FakeOpenAI(script=lambda body: Text('hello'), delay_s=1.5) as model:
        # The run takes 1.5 s, the lease 0.4 s: unrenewed, the suite would expire and its run be dropped.
        engine = DistributedEngine(redis_url, lease_s=0.4)
        suite = asyncio.create_task(
            run_suite([scenario], settings=settings, redis=redis, backbones=[_loopback(model)], engine=engine)
        )
        worker = asyncio.create_task(serve_worker(Worker(settings, redis, 'a'), redis_url))
        try:
            report = await asyncio.wait_for(suite, 10)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    assert report.passed and report.runs[0].worker == 'a'
    assert [key async for key in redis.scan_iter(match='tandem:suite:*')] == []


async def test_the_last_run_of_a_worker_that_died_goes_to_another_with_nothing_new_queued(
    scenario: Scenario, settings: Settings, redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('OPENAI_API_KEY', 'not-needed')
    with FakeOpenAI(script=lambda body: Text('hello')) as model:
        suite = _queued(scenario, settings, redis, redis_url, model)
        await _suite_id(redis)
        # A worker takes the suite's only job and dies before acknowledging it.
        taken: Any = await redis.xreadgroup('tandem-workers', 'dead', {SCENARIO_QUEUE: '>'}, count=1)
        assert len(taken[0][1]) == 1
        live = asyncio.create_task(serve_worker(Worker(settings, redis, 'live'), redis_url, reclaim_after_s=0.3))
        try:
            report = await asyncio.wait_for(suite, 10)
        finally:
            live.cancel()
            await asyncio.gather(live, return_exceptions=True)

    assert report.passed and report.runs[0].worker == 'live'


async def test_a_run_two_workers_both_ran_is_recorded_once(
    scenario: Scenario, settings: Settings, redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('OPENAI_API_KEY', 'not-needed')
    recorded: list[tuple[str, bool]] = []
    with FakeOpenAI(script=lambda body: Text('hello'), delay_s=0.2) as model:
        # Two trials: the suite waits for trial 2 while trial 1 is recorded twice.
        suite = _queued(scenario, settings, redis, redis_url, model, trials=2)
        suite_id = await _suite_id(redis)
        a, b = (
            Worker(settings, redis, name, on_run=lambda run, new: recorded.append((run.worker or '', new)))
            for name in ('a', 'b')
        )
        # Both take the same job at once, as when a worker presumed dead was only slow.
        await asyncio.gather(a.job(suite_id, 0, 0, 1), b.job(suite_id, 0, 0, 1))
        twice = list(recorded)
        await a.job(suite_id, 0, 0, 2)
        report = await asyncio.wait_for(suite, 10)

    assert sorted(new for _, new in twice) == [False, True]
    assert len(model.chat_requests) == 3 and [run.trial for run in report.runs] == [1, 2]
    assert report.runs[0].worker == next(name for name, new in twice if new)


async def test_a_worker_drops_the_runs_of_a_suite_that_ended(settings: Settings, redis: Redis) -> None:
    seen: list[ScenarioRun] = []
    worker = Worker(settings, redis, 'a', on_run=lambda run, new: seen.append(run))

    await worker.job('0123abcd', 0, 0, 1)

    assert seen == [] and [key async for key in redis.scan_iter(match='tandem:suite:*')] == []


async def test_a_suite_a_worker_cannot_read_ends_with_an_error_run_that_says_why(
    settings: Settings, redis: Redis
) -> None:
    keys = SuiteKeys('0123abcd')
    await redis.set(keys.spec, json.dumps({'from': 'another version of Tandem'}), ex=60)
    seen: list[ScenarioRun] = []

    await Worker(settings, redis, 'a', on_run=lambda run, new: seen.append(run)).job(keys.suite, 0, 0, 1)

    (run,) = seen
    assert run.status == 'error' and run.worker == 'a'
    assert run.error is not None and run.error.startswith('worker a cannot run this suite:')
    assert await redis.hexists(keys.runs, '0:0:1')


def test_distributed_refuses_record_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [*TANDEM, 'run', str(STARTER), *MODEL, '--distributed', '--record', str(tmp_path / 'tapes')],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        'error: --record runs here: record once without --distributed, then --distributed --replay DIR.'
    ]


def test_the_queue_refuses_a_cluster_url_in_one_line(env: dict[str, str]) -> None:
    done = subprocess.run(
        [*TANDEM, 'worker'],
        env={**env, 'TANDEM_REDIS_URL': 'redis+cluster://127.0.0.1:7000'},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert 'the run queue needs a single Redis server' in done.stderr and len(done.stderr.strip().splitlines()) == 1
