"""The DR drill report: one self-contained HTML page from rehearsal history.

Auditors and managers read this, often offline or attached to a ticket, so
the page has no external resources at all (no scripts, fonts, images or
style sheets from elsewhere): styles are inline and the charts are inline
SVG drawn here.  Per source it shows the last rehearsal, pass/fail, measured
RTO and RPO against the objectives, and both over time.  Pure: the caller
passes the documents and the current time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Any

from drtool.snapshot.timeparse import format_duration

CHART_W, CHART_H = 520, 190
PAD_L, PAD_R, PAD_T, PAD_B = 58, 16, 26, 34
PASS_COLOR, FAIL_COLOR = "#1a7f37", "#cf222e"
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.meta{color:#59636e;font-size:13px;margin-bottom:16px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d1d9e0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.pass{background:#1a7f37}.fail{background:#cf222e}
.miss{color:#cf222e;font-weight:600}.ok{color:#1a7f37}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.source{border:1px solid #d1d9e0;border-radius:6px;padding:4px 16px 12px;margin-top:16px}
ul.failed{color:#cf222e;font-size:13px}
"""


@dataclass
class Entry:
    """One source restored in one rehearsal."""

    started: datetime
    runbook: str
    rehearsal_id: str
    status: str
    rto: float | None
    rpo: float | None
    rto_goal: float | None
    rpo_goal: float | None
    failed: list[str] = field(default_factory=list)
    snapshot: str | None = None
    server_log: str | None = None  # end of a failed step's server log (the sandbox is gone)


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def entries_by_source(docs: list[dict[str, Any]]) -> dict[str, list[Entry]]:
    """Group rehearsal documents' steps by source, oldest first."""
    found: dict[str, list[Entry]] = {}
    for doc in docs:
        for step in doc.get("steps", []):
            goals = step.get("objectives") or {}
            found.setdefault(step["source"], []).append(Entry(
                _time(doc["started"]), doc["runbook"], doc.get("id", ""), step["status"],
                step.get("rto_seconds"), step.get("rpo_seconds"), goals.get("rto"), goals.get("rpo"),
                list(step.get("failed", [])) + list(doc.get("drill_failed", [])), step.get("snapshot"),
                step.get("server_log")))
    for entries in found.values():
        entries.sort(key=lambda e: e.started)
    return dict(sorted(found.items()))


def human(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_duration(timedelta(seconds=round(seconds)))


def _versus(measured: float | None, goal: float | None) -> str:
    if measured is None:
        return '<span class="miss">not recovered</span>'
    if goal is None:
        return f"{escape(human(measured))} <small>(no objective)</small>"
    cls = "ok" if measured <= goal else "miss"
    word = "within" if measured <= goal else "MISSED"
    return (f'<span class="{cls}">{escape(human(measured))}</span> / {escape(human(goal))} '
            f'<small class="{cls}">{word}</small>')


def _badge(status: str) -> str:
    return '<span class="badge pass">PASS</span>' if status == "passed" else \
        '<span class="badge fail">FAIL</span>'


def _unit(max_seconds: float) -> tuple[float, str]:
    if max_seconds >= 2 * 86400:
        return 86400.0, "days"
    if max_seconds >= 2 * 3600:
        return 3600.0, "hours"
    if max_seconds >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


def svg_chart(title: str, points: list[tuple[datetime, float | None, bool]],
              goal: float | None) -> str:
    """A small line chart: measured values over time, objective as a dashed line."""
    values = [v for _t, v, _ok in points if v is not None]
    highest = max(values + ([goal] if goal is not None else []) + [1.0]) * 1.1
    scale, unit = _unit(highest)
    step = _nice_step(highest / scale / 4)
    top = step * math.ceil(highest / scale / step) * scale
    times = [t for t, _v, _ok in points]
    t0, t1 = min(times), max(times)
    span = (t1 - t0).total_seconds() or 1.0
    plot_w, plot_h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B

    def x(t: datetime) -> float:
        return PAD_L + (plot_w / 2 if t0 == t1 else (t - t0).total_seconds() / span * plot_w)

    def y(v: float) -> float:
        return PAD_T + plot_h - v / top * plot_h
    parts = [f'<svg width="{CHART_W}" height="{CHART_H}" '
             f'viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{escape(title)}">',
             f'<rect width="{CHART_W}" height="{CHART_H}" fill="#ffffff"/>',
             f'<text x="{PAD_L}" y="16" font-size="13" font-weight="600">{escape(title)} '
             f'({unit})</text>']
    parts += _grid(top, scale, step, y)
    parts.append(f'<text x="{PAD_L}" y="{CHART_H - 8}" font-size="11" fill="#59636e">'
                 f'{t0:%Y-%m-%d}</text>')
    if t1 != t0:
        parts.append(f'<text x="{CHART_W - PAD_R}" y="{CHART_H - 8}" font-size="11" fill="#59636e" '
                     f'text-anchor="end">{t1:%Y-%m-%d}</text>')
    if goal is not None:
        parts.append(f'<line x1="{PAD_L}" x2="{CHART_W - PAD_R}" y1="{y(goal):.1f}" y2="{y(goal):.1f}" '
                     f'stroke="#bf8700" stroke-width="1.5" stroke-dasharray="6 4"/>'
                     f'<text x="{CHART_W - PAD_R}" y="{y(goal) - 4:.1f}" font-size="11" fill="#9a6700" '
                     f'text-anchor="end">objective {escape(human(goal))}</text>')
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v, _ok in points if v is not None)
    if line:
        parts.append(f'<polyline points="{line}" fill="none" stroke="#0969da" stroke-width="2"/>')
    for t, v, ok in points:
        if v is not None:
            color = PASS_COLOR if ok else FAIL_COLOR
            parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="4" fill="{color}">'
                         f'<title>{t:%Y-%m-%d %H:%M} UTC: {escape(human(v))}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_step(raw: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten: axis labels people can read at a glance."""
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _grid(top: float, scale: float, step: float, y: Any) -> list[str]:
    parts = [f'<line x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{CHART_H - PAD_B}" stroke="#8c959f"/>',
             f'<line x1="{PAD_L}" x2="{CHART_W - PAD_R}" y1="{CHART_H - PAD_B}" y2="{CHART_H - PAD_B}" '
             f'stroke="#8c959f"/>']
    ticks = int(round(top / scale / step))
    for i in range(1, ticks + 1):
        value = i * step * scale
        parts.append(f'<line x1="{PAD_L}" x2="{CHART_W - PAD_R}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     f'stroke="#eaeef2"/><text x="{PAD_L - 6}" y="{y(value) + 4:.1f}" font-size="11" '
                     f'fill="#59636e" text-anchor="end">{i * step:g}</text>')
    return parts


def _summary_table(sources: dict[str, list[Entry]]) -> str:
    rows = []
    for source, entries in sources.items():
        last = entries[-1]
        rows.append(f"<tr><td><a href=\"#src-{escape(_anchor(source))}\">{escape(source)}</a></td>"
                    f"<td>{last.started:%Y-%m-%d %H:%M} UTC</td><td>{escape(last.runbook)}</td>"
                    f"<td>{_badge(last.status)}</td><td>{_versus(last.rto, last.rto_goal)}</td>"
                    f"<td>{_versus(last.rpo, last.rpo_goal)}</td><td>{len(entries)}</td></tr>")
    return ("<table><tr><th>Source</th><th>Last rehearsal</th><th>Runbook</th><th>Result</th>"
            "<th>RTO / objective</th><th>RPO / objective</th><th>Rehearsals</th></tr>"
            + "".join(rows) + "</table>")


def _anchor(source: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in source)


def _source_section(source: str, entries: list[Entry]) -> str:
    last = entries[-1]
    passed = sum(1 for e in entries if e.status == "passed")
    rto_points = [(e.started, e.rto, e.status == "passed") for e in entries]
    rpo_points = [(e.started, e.rpo, e.status == "passed") for e in entries]
    failed = "".join(f"<li>{escape(line)}</li>" for line in last.failed)
    return (f'<section class="source" id="src-{escape(_anchor(source))}"><h2>{escape(source)} '
            f'{_badge(last.status)}</h2><p>Last rehearsal {last.started:%Y-%m-%d %H:%M} UTC by runbook '
            f'<b>{escape(last.runbook)}</b> (snapshot {escape((last.snapshot or "none")[:8])}): '
            f'RTO {_versus(last.rto, last.rto_goal)}, RPO {_versus(last.rpo, last.rpo_goal)}. '
            f'{passed} of {len(entries)} rehearsal(s) in this period passed.</p>'
            + (f'<ul class="failed">{failed}</ul>' if failed else "")
            + (f'<details class="server-log"><summary>Server log of the failed step (end)</summary>'
               f'<pre>{escape(last.server_log)}</pre></details>' if last.server_log else "")
            + '<div class="charts">'
            + svg_chart(f"RTO of {source}", rto_points, last.rto_goal)
            + svg_chart(f"RPO of {source}", rpo_points, last.rpo_goal) + "</div></section>")


def _history_table(docs: list[dict[str, Any]]) -> str:
    rows = []
    for doc in reversed(docs):
        sources = ", ".join(s["source"] for s in doc.get("steps", []))
        failed = "<br>".join(escape(f) for f in doc.get("failed_checks", [])) or "–"
        rows.append(f"<tr><td>{_time(doc['started']):%Y-%m-%d %H:%M}</td><td>{escape(doc['runbook'])}</td>"
                    f"<td>{escape(sources)}</td><td>{_badge(doc['status'])}</td>"
                    f"<td>{escape(human(doc.get('rto_seconds')))}</td>"
                    f"<td>{escape(human(doc.get('rpo_seconds')))}</td><td>{failed}</td></tr>")
    return ("<table><tr><th>Started (UTC)</th><th>Runbook</th><th>Sources</th><th>Result</th>"
            "<th>RTO</th><th>RPO</th><th>Failed checks</th></tr>" + "".join(rows) + "</table>")


def render_html(docs: list[dict[str, Any]], generated: datetime, since: timedelta | None = None,
                repository: str = "") -> str:
    """The whole report page for ``docs`` (rehearsal documents, oldest first)."""
    sources = entries_by_source(docs)
    period = f"the last {format_duration(since)}" if since else "all recorded history"
    failing = [s for s, e in sources.items() if e[-1].status != "passed"]
    verdict = (f'<span class="badge fail">FAIL</span> {len(failing)} of {len(sources)} source(s) failed '
               f'their last rehearsal: {escape(", ".join(failing))}' if failing else
               f'<span class="badge pass">PASS</span> all {len(sources)} source(s) passed their last '
               f'rehearsal' if sources else "No rehearsals were recorded in this period.")
    body = [f"<h1>drtool disaster-recovery drill report</h1><div class=\"meta\">Generated "
            f"{generated.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC, covering {period}"
            + (f"; repository {escape(repository)}" if repository else "")
            + f"; {len(docs)} rehearsal(s).</div><p>{verdict}</p>"]
    if sources:
        body += ["<h2>Sources</h2>", _summary_table(sources)]
        body += [_source_section(s, e) for s, e in sources.items()]
        body += ["<h2>All rehearsals</h2>", _history_table(docs)]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>drtool DR drill report</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>\n")
