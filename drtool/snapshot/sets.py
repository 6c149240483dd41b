"""Snapshot sets as the repository records them: shard snapshots sharing ``meta["set"]["id"]``.

The catalog's ``snapshot_sets`` rows coordinate workers while a set is
made; what a set *is* afterwards is read from the snapshots alone, so
``snapshots``, ``restore`` and ``forget`` work on a repository whose
catalog was lost and rebuilt.  A set is complete when it holds a snapshot
for every shard number below ``shards``.  Should a shard have two snapshots
(a worker that lost its lease while writing; see docs/scale.md), the first
one counts and the other is listed in ``extra`` (it goes with the set).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable

from drtool.snapshot.model import Snapshot


@dataclass
class SnapshotSet:
    id: str
    source: str
    shards: int
    time: datetime
    members: dict[int, Snapshot] = field(default_factory=dict)
    extra: list[Snapshot] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.members) == self.shards

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.shards) if i not in self.members]

    @property
    def snapshots(self) -> list[Snapshot]:
        """Every snapshot of the set: the shards in order, then any extra copies."""
        return [self.members[i] for i in sorted(self.members)] + self.extra

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def listing(self) -> dict[str, Any]:
        snaps = [self.members[i] for i in sorted(self.members)]
        return {"set": self.id, "source": self.source, "time": self.time.isoformat(), "shards": self.shards,
                "complete": self.complete, "missing": self.missing,
                "hosts": sorted({s.host for s in snaps}),
                "files": sum(int(s.summary.get("files", 0)) for s in snaps),
                "size": sum(int(s.summary.get("size", 0)) for s in snaps),
                "bytes_added": sum(int(s.summary.get("bytes_added", 0)) for s in snaps),
                "snapshots": {str(i): s.id for i, s in sorted(self.members.items())},
                "extra": [s.id for s in self.extra]}


def stand_in(snapset: SnapshotSet) -> Snapshot:
    """One snapshot standing for a set where a series of snapshots is expected (status, rehearsal
    sampling): the first shard's, at the set's time, with the set's summed size and file count."""
    first = snapset.members[min(snapset.members)]
    listing = snapset.listing()
    summary = dict(first.summary, files=listing["files"], size=listing["size"])
    return replace(first, time=snapset.time, summary=summary)


def set_of(snap: Snapshot) -> dict[str, Any] | None:
    """The ``meta["set"]`` of a shard snapshot, when well-formed."""
    info = snap.meta.get("set") if isinstance(snap.meta, dict) else None
    if not isinstance(info, dict):
        return None
    if not isinstance(info.get("id"), str) or not isinstance(info.get("shard"), int) \
            or not isinstance(info.get("shards"), int) or not isinstance(info.get("source"), str):
        return None
    return info


def group_sets(snaps: Iterable[Snapshot]) -> tuple[list[SnapshotSet], list[Snapshot]]:
    """Sets (oldest first) and the snapshots that belong to none."""
    sets: dict[str, SnapshotSet] = {}
    plain: list[Snapshot] = []
    for snap in sorted(snaps, key=lambda s: (s.time, s.id)):
        info = set_of(snap)
        if info is None:
            plain.append(snap)
            continue
        found = sets.get(info["id"])
        if found is None:
            found = sets[info["id"]] = SnapshotSet(info["id"], info["source"], info["shards"],
                                                   _set_time(info, snap))
        if info["shard"] in found.members or not 0 <= info["shard"] < found.shards:
            found.extra.append(snap)
        else:
            found.members[info["shard"]] = snap
    return sorted(sets.values(), key=lambda s: (s.time, s.id)), plain


def _set_time(info: dict[str, Any], snap: Snapshot) -> datetime:
    try:
        when = datetime.fromisoformat(str(info["time"]))
    except (KeyError, ValueError):
        return snap.time
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def find_set(sets: list[SnapshotSet], ref: str, source: str | None = None) -> SnapshotSet | None:
    """A set by id (or a unique prefix of at least 8 characters), or 'latest' complete of ``source``."""
    chosen = [s for s in sets if source is None or s.source == source]
    if ref == "latest":
        complete = [s for s in chosen if s.complete]
        return complete[-1] if complete else None
    hits = [s for s in chosen if s.id == ref or (len(ref) >= 8 and s.id.startswith(ref))]
    return hits[0] if len(hits) == 1 else None


def is_set_ref(ref: str | None) -> bool:
    return bool(ref) and str(ref).startswith("set-")
