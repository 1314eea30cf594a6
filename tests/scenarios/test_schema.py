"""Scenario files: what they may say, and errors that point at the file, line and column of each mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from inline_snapshot import snapshot

from tandem.agent.scenarios.schema import (
    ScenarioFileError,
    discover_files,
    load_scenario,
    load_scenarios,
    select_scenarios,
)
from tests.scenarios.conftest import STARTER, WriteScenario


def _errors(path: Path) -> str:
    with pytest.raises(ScenarioFileError) as caught:
        load_scenario(path)
    return str(caught.value).replace(str(path), 'FILE').replace(str(path.parent), 'DIR')


def test_a_full_scenario_loads_with_every_shorthand_expanded(write_scenario: WriteScenario) -> None:
    docs = write_scenario('# Notes\n\nThe code is 42.\n', name='docs/notes.md')
    path = write_scenario(
        """
        name: full
        description: Everything the format has.
        tags: single-tag
        setup:
          prompt: assistant@1
          tools: calc, clock
          user: ada
          documents:
            - docs/notes.md
            - {title: Inline, text: 'Inline text.', kind: text}
          facts:
            - The user's name is Ada.
            - {text: Ada likes tea., source: inferred}
          settings: {retrieval: auto, limits: {requests: 4}}
        turns:
          - user: What is 6 * 7?
            expect:
              tools:
                - calculate
                - name: now
                  args: {timezone: UTC, format: {contains: iso}, count: 5, pattern: {regex: '^a+$'}}
              tools_not_called: remember
              contains: '42'
              not_contains: [forty]
              regex: '\\b42\\b'
              max_tool_calls: 2
              max_tokens: 5000
              judge: The answer is '42'.
          - user: Again, in a new session.
            new_session: true
            expect:
              judge: {rubric: Polite., backbone: 'openai:gpt-4.1-mini', include_input: false}
        """
    )
    scenario = load_scenario(path)
    assert scenario.path == path
    assert scenario.tags == ['single-tag']
    assert scenario.setup.tools == ['calc', 'clock']
    assert [document.path for document in scenario.setup.documents] == [docs.resolve(), None]
    assert [(fact.text, fact.source) for fact in scenario.setup.facts] == [
        ("The user's name is Ada.", 'user-stated'),
        ('Ada likes tea.', 'inferred'),
    ]
    first, second = scenario.turns
    assert [call.describe() for call in first.expect.tools] == [
        'calculate',
        "now(timezone='UTC', format containing 'iso', count=5, pattern=~/^a+$/)",
    ]
    assert first.expect.tools_not_called == ['remember']
    assert first.expect.contains == ['42'] and [p.pattern for p in first.expect.regex] == ['\\b42\\b']
    assert first.expect.judge is not None and first.expect.judge.rubric == "The answer is '42'."
    assert first.expect.judge.include_input and first.expect.judge.backbone is None
    assert second.new_session and second.expect.judge is not None
    assert second.expect.judge.backbone == 'openai:gpt-4.1-mini' and not second.expect.judge.include_input
    judge_line = next(n for n, line in enumerate(path.read_text().splitlines(), 1) if 'rubric: Polite.' in line)
    assert scenario.where('turns', 1, 'expect', 'judge') == f'{path}:{judge_line}'


def test_every_mistake_is_reported_at_once_with_its_line_and_column(write_scenario: WriteScenario) -> None:
    path = write_scenario(
        """
        name: broken
        tags: [ok, 'not ok']
        setup:
          tools: [calc]
          prompt: 3
          settings:
            limits: {requests: many}
            tenant: other
            retreival: auto
          facts: [{text: ''}]
          documents: [missing.md, {path: x.md, text: both}]
        turns:
          - user: What is 17 * 23?
            expect:
              tools:
                - name: calculate
                  args: {expression: {regex: '17('}}
              max_tool_call: 1
              contains: [1, 2]
          - user: ''
            new_session: maybe
            expect:
              max_tokens: lots
              judge: {backbone: x}
          - expect: {}
        """
    )
    assert _errors(path) == snapshot("""\
FILE:2:12: tags[1]: invalid tag 'not ok': use letters, digits, _, . or - (at most 64)
FILE:5:3: setup.prompt: Input should be a valid string (got 3)
FILE:7:14: setup.settings.limits.requests: Input should be a valid integer, unable to parse string as an integer (got 'many')
FILE:8:5: setup.settings.tenant: cannot be set per scenario: every scenario run gets its own tenant
FILE:9:5: setup.settings.retreival: unknown setting; did you mean 'retrieval'?
FILE:10:12: setup.facts[0].text: String should have at least 1 character (got '')
FILE:11:15: setup.documents[0]: no such file: missing.md (paths are relative to the scenario file, in DIR)
FILE:11:27: setup.documents[1]: give a document either a `path` or inline `text`
FILE:17:31: turns[0].expect.tools[0].args.expression.regex: invalid regular expression '17(': missing ), unterminated subpattern at position 2
FILE:18:7: turns[0].expect.max_tool_call: unknown key; did you mean 'max_tool_calls'?
FILE:19:18: turns[0].expect.contains[0]: Input should be a valid string (got 1)
FILE:19:21: turns[0].expect.contains[1]: Input should be a valid string (got 2)
FILE:20:5: turns[1].user: String should have at least 1 character (got '')
FILE:21:5: turns[1].new_session: Input should be a valid boolean, unable to interpret input (got 'maybe')
FILE:23:7: turns[1].expect.max_tokens: Input should be a valid integer, unable to parse string as an integer (got 'lots')
FILE:24:7: turns[1].expect.judge.rubric: required, but missing
FILE:25:5: turns[2].user: required, but missing\
""")


def test_yaml_syntax_errors_and_duplicate_keys_point_at_their_line(write_scenario: WriteScenario) -> None:
    assert _errors(write_scenario('name: a\nturns: [\n', name='syntax.yaml')) == snapshot(
        "FILE:3:1: YAML syntax: expected the node content, but found '<stream end>'"
    )
    duplicate = write_scenario(
        """
        name: a
        turns:
          - user: hi
            expect: {contains: a, contains: b}
        name: b
        """,
        name='duplicate.yaml',
    )
    assert _errors(duplicate) == snapshot("""\
FILE:4:27: turns[0].expect.contains: duplicate key 'contains' (first written on line 4)
FILE:5:1: name: duplicate key 'name' (first written on line 1)\
""")
    two = write_scenario('name: a\nturns: [{user: hi}]\n---\nname: b\n', name='two.yaml')
    assert _errors(two) == snapshot(
        'FILE:3:1: YAML syntax: one scenario per file: remove the second document (the `---` line)'
    )
    assert _errors(write_scenario('- just\n- a list\n', name='list.yaml')) == snapshot(
        'FILE:1:1: a scenario file is a mapping with name, setup and turns'
    )


def test_paths_are_searched_and_duplicate_names_across_files_are_refused(write_scenario: WriteScenario) -> None:
    first = write_scenario('name: same\nturns: [{user: a}]\n', name='a.yaml')
    second = write_scenario('name: same\nturns: [{user: b}]\n', name='nested/b.yml')
    write_scenario('not a scenario', name='notes.txt')
    assert discover_files([first.parent]) == [first, second]
    with pytest.raises(ScenarioFileError) as caught:
        load_scenarios([first.parent])
    assert str(caught.value) == f'{second}:1:1: name: another scenario has this name: {first}:1'
    with pytest.raises(ScenarioFileError, match=re.escape('no such file or directory')):
        discover_files([first.parent / 'nope'])
    empty = first.parent / 'empty'
    empty.mkdir()
    with pytest.raises(ScenarioFileError, match=re.escape('no scenario files (*.yaml, *.yml) in this directory')):
        discover_files([empty])


def test_k_selects_by_tag_or_name() -> None:
    scenarios = load_scenarios([STARTER])
    assert [s.name for s in select_scenarios(scenarios, ['memory'])] == [
        'memory-across-sessions',
        'prompt-injection',
        'recall-tool',
        'seeded-facts',
    ]
    assert [s.name for s in select_scenarios(scenarios, ['WEB', 'clock'])] == [
        'clock',
        'mixed-tools',
        'web-fetch',
        'web-search',
    ]
    assert select_scenarios(scenarios, []) == scenarios


def test_the_starter_suite_covers_what_the_issue_asks_for() -> None:
    scenarios = load_scenarios([STARTER])
    assert len(scenarios) >= 8
    expected = {name for s in scenarios for turn in s.turns for name in [c.name for c in turn.expect.tools]}
    assert {'calculate', 'now', 'web_search', 'web_fetch', 'search_knowledge', 'remember', 'recall'} <= expected
    assert any(turn.new_session for s in scenarios for turn in s.turns)
    assert any(s.setup.documents for s in scenarios) and any(s.setup.facts for s in scenarios)
    assert any('remember' in turn.expect.tools_not_called for s in scenarios for turn in s.turns)
    assert any(turn.expect.judge is not None for s in scenarios for turn in s.turns)
    assert any(turn.expect.max_tool_calls == 0 for s in scenarios for turn in s.turns)
