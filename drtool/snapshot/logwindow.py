"""Archived database log segments and recovery windows: pure logic, no database.

Point-in-time restore needs an unbroken run of log segments from a base
backup (or dump) to the requested time.  Segments carry a ``seq`` — the
absolute WAL segment number or the binlog file number — and a gap is any
missing number between two present ones.  The catalog stores ``Segment``
rows (``drtool.catalog.logs``); windows and gaps are computed here, generic
over an engine's :class:`LogRules` (``drtool.databases`` holds the engines),
so that log archiving (``wal-push``, which must start fast) and tests need
no SQL layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Protocol

from drtool.errors import SnapshotNotFound
from drtool.repository.objects import BINLOG, WAL  # noqa: F401 - re-exported; log kinds are object prefixes too
from drtool.snapshot.model import Snapshot

PG_BASE = "pg-base"
MARIADB_DUMP = "mariadb-dump"
DEFAULT_WAL_SEGMENT = 16 * 1024 * 1024


@dataclass
class Segment:
    """A log segment as the planning code sees it (times always UTC-aware)."""

    source: str
    kind: str
    name: str
    object_id: str
    size: int
    archived_at: datetime
    timeline: int | None = None
    seq: int | None = None
    first_time: datetime | None = None
    last_time: datetime | None = None
    start_pos: str | None = None
    end_pos: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def newest_time(self) -> datetime:
        """The latest moment this segment is known to cover (falls back to archive time)."""
        return self.last_time or self.archived_at

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items()}
        for key in ("archived_at", "first_time", "last_time"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        return data


@dataclass(frozen=True)
class Gap:
    """Missing sequence numbers ``first..last`` between two archived segments."""

    first: int
    last: int
    before: str
    after: str
    missing: str | None = None  # what is missing, when not a file number (MariaDB: GTIDs across servers)

    @property
    def count(self) -> int:
        return self.last - self.first + 1


# ----- planning helpers ---------------------------------------------------------
def by_seq(segments: Iterable[Segment], min_timeline: int = 0) -> dict[int, Segment]:
    """One segment per sequence number: the highest timeline wins (what recovery follows)."""
    chosen: dict[int, Segment] = {}
    for seg in segments:
        if seg.seq is None or (seg.timeline or 0) < min_timeline:
            continue
        old = chosen.get(seg.seq)
        if old is None or (seg.timeline or 0) > (old.timeline or 0):
            chosen[seg.seq] = seg
    return chosen


def find_gaps(segments: Iterable[Segment], start: int | None = None) -> list[Gap]:
    """Missing sequence numbers between present ones (from ``start`` if given)."""
    present = by_seq(segments)
    numbers = sorted(n for n in present if start is None or n >= start)
    gaps: list[Gap] = []
    if start is not None and numbers and numbers[0] > start:
        gaps.append(Gap(start, numbers[0] - 1, "(backup start)", present[numbers[0]].name))
    for prev, cur in zip(numbers, numbers[1:]):
        if cur != prev + 1:
            gaps.append(Gap(prev + 1, cur - 1, present[prev].name, present[cur].name))
    return gaps


def contiguous_run(segments: Iterable[Segment], start: int, min_timeline: int = 0) -> list[Segment]:
    """Segments ``start, start+1, …`` up to the first missing number."""
    present = by_seq(segments, min_timeline)
    run: list[Segment] = []
    seq = start
    while seq in present:
        run.append(present[seq])
        seq += 1
    return run


# ----- recovery bases and windows (pure; the catalog supplies snapshots and segments) ----------
def wal_segment_size(segments: list[Segment]) -> int:
    sizes = [s.extra.get("segment_size") for s in segments if s.extra.get("segment_size")]
    return int(sizes[0]) if sizes else DEFAULT_WAL_SEGMENT


@dataclass
class RecoveryBase:
    """A snapshot recovery can start from: where its logs begin, when it is consistent.

    ``required_seq`` is the last log file the base itself needs (the end of a
    base backup's WAL range); a base whose required logs are missing is useless.
    """

    snapshot: Snapshot
    start_seq: int
    timeline: int
    consistent_at: datetime
    required_seq: int

    def as_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot.id, "kind": self.snapshot.kind,
                "time": self.snapshot.time.isoformat(), "consistent_at": self.consistent_at.isoformat()}


class LogRules(Protocol):
    """What one database engine's log archive means (``drtool.databases`` implements it).

    Everything here is generic over these few rules: which snapshots are
    bases and where their logs start, and how the server names a missing file.
    """

    log_kind: str
    base_kind: str
    base_kinds: tuple[str, ...]

    def base_of(self, snap: Snapshot, segment_size: int) -> RecoveryBase | None: ...

    def first_missing_name(self, gap: Gap, timeline: int, segment_size: int) -> str: ...

    def chain_from(self, base: RecoveryBase, segments: list[Segment]) -> list[Segment]:
        """The log files a replay from ``base`` reads, in order, up to where the archive stops."""

    def gaps_from(self, base: RecoveryBase | None, segments: list[Segment]) -> list[Gap]:
        """The holes in the archive after ``base`` (None: anywhere)."""

    def base_chain(self, base: Snapshot, snapshots: list[Snapshot]) -> list[Snapshot]:
        """The snapshots a restore of ``base`` reads; raises SnapshotNotFound naming a missing one."""


@dataclass
class BrokenBase:
    """A base whose restore chain is not whole (an incremental whose full or a parent is gone)."""

    base: RecoveryBase
    error: SnapshotNotFound

    def as_dict(self) -> dict[str, Any]:
        return {**self.base.as_dict(), "problem": str(self.error)}


def complete_bases(found: list[RecoveryBase], snapshots: Iterable[Snapshot],
                   rules: LogRules) -> tuple[list[RecoveryBase], list[BrokenBase]]:
    """``found`` split into the bases whose whole chain is in ``snapshots`` and the broken ones.

    Only a base with its chain down to the full can be restored: a broken one
    starts no recovery, so it counts neither in windows nor in plans.
    """
    everything = list(snapshots)
    whole: list[RecoveryBase] = []
    broken: list[BrokenBase] = []
    for base in found:
        try:
            rules.base_chain(base.snapshot, everything)
        except SnapshotNotFound as exc:
            broken.append(BrokenBase(base, exc))
        else:
            whole.append(base)
    return whole, broken


def recovery_bases(snapshots: Iterable[Snapshot], rules: LogRules, segments: list[Segment]) -> list[RecoveryBase]:
    """Restorable starting points among ``snapshots``, oldest first."""
    seg_size = wal_segment_size(segments)
    found = []
    for snap in snapshots:
        if snap.kind not in rules.base_kinds:
            continue
        base = rules.base_of(snap, seg_size)
        if base is not None:
            found.append(base)
    return sorted(found, key=lambda b: b.consistent_at)


def reach(base: RecoveryBase, chain: list[Segment]) -> datetime | None:
    """Latest time recovery from ``base`` over ``chain`` reaches; None if the base is incomplete.

    For WAL this is the newest archived commit (PostgreSQL can only stop before
    a later commit); for binlogs the newest archived event.
    """
    if base.required_seq >= base.start_seq and (not chain or (chain[-1].seq or 0) < base.required_seq):
        return None
    times = [s.last_time for s in chain if s.last_time is not None]
    if times:
        return max(max(times), base.consistent_at)
    return base.consistent_at


@dataclass
class Window:
    """What a source can be restored to: merged intervals plus the gaps in its log archive."""

    source: str
    kind: str
    intervals: list[tuple[datetime, datetime]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    segments: int = 0
    bases: int = 0
    broken: list[BrokenBase] = field(default_factory=list)  # bases that cannot start a recovery
    lost: list[LostRange] = field(default_factory=list)  # what the broken bases alone would have covered
    unusable: list[str] = field(default_factory=list)  # ``broken`` in words, one line per cause (the planner's)

    @property
    def start(self) -> datetime | None:
        return self.intervals[0][0] if self.intervals else None

    @property
    def end(self) -> datetime | None:
        return self.intervals[-1][1] if self.intervals else None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "segments": self.segments, "bases": self.bases,
                "start": self.start.isoformat() if self.start else None,
                "end": self.end.isoformat() if self.end else None,
                "intervals": [[a.isoformat(), b.isoformat()] for a, b in self.intervals],
                "gaps": self.gaps, "broken_bases": [b.as_dict() for b in self.broken],
                "not_restorable": [r.as_dict() for r in self.lost], "unusable": self.unusable}


@dataclass
class LostRange:
    """Times only broken bases would reach: not restorable, and ``because`` says why."""

    start: datetime
    end: datetime
    because: list[BrokenBase]

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "snapshots": [b.base.snapshot.id for b in self.because],
                "problems": [str(b.error) for b in self.because]}


def _merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _subtract(whole: list[tuple[datetime, datetime]],
              holes: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The parts of the merged intervals ``whole`` outside every interval of ``holes`` (merged too)."""
    left: list[tuple[datetime, datetime]] = []
    for start, end in whole:
        for h_start, h_end in holes:
            if h_end <= start or h_start >= end:
                continue
            if h_start > start:
                left.append((start, h_start))
            start = max(start, h_end)
        if start < end:
            left.append((start, end))
    return left


Unusable = Callable[[list[RecoveryBase]], tuple[list[RecoveryBase], list[BrokenBase]]]


def compute_window(source: str, rules: LogRules, snapshots: Iterable[Snapshot],
                   segments: list[Segment], unusable: Unusable | None = None) -> Window:
    """Intervals reachable from the complete bases (a broken chain's members are listed, not used).

    ``unusable`` splits the complete bases again (the planner's pack-presence check: a chain
    whose member lost a pack); times that only broken bases reach are ``Window.lost``, each with
    the bases that would have reached them, so the window says why a range is not restorable."""
    everything = list(snapshots)
    found, broken = complete_bases(recovery_bases(everything, rules, segments), everything, rules)
    if unusable is not None:
        found, lacking = unusable(found)
        broken = sorted(broken + lacking, key=lambda b: b.base.consistent_at)
    reaches = {id(b): reach(b, rules.chain_from(b, segments)) for b in found + [x.base for x in broken]}
    intervals = [(b.consistent_at, end) for b in found if (end := reaches[id(b)]) is not None]
    window = Window(source, rules.log_kind, _merge(intervals), segments=len(segments), bases=len(found),
                    broken=broken)
    for start, end in _subtract(_merge([(b.base.consistent_at, r) for b in broken
                                        if (r := reaches[id(b.base)]) is not None]), window.intervals):
        because = [b for b in broken if (r := reaches[id(b.base)]) is not None
                   and b.base.consistent_at < end and r > start]
        window.lost.append(LostRange(start, end, because))
    seg_size, timeline = wal_segment_size(segments), (found[0].timeline if found else 1)
    window.gaps = [{"first_missing": rules.first_missing_name(g, timeline, seg_size), "count": g.count,
                    "after": g.before, "before": g.after}
                   for g in rules.gaps_from(found[0] if found else None, segments)]
    return window
