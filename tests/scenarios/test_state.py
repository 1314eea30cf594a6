"""Other users and state: a scenario seeds other users of the tenant with their own facts and documents,
runs a turn as one of them (`as_user`), and checks what is stored afterwards (`expect.state`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis

from tandem.agent.core.config import Settings
from tandem.agent.scenarios.results import ScenarioRun
from tandem.agent.scenarios.runner import run_scenario
from tandem.agent.scenarios.schema import ScenarioFileError, load_scenario
from tandem.tools.registry import ToolsetPlugin
from tests.scenarios.conftest import WriteScenario
from tests.support.deps import scripted_backbone


def assistant(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Remembers what it is told to, searches documents when asked about them, else answers from its prompt."""
    last = messages[-1]
    if isinstance(last, ModelRequest) and any(isinstance(part, ToolReturnPart) for part in last.parts):
        returned = next(part for part in last.parts if isinstance(part, ToolReturnPart))
        return ModelResponse(parts=[TextPart(f'Done. {returned.model_response_str()}')])
    said = [part for part in last.parts if isinstance(part, UserPromptPart)] if isinstance(last, ModelRequest) else []
    text = str(said[-1].content) if said else ''
    if text.startswith('Remember that '):
        fact = 'The user ' + text.removeprefix('Remember that ').removeprefix('I ').rstrip('.') + '.'
        return ModelResponse(parts=[ToolCallPart('remember', {'fact': fact})])
    if 'documents' in text:
        return ModelResponse(parts=[ToolCallPart('search_knowledge', {'query': 'PIN vault code'})])
    return ModelResponse(parts=[TextPart(f'You said: {text}')])


async def _run(path: Path, redis: Redis, settings: Settings, plugins: dict[str, ToolsetPlugin]) -> ScenarioRun:
    return await run_scenario(
        load_scenario(path),
        scripted_backbone(FunctionModel(assistant)),
        settings=settings,
        redis=redis,
        plugins=plugins,
    )


TWO_USERS = """
name: two-users
setup:
  tools: [memory, knowledge]
  settings: {memory: {extract: false}}
  facts: [Ada likes tea.]
  documents: [{title: Handbook, text: Lunch is at noon.}]
  other_users:
    - id: bob
      facts: [Bob's vault code is 4321.]
      documents: [{title: Bob notes, text: The vault code is 4321. PIN 4321.}]
turns:
  - user: Remember that I moved to Paris.
    expect:
      tools: [remember]
      state: {facts_contain: [Paris, tea], facts_not_contain: ['4321'], documents: [handbook.md]}
  - user: What do my documents say about the vault?
    expect: {not_contains: ['4321']}
  - user: Remember that I sold the vault.
    as_user: bob
    expect:
      state: {facts_contain: ['4321', sold the vault], facts_not_contain: [Paris]}
  - user: hello
    expect:
      state: {user: bob, facts_not_contain: [Paris]}
"""


async def test_other_users_are_seeded_apart_and_a_turn_can_run_as_one_of_them(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    run = await _run(write_scenario(TWO_USERS), redis, settings, plugins)
    assert run.status == 'passed', [check.describe() for check in run.failures]
    labels = [check.label for check in run.checks if check.kind == 'state']
    assert labels == [
        "a fact contains 'Paris'",
        "a fact contains 'tea'",
        "no fact contains '4321'",
        "document 'handbook.md' exists",
        "a fact contains '4321'",
        "a fact contains 'sold the vault'",
        "no fact contains 'Paris'",
        "no fact of bob contains 'Paris'",
    ]
    searched = run.turns[1].tool_calls[0]
    assert searched.name == 'search_knowledge' and '4321' not in searched.result  # Bob's documents stay his
    assert (run.turns[2].as_user, run.turns[2].session) == ('bob', 'bob-s1') and run.turns[3].as_user is None
    assert set(run.messages) == {'s1', 'bob-s1'}


async def test_a_state_that_does_not_hold_says_what_is_stored(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        """
        name: forgetful
        setup: {tools: [memory], settings: {memory: {extract: false}}, facts: [Ada likes tea.]}
        turns:
          - user: hello
            expect: {state: {facts_contain: [Paris], facts_not_contain: [tea], documents: [missing.md]}}
        """
    )
    run = await _run(path, redis, settings, plugins)
    assert [(check.label, check.detail) for check in run.failures] == [
        ("a fact contains 'Paris'", 'stored: Ada likes tea.'),
        ("no fact contains 'tea'", 'stored: Ada likes tea.'),
        ("document 'missing.md' exists", 'the knowledge base holds: nothing'),
    ]


async def test_a_turn_as_an_unknown_user_is_refused_with_its_line(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        'name: who\nsetup: {other_users: [{id: bob}]}\nturns:\n  - user: hi\n  - user: hi\n    as_user: carol\n'
    )
    with pytest.raises(ScenarioFileError) as caught:
        await _run(path, redis, settings, plugins)
    assert f'{path}:6:' in str(caught.value)
    assert "'carol' is not a user of this scenario: add it to setup.other_users (there: bob)" in str(caught.value)
