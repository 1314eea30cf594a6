"""Scripted task scenarios: YAML suites run over a matrix of backbones, prompts and ablations.

```python
from tandem.agent.scenarios import load_scenarios, parse_ablations, run_suite

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

Imports are lazy, so `import tandem.agent.scenarios` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem.agent.scenarios.cassettes import CassetteModel, Cassettes, ReplayMissError
    from tandem.agent.scenarios.results import Cell, CellSummary, CheckResult, ScenarioRun, SuiteReport, TurnOutcome
    from tandem.agent.scenarios.runner import build_matrix, parse_ablations, run_scenario, run_suite
    from tandem.agent.scenarios.schema import (
        Scenario,
        ScenarioFileError,
        load_scenario,
        load_scenarios,
        select_scenarios,
    )

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
    'CassetteModel': 'tandem.agent.scenarios.cassettes',
    'Cassettes': 'tandem.agent.scenarios.cassettes',
    'ReplayMissError': 'tandem.agent.scenarios.cassettes',
    'Cell': 'tandem.agent.scenarios.results',
    'CellSummary': 'tandem.agent.scenarios.results',
    'CheckResult': 'tandem.agent.scenarios.results',
    'ScenarioRun': 'tandem.agent.scenarios.results',
    'SuiteReport': 'tandem.agent.scenarios.results',
    'TurnOutcome': 'tandem.agent.scenarios.results',
    'build_matrix': 'tandem.agent.scenarios.runner',
    'parse_ablations': 'tandem.agent.scenarios.runner',
    'run_scenario': 'tandem.agent.scenarios.runner',
    'run_suite': 'tandem.agent.scenarios.runner',
    'Scenario': 'tandem.agent.scenarios.schema',
    'ScenarioFileError': 'tandem.agent.scenarios.schema',
    'load_scenario': 'tandem.agent.scenarios.schema',
    'load_scenarios': 'tandem.agent.scenarios.schema',
    'select_scenarios': 'tandem.agent.scenarios.schema',
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib

    return getattr(importlib.import_module(module), name)
