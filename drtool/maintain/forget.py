"""Forget: apply retention policies and delete the snapshots they drop.

Each snapshot name is its own series (``db/wiki`` never competes with
``media`` for a "daily" slot).  The policy for a series comes from the
command line, else ``[sources.NAME.retention]``, else the top-level
``[retention]``; a series without any policy is left alone, because "no
rule" must never mean "delete".  Bucket arithmetic happens in the
configured ``timezone`` (default UTC) so "daily" means the operator's days.

Forgetting only deletes ``snapshots/<id>`` objects (then the catalog rows);
the data stays until ``prune``.  That is why a shared lock suffices: a
concurrent backup may still use a forgotten snapshot as its parent, and the
blobs it reuses stay until a prune, which needs the exclusive lock.

**PITR.**  ``pinned(snapshot) -> str | None`` keeps a snapshot ("pinned:
<reason>") without consuming any keep-N slot.  Default: the pins of
``drtool.databases.retention`` — the base backup / dump a database series'
keep_within window starts from, and every member of a kept incremental's chain
(``drtool forget ID`` refuses to break such a chain).  After deleting snapshots, forget also deletes
the WAL / binlog files older than the oldest kept base of each database series
(``keep_log_segments=True`` opts out); they are listed with reasons in dry runs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drtool.backends import capabilities
from drtool.errors import ConfigError, DrtoolError, SnapshotNotFound, UsageError
from drtool.databases import retention as pitr_retention
from drtool.databases.retention import LogExpiry
from drtool.core.rollback import record_forgotten
from drtool.core.session import Session
from drtool.repository.objects import SNAPSHOTS, object_name
from drtool.repository.tombstones import write_tombstone
from drtool.snapshot.model import Snapshot
from drtool.snapshot.names import matches
from drtool.snapshot.retention import Decision, RetentionPolicy, SnapshotRef, apply_policy
from drtool.snapshot.sets import SnapshotSet, find_set, group_sets
from drtool.snapshot.store import list_snapshot_ids, resolve_snapshot_id
from drtool.testing_hooks import crash_point

log = logging.getLogger("drtool.forget")

PinFn = Callable[[Snapshot], "str | None"]
PolicyFn = Callable[[str], "RetentionPolicy | None"]


@dataclass
class SeriesResult:
    name: str
    policy: str
    decisions: list[Decision] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    not_removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "policy": self.policy,
                "keep": [_decision(d) for d in self.decisions if d.keep],
                "remove": [_decision(d) for d in self.decisions if not d.keep],
                "removed": self.removed, "not_removed": self.not_removed}


@dataclass
class ForgetResult:
    dry_run: bool
    series: list[SeriesResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    logs: list[LogExpiry] = field(default_factory=list)

    @property
    def removed(self) -> list[str]:
        return [i for s in self.series for i in s.removed]

    @property
    def expired_segments(self) -> list[str]:
        return [name for e in self.logs for name in e.expired]

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "series": [s.as_dict() for s in self.series],
                "skipped_series": self.skipped, "removed": len(self.removed),
                "log_segments": [e.as_dict() for e in self.logs],
                "expired_segments": len(self.expired_segments)}

    def log_lines(self) -> list[str]:
        """Text listing of the WAL / binlog expiry (the CLI appends it to its own)."""
        lines = [line for e in self.logs for line in e.lines(self.dry_run)]
        if self.logs:
            count = sum(len(e.expire) for e in self.logs)
            lines.append(f"would expire {count} log file(s) (dry run)" if self.dry_run
                         else f"expired {len(self.expired_segments)} log file(s)")
        return lines


def _decision(d: Decision) -> dict[str, Any]:
    return {"id": d.snapshot.id, "time": d.snapshot.time.isoformat(), "reasons": list(d.reasons)}


def zone_from_config(data: Mapping[str, Any]) -> tzinfo:
    """The calendar zone for retention buckets: top-level ``timezone`` (default UTC)."""
    name = data.get("timezone", "UTC")
    if not isinstance(name, str):
        raise ConfigError("config: timezone must be a string such as \"Europe/Berlin\"")
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"config: unknown timezone {name!r}",
                          hint="use an IANA zone name such as Europe/Berlin") from None


def config_policy(data: Mapping[str, Any], name: str) -> RetentionPolicy | None:
    """``[sources.NAME.retention]``, else top-level ``[retention]``, else None."""
    sources = data.get("sources", {})
    source = sources.get(name, {}) if isinstance(sources, dict) else {}
    table = source.get("retention") if isinstance(source, dict) else None
    if table is None:
        table = data.get("retention")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"config: retention for {name!r} must be a table")
    try:
        return RetentionPolicy.from_mapping(table)
    except UsageError as exc:
        raise ConfigError(f"config: retention for {name!r}: {exc}") from None


def forget(session: Session, policy_for: PolicyFn, *, name: str | None = None,
           tz: tzinfo = timezone.utc, now: datetime | None = None, dry_run: bool = False,
           pinned: PinFn | None = None, keep_log_segments: bool = False) -> ForgetResult:
    """Decide per series, then delete the dropped snapshots and the log files no kept
    base needs (unless ``dry_run``).  ``pinned`` replaces the PITR pins."""
    now = now or datetime.now(timezone.utc)
    result = ForgetResult(dry_run)
    with session.lock("forget") as lock:
        session.sync()
        by_name: dict[str, list[Snapshot]] = {}
        snapsets, plain = group_sets(session.snapshots())
        for snap in plain:
            if not name or matches(snap.name, name):
                by_name.setdefault(snap.name, []).append(snap)
        policies = {series: policy_for(series) for series in sorted(by_name)}
        pins = pinned or pitr_retention.pitr_pins(by_name, policies, now, tz)
        for series, snaps in sorted(by_name.items()):
            policy = policies[series]
            if policy is None:
                result.skipped.append(series)
                continue
            result.series.append(_decide(series, snaps, policy, now, tz, pins))
        _decide_sets([s for s in snapsets if not name or matches(s.source, name)], policy_for, now, tz,
                     result, by_name)
        if name and not by_name:
            log.warning("no snapshots named %r", name)
        if not dry_run:
            for series_result in result.series:
                _remove(session, lock, series_result)
        if not keep_log_segments:
            result.logs = pitr_retention.expire_log_segments(
                session, lock, _pitr_series(result, by_name), dry_run=dry_run)
    log.info("forget finished: %d snapshot(s) removed, %d log file(s) expired", len(result.removed),
             len(result.expired_segments),
             extra={"fields": {"event": "forget", "removed": len(result.removed),
                               "expired_segments": len(result.expired_segments),
                               "dry_run": dry_run, "series": [s.name for s in result.series]}})
    return result


def _pitr_series(result: ForgetResult, by_name: dict[str, list[Snapshot]]
                 ) -> list[pitr_retention.PitrSeries]:
    """Database series and what stays of them: the keeps in a dry run; otherwise everything
    not actually removed (a snapshot under Object Lock still exists, so do its logs)."""
    found = []
    for series in result.series:
        if result.dry_run:
            kept = {d.snapshot.id for d in series.decisions if d.keep}
        else:
            kept = {s.id for s in by_name[series.name]} - set(series.removed)
        item = pitr_retention.pitr_series(series.name, by_name[series.name], kept)
        if item is not None:
            found.append(item)
    return found


def _decide(series: str, snaps: list[Snapshot], policy: RetentionPolicy, now: datetime,
            tz: tzinfo, pinned: PinFn | None) -> SeriesResult:
    refs = [SnapshotRef(s.id, s.time, frozenset(s.tags), pinned(s) if pinned else None)
            for s in snaps]
    decisions = apply_policy(refs, policy, now=now, tz=tz)
    return SeriesResult(series, policy.describe(), decisions)


def _decide_sets(snapsets: list[SnapshotSet], policy_for: PolicyFn, now: datetime, tz: tzinfo,
                 result: ForgetResult, by_name: dict[str, list[Snapshot]]) -> None:
    """A snapshot set is one unit: the policy of its source (``[sources.NAME.retention]``) keeps or
    removes whole sets, every shard with its set.  Only complete sets count for keep-N slots; an
    incomplete set newer than the newest complete one may still be in progress and is kept, an
    older one is superseded and removed."""
    by_source: dict[str, list[SnapshotSet]] = {}
    for snapset in snapsets:
        by_source.setdefault(snapset.source, []).append(snapset)
    for source, sets in sorted(by_source.items()):
        policy = policy_for(source)
        by_name[source] = [snap for s in sets for snap in s.snapshots]  # for the PITR pass: not a database
        if policy is None:
            result.skipped.append(source)
            continue
        complete = [s for s in sets if s.complete]
        refs = [SnapshotRef(s.id, s.time, frozenset(s.snapshots[0].tags)) for s in complete]
        verdicts = {d.snapshot.id: d for d in apply_policy(refs, policy, now=now, tz=tz)}
        newest = complete[-1].time if complete else None
        series = SeriesResult(source, f"{policy.describe()} (snapshot sets)")
        for snapset in sets:
            verdict = verdicts.get(snapset.id)
            if verdict is not None:
                keep, reasons = verdict.keep, verdict.reasons
            elif newest is None or snapset.time > newest:
                keep, reasons = True, ("incomplete snapshot set, may still be in progress",)
            else:
                keep, reasons = False, ("incomplete snapshot set, superseded by a complete one",)
            reasons = (f"set {snapset.id}",) + tuple(reasons)
            series.decisions += [Decision(SnapshotRef(snap.id, snap.time), keep, reasons)
                                 for snap in snapset.snapshots]
        result.series.append(series)


def _remove(session: Session, lock: Any, series: SeriesResult,
            labels: dict[str, str] | None = None) -> None:
    """Tombstone first, then manifests, then catalog rows: the repository is the truth.

    The tombstone tells every catalog that remembers these snapshots that
    drtool removed them (``ops.rollback``); it is written before anything
    is deleted, so no host ever sees one vanish unexplained.
    """
    backend = session.repo.backend
    doomed = [d.snapshot.id for d in series.decisions if not d.keep]
    if not doomed:
        return
    lock.ensure_held()
    write_tombstone(session.repo, "forget", snapshots=doomed, host=session.host)
    crash_point("forget-after-tombstone")
    for snap_id in doomed:
        lock.ensure_held()
        name = object_name(SNAPSHOTS, snap_id)
        try:
            if capabilities.is_locked(backend, name):
                series.not_removed.append(f"{snap_id[:8]}: under Object Lock retention")
                continue
            backend.delete(name)
        except DrtoolError as exc:
            series.not_removed.append(f"{snap_id[:8]}: {exc}")
            continue
        series.removed.append(snap_id)
        crash_point("forget-mid-delete")
    session.catalog.remove_snapshots(series.removed)
    record_forgotten(session, "snapshot", series.removed, "forget", labels)


def forget_ids(session: Session, refs: list[str], *, dry_run: bool = False) -> ForgetResult:
    """``drtool forget ID...``: remove these snapshots, whatever any policy says.

    Also takes the id of a snapshot that is already missing (one that
    ``check`` reports as vanished): forgetting it acknowledges the loss, so
    ``check`` stops failing on it.  A snapshot whose manifest cannot be read
    (damaged, or with a name that older versions accepted) can be forgotten
    by id as well.
    """
    result = ForgetResult(dry_run)
    with session.lock("forget") as lock:
        session.sync()
        snaps = {s.id: s for s in session.snapshots()}
        vanished = {m.object_id: m for m in (session.rollback.missing_snapshots if session.rollback else [])}
        listed = set(list_snapshot_ids(session.repo))
        candidates = sorted(listed | set(vanished))
        set_members = _set_refs(list(snaps.values()), [r for r in refs if r.startswith("set-")])
        chosen = list(dict.fromkeys([resolve_snapshot_id(candidates, ref) for ref in refs
                                     if not ref.startswith("set-")] + set_members))
        pitr_retention.check_chains_survive(list(snaps.values()), set(chosen))
        series = SeriesResult("(given by id)", "explicit ids")
        for snap_id in chosen:
            snap = snaps.get(snap_id)
            when = snap.time if snap else datetime.now(timezone.utc)
            reason = ("given by id" if snap_id in listed else "given by id (already missing: acknowledged)")
            series.decisions.append(Decision(SnapshotRef(snap_id, when), False, (reason,)))
        result.series.append(series)
        if dry_run:
            return result
        _remove(session, lock, series, {i: m.label for i, m in vanished.items()})
    return result


def _set_refs(snaps: list[Snapshot], refs: list[str]) -> list[str]:
    """``drtool forget set-ID``: the ids of every snapshot of those sets (a set goes as a whole)."""
    sets, _plain = group_sets(snaps)
    chosen = []
    for ref in refs:
        found = find_set(sets, ref)
        if found is None:
            raise SnapshotNotFound(f"no snapshot set {ref!r} in the repository",
                                   hint="'drtool snapshots' lists the sets")
        chosen += [s.id for s in found.snapshots]
    return chosen
