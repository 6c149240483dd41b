"""Point-in-time restore of database sources: the plan, the windows, the dispatch to an engine.

A restore point needs two things: a *base* taken before it (a ``pg-base``
snapshot that finished before the time, or a ``mariadb-dump`` with binlog
coordinates) and an unbroken run of archived log files from that base to
past the time.  Planning uses the catalog only (log-segment rows synced from
the small ``.info`` objects), so ``--dry-run`` and ``recoverable_window`` cost
a few LISTs; restoring then fetches exactly the files the plan names.  What
differs between engines (when a point is reachable, which files a replay
reads, how it is restored and verified) is asked of the engine.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from drtool.databases.engine import DatabaseEngine, RestoreRequest, engine_of_source, require_engine
from drtool.databases.fallback import data_missing, fallback_lines, unusable_lines
from drtool.databases.logarchive import sync_log_segments
from drtool.databases.targets import RecoveryTarget, TargetPosition
from drtool.errors import DrtoolError, SnapshotNotFound, UsageError
from drtool.snapshot.timeparse import in_utc_and_host
from drtool.snapshot.logwindow import (BrokenBase, Gap, RecoveryBase, Segment, Window, complete_bases,
                                       compute_window, reach, recovery_bases, wal_segment_size)
from drtool.snapshot.model import Snapshot

if TYPE_CHECKING:
    from drtool.catalog.store import Catalog
    from drtool.config import Settings
    from drtool.core.session import Session

log = logging.getLogger("drtool")

class RecoveryPointUnreachable(DrtoolError):
    """The archive cannot bring any base to the requested time (gap, or not archived yet)."""


class RecoveryShort(DrtoolError):
    """Replay ended before the point the plan promised: never reported as a successful restore."""

    hint = ("check that every log file of the plan is archived ('drtool pg window' / 'drtool mariadb "
            "window') and readable by the user running the restore; the server log names the last file")


# ----- windows ----------------------------------------------------------------------------------------
def recoverable_window(session: Session, source: str, engine: DatabaseEngine | None = None) -> Window:
    """Times the source can be restored to from the repository, and the gaps that limit it.

    A base whose chain lacks a pack is no base here either: the same presence check as a
    restore's (:func:`chain_data_missing`, the quick form), so the window never promises a
    range that the restore would then pass over or refuse."""
    logs = sync_log_segments(session)
    snapshots = session.snapshots(source)
    engine = engine or require_engine(snapshots, logs.segments(source), source)
    resolved = engine

    def lacking(whole: list[RecoveryBase]) -> tuple[list[RecoveryBase], list[BrokenBase]]:
        members = {m.id: m for b in whole if resolved.checks_chain_data(b.snapshot)
                   for m in resolved.base_chain(b.snapshot, snapshots) or [b.snapshot]}
        if not members:
            return whole, []
        unreadable = chain_data_missing(session, list(members.values()), quick=True, purpose="window")
        return _unusable(whole, snapshots, resolved, source, unreadable)
    window = compute_window(source, engine, snapshots, logs.segments(source, engine.log_kind), lacking)
    window.unusable = unusable_lines(source, window.broken)
    return window


def window_from_catalog(catalog: Catalog, source: str) -> Window | None:
    """The window from the catalog's rows alone, without syncing (cheap status checks).

    None when the source is not a point-in-time source.
    """
    from drtool.catalog.logs import LogCatalog
    from drtool.databases.engine import detect_engine
    snapshots = catalog.snapshots(source)
    segments = LogCatalog(catalog).segments(source)
    engine = detect_engine(snapshots, segments)
    if engine is None:
        return None
    return compute_window(source, engine, snapshots, [s for s in segments if s.kind == engine.log_kind])


# ----- planning ---------------------------------------------------------------------------------------
@dataclass
class PitrPlan:
    source: str
    engine: DatabaseEngine
    base: RecoveryBase
    segments: list[Segment]
    target_time: datetime | None
    inclusive: bool
    recoverable_until: datetime
    immediate: bool = False  # a named base: restored as it became consistent, no later log
    target: RecoveryTarget | None = None     # an LSN, transaction or restore point instead of a time
    position: TargetPosition | None = None   # where the archive holds ``target``
    timeline: int | None = None              # None: follow the latest timeline
    chain: list[Snapshot] = field(default_factory=list)  # a full + its incrementals up to base (MariaDB physical)
    passed_over: list[BrokenBase] = field(default_factory=list)  # newer bases whose chain is broken

    @property
    def latest(self) -> bool:
        return self.target_time is None and not self.immediate and self.target is None

    @property
    def source_type(self) -> str:
        return self.engine.name

    def last_archived_commit(self) -> datetime | None:
        """The newest commit (or event) time in the planned logs: what --latest must reach."""
        return max((s.last_time for s in self.segments if s.last_time is not None), default=None)

    def data_loss_window(self, now: datetime | None = None) -> tuple[datetime, datetime] | None:
        """Changes in this interval are not in the archive and will not be restored (--latest)."""
        if not self.latest:
            return None
        now = now or datetime.now(timezone.utc)
        return (self.recoverable_until, now) if now > self.recoverable_until else None

    def as_dict(self) -> dict[str, Any]:
        loss = self.data_loss_window()
        target = (self.target_time.isoformat() if self.target_time and not self.immediate
                  else "immediate" if self.immediate else self.target.describe() if self.target else "latest")
        return {"source": self.source, "type": self.engine.name, "base": self.base.as_dict(),
                "segments": [s.name for s in self.segments],
                "segment_bytes": sum(s.size for s in self.segments),
                "target_time": target, "inclusive": self.inclusive,
                "recoverable_until": self.recoverable_until.isoformat(),
                "target": self.target.as_dict() if self.target else None, "timeline": self.timeline,
                "chain": [s.id for s in self.chain] if len(self.chain) > 1 else None,
                "passed_over": [b.as_dict() for b in self.passed_over], "fallback": self.fallback(),
                "data_loss_window": [loss[0].isoformat(), loss[1].isoformat()] if loss else None}

    def fallback(self) -> list[str]:
        """One line per reason newer bases were passed over, naming the chain restored instead."""
        return fallback_lines(self.source, self.passed_over, self.base.snapshot, self.chain)

    def lines(self) -> list[str]:
        snap = self.base.snapshot
        if self.immediate:
            what = "the base as it became consistent (no later log replayed)"
        elif self.target is not None:
            what = f"{self.target.describe()} ({self.position.note if self.position else 'position unknown'})"
        elif self.latest:
            what = "latest archived state"
        else:
            what = (f"{in_utc_and_host(self.target_time)} "  # type: ignore[arg-type]
                    f"({'inclusive' if self.inclusive else 'exclusive'})")
        if self.timeline is not None:
            what += f" on timeline {self.timeline}"
        out = [f"source {self.source} ({self.engine.name}): recover to {what}",
               f"base: snapshot {snap.short_id} ({snap.kind}, taken {in_utc_and_host(snap.time)}, "
               f"consistent from {self.base.consistent_at.isoformat()})"]
        if len(self.chain) > 1:
            out.append(f"chain: full {self.chain[0].short_id} ({in_utc_and_host(self.chain[0].time)}) + "
                       f"{len(self.chain) - 1} incremental(s) "
                       f"{', '.join(s.short_id for s in self.chain[1:])}: each prepared onto the full in turn")
        out += self.fallback()
        if self.segments:
            out.append(f"logs: {len(self.segments)} file(s) {self.segments[0].name} .. {self.segments[-1].name} "
                       f"({sum(s.size for s in self.segments) / 2**20:.1f} MiB)")
        else:
            out.append("logs: none needed")
        out.append(f"archive reaches: {self.recoverable_until.isoformat()}")
        loss = self.data_loss_window()
        if loss:
            out.append(f"data-loss window: changes after {loss[0].isoformat()} are not archived "
                       f"({(loss[1] - loss[0]).total_seconds():.0f}s before now)")
        elif self.latest:
            out.append("data-loss window: none known")
        return out


def plan_pitr(session: Session, source: str, engine: DatabaseEngine, when: datetime | None,
              inclusive: bool = True, snapshot: str | None = None, target: RecoveryTarget | None = None,
              timeline: int | None = None, dry_run: bool = False) -> PitrPlan:
    """The plan (:func:`_plan_pitr`) with the snapshots its base is restored from: an incremental's
    chain must be whole, or the restore stops here naming the missing member.

    Where the engine asks for it (MariaDB physical chains), every pack the chain's members read
    must also be in the repository (:func:`chain_data_missing`): a base whose chain lacks one is
    passed over like a broken chain, and planning starts again without it, so a lost pack is
    found before anything is extracted, not after the full was.  A ``dry_run`` asks the local index
    cache first (``snapshot.presence.missing_data_cached``) and loads the index only when that cache
    cannot vouch for every blob: a plan must not name a chain that cannot be restored, but it need
    not cost what the restore costs."""
    snapshots = session.snapshots(source)
    unreadable: dict[str, str] = {}  # chain member id -> the pack (or tree) it lacks
    readable: set[str] = set()
    while True:
        plan = _plan_pitr(session, snapshots, source, engine, when, inclusive, snapshot, target, timeline,
                          unreadable)
        plan.chain = engine.base_chain(plan.base.snapshot, snapshots)
        members = [m for m in plan.chain or [plan.base.snapshot] if m.id not in readable]
        if not engine.checks_chain_data(plan.base.snapshot) or not members:
            break
        found = chain_data_missing(session, members, quick=dry_run)
        readable.update(m.id for m in members if m.id not in found)
        if not found:
            break
        unreadable.update(found)
        if snapshot is not None:  # a named base: nothing else to try
            raise data_missing(source, plan.base.snapshot, plan.chain, unreadable)
    for line in plan.fallback():
        log.warning("%s", line)
    return plan


def chain_data_missing(session: Session, members: list[Snapshot], quick: bool = False,
                       purpose: str = "restore") -> dict[str, str]:
    """Member id -> what it lacks, from the index and one ``stat`` per pack (``snapshot.presence``).

    ``quick`` (dry runs, ``mariadb window``): the local index cache as it stands answers first,
    without a lock, a listing of the index objects or reading new ones; only when it cannot vouch
    for every blob and pack is the index brought up to date (under a lock) and asked again, so a
    stale cache never makes a chain look broken."""
    from drtool.snapshot.presence import missing_data, missing_data_cached
    if quick and missing_data_cached(session.repo, members) == {}:
        return {}
    with session.lock(purpose, read_only_ok=True):
        session.repo.load_index()
        return missing_data(session.repo, members)


def _unusable(found: list[RecoveryBase], snapshots: list[Snapshot], engine: DatabaseEngine, source: str,
              unreadable: dict[str, str]) -> tuple[list[RecoveryBase], list[BrokenBase]]:
    """``found`` (whole chains) split again: bases whose chain has a member that lacks data are broken."""
    if not unreadable:
        return found, []
    usable: list[RecoveryBase] = []
    broken: list[BrokenBase] = []
    for base in found:
        chain = engine.base_chain(base.snapshot, snapshots)
        if any(m.id in unreadable for m in chain or [base.snapshot]):
            broken.append(BrokenBase(base, data_missing(source, base.snapshot, chain, unreadable)))
        else:
            usable.append(base)
    return usable, broken


def _plan_pitr(session: Session, snapshots: list[Snapshot], source: str, engine: DatabaseEngine,
               when: datetime | None, inclusive: bool, snapshot: str | None, target: RecoveryTarget | None,
               timeline: int | None, unreadable: dict[str, str] | None = None) -> PitrPlan:
    """Choose the base and the log files for a restore to ``when`` (None: latest) or ``target``.

    With ``snapshot`` (an id prefix) that base is restored to the moment it
    became consistent (no later log is replayed), or to ``target`` if given.
    ``timeline`` restricts the plan to log files of that timeline and its
    ancestors (PostgreSQL follows ``recovery_target_timeline``).  Otherwise
    only bases whose chain is whole are candidates: an incremental whose full
    or parent is gone, or (``unreadable``: member id -> what it lacks) one of
    whose members lacks a pack, is passed over for an older complete chain,
    and named when none reaches the target.
    """
    segments = sync_log_segments(session).segments(source, engine.log_kind)
    if timeline is not None:
        segments = [s for s in segments if s.timeline is None or s.timeline <= timeline]
    position = engine.resolve_target(target, timeline, segments, wal_segment_size(segments))
    found = recovery_bases(snapshots, engine, segments)
    if timeline is not None:
        found = [b for b in found if b.timeline <= timeline]
    if not found:
        raise SnapshotNotFound(f"source {source} has no {engine.labels.base} in the repository"
                               + (f" on timeline {timeline} or before" if timeline is not None else ""),
                               hint=f"run 'drtool backup --source {source}' first")
    if snapshot is not None:  # the chain of a named base is checked (and named) by plan_pitr
        found = [b for b in found if b.snapshot.id.startswith(snapshot)]
        if len(found) != 1:
            raise SnapshotNotFound(f"snapshot {snapshot!r} is not a single {engine.labels.base} of source "
                                   f"{source}", hint=f"list them with 'drtool snapshots --name {source}'")
        if target is None:
            when = found[0].consistent_at
        if target is not None and position is not None:
            return _plan_target(source, engine, found, segments, target, position, inclusive, timeline,
                                explicit_base=True)
        base, chain, end = _choose_base(source, engine, found, segments, when)
        return PitrPlan(source, engine, base, engine.immediate(chain, base), when, inclusive, end, immediate=True,
                        timeline=timeline)
    whole, broken = complete_bases(found, snapshots, engine)
    whole, lacking = _unusable(whole, snapshots, engine, source, unreadable or {})
    broken = sorted(broken + lacking, key=lambda b: b.base.consistent_at)
    try:
        if not whole:
            raise SnapshotNotFound(f"source {source} has no {engine.labels.base} with a whole chain")
        if target is not None and position is not None:
            plan = _plan_target(source, engine, whole, segments, target, position, inclusive, timeline,
                                explicit_base=False)
        else:
            plan = _plan_time(source, engine, whole, segments, when, inclusive, timeline)
    except (SnapshotNotFound, RecoveryPointUnreachable) as exc:
        wanted = [b for b in broken if when is None or b.base.consistent_at <= when]
        if not wanted:
            raise
        raise _no_whole_chain(source, wanted[-1], exc) from None
    plan.passed_over = [b for b in broken if b.base.consistent_at > plan.base.consistent_at
                        and (when is None or b.base.consistent_at <= when)]
    return plan


def _plan_time(source: str, engine: DatabaseEngine, found: list[RecoveryBase], segments: list[Segment],
               when: datetime | None, inclusive: bool, timeline: int | None) -> PitrPlan:
    """The newest base consistent by ``when`` and the log files from it to ``when`` (None: all)."""
    base, chain, end = _choose_base(source, engine, found, segments, when)
    if when is not None and not engine.reachable(when, end, inclusive):
        raise _unreachable(source, engine, base, segments, when, end)
    needed = engine.needed(chain, when)
    engine.check_chain(source, needed, segments)
    return PitrPlan(source, engine, base, needed, when, inclusive, end, timeline=timeline)


def _no_whole_chain(source: str, broken: BrokenBase, why: DrtoolError) -> SnapshotNotFound:
    """The newest base for the target has a broken chain and no older whole chain serves instead."""
    error = broken.error
    return type(error)(f"{error}, and no older base with a whole chain serves instead ({why})",
                       hint=f"restore an earlier point that an older full reaches ('drtool mariadb window "
                            f"--source {source}' lists them), find the missing snapshot in a copy of the "
                            f"repository ('drtool copy' it back), and take a full backup now: drtool "
                            f"backup --source {source} --full")


def _plan_target(source: str, engine: DatabaseEngine, found: list[RecoveryBase], segments: list[Segment],
                 target: RecoveryTarget, position: TargetPosition, inclusive: bool, timeline: int | None,
                 explicit_base: bool) -> PitrPlan:
    """The newest base consistent before the target whose chain reaches the target's log file."""
    if not explicit_base:
        found = [b for b in found if engine.base_precedes(b, position)]
        if not found:
            raise SnapshotNotFound(f"no {engine.labels.base} of source {source} was consistent before "
                                   f"{target.describe()} ({position.note})")
    base, chain, end = _choose_base(source, engine, found, segments, None)
    if not chain or (chain[-1].seq or 0) < position.seq:
        missing = engine.first_missing_name(Gap((chain[-1].seq or 0) + 1 if chain else base.start_seq,
                                                position.seq, "", ""), base.timeline, wal_segment_size(segments))
        raise RecoveryPointUnreachable(
            f"{target.describe()} of source {source} is not reachable from snapshot {base.snapshot.short_id}: "
            f"{engine.labels.log_file} {missing} is not in the archive ({position.note})",
            hint=f"archive it first ({engine.labels.archive_more}), or check the value")
    needed = [s for s in chain if (s.seq or 0) <= position.seq + 1]
    engine.check_chain(source, needed, segments)
    return PitrPlan(source, engine, base, needed, None, inclusive, end, target=target, position=position,
                    timeline=timeline)


def _choose_base(source: str, engine: DatabaseEngine, found: list[RecoveryBase], segments: list[Segment],
                 when: datetime | None) -> tuple[RecoveryBase, list[Segment], datetime]:
    """The newest base consistent by ``when`` whose own logs are all archived."""
    candidates = [b for b in found if when is None or b.consistent_at <= when]
    if not candidates:
        raise SnapshotNotFound(f"no {engine.labels.base} of source {source} was consistent at or before "
                               f"{when.isoformat()}; the first is from {found[0].consistent_at.isoformat()}")  # type: ignore[union-attr]
    for base in reversed(candidates):
        chain = engine.chain_from(base, segments)
        end = reach(base, chain)
        if end is not None:
            return base, chain, end
        if when is not None:
            break
    base = candidates[-1]
    missing = engine.first_missing_name(_gap_at(base), base.timeline, wal_segment_size(segments))
    raise RecoveryPointUnreachable(
        f"{engine.labels.log_file} files needed to make {engine.labels.base} {base.snapshot.short_id} of source "
        f"{source} consistent are missing from the archive (from {missing})",
        hint=f"check the log archiving ({engine.labels.archive_more}); take a new base")


def _gap_at(base: RecoveryBase) -> Any:
    return Gap(base.start_seq, base.start_seq, "(backup start)", "")


def _unreachable(source: str, engine: DatabaseEngine, base: RecoveryBase, segments: list[Segment],
                 when: datetime, end: datetime) -> DrtoolError:
    gaps = engine.gaps_from(base, segments)
    if gaps:
        missing = engine.first_missing_name(gaps[0], base.timeline, wal_segment_size(segments))
        return RecoveryPointUnreachable(
            f"{engine.labels.log_file} {missing} of source {source} is missing from the archive (gap after "
            f"{gaps[0].before}): from snapshot {base.snapshot.short_id} recovery reaches at most "
            f"{end.isoformat()}, not {when.isoformat()}",
            hint="choose an earlier --point-in-time, or a base taken after the gap")
    return RecoveryPointUnreachable(
        f"point in time {when.isoformat()} is after the last archived {engine.labels.event} of source {source} "
        f"({end.isoformat()})",
        hint=f"use --latest to recover everything archived, or archive more first ({engine.labels.archive_more})")


def plan_from_config(session: Session, src: Any, when: datetime | None, inclusive: bool,
                     snapshot: str | None = None, target: RecoveryTarget | None = None,
                     timeline: int | None = None, dry_run: bool = False) -> PitrPlan:
    engine = _engine_of(src)
    engine.check_pitr_source(src)
    return plan_pitr(session, src.name, engine, when, inclusive, snapshot, target, timeline, dry_run)


def _engine_of(src: Any) -> DatabaseEngine:
    engine = engine_of_source(src)
    if engine is None:
        raise UsageError(f"source {src.name} is not a database source",
                         hint=f"use 'drtool restore --name {src.name} --point-in-time TIME --target DIR'")
    return engine


# ----- restoring ----------------------------------------------------------------------------------------
@dataclass
class PitrResult:
    plan: PitrPlan
    target: str | None = None
    target_db: str | None = None
    started: bool = False
    outcome: dict[str, str] = field(default_factory=dict)
    members: int = 0
    script: str | None = None
    socket: str | None = None
    port: int | None = None
    socket_dir: str | None = None
    reached: str | None = None  # what replay verifiably reached
    log_file: str | None = None
    notes: list[str] = field(default_factory=list)  # the engine's next steps for the operator
    prefetch: dict[str, Any] | None = None  # PostgreSQL --start: WAL fetched ahead (wal_prefetch)

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.as_dict(), "target": self.target, "target_db": self.target_db,
                "started": self.started, "outcome": self.outcome, "restore_command": self.script,
                "socket": self.socket, "port": self.port, "socket_dir": self.socket_dir,
                "reached": self.reached, "log": self.log_file, "prefetch": self.prefetch}

    def lines(self) -> list[str]:
        where = self.target_db or self.target
        out = [f"restored source {self.plan.source} from snapshot {self.plan.base.snapshot.short_id} "
               f"with {len(self.plan.segments)} log file(s) into {where}"]
        out += [f"recovery: {self.outcome[key]}" for key in ("stopped", "last_transaction") if key in self.outcome]
        if self.reached:
            out.append(f"verified: {self.reached}")
        return out + self.notes


def restore_pitr(session: Session, settings: Settings, src: Any, when: datetime | None,
                 request: RestoreRequest, *, inclusive: bool = True, snapshot: str | None = None,
                 target: RecoveryTarget | None = None, timeline: int | None = None) -> PitrResult:
    """``drtool restore [SNAPSHOT] --source NAME --point-in-time TIME|--latest|--target-…`` for databases."""
    plan = plan_from_config(session, src, when, inclusive, snapshot, target, timeline)
    return plan.engine.restore(session, settings, plan, src, request)
