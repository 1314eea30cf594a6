"""`tandem serve` for real: uvicorn worker processes sharing Redis, behind one port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_workers_share_sessions_through_redis_and_stop_cleanly(redis_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(('TANDEM_', 'OPENAI_'))},
        'PYTHONPATH': str(ROOT),
        'TANDEM_HOME': str(tmp_path),
        'TANDEM_REDIS_URL': redis_url,
        'TANDEM_TOOLS': 'calc',
        'TANDEM_API_KEYS': 'sk-serve-test:acme',
    }
    code = f"from agent.cli_serve import serve; serve('127.0.0.1', {port}, workers=2, factory='tests.service.apps:echo_app')"
    server = subprocess.Popen([sys.executable, '-c', code], cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    base = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + 120  # worker start-up is mostly imports: slow on a loaded machine
        while True:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ''
            try:
                if httpx.get(f'{base}/readyz', timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, 'tandem serve did not become ready'
            time.sleep(0.1)
        answers: list[str] = []
        for turn in range(8):  # a new client, so a new connection, each time: any worker may answer
            client = openai.OpenAI(base_url=f'{base}/v1', api_key='sk-serve-test', max_retries=0)
            completion = client.chat.completions.create(
                model='echo', messages=[{'role': 'user', 'content': f't{turn}'}], user='shared'
            )
            answers.append(completion.choices[0].message.content or '')
            client.close()
        unauthenticated = httpx.get(f'{base}/v1/models', timeout=5)
    finally:
        server.send_signal(signal.SIGTERM)
        returncode = server.wait(timeout=30)

    assert [answer.split(' (')[0] for answer in answers] == [f't{turn}' for turn in range(8)]
    # Each turn saw every earlier one, whichever worker served it: the history lives in Redis.
    assert [answer.split('(turn ')[1].split(',')[0] for answer in answers] == [str(n) for n in range(1, 9)]
    workers = {answer.rsplit('worker ', 1)[1].rstrip(')') for answer in answers}
    assert 1 <= len(workers) <= 2
    assert unauthenticated.status_code == 401
    assert returncode == 0
