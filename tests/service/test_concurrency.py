"""Many clients at once against real Redis: nothing lost, every history in order; and on Redis Cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tandem.agent.server.app import create_app
from tests.conftest import RedisTestServer
from tests.service.conftest import AUTH_A, MakeApp, asgi, service_settings
from tests.support.deps import scripted_backbone

SESSIONS = 100
TURNS = 5


def _echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answers at once with the last user message, and how many it has seen: the history's length."""
    request = messages[-1]
    assert isinstance(request, ModelRequest)
    text = next(part.content for part in request.parts if isinstance(part, UserPromptPart))
    seen = sum(1 for message in messages for part in message.parts if isinstance(part, UserPromptPart))
    return ModelResponse(parts=[TextPart(f'echo {text} (after {seen - 1})')])


async def test_100_concurrent_sessions_of_5_turns_lose_nothing_and_keep_order(make_app: MakeApp) -> None:
    app = make_app(FunctionModel(_echo), rate_limit_requests=0)
    started = time.perf_counter()
    async with asgi(app) as http:

        async def converse(n: int) -> list[str]:
            answers: list[str] = []
            for turn in range(TURNS):
                response = await http.post(
                    '/v1/chat/completions',
                    json={'model': 'scripted', 'messages': [{'role': 'user', 'content': f's{n} t{turn}'}]},
                    headers={**AUTH_A, 'X-Tandem-Session': f'session-{n}'},
                )
                assert response.status_code == 200, response.text
                answers.append(response.json()['choices'][0]['message']['content'])
            return answers

        answers = await asyncio.gather(*(converse(n) for n in range(SESSIONS)))
        histories = await asyncio.gather(
            *(http.get(f'/v1/sessions/session-{n}/messages', headers=AUTH_A) for n in range(SESSIONS))
        )
        listing = await http.get('/v1/sessions?limit=1000', headers=AUTH_A)
    elapsed = time.perf_counter() - started

    for n in range(SESSIONS):
        # Each turn saw exactly the turns before it: nothing lost, nothing from another session.
        assert answers[n] == [f'echo s{n} t{turn} (after {turn})' for turn in range(TURNS)]
        expected: list[tuple[str, str]] = []
        for turn in range(TURNS):
            expected += [('user', f's{n} t{turn}'), ('assistant', f'echo s{n} t{turn} (after {turn})')]
        assert [(m['role'], m['content']) for m in histories[n].json()['data']] == expected
    data = listing.json()['data']
    assert len(data) == SESSIONS and {s['message_count'] for s in data} == {2 * TURNS}
    assert elapsed < 30


async def test_the_service_runs_on_redis_cluster(
    redis_server_factory: Callable[..., RedisTestServer], tmp_path: Path
) -> None:
    cluster = redis_server_factory(cluster=True)
    settings = service_settings(tmp_path, cluster.url, rate_limit_requests=7)
    app = create_app(settings, backbones={'scripted': scripted_backbone(FunctionModel(_echo))})
    async with asgi(app) as http:
        for turn in range(6):
            response = await http.post(
                '/v1/chat/completions',
                json={'model': 'scripted', 'messages': [{'role': 'user', 'content': f't{turn}'}]},
                headers={**AUTH_A, 'X-Tandem-Session': 'clustered'},
            )
            assert response.status_code == 200, response.text
        stored = await http.get('/v1/sessions/clustered/messages', headers=AUTH_A)
        limited = await http.get('/v1/models', headers=AUTH_A)  # the 8th request: the Lua limiter works there too

    assert [m['content'] for m in stored.json()['data'] if m['role'] == 'user'] == [f't{turn}' for turn in range(6)]
    assert limited.status_code == 429
