"""The DR drill report: one self-contained HTML page from rehearsal history.

Auditors and managers read this, often offline or attached to a ticket, so
the page has no external resources at all (no scripts, fonts, images or
style sheets from elsewhere): styles are inline and the charts are inline
SVG drawn here.  Per source it shows the last rehearsal, pass/fail, measured
RTO and RPO against the objectives, and both over time.  Pure: the caller
passes the documents and the current time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Any

from drtool.rehearse.charts import human, svg_chart
from drtool.snapshot.timeparse import format_duration

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
ul.warnings{color:#9a6700;font-size:13px}
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
    warnings: list[str] = field(default_factory=list)  # e.g. the newest chain was passed over


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
                step.get("server_log"), list(step.get("warnings", []))))
    for entries in found.values():
        entries.sort(key=lambda e: e.started)
    return dict(sorted(found.items()))


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
            + (f'<ul class="warnings">{"".join(f"<li>warning: {escape(w)}</li>" for w in last.warnings)}</ul>'
               if last.warnings else "")
            + (f'<details class="server-log"><summary>Server log of the failed step (end)</summary>'
               f'<pre>{escape(last.server_log)}</pre></details>' if last.server_log else "")
            + '<div class="charts">\n'
            + svg_chart(f"RTO of {source}", rto_points, last.rto_goal) + "\n"
            + svg_chart(f"RPO of {source}", rpo_points, last.rpo_goal) + "\n</div></section>")


def _history_table(docs: list[dict[str, Any]]) -> str:
    rows = []
    for doc in reversed(docs):
        sources = ", ".join(s["source"] for s in doc.get("steps", []))
        failed = "<br>".join([escape(f) for f in doc.get("failed_checks", [])]
                             + [f"warning: {escape(w)}" for w in doc.get("warnings", [])]) or "–"
        rows.append(f"<tr><td>{_time(doc['started']):%Y-%m-%d %H:%M}</td><td>{escape(doc['runbook'])}</td>"
                    f"<td>{escape(sources)}</td><td>{_badge(doc['status'])}</td>"
                    f"<td>{escape(human(doc.get('rto_seconds')))}</td>"
                    f"<td>{escape(human(doc.get('rpo_seconds')))}</td><td>{failed}</td></tr>")
    return ("<table><tr><th>Started (UTC)</th><th>Runbook</th><th>Sources</th><th>Result</th>"
            "<th>RTO</th><th>RPO</th><th>Failed checks</th></tr>" + "".join(rows) + "</table>")


_COVERAGE_STATE = {"ok": '<span class="ok">within</span>', "unscheduled": "<small>no rehearse_every</small>",
                   "overdue": '<span class="miss">OVERDUE</span>', "never": '<span class="miss">NEVER PASSED</span>'}


def _stamp(text: str | None) -> str:
    return f"{_time(text):%Y-%m-%d %H:%M}" if text else "–"


def coverage_table(coverage: list[dict[str, Any]]) -> str:
    """Every configured source: last pass, last fail, rehearse_every and when the next pass is due
    (``drtool.snapshot.coverage`` documents), overdue ones first."""
    order = {"never": 0, "overdue": 1, "ok": 2, "unscheduled": 3}
    rows = []
    for cov in sorted(coverage, key=lambda c: (order.get(c["state"], 9), c["source"])):
        every = cov.get("rehearse_every_seconds")
        rows.append(f"<tr><td>{escape(cov['source'])}</td><td>{escape(human(every) if every else '–')}</td>"
                    f"<td>{_stamp(cov.get('last_pass'))}</td><td>{_stamp(cov.get('last_fail'))}</td>"
                    f"<td>{_stamp(cov.get('due'))}</td><td>{_COVERAGE_STATE.get(cov['state'], '')}</td></tr>\n")
    return ("<table class=\"coverage\"><tr><th>Source</th><th>Rehearse every</th><th>Last pass (UTC)</th>"
            "<th>Last fail (UTC)</th><th>Next pass due (UTC)</th><th>Coverage</th></tr>\n"
            + "".join(rows) + "</table>")


def render_html(docs: list[dict[str, Any]], generated: datetime, since: timedelta | None = None,
                repository: str = "", coverage: list[dict[str, Any]] | None = None) -> str:
    """The whole report page for ``docs`` (rehearsal documents, oldest first); ``coverage``: every
    configured source's rehearsal coverage, whatever the period (none: no coverage section)."""
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
    if coverage:
        overdue = sum(1 for c in coverage if c["state"] in ("overdue", "never"))
        body += ["<h2>Coverage</h2>", f"<p>{overdue} of {len(coverage)} configured source(s) lack a passing "
                                      f"rehearsal within their <code>rehearse_every</code>.</p>",
                 coverage_table(coverage)]
    if sources:
        body += ["<h2>Sources</h2>", _summary_table(sources)]
        body += [_source_section(s, e) for s, e in sources.items()]
        body += ["<h2>All rehearsals</h2>", _history_table(docs)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>drtool DR drill report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
