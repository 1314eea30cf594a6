"""One scenario, step by step, on a console: what the REPL's `/run FILE` shows, for debugging a scenario.

Each turn shows the user's message, every tool call with its arguments and result as it happens,
the answer, then each expectation with ✓ or ✗ and why.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tandem.agent.core.config import Settings
from tandem.agent.core.events import ToolCallFinished, ToolCallStarted, short
from tandem.agent.scenarios.report import format_cost, format_seconds
from tandem.agent.scenarios.results import ScenarioRun
from tandem.agent.scenarios.runner import RunStarted, Step, TurnFinished, TurnStarted, run_scenario
from tandem.agent.scenarios.schema import Scenario, load_scenario
from tandem.agent.turn.deps import Deps
from tandem.agent.turn.run import summarize_args

__all__ = ['StepPrinter', 'run_file']


class StepPrinter:
    """Prints the steps of a run as they happen."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, step: Step) -> None:
        """Print one step."""
        print_ = self.console.print
        if isinstance(step, RunStarted):
            tools = ', '.join(step.tools) or 'none'
            where = f' ({step.scenario.path})' if step.scenario.path else ''
            print_(f'[bold]▶ {escape(step.scenario.name)}[/]{escape(where)}', highlight=False)
            if step.scenario.description:
                print_(f'  [dim]{escape(step.scenario.description.strip())}[/]', highlight=False)
            print_(
                f'  [dim]{escape(step.cell.backbone)} · {escape(step.prompt)} · tools: {escape(tools)} · '
                f'namespace {step.tenant}[/]',
                highlight=False,
            )
        elif isinstance(step, TurnStarted):
            session = f'session {step.session}' + (' (new session)' if step.new_session else '')
            print_(f'[bold]── turn {step.index}/{step.total}[/] [dim]{session}[/]', highlight=False)
            print_(f'[cyan]you ›[/] {escape(step.user)}', highlight=False)
        elif isinstance(step, ToolCallStarted):
            print_(f'  [cyan]⚙ {escape(step.name)}[/]([dim]{escape(summarize_args(step.args))}[/]) …', highlight=False)
        elif isinstance(step, ToolCallFinished):
            mark = '[green]✓[/]' if step.ok else '[red]✗[/]'
            print_(
                f'    {mark} {escape(step.name)} {step.duration_s * 1000:.0f} ms → {escape(short(step.result, 100))}',
                highlight=False,
            )
        elif isinstance(step, TurnFinished):
            turn = step.outcome
            print_(f'[magenta]assistant ›[/] {escape(turn.answer)}', highlight=False)
            for check in turn.checks:
                if check.passed:
                    print_(f'  [green]✓[/] {escape(check.label)}', highlight=False)
                else:
                    detail = f' — {escape(check.detail)}' if check.detail else ''
                    print_(f'  [red]✗ {escape(check.label)}[/]{detail}', highlight=False)
            print_(
                f'  [dim]{turn.total_tokens:,} tokens · {turn.requests} request{"s" if turn.requests != 1 else ""} · '
                f'{format_seconds(turn.latency_s)} · '
                f'{format_cost(turn.cost_usd)}[/]',
                highlight=False,
            )
        # A `TextDelta` prints nothing: the answer is printed whole when the turn finishes, next to its checks.

    def summary(self, run: ScenarioRun) -> None:
        """Print the outcome of the run."""
        if run.status == 'passed':
            self.console.print(f'[green]✓ passed[/] in {format_seconds(run.duration_s)}', highlight=False)
        elif run.status == 'failed':
            count = len(run.failures)
            self.console.print(
                f'[red]✗ failed[/]: {count} failing expectation{"s" if count != 1 else ""}', highlight=False
            )
        else:
            self.console.print(f'[bold red]! error[/]: {escape(run.error or "")}', highlight=False)


def _load(path: str | Path) -> Scenario:
    return load_scenario(Path(path).expanduser())


async def run_file(path: str | Path, deps: Deps, settings: Settings, console: Console) -> ScenarioRun:
    """Run the scenario in `path` on the backbone of `deps`, showing each step; its namespace is deleted after.

    The scenario's own prompt is used; a scenario without one runs with the prompt of `deps`.

    Raises:
        ScenarioFileError: The file is not a valid scenario (each problem with its line).
    """
    scenario = await asyncio.to_thread(_load, path)
    printer = StepPrinter(console)
    run = await run_scenario(
        scenario,
        deps.backbone,
        settings=settings,
        redis=deps.redis,
        prompt=None if scenario.setup.prompt is not None else deps.prompt.ref,
        on_step=printer,
    )
    printer.summary(run)
    return run
