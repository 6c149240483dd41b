"""Sharded sources (``shards = N``): workers, snapshot sets, and restoring a set as one unit.

``drtool backup --source NAME`` of a sharded source is a worker
(``drtool.backup.shards``); any number of them on any number of hosts make
one snapshot set.  A set is read back from the shard snapshots' metadata
(``drtool.snapshot.sets``), so listing and restoring need no catalog rows;
the rows (``drtool.catalog.shardsets``) say which set is being made.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from drtool.config import Settings
from drtool.core.session import Session
from drtool.errors import SnapshotNotFound, UsageError
from drtool.snapshot.sets import SnapshotSet, find_set, group_sets, is_set_ref

if TYPE_CHECKING:  # the worker imports boto3 (only when a backup runs), the set rows SQLAlchemy (not at start-up)
    from drtool.backup.shards import WorkerResult
    from drtool.catalog.shardsets import SetRow
    from drtool.sources.objectstore import ObjectStoreSource

__all__ = ["SetRestoreResult", "SnapshotSet", "abandon_set", "is_set_ref",
           "pick_set", "restore_set", "restore_set_into_bucket", "set_rows", "sharded_source", "snapshot_sets",
           "work_on_source"]


def sharded_source(settings: Settings, name: str) -> Any:
    """The configured source ``name`` if it has ``shards = N``, else None (raises if unknown).
    The source modules are imported here: ``drtool snapshots`` lists sets without them (~0.05 s)."""
    from drtool.backup.configured import FilesSource, get_source
    from drtool.databases.engine import source_engines
    from drtool.sources.objectstore import ObjectStoreSource
    src = get_source(settings, name, source_engines())
    sharded = isinstance(src, (FilesSource, ObjectStoreSource)) and src.sharding is not None
    return src if sharded else None


def work_on_source(session: Session, src: Any, tags: list[str], join_only: bool = False,
                   wait: bool = True, since_process_start: bool = True) -> WorkerResult:
    """One worker of the source's open set (opening one unless ``join_only``).

    ``since_process_start``: a set committed after this process started is
    this run's work, done by others (the CLI: one process, one run); a
    long-lived caller passes False and opens a new set when none is open."""
    from drtool.backup.shards import WorkerOptions, process_started_at, run_worker
    since = process_started_at() if since_process_start else None
    return run_worker(session, src, tags, WorkerOptions(join_only=join_only, wait=wait, since=since))


def abandon_set(session: Session, source: str) -> SetRow | None:
    """Mark the source's open set failed (a set that can never finish, e.g. after a config change)."""
    from drtool.catalog.shardsets import ShardSets
    sets = ShardSets(session.catalog)
    row = next((r for r in reversed(sets.sets(source)) if r.state == "open"), None)
    if row is not None:
        sets.end_set(row.id, "failed", "abandoned by hand")
    return row


def snapshot_sets(session: Session, source: str | None = None) -> list[SnapshotSet]:
    """Sets in the repository, oldest first (complete or not)."""
    sets, _plain = group_sets(session.snapshots())
    return [s for s in sets if source is None or s.source == source]


def set_rows(session: Session, source: str | None = None) -> list[SetRow]:
    """The catalog's coordination rows (open, committed, failed sets)."""
    from drtool.catalog.shardsets import ShardSets
    return ShardSets(session.catalog).sets(source)


def pick_set(session: Session, ref: str, source: str | None = None) -> SnapshotSet:
    """A set by id or unique prefix, or 'latest' (the newest complete set of ``source``)."""
    found = find_set(snapshot_sets(session), ref, source)
    if found is None:
        what = f"complete snapshot set of {source}" if ref == "latest" else f"snapshot set {ref!r}"
        raise SnapshotNotFound(f"the repository has no {what}",
                               hint="'drtool snapshots' lists the sets")
    return found


@dataclass
class SetRestoreResult:
    snapset: SnapshotSet
    shards: list[Any] = field(default_factory=list)  # a RestoreResult / BucketRestoreResult per shard

    def total(self, attr: str) -> int:
        return sum(int(getattr(r, attr, 0)) for r in self.shards)

    def as_dict(self) -> dict[str, Any]:
        return {"set": self.snapset.id, "source": self.snapset.source, "shards": self.snapset.shards,
                "results": [r.as_dict() for r in self.shards]}


def _usable(snapset: SnapshotSet, allow_partial: bool) -> None:
    if not snapset.complete and not allow_partial:
        raise UsageError(f"snapshot set {snapset.id} is incomplete (shards {snapset.missing[:10]} missing)",
                         hint="restore a complete set ('latest'), or add --allow-partial to restore what it has")


def restore_set(session: Session, snapset: SnapshotSet, target: str, includes: list[str], overwrite: str,
                allow_partial: bool = False, dry_run: bool = False) -> SetRestoreResult:
    """Every shard's snapshot into one directory: shards hold disjoint paths under a common root."""
    from drtool.restore import run as _restore
    _usable(snapset, allow_partial)
    result = SetRestoreResult(snapset)
    for snap in (snapset.members[i] for i in sorted(snapset.members)):
        if dry_run:
            result.shards.append(_restore.plan(session, snap, target, includes, overwrite=overwrite))
        else:
            result.shards.append(_restore.restore(session, snap, target, includes=includes,
                                                  allow_partial=allow_partial, overwrite=overwrite))
    return result


def restore_set_into_bucket(session: Session, snapset: SnapshotSet, src: ObjectStoreSource, url: str,
                            includes: list[str], allow_partial: bool = False) -> SetRestoreResult:
    """Every shard's objects under ``url`` on the source's endpoint."""
    from drtool.backup.objectstore import make_client
    from drtool.restore.to_bucket import parse_bucket_url, restore_to_bucket
    _usable(snapset, allow_partial)
    bucket, prefix = parse_bucket_url(url, src.scheme)
    client = make_client(replace(src, bucket=bucket, prefix=prefix))
    result = SetRestoreResult(snapset)
    try:
        for snap in (snapset.members[i] for i in sorted(snapset.members)):
            result.shards.append(restore_to_bucket(session, snap, client, prefix, includes))
    finally:
        client.close()
    return result

