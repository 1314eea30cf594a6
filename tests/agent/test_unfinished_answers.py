"""An answer the backbone did not finish fails its turn: nothing saved, one clear line, never a fake `stop`.

A stream cut mid-answer (no `finish_reason`, no `[DONE]`), an answer stopped at the output limit
(`length`) and one stopped by a content filter (`content_filter`) are not answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tandem.agent.backbones.base import backbone_from_config
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.errors import IncompleteAnswerError
from tandem.agent.turn.run import run_turn
from tandem.memory.connection import connect
from tandem.memory.conversations import RedisConversationStore
from tests.support.deps import make_deps
from tests.support.fake_openai import FakeOpenAI, Reply, Text
from tests.support.repl import drive_repl

UNFINISHED = [
    pytest.param(None, True, 'stopped mid-answer: its response ended without a finish reason', id='cut-stream'),
    pytest.param('length', True, "hit its output limit mid-answer (finish_reason 'length')", id='length-streamed'),
    pytest.param('length', False, "hit its output limit mid-answer (finish_reason 'length')", id='length-whole'),
    pytest.param('content_filter', True, "stopped the answer (finish_reason 'content_filter')", id='filter-streamed'),
    pytest.param('content_filter', False, "stopped the answer (finish_reason 'content_filter')", id='filter-whole'),
]


@pytest.mark.parametrize(('finish', 'stream', 'says'), UNFINISHED)
async def test_an_unfinished_answer_fails_the_turn_and_saves_nothing(
    redis: Redis, tmp_path: Path, finish: str | None, stream: bool, says: str
) -> None:
    with FakeOpenAI([Text('The answer is forty', finish=finish)], models=['tiny-chat']) as server:
        backbone = backbone_from_config('local', BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url))
        deps = make_deps(redis, backbone.model, home=tmp_path)
        deps.backbone = backbone
        with pytest.raises(IncompleteAnswerError) as caught:
            await run_turn(deps, 'What is six times seven?', on_event=(lambda event: None) if stream else None)

    message = str(caught.value)
    assert says in message and 'the turn was not saved' in message and '\n' not in message
    assert caught.value.finish_reason == finish
    assert await deps.conversations.read_record('s1') is None


async def test_a_whole_answer_without_a_finish_reason_is_still_an_answer(redis: Redis, tmp_path: Path) -> None:
    # Some servers (Ollama, say) leave the field out of whole responses; a cut one would not parse.
    with FakeOpenAI([Text('Forty-two.', finish=None)], models=['tiny-chat']) as server:
        backbone = backbone_from_config('local', BackboneConfig(model='openai-chat:tiny-chat', base_url=server.url))
        deps = make_deps(redis, backbone.model, home=tmp_path)
        deps.backbone = backbone
        result = await run_turn(deps, 'What is six times seven?')

    assert result.answer == 'Forty-two.'


def test_ask_on_a_cut_stream_exits_non_zero_with_one_line_and_saves_nothing(redis_url: str, tmp_path: Path) -> None:
    with FakeOpenAI([Text('Half an ans', finish=None)], models=['tiny-chat']) as server:
        done = subprocess.run(
            [sys.executable, '-m', 'tandem.agent', 'ask', '--model', 'openai-chat:tiny-chat', '--session', 'cut', 'Hi'],
            env={
                **{k: v for k, v in os.environ.items() if k not in ('OPENAI_API_KEY', 'TANDEM_CONFIG')},
                'OPENAI_BASE_URL': server.url,
                'TANDEM_REDIS_URL': redis_url,
                'TANDEM_HOME': str(tmp_path),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: backbone 'openai-chat:tiny-chat' stopped mid-answer")
    assert 'Traceback' not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_the_repl_says_a_cut_answer_was_not_saved_and_goes_on(redis_url: str, tmp_path: Path) -> None:
    replies: list[Reply] = [Text('Half an ans', finish=None), Text('A whole answer.')]
    with FakeOpenAI(replies, models=['m']) as server:
        settings = Settings(
            home=tmp_path,
            redis_url=redis_url,  # type: ignore[arg-type]
            backbones={'base': {'model': 'openai-chat:m', 'base_url': server.url}},  # type: ignore[dict-item]
            backbone='base',
        )
        screen = await drive_repl(settings, ['First question', 'Second question'])

    said = ' '.join(screen.split())
    assert "error: backbone 'base' stopped mid-answer" in said and 'the turn was not saved' in said
    assert 'A whole answer.' in screen
    redis = await connect(redis_url, home=tmp_path)
    sessions = await RedisConversationStore(redis, tenant='default').list_sessions()
    await redis.aclose()
    assert [session.message_count for session in sessions] == [2]  # the second turn only
