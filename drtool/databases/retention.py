"""PITR-aware retention: keep the base a recovery window needs, expire the logs no base needs.

``drtool forget`` thins out snapshots; for database sources a snapshot alone
is not the whole backup.  Point-in-time recovery to a moment T replays the
archived WAL / binlogs from the newest base (``pg-base`` snapshot, or
``mariadb-dump`` with binlog coordinates) that was consistent at or before T.
Two consequences, one per half of this module:

* **Pins (pure).**  ``keep_within`` promises "any point of the last N days",
  but its window usually starts *between* two bases: the base that makes the
  window's first moment recoverable is just outside it and the policy alone
  would forget it.  :func:`base_pins` keeps it (reason ``pitr base for window
  starting …``) without consuming a keep-N slot.  For PostgreSQL the base
  counts from its *consistent* point (the end of ``pg_basebackup``), not its
  start time.  Bucket rules keep bases themselves, so the windows they imply
  start at a kept base and need no pin.  A kept MariaDB physical
  incremental also pins every member of its chain (``chain_dependents``):
  without its full and the incrementals before it, it restores nothing.
* **Expiry.**  After forgetting, a log file *entirely older* than the start of
  the oldest kept base (PostgreSQL: that base's start WAL file; MariaDB: the
  binlog file of the dump's coordinates) can never be replayed by any restore,
  so :func:`expire_log_segments` deletes it.  Conservative on purpose: every
  log file from the oldest kept base on stays (a chain, not just each base's
  own range, so the whole span between kept bases remains recoverable);
  timeline ``.history`` files and the newest archived file always stay; a
  source with no kept base keeps everything; objects under Object Lock are
  skipped; every deletion checks the forget lock is still held.

Deletion runs in the reverse of the write order (``wal-push`` writes data,
then ``.info``, then the catalog learns of it): ``.info`` first — so the
archive never claims a file it lacks — then the data object, then the catalog
rows.  A crash between the two deletes leaves a data object without ``.info``:
invisible to planning, and deleted by the next forget (the row this catalog
still had tells it which object to finish).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from drtool.backends import capabilities
from drtool.databases.engine import DatabaseEngine, detect_engine, engines
from drtool.databases.logarchive import source_prefix, sync_log_segments
from drtool.errors import DrtoolError, SnapshotNotFound, UsageError
from drtool.repository.locks import Lock
from drtool.repository.objects import INFO_SUFFIX, object_name
from drtool.snapshot.logwindow import RecoveryBase, Segment, complete_bases, recovery_bases, wal_segment_size
from drtool.snapshot.model import Snapshot
from drtool.snapshot.retention import RetentionPolicy, SnapshotRef, apply_policy
from drtool.testing_hooks import crash_point

if TYPE_CHECKING:
    from drtool.core.session import Session

log = logging.getLogger("drtool.forget")

PinFn = Callable[[Snapshot], "str | None"]
CRASH_AFTER_INFO = "forget-expire-after-info-delete"


# ----- pins (pure) ------------------------------------------------------------------------------------
def series_engine(snapshots: Iterable[Snapshot]) -> DatabaseEngine | None:
    """The engine of a series of recovery bases (None: not a point-in-time series)."""
    return detect_engine(snapshots, [])


def window_start(snapshots: Sequence[Snapshot], policy: RetentionPolicy, now: datetime) -> datetime | None:
    """First moment of the keep_within window, anchored as apply_policy anchors it
    (the newest snapshot, capped at now), so pins and keeps agree."""
    if policy.keep_within is None or not snapshots:
        return None
    return min(max(s.time for s in snapshots), now) - policy.keep_within


def usable_bases(snapshots: Iterable[Snapshot], engine: DatabaseEngine,
                 segments: list[Segment]) -> list[RecoveryBase]:
    """Recovery bases oldest first; a snapshot with unreadable coordinates is skipped, not fatal
    (it cannot start a recovery anyway, and one odd manifest must not stop retention), and so is an
    incremental whose chain is broken: the window pin must fall on a base that restores."""
    snaps = list(snapshots)
    found: list[RecoveryBase] = []
    for snap in snaps:
        try:
            found += recovery_bases([snap], engine, segments)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("snapshot %s: unreadable recovery coordinates (%s); not treated as a base",
                        snap.short_id, exc)
    whole, _broken = complete_bases(sorted(found, key=lambda b: b.consistent_at), snaps, engine)
    return whole


def base_pins(snapshots: Sequence[Snapshot], policy: RetentionPolicy, now: datetime,
              tz: tzinfo) -> dict[str, str]:
    """{snapshot id: reason} for the one base the series' keep_within window needs, and for every
    snapshot a kept incremental's chain needs (MariaDB physical), if the policy would otherwise
    forget them."""
    engine = series_engine(snapshots)
    chains = engine or next((e for e in engines() if any(s.kind in e.base_kinds for s in snapshots)), None)
    if chains is None or policy.is_empty():
        return {}
    pins = _window_pin(snapshots, engine, policy, now, tz) if engine is not None else {}
    refs = [SnapshotRef(s.id, s.time, frozenset(s.tags), pins.get(s.id)) for s in snapshots]
    kept = {d.snapshot.id for d in apply_policy(refs, policy, now=now, tz=tz) if d.keep}
    for ancestor, needers in chain_dependents(chains, snapshots).items():
        kept_needers = [n for n in needers if n in kept]
        if kept_needers and ancestor not in kept:
            pins[ancestor] = f"in the chain of kept incremental {kept_needers[-1][:8]}"
    return pins


def _window_pin(snapshots: Sequence[Snapshot], engine: DatabaseEngine, policy: RetentionPolicy, now: datetime,
                tz: tzinfo) -> dict[str, str]:
    start = window_start(snapshots, policy, now)
    if start is None:
        return {}
    before = [b for b in usable_bases(snapshots, engine, []) if b.consistent_at <= start]
    if not before:
        return {}  # the window starts before the first base: nothing older can help
    base = before[-1]
    refs = [SnapshotRef(s.id, s.time, frozenset(s.tags)) for s in snapshots]
    kept = {d.snapshot.id for d in apply_policy(refs, policy, now=now, tz=tz) if d.keep}
    if base.snapshot.id in kept:
        return {}
    return {base.snapshot.id: f"pitr base for window starting {_stamp(start)}"}


def chain_dependents(engine: DatabaseEngine, snapshots: Sequence[Snapshot]) -> dict[str, list[str]]:
    """{snapshot id: the incrementals (ids, oldest first) whose restore chains read it}.

    A chain already broken protects nothing (it cannot be restored anyway)."""
    needed: dict[str, list[str]] = {}
    bases = [s for s in snapshots if s.kind in engine.base_kinds]
    for snap in bases:
        try:
            chain = engine.base_chain(snap, bases)
        except SnapshotNotFound:
            continue
        for ancestor in chain[:-1]:
            needed.setdefault(ancestor.id, []).append(snap.id)
    return needed


def check_chains_survive(snapshots: Sequence[Snapshot], doomed: set[str]) -> None:
    """``drtool forget ID…``: refuse to forget a snapshot that a remaining incremental's chain needs
    (forgetting the incrementals with it is fine: the chain goes as a whole)."""
    for engine in engines():
        for ancestor, needers in chain_dependents(engine, snapshots).items():
            left = [n[:8] for n in needers if n not in doomed]
            if ancestor in doomed and left:
                raise UsageError(
                    f"snapshot {ancestor[:8]} is in the restore chain of incremental backup(s) {', '.join(left)}: "
                    f"forgetting it alone would leave them unrestorable",
                    hint=f"forget the chain with it (drtool forget {ancestor[:8]} {' '.join(left)}), or let the "
                         f"retention policy drop it after a newer full backup")


def pitr_pins(by_series: Mapping[str, Sequence[Snapshot]],
              policies: Mapping[str, RetentionPolicy | None], now: datetime,
              tz: tzinfo = timezone.utc) -> PinFn:
    """forget's ``pinned`` hook for every database series that has a policy."""
    pins: dict[str, str] = {}
    for series, snaps in by_series.items():
        policy = policies.get(series)
        if policy is not None:
            pins.update(base_pins(snaps, policy, now, tz))
    return lambda snap: pins.get(snap.id)


def _stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----- which log files expire (pure) -------------------------------------------------------------
@dataclass
class ExpiredSegment:
    name: str
    object_id: str
    size: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LogExpiry:
    """One source's log files that forget deletes (or would, in a dry run), and why."""

    source: str
    kind: str
    keep_from: str | None = None   # the first log file kept: where the oldest kept base starts
    base: str | None = None        # that base's snapshot id
    expire: list[ExpiredSegment] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    not_expired: list[str] = field(default_factory=list)
    note: str | None = None

    @property
    def expired_bytes(self) -> int:
        done = set(self.expired)
        return sum(s.size for s in self.expire if s.name in done)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "keep_from": self.keep_from, "base": self.base,
                "expire": [s.as_dict() for s in self.expire], "expired": self.expired,
                "not_expired": self.not_expired, "note": self.note}

    def lines(self, dry_run: bool) -> list[str]:
        """Text for the forget listing."""
        head = f"{self.source} ({self.kind} files)"
        if self.note:
            return [f"{head}: {self.note}"]
        out = [f"{head}: keeping log files from {self.keep_from} (base {(self.base or '')[:8]})"]
        verb = "expire" if dry_run else "expired"
        done = set(self.expired)
        out += [f"  {verb}  {s.name}  {s.reason}" for s in self.expire if dry_run or s.name in done]
        out += [f"  not expired: {line}" for line in self.not_expired]
        return out


def plan_expiry(source: str, engine: DatabaseEngine, segments: list[Segment],
                bases: list[RecoveryBase]) -> LogExpiry:
    """The log files of ``source`` entirely older than the oldest of ``bases`` (the kept ones)."""
    plan = LogExpiry(source, engine.log_kind)
    if not bases:
        plan.note = "no base kept; log files left alone"
        return plan
    seg_size = wal_segment_size(segments)
    oldest = min(bases, key=lambda b: (b.start_seq, b.consistent_at))
    plan.base = oldest.snapshot.id
    plan.keep_from = engine.keep_from(oldest, seg_size)
    numbered = [(seg, engine.expiry_position(seg, oldest, seg_size)) for seg in segments]
    newest = max((n for _, n in numbered if n is not None), default=None)
    reason = f"before {plan.keep_from}, where the oldest kept base {oldest.snapshot.short_id} starts"
    # Whatever a kept base's replay reads stays, whatever its number: after a MariaDB switchover an
    # older base's chain crosses by GTID into the new primary's early files (numbered before a newer base).
    needed = {seg.object_id for base in bases for seg in engine.chain_from(base, segments)}
    for seg, number in sorted(numbered, key=lambda p: (p[1] if p[1] is not None else -1, p[0].name)):
        if number is None or number >= oldest.start_seq or number == newest or seg.object_id in needed:
            continue
        plan.expire.append(ExpiredSegment(seg.name, seg.object_id, seg.size, reason))
    return plan


# ----- expiry against the repository ------------------------------------------------------------------
@dataclass
class PitrSeries:
    """A database series after forget's decisions: what stays decides what logs stay."""

    source: str
    engine: DatabaseEngine
    kept: list[Snapshot]

    @property
    def kind(self) -> str:
        return self.engine.log_kind


def pitr_series(source: str, snapshots: Sequence[Snapshot], kept_ids: set[str]) -> PitrSeries | None:
    engine = series_engine(snapshots)
    if engine is None:
        return None
    return PitrSeries(source, engine, [s for s in snapshots if s.id in kept_ids])


def expire_log_segments(session: Session, lock: Lock, series: Sequence[PitrSeries], *,
                        dry_run: bool) -> list[LogExpiry]:
    """Delete (unless ``dry_run``) each source's log files that no kept base can replay.

    Runs under forget's lock; the log rows are synced from the repository
    first, because ``wal-push`` / ``binlog-push`` write only to the repository.
    """
    if not series:
        return []
    from drtool.catalog.logs import LogCatalog
    logs = LogCatalog(session.catalog)
    rows_before = logs.segments()
    present = sync_log_segments(session).known_object_ids()
    results = []
    for item in series:
        segments = logs.segments(item.source, item.kind)
        prefix = source_prefix(session.repo, item.kind, item.source)
        leftovers = _leftovers(session, prefix, item, rows_before, present)
        plan = plan_expiry(item.source, item.engine, segments + leftovers,
                           usable_bases(item.kept, item.engine, segments))
        leftover_ids = {s.object_id for s in leftovers}
        for seg in plan.expire:
            if seg.object_id in leftover_ids:
                seg.reason += " (its .info was deleted by an interrupted forget)"
        if not dry_run:
            _delete(session, lock, prefix, plan)
        results.append(plan)
    return results


def _leftovers(session: Session, prefix: str, item: PitrSeries, rows_before: list[Segment],
               present: set[str]) -> list[Segment]:
    """Rows whose ``.info`` vanished but whose data object is still there: a crash between
    the two deletes.  (Only this catalog remembers them; the residue is one file per crash.)"""
    found = []
    for seg in rows_before:
        if seg.source != item.source or seg.kind != item.kind or seg.object_id in present:
            continue
        if session.repo.backend.stat(object_name(prefix, seg.object_id)) is not None:
            found.append(seg)
    return found


def _delete(session: Session, lock: Lock, prefix: str, plan: LogExpiry) -> None:
    """``.info`` first, data second, catalog rows last (see the module docstring)."""
    backend = session.repo.backend
    done: list[str] = []
    for seg in plan.expire:
        names = (object_name(prefix, seg.object_id) + INFO_SUFFIX, object_name(prefix, seg.object_id))
        lock.ensure_held()
        try:
            if any(capabilities.is_locked(backend, name) for name in names):
                plan.not_expired.append(f"{seg.name}: under Object Lock retention")
                continue
            backend.delete(names[0])
            crash_point(CRASH_AFTER_INFO)
            backend.delete(names[1])
        except DrtoolError as exc:
            plan.not_expired.append(f"{seg.name}: {exc}")
            continue
        plan.expired.append(seg.name)
        done.append(seg.object_id)
        log.info("expired %s file %s of source %s (%s)", plan.kind, seg.name, plan.source, seg.reason)
    from drtool.catalog.logs import LogCatalog
    LogCatalog(session.catalog).remove(done)
