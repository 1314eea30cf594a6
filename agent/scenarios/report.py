"""Reports of a suite: a rich table per matrix cell, JSON, a self-contained HTML page, and JUnit XML.

- `print_report`: per cell, its scenarios with the failing expectations, tokens, latency and cost,
  under a caption with the cell's pass rate, tool-call accuracy, tokens, latency and cost; then a
  table comparing the cells when there are several.
- `write_json`: the whole `SuiteReport`, which reads back with `SuiteReport.model_validate_json`.
- `write_html`: one file with inline CSS, inline SVG charts comparing the cells and a scenario × cell
  grid; nothing is loaded from the network.
- `write_junit`: one `<testsuite>` per cell, one `<testcase>` per scenario, `<failure>` for failed
  expectations and `<error>` for runs that could not finish, as CI tools (GitLab, Jenkins, GitHub
  test reporters) read them.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from tandem.agent.core.events import short
from tandem.agent.core.files import write_atomically
from tandem.agent.scenarios._html import interval_text, render_html, short_labels, trial_mark
from tandem.agent.scenarios.results import CellSummary, ScenarioRun, SuiteReport

__all__ = ['format_cost', 'format_seconds', 'print_report', 'render_html', 'write_html', 'write_json', 'write_junit']

_XML_INVALID = re.compile('[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]')


def format_cost(cost: float | None) -> str:
    """`$0.0123`, or `—` when unknown (no price for the backbone)."""
    if cost is None:
        return '—'
    return f'${cost:.4f}' if cost < 100 else f'${cost:,.0f}'


def format_seconds(seconds: float) -> str:
    """`850 ms`, `2.31 s`."""
    return f'{seconds * 1000:.0f} ms' if seconds < 1 else f'{seconds:.2f} s'


_STATUS_STYLES = {'passed': 'green', 'failed': 'red', 'error': 'bold red'}


def _status(run: ScenarioRun) -> Text:
    return {
        'passed': Text('✓ passed', style='green'),
        'failed': Text('✗ failed', style='red'),
        'error': Text('! error', style='bold red'),
    }[run.status]


_TEXT_CHECKS = frozenset({'contains', 'regex', 'judge'})


def _problems(run: ScenarioRun) -> str:
    """The failing expectations, turn by turn, with the answer once per turn rather than once per check."""
    lines: list[str] = []
    for turn in run.turns:
        failures = [check for check in turn.checks if not check.passed]
        if not failures:
            continue
        for check in failures:
            detail = '' if check.kind in ('contains', 'regex') or not check.detail else f' — {short(check.detail, 100)}'
            lines.append(f'turn {turn.index}: {check.label}{detail}')
        if any(check.kind in _TEXT_CHECKS for check in failures):
            lines.append(f'  answer: {short(turn.answer, 100)!r}')
    if run.error is not None:
        lines.append(run.error)
    return '\n'.join(lines)


def _format(summary: CellSummary) -> str:
    """`format 92% · 0.25 output retries/turn`, for a cell with typed turns; else nothing."""
    if not summary.typed_turns:
        return ''
    return (
        f'format {interval_text(summary.format_compliance_ci)} · '
        f'{summary.output_retries_per_turn:.2f} output retries/turn · '
    )


def _agreement(summary: CellSummary) -> str:
    """`same answer 80% [..] · same tool calls 100% [..] · `, for a cell with repeated trials; else nothing."""
    if summary.answer_agreement is None:
        return ''
    return (
        f'same answer {interval_text(summary.answer_agreement)} '
        f'(normalized {interval_text(summary.normalized_agreement)}) · '
        f'same tool calls {interval_text(summary.tool_agreement)} · '
    )


def caption(summary: CellSummary) -> str:
    """One line with a cell's numbers; rates with their 95% intervals."""
    trials = f' · {summary.trials} trials each' if summary.trials > 1 else ''
    return (
        f'pass {summary.passed}/{summary.scenarios} ({interval_text(summary.pass_rate_ci)}){trials} · '
        f'tool-call accuracy {interval_text(summary.tool_accuracy_ci)} · '
        f'{_format(summary)}'
        f'{_agreement(summary)}'
        f'{summary.total_tokens:,} tokens ({summary.tokens_per_turn:,.0f}/turn) · '
        f'latency p50 {format_seconds(summary.latency_p50_s)}, p95 {format_seconds(summary.latency_p95_s)} · '
        f'cost {format_cost(summary.cost_usd)}'
    )


def cell_table(report: SuiteReport, summary: CellSummary) -> Table:
    """The table of one cell: each scenario, its result and failing expectations, tokens, latency and cost."""
    table = Table(
        title=Text(summary.cell.label, style='bold'),
        caption=Text(caption(summary)),
        caption_justify='left',
        expand=False,
    )
    table.add_column('scenario', no_wrap=True)
    table.add_column('result', no_wrap=True)
    table.add_column('failing expectations', overflow='fold', ratio=1)
    table.add_column('tokens', justify='right')
    table.add_column('latency', justify='right')
    table.add_column('cost', justify='right')
    by_scenario: dict[str, list[ScenarioRun]] = {}
    for run in report.runs_of(summary.cell):
        by_scenario.setdefault(run.scenario, []).append(run)
    for name, trials in by_scenario.items():
        if len(trials) == 1:
            run = trials[0]
            table.add_row(
                Text(run.scenario),
                _status(run),
                Text(_problems(run), style='red' if run.status != 'passed' else ''),
                f'{run.total_tokens:,}',
                format_seconds(run.latency_s),
                format_cost(run.cost_usd),
            )
            continue
        status, mark = trial_mark(trials)
        problems = '\n'.join(
            dict.fromkeys(
                f'trial {run.trial}: {line}'
                for run in trials
                for line in _problems(run).splitlines()
                if not line.startswith('  ')
            )
        )
        costs = [run.cost_usd for run in trials]
        table.add_row(
            Text(name),
            Text(mark if mark[0] in '✓✗!' else f'{mark} passed', style=_STATUS_STYLES[status]),
            Text(problems, style='red' if problems else ''),
            f'{sum(run.total_tokens for run in trials) / len(trials):,.0f}/run',
            f'{format_seconds(sum(run.latency_s for run in trials) / len(trials))}/run',
            format_cost(None if any(cost is None for cost in costs) else sum(c for c in costs if c is not None)),
        )
    return table


def comparison_table(report: SuiteReport) -> Table:
    """The cells side by side, with the change from the first cell."""
    table = Table(title='[bold]matrix[/]')
    table.add_column('cell', overflow='fold')
    typed = any(summary.typed_turns for summary in report.cells)
    names = ('pass', 'tools ok', *(('format', 'retries') if typed else ()), 'tok/turn', 'p50', 'cost')
    for name in names:
        table.add_column(name, justify='right', no_wrap=True)
    first = report.cells[0]
    for label, summary in zip(short_labels(report.cells), report.cells, strict=True):
        delta = ''
        if summary is not first:
            change = summary.pass_rate - first.pass_rate
            delta = f' {change:+.0%}' if change else ''
        table.add_row(
            Text(label),
            f'{interval_text(summary.pass_rate_ci)}{delta}',
            interval_text(summary.tool_accuracy_ci),
            *((interval_text(summary.format_compliance_ci), f'{summary.output_retries_per_turn:.2f}') if typed else ()),
            f'{summary.tokens_per_turn:,.0f}',
            format_seconds(summary.latency_p50_s),
            format_cost(summary.cost_usd),
        )
    return table


def totals_line(report: SuiteReport) -> Text:
    """`8 passed, 1 failed, 1 error in 3.21 s (replayed)`."""
    passed = sum(run.status == 'passed' for run in report.runs)
    failed = sum(run.status == 'failed' for run in report.runs)
    errors = sum(run.status == 'error' for run in report.runs)
    text = Text()
    text.append(f'{passed} passed', style='green' if passed else '')
    text.append(', ')
    text.append(f'{failed} failed', style='red' if failed else '')
    text.append(', ')
    text.append(f'{errors} error{"s" if errors != 1 else ""}', style='bold red' if errors else '')
    text.append(f' in {format_seconds(report.duration_s)}')
    if report.mode != 'live':
        text.append(f' ({"recorded" if report.mode == "record" else "replayed"})', style='dim')
    return text


def print_report(report: SuiteReport, console: Console) -> None:
    """Print a table per cell, then the comparison of the cells (when several), then the totals."""
    parts: list[Table | Text] = [cell_table(report, summary) for summary in report.cells]
    if len(report.cells) > 1:
        parts.append(comparison_table(report))
    console.print(Group(*parts))
    decision = report.decision
    if decision is not None and len(report.cells) > 1:
        console.print(
            Text.assemble(
                ('Verdict: ', 'bold'), f'{decision.recommendation} (confidence {decision.confidence}: {decision.why})'
            )
        )
    console.print(totals_line(report))


def write_json(report: SuiteReport, path: Path) -> Path:
    """Write the report as JSON (`SuiteReport.model_validate_json` reads it back)."""
    write_atomically(path, report.model_dump_json(indent=2) + '\n')
    return path


def write_html(report: SuiteReport, path: Path) -> Path:
    """Write the self-contained HTML report."""
    write_atomically(path, render_html(report))
    return path


def _xml(text: str) -> str:
    """Text XML 1.0 can carry: control characters a model may emit are dropped."""
    return _XML_INVALID.sub('', text)


def _transcript(run: ScenarioRun) -> str:
    lines: list[str] = []
    for turn in run.turns:
        lines.append(f'[{turn.session}] user: {turn.user}')
        for call in turn.tool_calls:
            lines.append(f'  tool {call.describe()} -> {"ok" if call.ok else "failed"}: {call.result}')
        lines.append(
            f'[{turn.session}] stopped: {turn.error}'
            if turn.error is not None
            else f'[{turn.session}] assistant: {turn.answer}'
        )
        for check in turn.checks:
            lines.append(
                f'  {"PASS" if check.passed else "FAIL"} {check.label}' + (f': {check.detail}' if check.detail else '')
            )
    return '\n'.join(lines)


def _classname(summary: CellSummary) -> str:
    cell = summary.cell
    parts = [cell.backbone, cell.prompt or 'scenario-prompt', '+'.join(cell.ablation) or 'full']
    return 'scenarios.' + '.'.join(re.sub(r'[^A-Za-z0-9_@+-]+', '_', part) for part in parts)


def junit_tree(report: SuiteReport) -> ET.Element:
    """The report as a JUnit XML tree: its `<testsuites>` root."""
    timestamp = report.started_at.replace(microsecond=0, tzinfo=None).isoformat()
    root = ET.Element(
        'testsuites',
        name='tandem scenarios',
        tests=str(len(report.runs)),
        failures=str(sum(run.status == 'failed' for run in report.runs)),
        errors=str(sum(run.status == 'error' for run in report.runs)),
        time=f'{report.duration_s:.3f}',
        timestamp=timestamp,
    )
    for summary in report.cells:
        runs = report.runs_of(summary.cell)
        suite = ET.SubElement(
            root,
            'testsuite',
            name=_xml(summary.cell.slug),
            tests=str(len(runs)),
            failures=str(summary.failed),
            errors=str(summary.errors),
            skipped='0',
            time=f'{sum(run.duration_s for run in runs):.3f}',
            timestamp=timestamp,
            hostname=socket.gethostname(),
        )
        properties = ET.SubElement(suite, 'properties')
        values = {
            'backbone': summary.cell.backbone,
            'prompt': summary.cell.prompt or '',
            'ablation': ','.join(summary.cell.ablation),
            'mode': report.mode,
            'pass_rate': f'{summary.pass_rate:.4f}',
            'tool_accuracy': '' if summary.tool_accuracy is None else f'{summary.tool_accuracy:.4f}',
            'total_tokens': str(summary.total_tokens),
            'latency_p50_s': f'{summary.latency_p50_s:.4f}',
            'cost_usd': '' if summary.cost_usd is None else f'{summary.cost_usd:.6f}',
        }
        for name, value in values.items():
            ET.SubElement(properties, 'property', name=name, value=_xml(value))
        for run in runs:
            name = run.scenario if summary.trials == 1 else f'{run.scenario} [trial {run.trial}]'
            case = ET.SubElement(
                suite, 'testcase', classname=_classname(summary), name=_xml(name), time=f'{run.duration_s:.3f}'
            )
            if run.file:
                case.set('file', _xml(run.file))
            if run.status == 'error':
                error = ET.SubElement(
                    case, 'error', message=_xml((run.error or 'error').splitlines()[0][:500]), type='ScenarioError'
                )
                error.text = _xml(run.error or '')
            elif run.status == 'failed':
                failures = run.failures
                failure = ET.SubElement(
                    case,
                    'failure',
                    message=_xml(
                        f'{len(failures)} expectation{"s" if len(failures) != 1 else ""} failed: {failures[0].describe()}'[
                            :500
                        ]
                    ),
                    type='ExpectationFailed',
                )
                failure.text = _xml('\n'.join(check.describe() for check in failures))
            out = ET.SubElement(case, 'system-out')
            out.text = _xml(_transcript(run))
    ET.indent(root)
    return root


def write_junit(report: SuiteReport, path: Path) -> Path:
    """Write the report as JUnit XML."""
    text = ET.tostring(junit_tree(report), encoding='unicode', xml_declaration=False)
    write_atomically(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + text + '\n')
    return path
