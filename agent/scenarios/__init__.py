"""Scripted task scenarios: YAML suites run over a matrix of backbones, prompts and ablations.

```python
from agent.scenarios import load_scenarios, parse_ablations, run_suite

scenarios = load_scenarios([Path('scenarios')])
report = await run_suite(scenarios, settings=settings, redis=redis, backbones=[base, tuned],
                         prompts=['assistant@1', 'short@1'], ablations=parse_ablations(['rag']))
print(report.passed, [(cell.cell.label, cell.pass_rate) for cell in report.cells])
```

- `schema`: the file format, and loading that names the file and line of each mistake;
- `runner`: the matrix, each run in its own Redis namespace, every turn through `run_turn`;
- `expectations`: tools (with arguments), texts, budgets, and pydantic-evals' `LLMJudge`;
- `cassettes`: record and replay of model traffic (a `WrapperModel` around any backbone);
- `results` and `report`: the numbers, rich tables, JSON, HTML with charts, JUnit XML;
- `console`: one scenario step by step (the REPL's `/run FILE`).

Imports are lazy, so `import agent.scenarios` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.scenarios.cassettes import CassetteModel, Cassettes, ReplayMissError
    from agent.scenarios.results import Cell, CellSummary, CheckResult, ScenarioRun, SuiteReport, TurnOutcome
    from agent.scenarios.runner import build_matrix, parse_ablations, run_scenario, run_suite
    from agent.scenarios.schema import Scenario, ScenarioFileError, load_scenario, load_scenarios, select_scenarios

__all__ = [
    'CassetteModel',
    'Cassettes',
    'Cell',
    'CellSummary',
    'CheckResult',
    'ReplayMissError',
    'Scenario',
    'ScenarioFileError',
    'ScenarioRun',
    'SuiteReport',
    'TurnOutcome',
    'build_matrix',
    'load_scenario',
    'load_scenarios',
    'parse_ablations',
    'run_scenario',
    'run_suite',
    'select_scenarios',
]

_EXPORTS = {
    'CassetteModel': 'agent.scenarios.cassettes',
    'Cassettes': 'agent.scenarios.cassettes',
    'ReplayMissError': 'agent.scenarios.cassettes',
    'Cell': 'agent.scenarios.results',
    'CellSummary': 'agent.scenarios.results',
    'CheckResult': 'agent.scenarios.results',
    'ScenarioRun': 'agent.scenarios.results',
    'SuiteReport': 'agent.scenarios.results',
    'TurnOutcome': 'agent.scenarios.results',
    'build_matrix': 'agent.scenarios.runner',
    'parse_ablations': 'agent.scenarios.runner',
    'run_scenario': 'agent.scenarios.runner',
    'run_suite': 'agent.scenarios.runner',
    'Scenario': 'agent.scenarios.schema',
    'ScenarioFileError': 'agent.scenarios.schema',
    'load_scenario': 'agent.scenarios.schema',
    'load_scenarios': 'agent.scenarios.schema',
    'select_scenarios': 'agent.scenarios.schema',
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib

    return getattr(importlib.import_module(module), name)
