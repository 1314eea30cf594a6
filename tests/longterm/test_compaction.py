"""History compaction through the real runtime: what the model is sent stays under budget; Redis keeps everything."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import (
    CompactionPart,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis

from tandem.agent.cli.transcript import render_transcript
from tandem.agent.turn.compaction import (
    HistoryCompactor,
    SummaryState,
    _fingerprint,  # pyright: ignore[reportPrivateUsage]
    count_message_tokens,
    load_summary,
)
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.run import run_turn
from tandem.memory.conversations import RedisConversationStore
from tandem.memory.facts import FactStore
from tandem.memory.keys import SessionKeys, session_summary_key
from tests.longterm.helpers import memory_deps
from tests.support.deps import make_deps

FILLER = 'The quick brown fox jumps over the lazy dog near the riverbank at dawn. ' * 5
BUDGET = {'compaction_tokens': 900, 'summary_tokens': 120}
SUMMARIZER = 'You keep the running summary'


@dataclass
class Conversation:
    """A model that answers turns at length and writes summaries when asked, recording both."""

    turns: list[list[ModelMessage]] = field(default_factory=list[list[ModelMessage]])
    summaries: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    """(instructions, conversation text) of each summarizer request."""
    fail_summaries: bool = False
    tool_every: int = 0
    remember_in: str | None = None
    """Call `remember` on the turn whose question starts with this."""

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if (info.instructions or '').startswith(SUMMARIZER):
            if self.fail_summaries:
                raise RuntimeError('summarizer down')
            text = str(messages[-1].parts[-1].content)  # type: ignore[union-attr]
            self.summaries.append((info.instructions or '', text))
            covered = ', '.join(re.findall(r'User: (question \d+)', text))
            return ModelResponse(parts=[TextPart(f'Summary {len(self.summaries)}: covers {covered}.')])
        self.turns.append(list(messages))
        last = messages[-1]
        number = len(self.turns)
        if self.tool_every and number % self.tool_every == 0 and isinstance(last.parts[-1], UserPromptPart):
            return ModelResponse(parts=[ToolCallPart('calculate', {'expression': f'{number}*2'})])
        asked = last.parts[-1]
        if self.remember_in and isinstance(asked, UserPromptPart) and str(asked.content).startswith(self.remember_in):
            return ModelResponse(parts=[ToolCallPart('remember', {'fact': 'The user likes teal.'})])
        return ModelResponse(parts=[TextPart(f'Answer {number}. {FILLER}')])


def _deps(redis: Redis, tmp_path: Path, model: Conversation, **memory: Any) -> Deps:
    return make_deps(redis, FunctionModel(model), home=tmp_path, memory={**BUDGET, **memory})


async def _chat(deps: Deps, turns: range) -> None:
    for n in turns:
        await run_turn(deps, f'question {n}: {FILLER}')


def _summarized_questions(text: str) -> list[int]:
    return [int(n) for n in re.findall(r'User: question (\d+)', text)]


async def test_the_model_is_sent_a_summary_and_recent_turns_within_budget(redis: Redis, tmp_path: Path) -> None:
    model = Conversation()
    deps = _deps(redis, tmp_path, model)

    await _chat(deps, range(12))

    sent = [count_message_tokens(messages) for messages in model.turns]
    assert max(sent) <= 900, sent
    last = model.turns[-1]
    assert isinstance(last[0], ModelRequest) and isinstance(last[0].parts[0], CompactionPart)
    assert (last[0].parts[0].content or '').startswith(f'Summary {len(model.summaries)}: covers')  # the latest
    # After the summary come whole turns (pydantic-ai sends the summary in the first turn's request),
    # the question in flight last.
    assert isinstance(last[0].parts[1], UserPromptPart)
    assert str(last[-1].parts[0].content).startswith('question 11:')  # type: ignore[union-attr]
    # Without compaction the same conversation would not have fit.
    stored = await deps.conversations.export_messages('s1', user='alice')
    assert count_message_tokens(stored[:-1]) > 2 * 900  # far over budget, yet the model saw <= 900


async def test_the_full_history_stays_in_redis_for_export(redis: Redis, tmp_path: Path) -> None:
    model = Conversation()
    deps = _deps(redis, tmp_path, model)

    await _chat(deps, range(12))

    stored = await deps.conversations.export_messages('s1', user='alice')
    assert len(stored) == 24
    assert [line[:16] for line in render_transcript(stored) if line.startswith('you:')] == [
        f'you: question {n}:'[:16] for n in range(12)
    ]
    assert not any(isinstance(part, CompactionPart) for message in stored for part in message.parts)


async def test_compaction_is_incremental_and_runs_in_bursts(redis: Redis, tmp_path: Path) -> None:
    model = Conversation()
    deps = _deps(redis, tmp_path, model)

    await _chat(deps, range(16))

    assert 2 <= len(model.summaries) < 8  # not one summarizing call per turn
    seen: list[int] = []
    for number, (instructions, text) in enumerate(model.summaries):
        questions = _summarized_questions(text)
        # Each call is sent only turns no earlier call summarized, in order, with no gap ...
        assert questions == list(range(len(seen), len(seen) + len(questions))), (seen, questions)
        seen += questions
        # ... and the previous summary, which stands for everything before them.
        if number:
            assert f'Summary {number}: covers' in instructions
        else:
            assert '<summary>' not in instructions
    state = await load_summary(redis, 'acme', 's1')
    assert state is not None and state.summary.startswith(f'Summary {len(model.summaries)}:')
    assert state.covered == 2 * (seen[-1] + 1)  # a request and a response per summarized turn


async def test_a_new_process_continues_from_the_stored_summary(redis: Redis, tmp_path: Path) -> None:
    model = Conversation()
    await _chat(_deps(redis, tmp_path, model), range(10))
    summaries = len(model.summaries)
    before = await load_summary(redis, 'acme', 's1')
    assert before is not None

    fresh = Conversation()
    await _chat(_deps(redis, tmp_path, fresh), range(10, 11))

    assert fresh.summaries == [] or _summarized_questions(fresh.summaries[0][1])[0] * 2 == before.covered
    first = fresh.turns[0][0]
    assert isinstance(first.parts[0], CompactionPart) and first.parts[0].content.startswith(f'Summary {summaries}')  # type: ignore[union-attr]


async def test_a_turn_reads_only_the_messages_the_summary_does_not_cover(redis: Redis, tmp_path: Path) -> None:
    model = Conversation()
    await _chat(_deps(redis, tmp_path, model), range(12))
    state = await load_summary(redis, 'acme', 's1')
    assert state is not None and state.turns == state.covered // 2
    stored = await RedisConversationStore(redis, tenant='acme').load_entries('s1', scope='alice')
    assert stored is not None
    # Drop what the summary stands for, but its last message: a turn that read any of it would fail.
    await redis.hdel(SessionKeys('acme', 's1').entries, *[entry.id for entry in stored[: state.covered - 1]])

    deps = _deps(redis, tmp_path, model)  # a new process: nothing held in memory
    before = len(model.turns)
    await _chat(deps, range(12, 16))

    assert deps.turn.history_start > 0
    for first, *_, question in model.turns[before:]:
        # Each request still starts with the summary, however little follows it, then whole turns.
        assert isinstance(first.parts[0], CompactionPart) and isinstance(first.parts[1], UserPromptPart)
        assert str(question.parts[0].content).startswith('question 1')  # type: ignore[union-attr]
    assert str(model.turns[-1][-1].parts[0].content).startswith('question 15:')  # type: ignore[union-attr]
    assert max(count_message_tokens(messages) for messages in model.turns) <= 900


async def test_a_loaded_window_that_fits_the_budget_is_still_sent_after_its_summary(
    redis: Redis, tmp_path: Path
) -> None:
    deps = _deps(redis, tmp_path, Conversation())
    deps.turn.history_start = 4  # as a turn that loaded past a summary of 5 messages
    last_summarized = ModelResponse(parts=[TextPart('Paris.')])
    asked = ModelRequest(parts=[UserPromptPart('And Rome?')])
    state = SummaryState(
        summary='The user asked about capitals.',
        covered=5,
        fingerprint=_fingerprint(last_summarized),
        updated_at=datetime.now(UTC),
        turns=2,
    )
    await redis.set(session_summary_key('acme', 's1'), state.model_dump_json())

    sent = await HistoryCompactor().compact(deps, deps.backbone.model, [last_summarized, asked])

    assert [type(part) for message in sent for part in message.parts] == [CompactionPart, UserPromptPart]


async def test_a_window_whose_summary_changed_meanwhile_sends_recent_turns_and_keeps_the_stored_summary(
    redis: Redis, tmp_path: Path
) -> None:
    model = Conversation()
    deps = _deps(redis, tmp_path, model)
    deps.turn.history_start = 4  # loaded past a summary that another process has since replaced
    window: list[ModelMessage] = [ModelResponse(parts=[TextPart('Paris.')])]
    for n in range(8):
        window += [
            ModelRequest(parts=[UserPromptPart(f'question {n}: {FILLER}')]),
            ModelResponse(parts=[TextPart(FILLER)]),
        ]
    window.append(ModelRequest(parts=[UserPromptPart('question 8: and Rome?')]))
    theirs = SummaryState(
        summary='Another process summarized more.',
        covered=40,
        fingerprint='0' * 32,
        updated_at=datetime.now(UTC),
        turns=20,
    ).model_dump_json()
    await redis.set(session_summary_key('acme', 's1'), theirs)

    sent = await HistoryCompactor().compact(deps, deps.backbone.model, window)

    assert model.summaries == []  # no summary of this window alone...
    assert await redis.get(session_summary_key('acme', 's1')) == theirs.encode()  # ...over the fuller one
    assert isinstance(sent[0], ModelRequest) and isinstance(sent[0].parts[0], UserPromptPart)  # whole turns
    assert sent[-1] is window[-1] and count_message_tokens(sent) <= 900


async def test_a_summary_stored_without_its_turn_count_still_serves_with_the_whole_history(
    redis: Redis, tmp_path: Path
) -> None:
    model = Conversation()
    await _chat(_deps(redis, tmp_path, model), range(12))
    state = await load_summary(redis, 'acme', 's1')
    assert state is not None
    await redis.set(session_summary_key('acme', 's1'), state.model_copy(update={'turns': None}).model_dump_json())

    deps = _deps(redis, tmp_path, model)
    await _chat(deps, range(12, 13))

    assert deps.turn.history_start == 0
    first = model.turns[-1][0]
    assert isinstance(first.parts[0], CompactionPart) and first.parts[0].content == state.summary


async def test_a_fact_remembered_late_in_a_compacted_session_names_its_turn(redis: Redis, tmp_path: Path) -> None:
    model = Conversation(remember_in='question 14:')
    deps = memory_deps(redis, FunctionModel(model), home=tmp_path, memory=BUDGET)

    await _chat(deps, range(16))

    assert deps.turn.history_start > 0
    [fact] = await FactStore(redis).list_facts('acme', 'alice')
    assert (fact.text, fact.turn) == ('The user likes teal.', 15)


async def test_cuts_never_split_a_tool_call_from_its_result(redis: Redis, tmp_path: Path) -> None:
    model = Conversation(tool_every=2)
    deps = make_deps(redis, FunctionModel(model), home=tmp_path, memory=BUDGET)

    await _chat(deps, range(12))

    for messages in model.turns:
        if isinstance(messages[0].parts[0], CompactionPart):
            assert isinstance(messages[0].parts[1], UserPromptPart)  # the summary, then a turn from its start
        calls = {p.tool_call_id for m in messages for p in m.parts if isinstance(p, ToolCallPart)}
        returns = {getattr(p, 'tool_call_id', None) for m in messages for p in m.parts if p.part_kind == 'tool-return'}
        assert returns <= calls  # every result sent has its call


async def test_a_failed_summary_still_keeps_the_turn_within_budget(redis: Redis, tmp_path: Path) -> None:
    model = Conversation(fail_summaries=True)
    deps = _deps(redis, tmp_path, model)

    await _chat(deps, range(8))

    assert max(count_message_tokens(messages) for messages in model.turns) <= 900
    assert await load_summary(redis, 'acme', 's1') is None
    assert len(await deps.conversations.export_messages('s1', user='alice')) == 16


async def test_a_summary_of_another_history_is_ignored(redis: Redis, tmp_path: Path) -> None:
    stale = SummaryState(
        summary='Summary of a deleted session.',
        covered=4,
        fingerprint='0' * 32,
        updated_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    await redis.set(session_summary_key('acme', 's1'), stale.model_dump_json())
    model = Conversation()

    await _chat(_deps(redis, tmp_path, model), range(8))

    assert all('deleted session' not in instructions for instructions, _ in model.summaries)
    assert _summarized_questions(model.summaries[0][1])[0] == 0
    assert not any('deleted session' in str(m.parts[0]) for turn in model.turns for m in turn)


async def test_compaction_can_be_turned_off(redis: Redis, tmp_path: Path) -> None:
    model = Conversation()
    deps = _deps(redis, tmp_path, model, compaction_tokens=None)

    await _chat(deps, range(8))

    assert model.summaries == []
    assert len(model.turns[-1]) == 15  # every stored message, and the new question


async def test_the_summary_expires_with_the_session(redis: Redis, tmp_path: Path) -> None:
    model = Conversation()
    deps = make_deps(redis, FunctionModel(model), home=tmp_path, memory=BUDGET, session_ttl_seconds=300)

    await _chat(deps, range(8))

    assert 0 < await redis.pttl(session_summary_key('acme', 's1')) <= 300_000


@pytest.mark.parametrize(
    ('settings', 'error'),
    [
        ({'compaction_tokens': 1000, 'summary_tokens': 600}, 'must not exceed compaction_tokens'),
        ({'compaction_tokens': 1000, 'compaction_keep_tokens': 950}, 'must not exceed compaction_tokens'),
        ({'compaction_tokens': 100}, 'greater than or equal to 200'),
    ],
)
def test_inconsistent_budgets_are_refused(tmp_path: Path, settings: dict[str, Any], error: str) -> None:
    from pydantic import ValidationError

    from tandem.agent.core.config import Settings

    with pytest.raises(ValidationError, match=error):
        Settings(home=tmp_path, memory=settings)  # type: ignore[arg-type]


async def test_deleting_a_session_deletes_its_summary(redis: Redis) -> None:
    from pydantic_ai.conversation import Conversation
    from pydantic_ai.messages import ModelRequest, UserPromptPart

    from tandem.memory.conversations import RedisConversationStore
    from tandem.memory.keys import session_summary_key

    store = RedisConversationStore(redis, tenant='acme')
    await store.save(
        Conversation(conversation_id='s9', messages=[ModelRequest(parts=[UserPromptPart('hi')])]), scope='u'
    )
    await redis.set(session_summary_key('acme', 's9'), b'summary')

    await store.delete('s9')

    assert await redis.exists(session_summary_key('acme', 's9')) == 0
