"""Start-up: `tandem --help` and `tandem --version` against `python -c "import pydantic_ai"`, measured in this run.

Run: `uv run python bench/startup.py` (or `make bench`). Ends with one `bench:` line per command.

A user pays start-up on every command, and the CLI needs pydantic-ai, Redis and httpx only inside the
commands that run a turn or touch Redis: the target is 0.3x the import of pydantic-ai alone.
Each figure is the fastest of `REPEAT` whole-process runs, interleaved so that load hits all alike.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPEAT = 9
TARGET = 0.3


def _seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    tandem = str(Path(sys.executable).with_name('tandem'))
    commands = {
        'baseline': [sys.executable, '-c', 'import pydantic_ai'],
        'cli_help': [tandem, '--help'],
        'cli_version': [tandem, '--version'],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(REPEAT):
        for name, argv in commands.items():
            samples[name].append(_seconds(argv))
    baseline = min(samples.pop('baseline'))
    for name, values in samples.items():
        value = min(values)
        ratio = value / baseline
        print(
            f'bench: {name} value={value:.3f}s baseline={baseline:.3f}s ratio={ratio:.2f} '
            f'target<={TARGET} {"PASS" if ratio <= TARGET else "FAIL"}'
        )


if __name__ == '__main__':
    main()
