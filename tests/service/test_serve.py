"""`tandem serve` for real: uvicorn worker processes sharing Redis, behind one port."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.served import served

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_workers_share_sessions_through_redis_and_stop_cleanly(redis_url: str, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(('TANDEM_', 'OPENAI_'))},
        'PYTHONPATH': str(ROOT),
        'TANDEM_HOME': str(tmp_path),
        'TANDEM_REDIS_URL': redis_url,
        'TANDEM_TOOLS': 'calc',
        'TANDEM_API_KEYS': 'sk-serve-test:acme',
    }

    def command(port: int) -> list[str]:
        code = f"from tandem.agent.cli.serve import serve; serve('127.0.0.1', {port}, workers=2, factory='tests.service.apps:echo_app')"
        return [sys.executable, '-c', code]

    with served(command, env=env, cwd=tmp_path, ready_path='/readyz') as server:
        answers: list[str] = []
        for turn in range(8):  # a new client, so a new connection, each time: any worker may answer
            client = openai.OpenAI(base_url=f'{server.base_url}/v1', api_key='sk-serve-test', max_retries=0)
            completion = client.chat.completions.create(
                model='echo',
                messages=[{'role': 'user', 'content': f't{turn}'}],
                extra_headers={'X-Tandem-Session': 'shared'},
            )
            answers.append(completion.choices[0].message.content or '')
            client.close()
        unauthenticated = httpx.get(f'{server.base_url}/v1/models', timeout=5)

    assert [answer.split(' (')[0] for answer in answers] == [f't{turn}' for turn in range(8)]
    # Each turn saw every earlier one, whichever worker served it: the history lives in Redis.
    assert [answer.split('(turn ')[1].split(',')[0] for answer in answers] == [str(n) for n in range(1, 9)]
    workers = {answer.rsplit('worker ', 1)[1].rstrip(')') for answer in answers}
    assert 1 <= len(workers) <= 2
    assert unauthenticated.status_code == 401
    assert server.returncode == 0
