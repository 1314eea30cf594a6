"""The HTML report: one self-contained page (inline CSS, inline SVG charts, a few lines of inline JS).

Nothing is fetched when it is opened, so it works offline, in CI artifacts and in mail. Every text
that came from a scenario or a model is escaped: an answer containing `<script>` is shown, not run.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from tandem.agent.scenarios.decision import Decision
from tandem.agent.scenarios.results import CellSummary, ScenarioRun, SuiteReport, TurnOutcome
from tandem.agent.scenarios.stats import Interval

__all__ = ['Bar', 'chart', 'interval_text', 'render_html', 'trial_mark']

_PALETTE = ('#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f')

_CSS = """
:root { --pass: #2e7d32; --fail: #c62828; --error: #8e24aa; --muted: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 12px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
.meta { color: var(--muted); margin: 0; }
.totals { margin-top: 10px; font-size: 16px; }
.totals span { margin-right: 14px; font-weight: 600; }
.pass { color: var(--pass); } .fail { color: var(--fail); } .error { color: var(--error); }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
svg.chart text { font: 12px system-ui, sans-serif; fill: #222; }
svg.chart .axis { stroke: #bbb; } svg.chart .p95 { stroke: #222; stroke-width: 2; }
svg.chart .whisker { stroke: #222; stroke-width: 1.2; }
table { border-collapse: collapse; }
table.grid th, table.grid td { border: 1px solid var(--line); padding: 4px 8px; text-align: center; }
table.grid th.scenario, table.grid td.scenario { text-align: left; }
table.grid td.status-passed { background: #e8f5e9; color: var(--pass); }
table.grid td.status-failed { background: #ffebee; color: var(--fail); }
table.grid td.status-error { background: #f3e5f5; color: var(--error); }
table.numbers th, table.numbers td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; }
table.numbers th:first-child, table.numbers td:first-child { text-align: left; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
details.run { border: 1px solid var(--line); border-radius: 6px; margin: 6px 0; padding: 4px 10px; }
details.run > summary { cursor: pointer; }
details.run.status-failed { border-color: #f5c6cb; } details.run.status-error { border-color: #d7b8e0; }
body.only-failures details.run.status-passed { display: none; }
.turn { margin: 8px 0 12px; padding-left: 10px; border-left: 3px solid var(--line); }
.said { white-space: pre-wrap; margin: 2px 0; }
.tool { font-family: ui-monospace, monospace; font-size: 12px; color: #444; white-space: pre-wrap; }
ul.checks { margin: 4px 0; padding-left: 18px; } ul.checks li.ok { color: var(--pass); } ul.checks li.ko { color: var(--fail); }
.problem { color: var(--fail); white-space: pre-wrap; }
.small { color: var(--muted); font-size: 12px; }
.card { border: 2px solid var(--line); border-radius: 8px; padding: 4px 16px 10px; margin-top: 18px; }
.card h2 { border: none; margin: 8px 0 4px; }
.card.confidence-high { border-color: var(--pass); } .card.confidence-medium { border-color: #f9a825; }
.recommendation { font-size: 18px; font-weight: 700; margin: 4px 0; }
ul.criteria { padding-left: 18px; margin: 6px 0 0; } ul.criteria li.unmeasured { color: var(--muted); }
table.attribution td { text-align: left; } table.attribution tr.call-worse td:last-child { color: var(--fail); }
table.attribution tr.call-better td:last-child { color: var(--pass); }
"""

_JS = """
(function () {
  var box = document.getElementById('only-failures');
  function apply() { document.body.classList.toggle('only-failures', box.checked); }
  box.addEventListener('change', apply);
  apply();
  document.documentElement.setAttribute('data-ready', String(document.querySelectorAll('svg.chart').length));
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cost(cost: float | None) -> str:
    return '—' if cost is None else f'${cost:.4f}'


def _seconds(seconds: float) -> str:
    return f'{seconds * 1000:.0f} ms' if seconds < 1 else f'{seconds:.2f} s'


def interval_text(interval: Interval | None, show: str = 'percent') -> str:
    """`63% [55–70%]`, `1,204 [1,180–1,230]` (`count`), `850 ms [800 ms–910 ms]` (`seconds`), or `—`."""
    if interval is None:
        return '—'
    if show == 'percent':
        return interval.percent()
    if show == 'seconds':
        return f'{_seconds(interval.value)} [{_seconds(interval.low)}–{_seconds(interval.high)}]'
    return f'{interval.value:,.0f} [{interval.low:,.0f}–{interval.high:,.0f}]'


@dataclass(frozen=True)
class Bar:
    """One bar of a chart; `low` and `high` draw its confidence interval as an error bar."""

    label: str
    value: float | None
    shown: str
    color: str
    mark: float | None = None
    """A second value drawn as a tick on the bar (p95 latency)."""
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, label: str, interval: Interval | None, shown: str, color: str, mark: float | None = None) -> Bar:
        """A bar at an interval's value, with its error bar."""
        if interval is None:
            return cls(label, None, shown, color, mark)
        return cls(label, interval.value, shown, color, mark, interval.low, interval.high)


def chart(metric: str, bars: Sequence[Bar], *, scale: float | None = None) -> str:
    """A horizontal bar chart as inline SVG, one bar per cell (or arm), with error bars."""
    label_width, bar_width, row, top = 230, 240, 26, 6
    width = label_width + bar_width + 190  # room for the value and its interval after the longest bar
    height = top + row * len(bars) + 6
    known = [value for bar in bars for value in (bar.value, bar.mark, bar.high) if value is not None]
    maximum = scale if scale is not None else (max(known) if known else 0.0)
    parts = [
        f'<svg class="chart" data-metric="{_e(metric)}" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<line class="axis" x1="{label_width}" y1="0" x2="{label_width}" y2="{height}"/>',
    ]
    for index, bar in enumerate(bars):
        y = top + index * row
        label = bar.label if len(bar.label) <= 34 else bar.label[:33] + '…'
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 16}" text-anchor="end"><title>{_e(bar.label)}</title>{_e(label)}</text>'
        )
        length = 0.0 if bar.value is None or maximum <= 0 else bar_width * bar.value / maximum
        parts.append(
            f'<rect class="bar" x="{label_width}" y="{y + 4}" width="{length:.1f}" height="{row - 8}" '
            f'fill="{bar.color}" rx="2"><title>{_e(bar.label)}: {_e(bar.shown)}</title></rect>'
        )
        end = label_width + length
        if bar.low is not None and bar.high is not None and maximum > 0:
            x1, x2 = (label_width + bar_width * bound / maximum for bound in (bar.low, bar.high))
            middle = y + row / 2
            parts.append(
                f'<g class="whisker" data-low="{bar.low:.6g}" data-high="{bar.high:.6g}">'
                f'<line x1="{x1:.1f}" y1="{middle:.1f}" x2="{x2:.1f}" y2="{middle:.1f}"/>'
                f'<line x1="{x1:.1f}" y1="{middle - 5:.1f}" x2="{x1:.1f}" y2="{middle + 5:.1f}"/>'
                f'<line x1="{x2:.1f}" y1="{middle - 5:.1f}" x2="{x2:.1f}" y2="{middle + 5:.1f}"/></g>'
            )
            end = max(end, x2)
        if bar.mark is not None and maximum > 0:
            x = label_width + bar_width * bar.mark / maximum
            parts.append(f'<line class="p95" x1="{x:.1f}" y1="{y + 2}" x2="{x:.1f}" y2="{y + row - 2}"/>')
            end = max(end, x)
        parts.append(f'<text x="{end + 6:.1f}" y="{y + 16}">{_e(bar.shown)}</text>')
    parts.append('</svg>')
    return ''.join(parts)


def short_labels(cells: Sequence[CellSummary]) -> list[str]:
    """Each cell's label, naming only the dimensions that differ between cells (all of them for one cell)."""
    columns = [
        [summary.cell.backbone for summary in cells],
        [summary.cell.prompt or 'scenario prompt' for summary in cells],
        [summary.cell.ablation_label for summary in cells],
    ]
    varying = [column for column in columns if len(set(column)) > 1] or columns
    return [' · '.join(column[index] for column in varying) for index in range(len(cells))]


def _cost_total(summary: CellSummary) -> Interval | None:
    """The cell's cost, with the interval of its mean cost per turn scaled to its turns."""
    per_turn = summary.cost_per_turn_ci
    if summary.cost_usd is None or per_turn is None:
        return None
    turns = summary.turns
    return Interval(value=summary.cost_usd, low=per_turn.low * turns, high=per_turn.high * turns, n=per_turn.n)


def _charts(cells: Sequence[CellSummary]) -> str:
    colors = [_PALETTE[index % len(_PALETTE)] for index in range(len(cells))]
    labels = short_labels(cells)
    rows = list(zip(labels, cells, colors, strict=True))
    figures = [
        (
            'Pass rate',
            'pass_rate',
            [
                Bar.of(lab, s.pass_rate_ci, f'{interval_text(s.pass_rate_ci)} ({s.passed}/{s.scenarios})', c)
                for lab, s, c in rows
            ],
            1.0,
        ),
        (
            'Tool-call accuracy',
            'tool_accuracy',
            [Bar.of(lab, s.tool_accuracy_ci, interval_text(s.tool_accuracy_ci), c) for lab, s, c in rows],
            1.0,
        ),
        (
            'Tokens per turn',
            'tokens_per_turn',
            [Bar.of(lab, s.tokens_per_turn_ci, interval_text(s.tokens_per_turn_ci, 'count'), c) for lab, s, c in rows],
            None,
        ),
        (
            'Latency per turn (bar: p50, tick: p95)',
            'latency',
            [
                Bar.of(
                    lab,
                    s.latency_p50_ci,
                    f'{_seconds(s.latency_p50_s)} / {_seconds(s.latency_p95_s)}',
                    c,
                    s.latency_p95_s,
                )
                for lab, s, c in rows
            ],
            None,
        ),
        (
            'Cost',
            'cost',
            [Bar.of(lab, _cost_total(s), _cost(s.cost_usd), c) for lab, s, c in rows],
            None,
        ),
    ]
    note = ''
    if all(summary.cost_usd is None for summary in cells):
        figures = [figure for figure in figures if figure[1] != 'cost']
        note = (
            '<p class="small">Cost: no price is known for these backbones (set input_price_per_mtok and '
            "output_price_per_mtok in the backbone's config).</p>"
        )
    charts = ''.join(
        f'<figure><figcaption>{_e(title)}</figcaption>{chart(metric, bars, scale=scale)}</figure>'
        for title, metric, bars, scale in figures
    )
    intervals = (
        '<p class="small">Error bars and [brackets]: 95% confidence intervals (Wilson for rates, bootstrap for '
        'tokens, latency and cost). Run more trials (<code>tandem run -n N</code>) to narrow them.</p>'
    )
    return f'<div class="charts">{charts}</div>{note}{intervals}'


def _numbers(cells: Sequence[CellSummary]) -> str:
    repeated = any(s.trials > 1 for s in cells)
    rows = ''.join(
        '<tr>'
        f'<td><span class="swatch" style="background:{_PALETTE[index % len(_PALETTE)]}"></span>{_e(s.cell.label)}</td>'
        f'<td>{s.passed}/{s.scenarios}</td><td>{interval_text(s.pass_rate_ci)}</td>'
        f'<td>{interval_text(s.tool_accuracy_ci)}</td>'
        f'<td>{s.total_tokens:,}</td><td>{interval_text(s.tokens_per_turn_ci, "count")}</td>'
        f'<td>{interval_text(s.latency_p50_ci, "seconds")}</td><td>{interval_text(s.latency_p95_ci, "seconds")}</td>'
        f'<td>{_cost(s.cost_usd)}</td>'
        + (
            f'<td>{interval_text(s.answer_agreement)}</td><td>{interval_text(s.normalized_agreement)}</td>'
            f'<td>{interval_text(s.tool_agreement)}</td>'
            if repeated
            else ''
        )
        + '</tr>'
        for index, s in enumerate(cells)
    )
    names = ['cell', 'passed', 'pass rate', 'tool accuracy', 'tokens', 'tokens/turn', 'p50', 'p95', 'cost']
    if repeated:
        names += ['same answer', 'same answer (normalized)', 'same tool calls']
    head = ''.join(f'<th>{name}</th>' for name in names)
    return f'<table class="numbers"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def trial_mark(runs: Sequence[ScenarioRun]) -> tuple[str, str]:
    """`(status, mark)` of one scenario's trials in one cell: `✓`, `✗`, `!`, or `3/5` when they disagree."""
    marks = {'passed': '✓', 'failed': '✗', 'error': '!'}
    statuses = {run.status for run in runs}
    if len(runs) == 1 or len(statuses) == 1:
        status = runs[0].status
        mark = marks[status]
        return status, mark if len(runs) == 1 else f'{mark} {len(runs)}/{len(runs)}'
    passed = sum(run.status == 'passed' for run in runs)
    return ('failed' if 'failed' in statuses else 'error'), f'{passed}/{len(runs)}'


def _grid(report: SuiteReport) -> str:
    names = list(dict.fromkeys(run.scenario for run in report.runs))
    runs: dict[tuple[str, object], list[ScenarioRun]] = {}
    for run in report.runs:
        runs.setdefault((run.scenario, run.cell), []).append(run)
    head = '<th class="scenario">scenario</th>' + ''.join(
        f'<th title="{_e(s.cell.label)}">{_e(s.cell.backbone)}<br><span class="small">{_e(s.cell.prompt or "scenario prompt")}'
        f' · {_e(s.cell.ablation_label)}</span></th>'
        for s in report.cells
    )
    rows: list[str] = []
    for name in names:
        cells: list[str] = []
        for summary in report.cells:
            trials = runs.get((name, summary.cell))
            if not trials:
                cells.append('<td>—</td>')
                continue
            why = '\n'.join(
                dict.fromkeys(
                    line
                    for run in trials
                    for line in [check.describe() for check in run.failures] + ([run.error] if run.error else [])
                )
            )
            status, mark = trial_mark(trials)
            cells.append(f'<td class="status-{status}" title="{_e(why or status)}">{_e(mark)}</td>')
        rows.append(f'<tr><td class="scenario">{_e(name)}</td>{"".join(cells)}</tr>')
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _turn(turn: TurnOutcome) -> str:
    tools = ''.join(
        f'<div class="tool">⚙ {_e(call.describe())} → {"ok" if call.ok else "failed"}: {_e(call.result)}</div>'
        for call in turn.tool_calls
    )
    checks = ''.join(
        f'<li class="{"ok" if check.passed else "ko"}">{"✓" if check.passed else "✗"} {_e(check.label)}'
        + (f' — {_e(check.detail)}' if check.detail else '')
        + '</li>'
        for check in turn.checks
    )
    numbers = (
        f'{turn.total_tokens:,} tokens · {turn.requests} request{"s" if turn.requests != 1 else ""} · '
        f'{_seconds(turn.latency_s)} · {_cost(turn.cost_usd)}'
    )
    return (
        f'<div class="turn"><div class="small">turn {turn.index} · session {_e(turn.session)} · {numbers}</div>'
        f'<p class="said"><b>user:</b> {_e(turn.user)}</p>{tools}'
        + (
            f'<p class="problem">stopped: {_e(turn.error)}</p>'
            if turn.error is not None
            else f'<p class="said"><b>assistant:</b> {_e(turn.answer)}</p>'
        )
        + (f'<ul class="checks">{checks}</ul>' if checks else '')
        + '</div>'
    )


def _run(run: ScenarioRun, repeated: bool = False) -> str:
    marks = {'passed': ('✓', 'pass'), 'failed': ('✗', 'fail'), 'error': ('!', 'error')}
    mark, style = marks[run.status]
    failures = len(run.failures)
    why = f' — {failures} failing expectation{"s" if failures != 1 else ""}' if failures else ''
    if run.error:
        why = ' — could not finish'
    trial = f' <span class="small">trial {run.trial}</span>' if run.trial > 1 or repeated else ''
    body = f'<p class="small">{_e(run.description)}</p>' if run.description else ''
    body += f'<p class="small">{_e(run.file or "")} · prompt {_e(run.prompt)} · {_seconds(run.duration_s)}</p>'
    if run.error:
        body += f'<p class="problem">{_e(run.error)}</p>'
    body += ''.join(_turn(turn) for turn in run.turns)
    return (
        f'<details class="run status-{run.status}"{" open" if run.status != "passed" else ""}>'
        f'<summary><span class="{style}">{mark}</span> {_e(run.scenario)}{trial}{_e(why)}</summary>{body}</details>'
    )


def _decision(decision: Decision) -> str:
    """The verdict card: the recommendation, its confidence, and one line per criterion."""
    criteria = ''.join(
        f'<li class="criterion{"" if criterion.measured else " unmeasured"}" data-criterion="{_e(criterion.name)}">'
        f'<b>{_e(criterion.name)}</b>: {_e(criterion.line)}</li>'
        for criterion in decision.criteria
    )
    return (
        f'<section id="decision" class="card confidence-{_e(decision.confidence)}">'
        f'<h2>Verdict</h2><p class="recommendation">{_e(decision.recommendation)}</p>'
        f'<p class="confidence">confidence: <b>{_e(decision.confidence)}</b> — {_e(decision.why)}</p>'
        f'<ul class="criteria">{criteria}</ul></section>'
    )


def _attribution(decision: Decision) -> str:
    if not decision.attribution:
        return (
            '<section id="attribution"><h2>Attribution</h2><p class="small">No two cells differ in exactly one '
            'factor (backbone, prompt, or ingredients), so no difference can be pinned on one.</p></section>'
        )
    rows = ''.join(
        f'<tr class="call-{row.call}"><td>{_e(row.factor)}</td><td>{_e(row.change)}</td><td>{_e(row.held)}</td>'
        f'<td>{_e(row.rate)}</td><td>{_e(row.before.percent())}</td><td>{_e(row.after.percent())}</td>'
        f'<td>{_e(row.reading)}</td></tr>'
        for row in decision.attribution
    )
    head = ''.join(
        f'<th>{name}</th>' for name in ('factor', 'change', 'held fixed', 'rate', 'before', 'after', 'difference')
    )
    return (
        '<section id="attribution"><h2>Attribution</h2><p class="small">Cells that differ in one factor only, '
        'compared: a difference is called only when its 95% interval (Newcombe) excludes zero.</p>'
        f'<table class="numbers attribution"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>'
    )


def _curve(decision: Decision) -> str:
    """The learning curve: pass rate (and tool-call accuracy) by how many examples trained each tune."""
    if not decision.curve:
        return ''
    color = _PALETTE[0]
    labels = [f'{point.examples:,} examples ({point.backbone})' for point in decision.curve]
    figures = [
        (
            'Pass rate',
            'curve_pass_rate',
            [
                Bar.of(lab, p.pass_rate, interval_text(p.pass_rate), color)
                for lab, p in zip(labels, decision.curve, strict=True)
            ],
        ),
    ]
    if all(point.tool_accuracy is not None for point in decision.curve):
        figures.append(
            (
                'Tool-call accuracy',
                'curve_tool_accuracy',
                [
                    Bar.of(lab, p.tool_accuracy, interval_text(p.tool_accuracy), color)
                    for lab, p in zip(labels, decision.curve, strict=True)
                ],
            )
        )
    charts = ''.join(
        f'<figure><figcaption>{_e(title)}</figcaption>{chart(metric, bars, scale=1.0)}</figure>'
        for title, metric, bars in figures
    )
    return (
        '<section id="learning-curve"><h2>Learning curve</h2><p class="small">Tunes of one base model, trained on '
        'more and more examples, in the same cell otherwise: where the curve flattens, more data stops paying.</p>'
        f'<div class="charts">{charts}</div></section>'
    )


def render_html(report: SuiteReport) -> str:
    """The report as one self-contained HTML page."""
    passed = sum(run.status == 'passed' for run in report.runs)
    failed = sum(run.status == 'failed' for run in report.runs)
    errors = sum(run.status == 'error' for run in report.runs)
    scenarios = len({run.scenario for run in report.runs})
    mode = {'live': 'live model traffic', 'record': 'recorded into cassettes', 'replay': 'replayed from cassettes'}
    meta = (
        f'{report.started_at:%Y-%m-%d %H:%M:%S} UTC · {_seconds(report.duration_s)} · '
        f'{len(report.cells)} cell{"s" if len(report.cells) != 1 else ""} × {scenarios} scenario'
        f'{"s" if scenarios != 1 else ""} · {mode[report.mode]}'
    )
    decision = report.decision
    kind = 'decision report' if decision is not None else 'scenario report'
    details = ''.join(
        f'<h3>{_e(summary.cell.label)}</h3>'
        + ''.join(_run(run, summary.trials > 1) for run in report.runs_of(summary.cell))
        for summary in report.cells
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>Tandem {kind}: {passed}/{len(report.runs)} passed</title><style>{_CSS}</style></head><body>'
        f'<header><h1>Tandem {kind}</h1><p class="meta">{_e(meta)}</p>'
        f'<div class="totals"><span class="pass">{passed} passed</span><span class="fail">{failed} failed</span>'
        f'<span class="error">{errors} errors</span></div></header>'
        + (_decision(decision) if decision is not None else '')
        + f'<section id="cells-compared"><h2>Cells compared</h2>{_charts(report.cells)}{_numbers(report.cells)}</section>'
        + (_attribution(decision) + _curve(decision) if decision is not None else '')
        + f'<section id="grid"><h2>Scenarios × cells</h2>{_grid(report)}</section>'
        '<section id="runs"><h2>Runs</h2><label><input type="checkbox" id="only-failures"> show only failing runs</label>'
        f'{details}</section>'
        f'<script>{_JS}</script></body></html>\n'
    )
