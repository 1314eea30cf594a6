"""`tandem run --distributed` on three workers against the same suite run in one process.

Run: `uv run python bench/distributed.py` (or `make bench`). Ends with `bench:` lines.

The starter suite, 3 trials per scenario (36 runs), on a loopback OpenAI-compatible server that
answers with the scripted policy after `DELAY_S`, as a model would: runs wait on the model, so
what matters is how many run at once.

- baseline: `tandem run -j 2` in one process;
- value: `tandem run --distributed` with three `tandem worker -j 2` processes started beforehand
  (their start-up is not counted: workers are long-lived), so six runs at a time.

Both are whole `tandem` processes on the same embedded Redis; the target is at most half the
local time (three times the slots, less the queue's overhead). Both runs must pass, with the same
counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.scenarios.scripted_backbone import openai_policy  # noqa: E402
from tests.support.fake_openai import FakeOpenAI  # noqa: E402

DELAY_S = 0.5
TRIALS = 3
WORKERS = 3
TANDEM = [sys.executable, '-m', 'tandem.agent']


def _line(name: str, value: float, baseline: float, target: float) -> str:
    ratio = value / baseline
    verdict = 'PASS' if ratio <= target else 'FAIL'
    return f'bench: {name} value={value:.2f}s baseline={baseline:.2f}s ratio={ratio:.2f} target<={target:.2f} {verdict}'


def _run(env: dict[str, str], report: Path, *extra: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [*TANDEM, 'run', str(ROOT / 'scenarios'), '-m', 'openai-chat:tiny-chat', '-n', str(TRIALS), '-j', '2',
         '--report', str(report), *extra],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f'tandem run {" ".join(extra)} failed:\n{done.stdout}{done.stderr}')
    return elapsed


def _passed(report: Path) -> int:
    return sum(run['status'] == 'passed' for run in json.loads((report / 'report.json').read_text())['runs'])


def main() -> None:
    with tempfile.TemporaryDirectory() as folder, FakeOpenAI(script=openai_policy, delay_s=DELAY_S) as model:
        env = {**os.environ, 'OPENAI_BASE_URL': model.url, 'OPENAI_API_KEY': 'not-needed', 'TANDEM_HOME': folder}
        for name in ('TANDEM_REDIS_URL', 'TANDEM_CONFIG'):
            env.pop(name, None)
        local = _run(env, Path(folder) / 'local')
        workers = [
            subprocess.Popen(
                [*TANDEM, 'worker', '-j', '2', '--name', f'w{index}'], env=env, stderr=subprocess.PIPE, text=True
            )
            for index in range(WORKERS)
        ]
        try:
            for worker in workers:
                assert worker.stderr is not None
                line = worker.stderr.readline()
                if 'taking scenario runs' not in line:
                    sys.exit(f'a worker did not start: {line}{worker.stderr.read()}')
            distributed = _run(env, Path(folder) / 'dist', '--distributed')
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=30)
        runs = 12 * TRIALS
        same = _passed(Path(folder) / 'local') == _passed(Path(folder) / 'dist') == runs
        print(
            f'{runs} runs, model delay {DELAY_S}s: local -j 2 {local:.2f}s; {WORKERS} workers -j 2 {distributed:.2f}s'
        )
        print(f'both passed all {runs} runs: {same}')
        if not same:
            sys.exit('the distributed run did not pass as the local one did')
        print(_line('distributed_3_workers_vs_local', distributed, local, 0.5))


if __name__ == '__main__':
    main()
