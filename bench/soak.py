"""A soak: does `tandem serve` hold its memory flat under a long, steady load?

Run: `uv run python bench/soak.py [--turns 20000] [--warmup 1000] [--answer-words 150]`. Ends with
`bench:` lines.

Each service runs as 2 uvicorn worker processes against a loopback OpenAI-compatible model (its own
process, outside what is measured) and a real Redis (the embedded server). `CLIENTS` clients keep
one connection each and send, over `SESSIONS` reused sessions: 45% plain chats, 45% streamed
chats read to the end, and 10% streams the client cuts after the first event. The model answers
in `--answer-words` words, so Tandem's sessions reach the default compaction budget (12,000 tokens)
within the run and live past it, where a turn's cost no longer grows with its session.

- tandem: `tandem serve --workers 2`, with API-key auth, the rate limiter, sessions and tools on;
- baseline: a bare FastAPI app whose endpoint runs a pydantic-ai `Agent` on the same model, with
  no memory: what the HTTP stack, pydantic-ai and the openai client hold on their own.

The service's resident memory (the parent and its workers, from `/proc`) is sampled every
`SAMPLE_EVERY` turns. Growth is the least-squares slope of the samples after the warm-up, in MB
per 1,000 turns. Target: at most 0.5 MB per 1,000 turns for Tandem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIENTS = 8
SESSIONS = 60
SAMPLE_EVERY = 250
TARGET_MB_PER_1000 = 0.5
KEY = 'sk-soak-0123456789'
MODEL = 'tiny'

# The loopback model: the tests' scripted OpenAI-compatible server, keeping no request bodies. It answers
# at an assistant's length (sys.argv[1] words), so sessions grow to the compaction budget, and past it.
_MODEL_SERVER = """
import collections, sys, time
from tests.support.fake_openai import FakeOpenAI, Text, user_texts
SENTENCE = 'The answer takes the question step by step, as an assistant does'.split()
WORDS = ' '.join(SENTENCE[i % len(SENTENCE)] for i in range(int(sys.argv[1])))
def answer(body):
    return Text(f'You said: {user_texts(body)[-1][:40]}. {WORDS}.')
fake = FakeOpenAI(
    script=answer, models=['tiny'], requests=collections.deque(maxlen=0), request_times=collections.deque(maxlen=0)
)
print(fake.start().url, flush=True)
while True:
    time.sleep(3600)
"""


def baseline_app() -> Any:
    """The baseline: a bare FastAPI endpoint running a pydantic-ai `Agent` on the model, plain or streamed."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=os.environ['SOAK_MODEL_URL'], api_key='x'))
    agent = Agent(model, instructions='You are a helpful assistant.')
    app = FastAPI()

    @app.post('/v1/chat/completions')
    async def complete(body: dict[str, Any]) -> Any:  # pyright: ignore[reportUnusedFunction]
        prompt = body['messages'][-1]['content']
        if not body.get('stream'):
            result = await agent.run(prompt)
            message = {'role': 'assistant', 'content': result.output}
            return {'object': 'chat.completion', 'choices': [{'index': 0, 'message': message, 'finish_reason': 'stop'}]}

        async def chunks() -> AsyncIterator[str]:
            async with agent.run_stream(prompt) as run:
                async for delta in run.stream_text(delta=True):
                    yield f'data: {json.dumps({"choices": [{"index": 0, "delta": {"content": delta}}]})}\n\n'
            yield 'data: [DONE]\n\n'

        return StreamingResponse(chunks(), media_type='text/event-stream')

    @app.get('/healthz')
    async def healthz() -> dict[str, str]:  # pyright: ignore[reportUnusedFunction]
        return {'status': 'ok'}

    return app


# -- measuring -----------------------------------------------------------------------------------------


def tree_rss_mb(root: int) -> float:
    """The resident memory of process `root` and its descendants, in MB (Linux `/proc`)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text().rpartition(')')[2].split()
            status = (entry / 'status').read_text()
        except OSError:
            continue  # exited meanwhile
        pid = int(entry.name)
        children.setdefault(int(stat[1]), []).append(pid)
        for line in status.splitlines():
            if line.startswith('VmRSS:'):
                rss[pid] = int(line.split()[1])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total / 1024


def slope(points: list[tuple[int, float]]) -> float:
    """The least-squares slope of `(turns, MB)` points, in MB per 1,000 turns."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


@dataclass
class Soak:
    """One service's run: RSS samples by turns answered, and what went wrong."""

    name: str
    samples: list[tuple[int, float]] = field(default_factory=list[tuple[int, float]])
    errors: list[str] = field(default_factory=list[str])
    seconds: float = 0.0

    def growth(self, warmup: int) -> float:
        return slope([(turns, mb) for turns, mb in self.samples if turns >= warmup])


async def soak(name: str, port: int, pid: int, turns: int, *, sessions: bool, seed: int = 7) -> Soak:
    """`turns` turns from `CLIENTS` clients in the mix above, sampling the server's RSS as they go."""
    import httpx

    run = Soak(name)
    rng = random.Random(seed)
    sent = done = 0
    headers = {'Authorization': f'Bearer {KEY}'}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=f'http://127.0.0.1:{port}', timeout=60, limits=limits) as http:

        async def turn(index: int) -> None:
            body: dict[str, Any] = {'model': MODEL, 'messages': [{'role': 'user', 'content': f'hello {index}'}]}
            session = {'X-Tandem-Session': f'soak-{rng.randrange(SESSIONS)}'} if sessions else {}
            kind = rng.random()
            if kind < 0.45:
                response = await http.post('/v1/chat/completions', json=body, headers={**headers, **session})
                if response.status_code != 200:
                    run.errors.append(f'{response.status_code} {response.text[:200]}')
                return
            body['stream'] = True
            async with http.stream('POST', '/v1/chat/completions', json=body, headers={**headers, **session}) as r:
                if r.status_code != 200:
                    run.errors.append(f'{r.status_code} {(await r.aread())[:200]!r}')
                    return
                async for line in r.aiter_lines():
                    if kind >= 0.9 and line.startswith('data:'):
                        return  # cut after the first event: leaving the block drops the connection

        async def client() -> None:
            nonlocal sent, done
            while sent < turns:
                sent += 1
                await turn(sent)
                done += 1
                if done % SAMPLE_EVERY == 0:
                    run.samples.append((done, tree_rss_mb(pid)))
                    if done % (4 * SAMPLE_EVERY) == 0:
                        print(f'# {name}: {done} turns, {run.samples[-1][1]:.0f} MB', file=sys.stderr, flush=True)

        started = time.perf_counter()
        run.samples.append((0, tree_rss_mb(pid)))
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        run.seconds = time.perf_counter() - started
    return run


# -- processes -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def _start(code: str, env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, '-c', code.replace('PORT', str(port))], cwd=cwd, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'the server exited with {process.returncode}')
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=0.2) as sock:
                sock.sendall(b'GET /healthz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n')
                if sock.recv(64).startswith(b'HTTP/1.1 200'):
                    time.sleep(2.0)  # let the second worker finish starting too
                    return process, port
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError('the server did not start')


def _start_model(words: int) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    command = [sys.executable, '-c', _MODEL_SERVER, str(words)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, process.stdout.readline().decode().strip()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def line(name: str, value: float, baseline: float, target: float) -> str:
    ratio = value / baseline if baseline > 0 else float('nan')
    verdict = 'PASS' if value <= target else 'FAIL'
    return (
        f'bench: {name} value={value:.3f}MB/1kturns baseline={baseline:.3f}MB/1kturns ratio={ratio:.2f} '
        f'target=<={target}MB/1kturns {verdict}'
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--turns', type=int, default=20_000, help='turns per service')
    parser.add_argument('--warmup', type=int, default=1_000, help='turns before growth is measured')
    parser.add_argument('--answer-words', type=int, default=150, help='words in each answer of the model')
    args = parser.parse_args()
    if args.turns < args.warmup + 4 * SAMPLE_EVERY:
        parser.error(f'--turns must be at least --warmup + {4 * SAMPLE_EVERY}, for enough samples')

    from tandem.memory.redis_server import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        redis = EmbeddedRedis(home / 'redis')
        model, model_url = _start_model(args.answer_words)
        try:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(('TANDEM_', 'OPENAI_'))},
                'PYTHONPATH': str(ROOT),
                'TANDEM_HOME': str(home),
                'TANDEM_REDIS_URL': redis.ensure_running(),
                'TANDEM_API_KEYS': f'{KEY}:soak',
                'TANDEM_SERVER__RATE_LIMIT_REQUESTS': '100000000',
                'TANDEM_LOG_LEVEL': 'WARNING',
                'OPENAI_API_KEY': 'sk-loopback',
                'SOAK_MODEL_URL': model_url,
            }
            (home / 'tandem.toml').write_text(
                f'backbone = "{MODEL}"\ntools = ["calc", "clock"]\n\n'
                f'[backbones.{MODEL}]\nmodel = "openai-chat:{MODEL}"\nbase_url = "{model_url}"\n'
            )
            runs: list[Soak] = []
            for name, code, sessions in (
                (
                    'baseline',
                    "import uvicorn; uvicorn.run('bench.soak:baseline_app', factory=True, port=PORT, workers=2, "
                    "log_level='warning')",
                    False,
                ),
                ('tandem', "from tandem.agent.cli.serve import serve; serve('127.0.0.1', PORT, workers=2)", True),
            ):
                process, port = _start(code, env, home)
                try:
                    runs.append(await soak(name, port, process.pid, args.turns, sessions=sessions))
                finally:
                    _stop(process)
        finally:
            model.kill()
            redis.stop()

    baseline, tandem = runs
    for run in runs:
        first, last = run.samples[0][1], run.samples[-1][1]
        print(
            f'# {run.name}: {args.turns} turns in {run.seconds:.0f} s ({args.turns / run.seconds:.0f}/s), '
            f'{len(run.errors)} errors; RSS {first:.0f} -> {last:.0f} MB; samples (turns:MB) '
            + ' '.join(f'{turns}:{mb:.0f}' for turns, mb in run.samples[:: max(1, len(run.samples) // 12)])
        )
        for error in run.errors[:3]:
            print(f'#   {error}')
    print(line('soak_rss_growth', tandem.growth(args.warmup), baseline.growth(args.warmup), TARGET_MB_PER_1000))


if __name__ == '__main__':
    asyncio.run(main())
