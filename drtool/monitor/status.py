"""Freshness and health per backup series, judged like a Nagios plugin.

States: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; the overall state is the
worst series' state.  Thresholds (per series, from ``[sources.NAME.status]``
over ``[status]`` over the defaults):

* newest snapshot older than ``max_age`` (default 36h) → CRITICAL; older
  than ``warn_age`` (default 80% of max_age) → WARNING.  36h suits nightly
  jobs: a normal day peaks near 25h, a skipped night is CRITICAL by noon;
* a configured source that was never backed up → CRITICAL;
* newest size differs from the previous snapshot's by more than
  ``size_change_percent`` (default 50) → WARNING (a truncated dump, a wiped
  directory or an exploding log table all show up here first);
* the last recorded backup run failed after the newest snapshot → WARNING;
* the last rehearsal failed → WARNING (unknown when none is recorded);
* ``rehearse_every`` set for the source and no passing rehearsal within it
  (or none ever) → WARNING (coverage rows: ``drtool.catalog.coverage``,
  judged by ``drtool.snapshot.coverage``);
* ``max_rpo`` (optional): for databases with archived logs the RPO is the
  time since the end of the recoverable window, else the snapshot age;
  above it → CRITICAL.

Rehearsal results and log windows come from modules other areas provide
(``drtool.catalog.rehearsals.last_rehearsal`` and
``drtool.databases.planner.window_from_catalog``); they are imported lazily and a
missing or incompatible one counts as "unknown", never as an error.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from drtool.catalog.coverage import coverage_rows
from drtool.errors import ConfigError, DrtoolError
from drtool.core.session import Session
from drtool.snapshot.coverage import Coverage, judge, rehearse_every
from drtool.snapshot.model import Snapshot
from drtool.snapshot.names import display, matches
from drtool.snapshot.sets import group_sets, stand_in
from drtool.snapshot.timeparse import format_duration, parse_duration

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
DEFAULT_MAX_AGE = timedelta(hours=36)
WARN_FRACTION = 0.8
DEFAULT_SIZE_CHANGE = 50.0
_FAILED_RUN = ("failed", "error", "partial")
_PASSED = ("ok", "pass", "passed", "success", "succeeded")
_FAILED = ("fail", "failed", "error", "failure")


@dataclass
class Thresholds:
    max_age: timedelta = DEFAULT_MAX_AGE
    warn_age: timedelta = DEFAULT_MAX_AGE * WARN_FRACTION
    size_change_percent: float = DEFAULT_SIZE_CHANGE
    max_rpo: timedelta | None = None


@dataclass
class SourceStatus:
    name: str
    configured: bool
    thresholds: Thresholds
    state: int = OK
    messages: list[str] = field(default_factory=list)
    snapshots: int = 0
    newest: Snapshot | None = None
    age: timedelta | None = None
    size: int | None = None
    size_change_percent: float | None = None
    rpo: timedelta | None = None
    window: tuple[datetime, datetime] | None = None
    rehearsal: dict[str, Any] | None = None
    coverage: Coverage | None = None

    def raise_to(self, state: int, message: str) -> None:
        self.state = max(self.state, state)
        self.messages.append(message)

    def as_dict(self) -> dict[str, Any]:
        n = self.newest
        return {
            "name": self.name, "state": STATE_NAMES[self.state], "configured": self.configured,
            "messages": self.messages, "snapshots": self.snapshots,
            "newest": n.id if n else None, "newest_time": n.time.isoformat() if n else None,
            "age_seconds": _secs(self.age), "size": self.size,
            "bytes_added": int(n.summary.get("bytes_added", 0)) if n else None,
            "duration_seconds": float(n.summary.get("duration", 0.0)) if n else None,
            "size_change_percent": self.size_change_percent, "rpo_seconds": _secs(self.rpo),
            "recoverable_window": [t.isoformat() for t in self.window] if self.window else None,
            "rehearsal": self.rehearsal,
            "coverage": self.coverage.as_dict() if self.coverage else None,
            "max_age_seconds": _secs(self.thresholds.max_age),
            "warn_age_seconds": _secs(self.thresholds.warn_age),
        }


@dataclass
class StatusReport:
    state: int
    sources: list[SourceStatus]
    now: datetime
    error: str | None = None

    def summary(self) -> str:
        """The Nagios first line: state, short text, then perfdata after '|'."""
        head = f"DRTOOL {STATE_NAMES[self.state]} - "
        if self.error:
            return head + self.error
        if not self.sources:
            return head + "no sources configured and no snapshots"
        problems = [f"{s.name}: {s.messages[0]}" for s in self.sources if s.state != OK and s.messages]
        ages = [s.age for s in self.sources if s.age is not None]
        if problems:
            text = "; ".join(problems[:3]) + (f"; +{len(problems) - 3} more" if len(problems) > 3 else "")
            text += f" ({len(problems)} of {len(self.sources)} source(s) not OK)"
        else:
            text = f"{len(self.sources)} source(s)"
            if ages:
                text += f", newest backup {_ago(min(ages))} ago, stalest {_ago(max(ages))} ago"
        return head + text + " | " + self.perfdata()

    def perfdata(self) -> str:
        parts = []
        for s in self.sources:
            t = s.thresholds
            if s.age is not None:
                parts.append(f"'age_{s.name}'={int(s.age.total_seconds())}s;"
                             f"{int(t.warn_age.total_seconds())};{int(t.max_age.total_seconds())};0;")
            if s.size is not None:
                parts.append(f"'size_{s.name}'={s.size}B;;;0;")
        return " ".join(parts)

    def details(self) -> list[str]:
        return [f"{STATE_NAMES[s.state]}: {s.name}: " + ("; ".join(s.messages) or _ok_text(s, self.now))
                for s in self.sources]

    def as_dict(self) -> dict[str, Any]:
        return {"state": STATE_NAMES[self.state], "exit_code": self.state, "summary": self.summary(),
                "time": self.now.isoformat(), "error": self.error,
                "sources": [s.as_dict() for s in self.sources]}


def unknown(message: str, now: datetime | None = None) -> StatusReport:
    """The report for a repository that cannot be opened or read (exit 3)."""
    return StatusReport(UNKNOWN, [], now or datetime.now(timezone.utc), error=message)


def thresholds_for(data: Mapping[str, Any], name: str, max_age: timedelta | None = None) -> Thresholds:
    """``[sources.NAME.status]`` over ``[status]`` over defaults; ``max_age`` (CLI) wins."""
    merged: dict[str, Any] = dict(_table(data.get("status"), "status"))
    merged.pop("sources", None)
    source = _table(data.get("sources"), "sources").get(name)
    if isinstance(source, dict):
        merged.update(_table(source.get("status"), f"sources.{name}.status"))
    t = Thresholds()
    try:
        if max_age is not None or "max_age" in merged:
            t.max_age = max_age if max_age is not None else parse_duration(str(merged["max_age"]))
        t.warn_age = (parse_duration(str(merged["warn_age"])) if "warn_age" in merged and max_age is None
                      else t.max_age * WARN_FRACTION)
        if "max_rpo" in merged:
            t.max_rpo = parse_duration(str(merged["max_rpo"]))
        t.size_change_percent = float(merged.get("size_change_percent", DEFAULT_SIZE_CHANGE))
    except (DrtoolError, ValueError) as exc:
        raise ConfigError(f"config: status thresholds for {name!r}: {exc}") from None
    return t


def _table(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config: [{where}] must be a table")
    return value


def collect(session: Session, data: Mapping[str, Any], *, source: str | None = None,
            max_age: timedelta | None = None, now: datetime | None = None) -> StatusReport:
    """Judge every configured source and every snapshot series (or just ``source``)."""
    now = now or datetime.now(timezone.utc)
    configured = set(_table(data.get("sources"), "sources"))
    by_name: dict[str, list[Snapshot]] = {}
    snapsets, plain = group_sets(session.snapshots())
    for snap in plain:
        if source is None or matches(snap.name, source):
            by_name.setdefault(display(snap.name), []).append(snap)  # escaped: a listing never breaks
    for snapset in snapsets:  # a sharded source is judged by its complete snapshot sets
        if snapset.complete and (source is None or matches(snapset.source, source)):
            by_name.setdefault(display(snapset.source), []).append(stand_in(snapset))
    for snaps in by_name.values():
        snaps.sort(key=lambda s: (s.time, s.id))
    names = {display(source)} if source else configured | set(by_name)
    runs = _failed_runs(session)
    coverage = source_coverage(session, data, sorted(names), now)
    results = []
    for name in sorted(names):
        status = SourceStatus(name, name in configured, thresholds_for(data, name, max_age))
        _judge(status, by_name.get(name, []), now, runs.get(name))
        _add_rehearsal(status, session)
        _add_coverage(status, coverage.get(name), now)
        _add_window(status, session, now)
        _check_rpo(status)
        results.append(status)
    _add_vanished(results, session)
    state = max((s.state for s in results), default=UNKNOWN)
    return StatusReport(state, results, now)


def _add_vanished(results: list[SourceStatus], session: Session) -> None:
    """A snapshot the catalog saw committed is gone without a forget: CRITICAL (ops.rollback)."""
    by_name = {s.name: s for s in results}
    for missing in session.rollback.missing_snapshots if session.rollback else []:
        status = by_name.get(missing.series)
        if status is not None:
            status.raise_to(CRITICAL, f"snapshot {missing.object_id[:8]} ({missing.label}) vanished "
                                      f"without a forget; run 'drtool check'")


def _judge(status: SourceStatus, snaps: list[Snapshot], now: datetime,
           failed_run: tuple[datetime, str] | None) -> None:
    t = status.thresholds
    status.snapshots = len(snaps)
    if not snaps:
        status.raise_to(CRITICAL, "never backed up")
        return
    newest = status.newest = snaps[-1]
    status.age = max(timedelta(0), now - newest.time)
    status.rpo = status.age
    status.size = int(newest.summary.get("size", 0))
    if status.age > t.max_age:
        status.raise_to(CRITICAL, f"newest backup {_ago(status.age)} old (max {_ago(t.max_age)})")
    elif status.age > t.warn_age:
        status.raise_to(WARNING, f"newest backup {_ago(status.age)} old (warn {_ago(t.warn_age)})")
    if len(snaps) > 1:
        before = int(snaps[-2].summary.get("size", 0))
        if before > 0:
            status.size_change_percent = round((status.size - before) * 100 / before, 1)
            if abs(status.size_change_percent) > t.size_change_percent:
                status.raise_to(WARNING, f"size changed {status.size_change_percent:+.0f}% "
                                         f"since the previous snapshot")
    if failed_run and failed_run[0] > newest.time:
        status.raise_to(WARNING, f"last backup attempt failed {_ago(now - failed_run[0])} ago: "
                                 f"{failed_run[1][:200]}")


def _failed_runs(session: Session) -> dict[str, tuple[datetime, str]]:
    """Newest failed backup run per name from the catalog's run history (if any is recorded)."""
    failed: dict[str, tuple[datetime, str]] = {}
    try:
        runs = session.catalog.runs("backup", limit=500)
    except DrtoolError:
        return failed
    for run in runs:  # newest first
        if run.name and run.name not in failed and run.status in _FAILED_RUN:
            started = run.started if run.started.tzinfo else run.started.replace(tzinfo=timezone.utc)
            failed[run.name] = (started, run.message or f"exit {run.exit_code}")
    return failed


def _optional(module: str, attr: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


def _add_rehearsal(status: SourceStatus, session: Session) -> None:
    fn = _optional("drtool.catalog.rehearsals", "last_rehearsal")
    if fn is None:
        return
    try:
        found = fn(session.catalog, status.name)
    except Exception:  # noqa: BLE001 - another area's helper must not break monitoring
        return
    status.rehearsal = describe_rehearsal(found)
    r = status.rehearsal
    if r and r["success"] is False:
        detail = f": {r['failed_checks'][0]}" if r["failed_checks"] else ""
        status.raise_to(WARNING, f"last rehearsal failed ({r['time'] or 'unknown time'}){detail}")
    elif r and r["warnings"]:  # it passed, from an older base than the newest: that one is unusable
        status.raise_to(WARNING, f"last rehearsal passed with a warning ({r['time'] or 'unknown time'}): "
                                 f"{r['warnings'][0]}")


def describe_rehearsal(found: Any) -> dict[str, Any] | None:
    """Normalise what the rehearsal module returns to {success, status, time, ...}.

    ``success`` is True/False for passed/failed and None when the record says
    neither (e.g. skipped), so only a real failure raises a WARNING.
    """
    if found is None:
        return None
    get = found.get if isinstance(found, dict) else (lambda k, d=None: getattr(found, k, d))
    success = next((get(k) for k in ("success", "ok", "passed") if isinstance(get(k), bool)), None)
    text = str(get("status", "") or "").lower()
    if success is None and text:
        success = True if text in _PASSED else False if text in _FAILED else None
    when = get("finished", None) or get("time", None) or get("started", None)
    return {"success": success, "status": text or None,
            "time": when.isoformat() if isinstance(when, datetime) else when,
            "runbook": get("runbook", None), "id": get("id", None),
            "rto_seconds": get("rto_seconds", None), "rpo_seconds": get("rpo_seconds", None),
            "failed_checks": list(get("failed_checks", None) or []),
            "warnings": list(get("warnings", None) or [])}


def source_coverage(session: Session, data: Mapping[str, Any], names: list[str],
                    now: datetime) -> dict[str, Coverage]:
    """Every name's rehearsal coverage (last pass, last fail, due) under its ``rehearse_every``."""
    sources = _table(data.get("sources"), "sources")
    every = {name: rehearse_every(sources, name) for name in names}  # a bad value: UNKNOWN
    configured = [n for n in names if n in sources]
    try:  # a NAME/db series' rehearsal counts for its configured source NAME and for itself
        rows = {**coverage_rows(session.catalog, [n for n in names if n not in sources]),
                **coverage_rows(session.catalog, configured)}
    except DrtoolError:
        rows = {}
    return {name: judge(name, every[name], getattr(rows.get(name), "last_pass", None),
                        getattr(rows.get(name), "last_fail", None), now) for name in names}


def _add_coverage(status: SourceStatus, coverage: Coverage | None, now: datetime) -> None:
    status.coverage = coverage
    if coverage is not None and coverage.needs_attention:
        status.raise_to(WARNING, coverage.message(now))


def _add_window(status: SourceStatus, session: Session, now: datetime) -> None:
    fn = _optional("drtool.databases.planner", "window_from_catalog")
    if fn is None:
        return
    try:
        from drtool.databases.logarchive import sync_log_segments
        sync_log_segments(session)  # wal-push writes only to the repository
    except Exception as exc:  # noqa: BLE001 - status must still report what it can
        status.raise_to(WARNING, f"archived log list could not be read ({exc})")
        return
    try:
        window = fn(session.catalog, status.name)
    except Exception:  # noqa: BLE001 - optional helper, see module doc
        return
    if window is None:
        return
    start, end = window if isinstance(window, tuple) else (getattr(window, "start", None),
                                                           getattr(window, "end", None))
    if isinstance(start, datetime) and isinstance(end, datetime):
        status.window = (start, end)
        status.rpo = max(timedelta(0), now - end)
    gaps = getattr(window, "gaps", None)
    if gaps:
        status.raise_to(WARNING, f"{len(gaps)} gap(s) in the archived log chain")
    broken = getattr(window, "broken", None)
    if broken:  # incrementals whose full or a parent is gone: no base (the next night is full by itself)
        newest, missing = broken[-1].base.snapshot, getattr(broken[-1].error, "missing", "") or "?"
        status.raise_to(WARNING, f"{len(broken)} incremental backup(s) with a broken chain, the newest "
                                 f"{newest.short_id} ({missing[:8]} is missing): take a full backup "
                                 f"(drtool backup --source {status.name} --full)")


def _check_rpo(status: SourceStatus) -> None:
    t = status.thresholds
    if t.max_rpo is not None and status.rpo is not None and status.rpo > t.max_rpo:
        status.raise_to(CRITICAL, f"RPO {_ago(status.rpo)} exceeds {_ago(t.max_rpo)}")


def _ok_text(s: SourceStatus, now: datetime) -> str:
    if s.age is None:
        return "no snapshots"
    text = f"newest backup {_ago(s.age)} ago, {s.snapshots} snapshot(s)"
    cov = s.coverage
    if cov is not None and cov.due is not None and cov.last_pass is not None:
        text += f", restore proven {_ago(now - cov.last_pass)} ago (next due in {_ago(cov.due - now)})"
    return text


def _ago(td: timedelta) -> str:
    """Coarse human age: '2h', '3d 4h', '45m' (perfdata carries the exact seconds)."""
    secs = int(td.total_seconds())
    if secs >= 86400:
        return format_duration(timedelta(seconds=secs - secs % 3600))
    if secs >= 3600:
        return format_duration(timedelta(seconds=secs - secs % 60))
    return format_duration(timedelta(seconds=secs))


def _secs(td: timedelta | None) -> float | None:
    return None if td is None else round(td.total_seconds(), 3)
