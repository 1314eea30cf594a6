"""Scaling out, proven on a real 6-node Redis Cluster: every store, a failover mid-run, two servers on one session.

Users outgrow one Redis by moving to Redis Cluster and running several `tandem serve` replicas. Here
keys land on all three masters, a master fails over to its replica under running turns, and two
server processes take turns answering one conversation.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import openai
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tandem.agent.core.config import Settings
from tandem.agent.scenarios.runner import run_suite
from tandem.agent.scenarios.schema import load_scenarios
from tandem.agent.server.app import create_app
from tandem.agent.turn.run import run_turn
from tandem.memory.connection import connect
from tandem.memory.conversations import RedisConversationStore
from tandem.memory.facts import FactStore
from tandem.memory.keys import SessionKeys
from tandem.memory.knowledge.ingest import IngestOptions, Ingestor
from tandem.memory.knowledge.retrieval import Bm25Retriever
from tandem.memory.knowledge.store import KnowledgeBase
from tests.scenarios.conftest import STARTER, toolset_plugins
from tests.scenarios.scripted_backbone import scripted_backbone as scenario_backbone
from tests.service.conftest import AUTH_A, asgi, service_settings
from tests.support.cluster import RedisClusterTestBed
from tests.support.deps import make_deps, scripted_backbone
from tests.support.messages import user_prompts
from tests.support.served import served

ROOT = Path(__file__).resolve().parents[2]

RECOVERY_SECONDS = 5.0
"""How long a client may take to follow a master's slots to its promoted replica (the README says so)."""


def _echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    request = messages[-1]
    assert isinstance(request, ModelRequest)
    text = next(part.content for part in request.parts if isinstance(part, UserPromptPart))
    return ModelResponse(parts=[TextPart(f'echo {text}')])


async def test_sessions_facts_knowledge_rate_limits_and_scenarios_work_with_keys_on_all_three_masters(
    cluster: RedisClusterTestBed, tmp_path: Path
) -> None:
    client = await connect(cluster.url, home=tmp_path)
    try:
        for tenant in ('acme', 'beta', 'gamma'):
            for n in range(4):
                deps = make_deps(client, FunctionModel(_echo), home=tmp_path, tenant=tenant, session=f's{n}')
                assert (await run_turn(deps, f'{tenant} s{n}')).answer == f'echo {tenant} s{n}'
            listed = await RedisConversationStore(client, tenant=tenant).list_sessions(user='alice')
            assert sorted(session.id for session in listed) == ['s0', 's1', 's2', 's3']

        facts = FactStore(client)
        for user in ('ann', 'bob', 'cy', 'dee'):
            await facts.remember('acme', user, f'The user {user} likes green tea.')
            assert [fact.text for fact in await facts.recall('acme', user, 'tea')] == [
                f'The user {user} likes green tea.'
            ]

        kb = KnowledgeBase(client, tenant='acme', name='docs', user='bob')
        (tmp_path / 'docs').mkdir()
        (tmp_path / 'docs' / 'backups.md').write_text('# Backups\n\nSnapshots are taken every night at 02:00 UTC.\n')
        await Ingestor(kb, options=IngestOptions(chunk_tokens=64, chunk_overlap=8)).ingest([str(tmp_path / 'docs')])
        (best,) = await Bm25Retriever([kb]).search('when are snapshots taken', 1)
        assert 'every night' in best.text

        # Scenario runs each get a tenant of their own, and leave nothing behind, on every master.
        report = await run_suite(
            load_scenarios([STARTER]),
            settings=Settings(home=tmp_path / 'home'),
            redis=client,
            backbones=[scenario_backbone()],
            concurrency=4,
            plugins=toolset_plugins(),
        )
        assert report.passed
        assert [key async for key in client.scan_iter(match='tandem:{scn-*')] == []
    finally:
        await client.aclose()

    # The rate limiter's Lua script, through the HTTP service.
    app = create_app(
        service_settings(tmp_path, cluster.url, rate_limit_requests=3),
        backbones={'scripted': scripted_backbone(FunctionModel(_echo))},
    )
    async with asgi(app) as http:
        statuses = [(await http.get('/v1/models', headers=AUTH_A)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]

    counts = cluster.key_counts()
    assert len(counts) == 3 and all(count > 0 for count in counts.values()), counts


async def test_a_master_failing_over_mid_run_loses_no_acknowledged_turn(
    cluster: RedisClusterTestBed, tmp_path: Path
) -> None:
    sessions = [f's{n}' for n in range(6)]
    master = cluster.master_of(SessionKeys('acme', 's0').conv)
    acknowledged: dict[str, list[str]] = {session: [] for session in sessions}
    latencies: list[float] = []
    flowing = asyncio.Event()
    client = await connect(cluster.url, home=tmp_path)

    async def turns(session: str) -> None:
        for turn in range(12):
            deps = make_deps(client, FunctionModel(_echo), home=tmp_path, session=session)
            started = time.perf_counter()
            await run_turn(deps, f'{session} t{turn}')
            answered_at.append(time.perf_counter())
            latencies.append(answered_at[-1] - started)
            acknowledged[session].append(f'{session} t{turn}')
            if len(acknowledged['s0']) == 4:
                flowing.set()

    failed_over_at: list[float] = []
    answered_at: list[float] = []

    async def fail_over_once_turns_are_flowing() -> None:
        await flowing.wait()
        await asyncio.to_thread(cluster.fail_over, master)
        failed_over_at.append(time.perf_counter())

    try:
        await asyncio.gather(*(turns(session) for session in sessions), fail_over_once_turns_are_flowing())
        assert cluster.master_of(SessionKeys('acme', 's0').conv).port != master.port
        # Mid-run: turns were answered on both sides of the failover.
        assert sum(at > failed_over_at[0] for at in answered_at) >= 6, 'the failover came after the run'
        store = RedisConversationStore(await connect(cluster.url, home=tmp_path), tenant='acme')
        for session in sessions:
            loaded = await store.load(session)
            assert loaded is not None and user_prompts(loaded.messages) == acknowledged[session], session
    finally:
        await client.aclose()
    assert max(latencies) < RECOVERY_SECONDS, f'the slowest turn took {max(latencies):.3f}s'


def test_two_serve_processes_on_one_cluster_continue_one_conversation(
    cluster: RedisClusterTestBed, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(('TANDEM_', 'OPENAI_'))},
        'PYTHONPATH': str(ROOT),
        'TANDEM_HOME': str(tmp_path),
        'TANDEM_REDIS_URL': cluster.url,
        'TANDEM_TOOLS': 'calc',
        'TANDEM_API_KEYS': 'sk-cluster-test:acme',
    }

    def command(port: int) -> list[str]:
        code = f"from tandem.agent.cli.serve import serve; serve('127.0.0.1', {port}, workers=1, factory='tests.service.apps:echo_app')"
        return [sys.executable, '-c', code]

    with (
        served(command, env=env, cwd=tmp_path, ready_path='/readyz') as first,
        served(command, env=env, cwd=tmp_path, ready_path='/readyz') as second,
    ):
        answers: list[str] = []
        for turn in range(6):
            server = (first, second)[turn % 2]
            with openai.OpenAI(base_url=f'{server.base_url}/v1', api_key='sk-cluster-test', max_retries=0) as client:
                completion = client.chat.completions.create(
                    model='echo',
                    messages=[{'role': 'user', 'content': f't{turn}'}],
                    extra_headers={'X-Tandem-Session': 'shared'},
                )
            answers.append(completion.choices[0].message.content or '')

    # Each turn saw every earlier one, whichever process answered: the history lives in the cluster.
    assert [answer.split(' (turn ')[1].split(',')[0] for answer in answers] == [str(n) for n in range(1, 7)]
    workers = [answer.rsplit('worker ', 1)[1].rstrip(')') for answer in answers]
    assert len(set(workers)) == 2 and workers[0] != workers[1]
