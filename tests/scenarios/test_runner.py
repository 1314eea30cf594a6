"""The runner against scripted backbones: passes, failures, errors, ablations, isolation and clean-up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from dirty_equals import IsStr
from inline_snapshot import snapshot
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis

from tandem.agent.core.config import Settings
from tandem.agent.core.errors import TandemError
from tandem.agent.scenarios.isolation import ScenarioSetupError, count_namespace, delete_namespace, seed_scenario
from tandem.agent.scenarios.results import ScenarioRun
from tandem.agent.scenarios.runner import (
    RunStarted,
    Step,
    TurnFinished,
    TurnStarted,
    build_matrix,
    parse_ablations,
    run_scenario,
    run_suite,
)
from tandem.agent.scenarios.schema import Scenario, ScenarioFileError, load_scenario, load_scenarios
from tandem.agent.turn.deps import Deps
from tandem.tools.registry import ToolsetPlugin
from tests.scenarios.conftest import STARTER, WriteScenario
from tests.scenarios.scripted_backbone import scripted_backbone
from tests.support.deps import scripted_backbone as backbone_of
from tests.support.scripted import call, scripted_model


async def _tandem_keys(redis: Redis) -> list[bytes]:
    return [key async for key in redis.scan_iter(match='tandem:*')]


def test_the_matrix_is_backbone_by_prompt_by_ablation() -> None:
    assert parse_ablations([]) == [()]
    assert parse_ablations(['rag,memory', 'tools', 'rag+memory', 'memory+rag', 'none']) == [
        (),
        ('rag',),
        ('memory',),
        ('tools',),
        ('memory', 'rag'),
    ]
    with pytest.raises(TandemError, match="unknown ablation 'prompts': --ablate takes rag, memory, tools"):
        parse_ablations(['rag,prompts'])
    cells = build_matrix(['a', 'b'], ['p@1', 'p@2'], [(), ('rag',)])
    assert [cell.label for cell in cells] == [
        'a · p@1 · full',
        'a · p@1 · -rag',
        'a · p@2 · full',
        'a · p@2 · -rag',
        'b · p@1 · full',
        'b · p@1 · -rag',
        'b · p@2 · full',
        'b · p@2 · -rag',
    ]
    assert cells[1].slug == 'backbone=a,prompt=p@1,ablate=rag'


async def test_every_expectation_is_a_check_and_failures_say_why(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        """
        name: picky
        setup: {tools: [calc]}
        turns:
          - user: What is 17 * 23?
            expect:
              tools:
                - name: calculate
                  args: {expression: {regex: '17\\s*\\*\\s*23'}}
                - now
              tools_not_called: [calculate]
              contains: ['391', 'answer']
              not_contains: ['40']
              regex: ['\\d+', '^Nope']
              max_tool_calls: 0
              max_tokens: 1
        """
    )
    model, _ = scripted_model(call('calculate', expression='17+23'), 'The answer is 40.')
    run = await run_scenario(load_scenario(path), backbone_of(model), settings=settings, redis=redis, plugins=plugins)
    assert run.status == 'failed' and run.error is None
    assert [(check.label, check.passed, check.detail) for check in run.checks] == snapshot(
        [
            (
                'calls calculate(expression=~/17\\s*\\*\\s*23/)',
                False,
                "called with other arguments: calculate(expression='17+23')",
            ),
            ('calls now', False, "not called; the calls were: calculate(expression='17+23')"),
            ('does not call calculate', False, "called: calculate(expression='17+23')"),
            ("contains '391'", False, "the answer was 'The answer is 40.'"),
            ("contains 'answer'", True, ''),
            ("does not contain '40'", False, "found in 'The answer is 40.'"),
            ('matches /\\d+/', True, ''),
            ('matches /^Nope/', False, "the answer was 'The answer is 40.'"),
            ('at most 0 tool calls', False, "1 call: calculate(expression='17+23')"),
            ('at most 1 tokens', False, IsStr(regex=r'\d{2,} tokens')),
        ]
    )
    turn = run.turns[0]
    assert (turn.answer, turn.requests, [c.describe() for c in turn.tool_calls]) == (
        'The answer is 40.',
        2,
        ["calculate(expression='17+23')"],
    )
    assert list(run.messages) == ['s1'] and len(run.messages['s1']) == 4
    assert await _tandem_keys(redis) == []


async def test_a_backbone_error_stops_the_run_as_an_error_and_its_namespace_is_deleted(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario('name: down\nturns: [{user: one}, {user: two}]\n')
    calls: list[int] = []

    def failing(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(1)
        if len(calls) > 1:
            raise ModelHTTPError(503, 'tiny', {'error': 'overloaded'})
        return ModelResponse(parts=[TextPart('first answer')])

    run = await run_scenario(
        load_scenario(path),
        backbone_of(FunctionModel(failing), 'flaky'),
        settings=settings,
        redis=redis,
        plugins=plugins,
    )
    assert run.status == 'error'
    assert run.error == "backbone 'flaky' answered HTTP 503: {'error': 'overloaded'}"
    # The transcript up to the error is kept: the turn before it, and the turn that stopped, with why.
    assert [(turn.user, turn.answer, turn.error) for turn in run.turns] == [
        ('one', 'first answer', None),
        ('two', '', "backbone 'flaky' answered HTTP 503: {'error': 'overloaded'}"),
    ]
    assert list(run.messages) == ['s1'] and len(run.messages['s1']) == 2  # and so is its transcript
    assert await _tandem_keys(redis) == []


async def test_a_broken_run_does_not_stop_the_others(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    write_scenario('name: fine\nturns: [{user: hi, expect: {contains: tandem}}]\n', name='fine.yaml')
    write_scenario('name: crashes\ntags: [boom]\nturns: [{user: hi}]\n', name='crash.yaml')
    write_scenario('name: refused\ntags: [setup]\nturns: [{user: hi}]\n', name='refused.yaml')
    scenarios = load_scenarios([write_scenario('name: z\nturns: [{user: z}]\n', name='z.yaml').parent])

    async def seed(deps: Deps, scenario: Scenario, ablated: frozenset[str]) -> None:
        await seed_scenario(deps, scenario, ablated)
        await deps.redis.set(f'tandem:{{{deps.identity.tenant}}}:probe', b'1')  # something to clean up
        if 'boom' in scenario.tags:
            raise RuntimeError('a bug in a seeder')
        if 'setup' in scenario.tags:
            raise ScenarioSetupError('the setup cannot be seeded')

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart('I am Tandem.')])

    report = await run_suite(
        scenarios,
        settings=settings,
        redis=redis,
        backbones=[backbone_of(FunctionModel(answer))],
        seed=seed,
        plugins=plugins,
    )
    assert {run.scenario: (run.status, run.error) for run in report.runs} == {
        'crashes': ('error', 'RuntimeError: a bug in a seeder'),
        'fine': ('passed', None),
        'refused': ('error', 'the setup cannot be seeded'),
        'z': ('passed', None),
    }
    assert not report.passed
    assert (report.cells[0].passed, report.cells[0].errors) == (2, 2)
    assert await _tandem_keys(redis) == []


async def test_a_suite_that_cannot_run_is_refused_before_any_run_with_every_line(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        """
        name: wrong-names
        setup:
          prompt: nope@1
          tools: [calc, calculator]
        turns:
          - user: hi
            expect:
              judge: {rubric: polite, backbone: no-such-judge}
        """
    )
    model, script = scripted_model()
    with pytest.raises(ScenarioFileError) as caught:
        await run_suite(
            [load_scenario(path)], settings=settings, redis=redis, backbones=[backbone_of(model)], plugins=plugins
        )
    assert str(caught.value).replace(str(path), 'FILE').splitlines() == [
        IsStr(regex=r"FILE:3:3: setup\.prompt: unknown prompt 'nope': choose one of assistant, .*short.*"),
        IsStr(regex=r"FILE:4:17: setup\.tools\[1\]: Unknown tool plugin 'calculator'\. Known: calc, clock, .*"),
        "FILE:8:31: turns[0].expect.judge.backbone: unknown judge backbone 'no-such-judge'",
    ]

    assert script.seen == [] and await _tandem_keys(redis) == []
    with pytest.raises(TandemError, match='two backbones are called the same: x, x'):
        await run_suite(
            [], settings=settings, redis=redis, backbones=[backbone_of(model, 'x'), backbone_of(model, 'x')]
        )
    with pytest.raises(TandemError, match='--concurrency must be at least 1'):
        await run_suite([], settings=settings, redis=redis, backbones=[backbone_of(model)], concurrency=0)


async def test_each_ablation_turns_its_ingredient_off(
    redis: Redis, settings: Settings, plugins: dict[str, ToolsetPlugin]
) -> None:
    scenarios = [
        s for s in load_scenarios([STARTER]) if s.name in ('seeded-facts', 'knowledge-citations', 'calculator')
    ]
    started: dict[tuple[str, str], list[str]] = {}

    def watch(step: Step) -> None:
        if isinstance(step, RunStarted):
            started[(step.scenario.name, step.cell.ablation_label)] = step.tools

    report = await run_suite(
        scenarios,
        settings=settings,
        redis=redis,
        backbones=[scripted_backbone()],
        ablations=parse_ablations(['rag,memory,tools']),
        plugins=plugins,
        on_step=watch,
    )
    outcome = {(run.scenario, run.cell.ablation_label): run.status for run in report.runs}
    assert outcome == {
        ('calculator', 'full'): 'passed',
        ('calculator', '-rag'): 'passed',
        ('calculator', '-memory'): 'passed',
        ('calculator', '-tools'): 'failed',
        ('knowledge-citations', 'full'): 'passed',
        ('knowledge-citations', '-rag'): 'failed',
        ('knowledge-citations', '-memory'): 'passed',
        ('knowledge-citations', '-tools'): 'failed',
        ('seeded-facts', 'full'): 'passed',
        ('seeded-facts', '-rag'): 'passed',
        ('seeded-facts', '-memory'): 'failed',
        # Facts are recalled into the prompt every turn: turning the tools off does not hide them.
        ('seeded-facts', '-tools'): 'passed',
    }
    assert started[('knowledge-citations', 'full')] == ['knowledge']
    assert started[('knowledge-citations', '-rag')] == []
    assert started[('seeded-facts', '-memory')] == []
    assert started[('calculator', '-tools')] == []
    assert [summary.pass_rate for summary in report.cells] == [1.0, 2 / 3, 2 / 3, 1 / 3]
    assert await _tandem_keys(redis) == []


async def test_scenario_settings_apply_to_that_scenario_only(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    limited = write_scenario(
        'name: limited\nsetup: {tools: [calc], settings: {limits: {requests: 1}}}\nturns: [{user: "What is 2 * 3?"}]\n',
        name='limited.yaml',
    )
    free = write_scenario('name: free\nsetup: {tools: [calc]}\nturns: [{user: "What is 2 * 3?"}]\n', name='free.yaml')
    report = await run_suite(
        [load_scenario(limited), load_scenario(free)],
        settings=settings,
        redis=redis,
        backbones=[scripted_backbone()],
        plugins=plugins,
    )
    by_name = {run.scenario: run for run in report.runs}
    assert by_name['limited'].status == 'error'
    assert by_name['limited'].error is not None and by_name['limited'].error.startswith('turn stopped and not saved')
    assert by_name['free'].status == 'passed' and by_name['free'].turns[0].answer.endswith('the answer is 6.')


def _isolation_suite(write_scenario: WriteScenario, copies: int) -> list[Scenario]:
    """Scenarios that all use the same user, sessions, document name and fact wording, but other values."""
    scenarios: list[Scenario] = []
    for word, code, team, other_word, other_code, other_team in (
        ('apple', '1111', 'red', 'banana', '2222', 'blue'),
        ('banana', '2222', 'blue', 'apple', '1111', 'red'),
    ):
        for copy in range(copies):
            path = write_scenario(
                f"""
                name: {word}-{copy}
                setup:
                  tools: [knowledge, memory]
                  facts: ["The user's code word is {word}."]
                  documents:
                    - {{title: Locker note, text: 'The locker code is {code}.'}}
                turns:
                  - user: What is my code word?
                    expect: {{contains: {word}, not_contains: {other_word}}}
                  - user: According to my documents, what is the locker code?
                    expect: {{contains: '{code}', not_contains: '{other_code}'}}
                  - user: Please remember that my team is {team}.
                    expect: {{tools: [remember]}}
                  - user: Which team am I on?
                    new_session: true
                    expect: {{contains: {team}, not_contains: {other_team}}}
                """,
                name=f'{word}-{copy}.yaml',
            )
            scenarios.append(load_scenario(path))
    return scenarios


async def test_runs_in_parallel_never_see_each_other_and_leave_nothing_behind(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    scenarios = _isolation_suite(write_scenario, copies=4)
    in_flight = 0
    most_in_flight = 0
    keys_while_running: dict[str, int] = {}
    tenants: dict[str, str] = {}
    tenant_of_task: dict[object, str] = {}  # each run is its own task: the steps it emits come from it

    async def watch(step: Step) -> None:
        nonlocal in_flight, most_in_flight
        if isinstance(step, RunStarted):
            tenants[step.scenario.name] = tenant_of_task[asyncio.current_task()] = step.tenant
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
        elif isinstance(step, TurnStarted):
            await asyncio.sleep(0.01)  # let the other runs interleave with this one
        elif isinstance(step, TurnFinished) and step.outcome.index == 4:
            tenant = tenant_of_task[asyncio.current_task()]
            keys_while_running[tenant] = await count_namespace(redis, tenant)
            in_flight -= 1

    report = await run_suite(
        scenarios,
        settings=settings,
        redis=redis,
        backbones=[scripted_backbone()],
        concurrency=4,
        plugins=plugins,
        on_step=watch,
    )
    assert [
        (run.scenario, run.status, [c.describe() for c in run.failures])
        for run in report.runs
        if run.status != 'passed'
    ] == []
    assert most_in_flight == 4
    assert len(set(tenants.values())) == len(scenarios) == 8
    assert len(keys_while_running) == 8 and all(count > 0 for count in keys_while_running.values())
    assert await _tandem_keys(redis) == []
    # Same user, same session ids, same document source in every run: only the tenant told them apart.
    assert {run.turns[0].user for run in report.runs} == {'What is my code word?'}
    assert {tuple(run.messages) for run in report.runs} == {('s1', 's2')}


async def test_deleting_a_namespace_spares_tenants_whose_id_it_prefixes(redis: Redis) -> None:
    for tenant in ('scn-a', 'scn-ab', 'scn-a.b'):
        await redis.set(f'tandem:{{{tenant}}}:sessions', b'x')
        await redis.set(f'tandem:{{{tenant}:s1}}:conv', b'x')
        await redis.set(f'tandem:{{{tenant}:user:u}}:facts', b'x')
    assert await count_namespace(redis, 'scn-a') == 3
    assert await delete_namespace(redis, 'scn-a') == 3
    assert sorted(await _tandem_keys(redis)) == sorted(
        key.encode()
        for tenant in ('scn-ab', 'scn-a.b')
        for key in (
            f'tandem:{{{tenant}}}:sessions',
            f'tandem:{{{tenant}:s1}}:conv',
            f'tandem:{{{tenant}:user:u}}:facts',
        )
    )


async def test_a_cancelled_suite_still_deletes_the_namespaces_of_its_runs(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario("name: slow\nsetup: {facts: ['The user likes tea.'], tools: [memory]}\nturns: [{user: hi}]\n")
    entered = asyncio.Event()

    async def hang(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        entered.set()
        await asyncio.sleep(60)
        raise AssertionError('not reached')

    task = asyncio.ensure_future(
        run_suite(
            [load_scenario(path)],
            settings=settings,
            redis=redis,
            backbones=[backbone_of(FunctionModel(hang))],
            plugins=plugins,
        )
    )
    await asyncio.wait_for(entered.wait(), 10)
    assert await _tandem_keys(redis) != []  # the seeded fact
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _tandem_keys(redis) == []


async def test_a_rubric_is_judged_by_its_judge_with_the_reason_kept(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario(
        """
        name: judged
        turns:
          - user: Who are you?
            expect:
              judge: The answer says the assistant is 'Tandem' and never says 'Sorry'.
          - user: Who are you, really?
            expect:
              judge: {rubric: "The answer mentions 'pirates'.", include_input: false}
        """
    )
    seen: list[str] = []

    def judge(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        from tests.scenarios.scripted_backbone import policy

        seen.append(str(messages[-1].parts[-1].content))  # type: ignore[union-attr]
        return policy(messages, info)

    judge_backbone = backbone_of(FunctionModel(judge), 'judge')
    run = await run_scenario(
        load_scenario(path), scripted_backbone(), settings=settings, redis=redis, judge=judge_backbone, plugins=plugins
    )
    assert [(check.label, check.passed, check.detail) for check in run.checks] == snapshot(
        [
            (
                "judge: The answer says the assistant is 'Tandem' and never says 'Sorry'.",
                True,
                "contains 'Tandem'; does not contain 'Sorry'",
            ),
            ("judge: The answer mentions 'pirates'.", False, "does not contain 'pirates' (wrong)"),
        ]
    )
    assert '<Input>\nWho are you?\n</Input>' in seen[0]
    assert '<Input>' not in seen[1]  # include_input: false


async def test_run_scenario_reports_a_stable_record_of_what_ran(
    redis: Redis, settings: Settings, plugins: dict[str, ToolsetPlugin]
) -> None:
    scenario = next(s for s in load_scenarios([STARTER]) if s.name == 'memory-across-sessions')
    steps: list[Any] = []
    run: ScenarioRun = await run_scenario(
        scenario, scripted_backbone(), settings=settings, redis=redis, plugins=plugins, on_step=steps.append
    )
    assert run.status == 'passed'
    assert (run.scenario, run.file, run.tags, run.prompt) == (
        'memory-across-sessions',
        str(STARTER / 'memory_across_sessions.yaml'),
        ['memory'],
        'assistant@1',
    )
    assert [(turn.index, turn.session) for turn in run.turns] == [(1, 's1'), (2, 's2')]
    kinds = [type(step).__name__ for step in steps]
    assert kinds[:3] == ['RunStarted', 'TurnStarted', 'ToolCallStarted']
    assert kinds.count('TurnFinished') == 2 and 'TextDelta' in kinds
    assert run.tenant.startswith('scn-') and len(run.tenant) == 20


async def test_scenario_settings_that_clash_with_the_runs_are_an_error_pointing_at_them(
    redis: Redis, tmp_path: Path, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    path = write_scenario('name: clash\nsetup:\n  settings:\n    knowledge: {chunk_overlap: 40}\nturns: [{user: hi}]\n')
    suite_settings = Settings(home=tmp_path / 'home', knowledge={'chunk_tokens': 64, 'chunk_overlap': 8})  # type: ignore[arg-type]
    model, script = scripted_model()
    run = await run_scenario(
        load_scenario(path), backbone_of(model), settings=suite_settings, redis=redis, plugins=plugins
    )
    assert run.status == 'error' and script.seen == []
    assert run.error == (
        f"{path}:3: these settings are invalid with the run's: knowledge: "
        'Value error, knowledge.chunk_overlap must be less than half of knowledge.chunk_tokens'
    )
