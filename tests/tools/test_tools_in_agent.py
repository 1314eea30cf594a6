"""The tools as a model sees and calls them: through a pydantic-ai agent, schema and all."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from dirty_equals import IsStr
from inline_snapshot import snapshot
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from tandem.tools.calculator import calculator_toolset
from tandem.tools.clock import clock_toolset
from tandem.tools.registry import discover_plugins, select
from tests.tools.fake_install import FakeInstall

FIXED = datetime(2025, 3, 14, 13, 26, 53, tzinfo=UTC)


async def test_test_model_calls_every_discovered_tool(fake_install: FakeInstall) -> None:
    # TestModel calls each tool once with arguments generated from its JSON schema.
    fake_install.distribution('tandem-example-plugin', {'example': 'tandem_example_plugin:plugin'})
    toolsets = [plugin.build() for plugin in select(None, discover_plugins())]

    result = await Agent(TestModel(), toolsets=toolsets).run('use your tools')

    assert json.loads(result.output) == {
        'calculate': '1267650600228229401496703205376',  # the schema's first example, 2**100
        'now': IsStr(regex=r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 \(\w+day, UTC\)'),
        'shout': 'A!',
        # Offline here: the web tools answer with a clear message instead of failing the turn.
        'web_fetch': IsStr(regex=r'^web fetch failed: .*'),
        'web_search': IsStr(regex=r'^web search unavailable: .*'),
        # Without Tandem's Deps (no identity, no store) the memory tools say memory is off.
        'remember': IsStr(regex=r'Long-term memory is off.*'),
        'recall': IsStr(regex=r'Long-term memory is off.*'),
        'forget': IsStr(regex=r'Long-term memory is off.*'),
    }


async def test_model_facing_schemas_results_and_retries() -> None:
    seen: list[AgentInfo] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) > 1:
            return ModelResponse(parts=[TextPart('done')])
        seen.append(info)
        calls = {
            'exact': ('calculate', {'expression': '1/3*3'}),
            'fraction': ('calculate', {'expression': '1/3'}),
            'escape': ('calculate', {'expression': "__import__('os').system('id')"}),
            'huge': ('calculate', {'expression': '9' * 10_000}),
            'berlin': ('now', {'timezone': 'Europe/Berlin'}),
            'mars': ('now', {'timezone': 'Mars/Olympus'}),
        }
        return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id=id_) for id_, (name, args) in calls.items()])

    agent = Agent(FunctionModel(model), toolsets=[calculator_toolset(), clock_toolset(now=lambda: FIXED)])
    result = await agent.run('compute and tell the time')

    assert result.output == 'done'
    tools = {
        tool.name: {
            'description': tool.description,
            'parameters': tool.parameters_json_schema,
            'metadata': tool.metadata,
        }
        for tool in seen[0].function_tools
    }
    assert tools == snapshot(
        {
            'calculate': {
                'description': """\
Evaluate an arithmetic expression exactly. Use it for any arithmetic instead of computing mentally.

Syntax is Python's: `+ - * / // % **` and parentheses. Use `**` for powers (`^` is not a power).
No variables, strings, lists, comparisons or thousands separators.

Functions: abs(x), round(x) or round(x, ndigits), min(a, b, ...), max(a, b, ...), sqrt(x),
floor(x), ceil(x), log(x) or log(x, base), log10(x), exp(x), sin(x), cos(x), tan(x) (radians),
factorial(n) for whole n from 0 to 1000. Constants: pi, e.

Whole numbers and fractions are exact: `2**100` returns every digit, `1/3*3` returns `1`, and `1/3`
returns `0.333333333333 (exactly 1/3)`. A number with a decimal point, pi, e, and functions
like sqrt(2) or sin(x) give floats, which are approximate: `0.1 + 0.2` returns `0.30000000000000004`.
Exact integer results are limited to about 30,000 digits and exponents to 10,000.\
""",
                'parameters': {
                    'additionalProperties': False,
                    'properties': {
                        'expression': {
                            'description': 'The arithmetic expression, at most 1000 characters.',
                            'examples': ['2**100', '(17 * 23) / 4'],
                            'type': 'string',
                        }
                    },
                    'required': ['expression'],
                    'type': 'object',
                },
                'metadata': {'side_effect': False},
            },
            'now': {
                'description': """\
Get the current date and time. Use it whenever an answer depends on today's date or the time; never guess.

Returns ISO 8601 with the UTC offset, then the weekday and zone, e.g.
`2025-03-14T09:26:53-04:00 (Friday, America/New_York, EDT)`.\
""",
                'parameters': {
                    'additionalProperties': False,
                    'properties': {
                        'timezone': {
                            'default': 'UTC',
                            'description': """\
IANA time zone name such as "UTC", "Europe/Berlin" or "America/New_York".
Abbreviations like "PST" and bare offsets are not accepted. Defaults to UTC.\
""",
                            'type': 'string',
                        }
                    },
                    'type': 'object',
                },
                'metadata': {'side_effect': False},
            },
        }
    )
    returns = {
        part.tool_call_id: f'{part.outcome}: {part.content}'
        for message in result.all_messages()
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }
    assert returns == snapshot(
        {
            'exact': 'success: 1',
            'fraction': 'success: 0.333333333333 (exactly 1/3)',
            'escape': 'retried: Attribute access (.system) is not allowed. Call the listed functions by their bare name, e.g. sqrt(2).',
            'huge': 'retried: The expression is 10000 characters long; the limit is 1000. Split the calculation into smaller steps.',
            'berlin': 'success: 2025-03-14T14:26:53+01:00 (Friday, Europe/Berlin, CET)',
            'mars': "retried: Unknown time zone 'Mars/Olympus'. Use an IANA time zone name such as 'UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles', 'Asia/Tokyo'.",
        }
    )
