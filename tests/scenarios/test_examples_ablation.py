"""`-examples` in the matrix: a cell without few-shot examples, beside cells that show the suite's."""

from __future__ import annotations

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from redis.asyncio import Redis

from tandem.agent.core.config import KnowledgeConfig, Settings
from tandem.agent.scenarios.results import Cell
from tandem.agent.scenarios.runner import parse_ablations, run_suite
from tandem.agent.scenarios.schema import load_scenario
from tandem.memory.examples import ExampleSet
from tandem.tools.registry import ToolsetPlugin
from tests.examples.conftest import qa
from tests.scenarios.conftest import WriteScenario
from tests.support.deps import scripted_backbone

SCENARIO = """\
name: refund-policy
turns:
  - user: How long do refunds take?
    expect:
      contains: [days]
"""


async def test_the_examples_ablation_runs_a_cell_without_the_examples_the_others_show(
    redis: Redis, settings: Settings, write_scenario: WriteScenario, plugins: dict[str, ToolsetPlugin]
) -> None:
    # The suite's tenant holds the set; each run has a tenant of its own, and reads the suite's.
    await ExampleSet(redis, tenant=settings.tenant).add(
        [qa('How long do refunds take?', 'Refunds take 5 business days.'), qa('Hi', 'Hello!')],
        config=KnowledgeConfig(),
    )
    seen: list[list[str]] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(
            [
                str(part.content)
                for message in messages
                if isinstance(message, ModelRequest)
                for part in message.parts
                if isinstance(part, UserPromptPart)
            ]
        )
        shown = len(seen[-1]) > 1
        return ModelResponse(parts=[TextPart('Refunds take 5 business days.' if shown else 'Soon.')])

    report = await run_suite(
        [load_scenario(write_scenario(SCENARIO))],
        settings=settings.model_copy(update={'examples': settings.examples.model_copy(update={'mode': 'retrieved'})}),
        redis=redis,
        backbones=[scripted_backbone(FunctionModel(answer))],
        ablations=parse_ablations(['examples']),
        plugins=plugins,
    )

    by_cell = {run.cell.ablation_label: run.status for run in report.runs}
    assert by_cell == {'full': 'passed', '-examples': 'failed'}
    assert sorted(map(tuple, seen)) == [
        ('How long do refunds take?',),
        ('How long do refunds take?', 'How long do refunds take?'),
    ]


def test_a_cell_that_adds_examples_says_so_in_its_label_and_slug() -> None:
    cell = Cell(backbone='base', prompt='short@1', ablation=('rag',), examples='train-1a2b3c4d')

    assert cell.label == 'base · short@1 · -rag +examples'
    assert cell.slug == 'backbone=base,prompt=short@1,ablate=rag,examples=train-1a2b3c4d'
    assert Cell(backbone='b').slug == 'backbone=b,prompt=-,ablate=none'
