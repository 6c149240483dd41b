"""Workers for sharded sources (``shards = N``): claim a shard, back it up, until the set commits.

Any number of ``drtool backup --source NAME`` processes, on one host or
many, share the work through the catalog (``drtool.catalog.shardsets``):

1. join the source's open snapshot set, or open one (N ``todo`` shard rows);
2. claim a shard (a lease with an expiry), renew it from a heartbeat
   thread every fifth of ``lease_seconds``;
3. back the shard up as an ordinary snapshot of the series
   ``NAME/shard-i-of-N`` (parent: that series' previous snapshot, so each
   shard is incremental on its own), with ``meta["set"]`` naming the set;
   just before the snapshot is written the lease is checked again, so a
   worker that was overtaken writes nothing;
4. mark the shard done with its snapshot id; whoever finds every shard
   done commits the set.

A worker with nothing left to claim waits while others hold leases: if a
holder dies, its lease expires and a waiting worker takes the shard over.
A shard whose snapshot is already in the repository (its worker died
after writing it, before marking it done) is not backed up again: the
snapshot is adopted.  Blobs a dead worker indexed are found in the index
and not stored again; packs it wrote but never indexed are left for prune.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, cast

from drtool.backends.s3_source import ListedObject, S3SourceClient
from drtool.backup.configured import FilesSource
from drtool.backup.objectstore import ObjectTreeBuilder, make_client
from drtool.backup.run import (BackupResult, _backup_frame, _commit, _record_in_catalog, _snapshot,
                               check_labels)
from drtool.backup.treewalk import TreeWalker
from drtool.catalog.shardsets import Lease, Progress, SetRow, ShardSets
from drtool.core.session import Session
from drtool.errors import DrtoolError, SourceError
from drtool.repository.locks import Lock, process_start_time
from drtool.snapshot.model import DIR, Snapshot
from drtool.snapshot.sets import set_of
from drtool.snapshot.store import list_snapshot_ids, load_snapshot, load_tree, store_tree
from drtool.sources import files as fs
from drtool.sources.objectstore import ObjectStoreSource
from drtool.sources.shards import Sharding, set_meta, shard_of, shard_series
from drtool.testing_hooks import crash_point

log = logging.getLogger("drtool")
POLL_SECONDS = 5.0  # a worker with nothing to claim looks again this often (one catalog query)
ShardedSource = FilesSource | ObjectStoreSource


@dataclass
class WorkerOptions:
    join_only: bool = False          # never open a new set, only help with an open one
    wait: bool = True                # wait for shards others hold (take them over if they expire)
    owner: str | None = None         # default host:pid
    since: datetime | None = None    # a set committed since then counts as this run's (process start)
    sleep: Callable[[float], None] = time.sleep
    client_factory: Callable[[ObjectStoreSource], S3SourceClient] = make_client
    sets_factory: Callable[[Any], ShardSets] = ShardSets  # the catalog's sets (a test wraps them)


@dataclass
class WorkerResult:
    source: str
    set_id: str | None
    state: str                       # the set's state when the worker left: open | committed | failed | none
    progress: Progress | None
    results: list[BackupResult] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)   # shards whose snapshot a dead worker had written
    failures: list[str] = field(default_factory=list)
    committed_here: bool = False

    def as_dict(self) -> dict[str, Any]:
        prog = self.progress
        return {"source": self.source, "set": self.set_id, "state": self.state,
                "committed_here": self.committed_here, "adopted_shards": self.adopted,
                "shards": None if prog is None else {"total": prog.total, "done": prog.done, "todo": prog.todo,
                                                     "leased": prog.leased, "failed": prog.failed},
                "snapshots": [r.as_dict() for r in self.results], "failures": self.failures}


def process_started_at() -> datetime | None:
    """When this process started, by this host's wall clock (Linux: /proc); None if unknown.

    Its age is measured on the boot-time clock (the process's start tick
    against ``CLOCK_BOOTTIME`` now, both to 10 ms) and taken from the wall
    clock.  Not ``btime`` of /proc/stat plus the start tick: ``btime`` is
    whole seconds, so that sum could be up to a second early, and a set
    committed in that second counted as "committed after this worker
    started": a backup started right after the previous night's set was
    committed found that set and did nothing.
    """
    ticks = process_start_time(os.getpid())
    if ticks is None:
        return None
    try:
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    return datetime.now(timezone.utc) - timedelta(seconds=max(0.0, age))


def run_worker(session: Session, src: ShardedSource, tags: list[str] | None = None,
               options: WorkerOptions | None = None) -> WorkerResult:
    """Work on the source's open set (or a new one) until it commits, fails, or nothing is left."""
    options = options or WorkerOptions()
    sharding = src.sharding
    assert sharding is not None, src
    check_labels(session, src.name, tags)
    sets = options.sets_factory(session.catalog)
    owner = options.owner or f"{session.host}:{os.getpid()}"
    row = sets.open_set(src.name, sharding.shards, session.host, options.join_only, options.since)
    if row is None:
        return WorkerResult(src.name, None, "none", None)
    result = WorkerResult(src.name, row.id, "open", None)
    looked_again = False
    while True:
        lease = sets.claim(row.id, owner, sharding.lease_seconds)
        if lease is None:
            if sets.try_commit(row.id):
                result.committed_here = True
                log.info("snapshot set %s of %s committed", row.id, src.name)
            state = (sets.get_set(row.id) or row).state
            prog = sets.progress(row.id)
            if state != "open" or not options.wait or (prog.leased == 0 and (looked_again or prog.failed)):
                result.state, result.progress = state, prog
                return result
            if prog.leased == 0:
                # nobody holds a shard, yet the set is open: the last one was finished between the
                # commit attempt and this look (its worker commits it), or handed back: once more
                looked_again = True
                continue
            options.sleep(min(max(prog.next_expiry_in or 0.0, 0.2), sharding.heartbeat_seconds, POLL_SECONDS))
            continue
        looked_again = False
        if not _work_on(session, src, row, lease, sets, tags, options, result):
            result.state, result.progress = (sets.get_set(row.id) or row).state, sets.progress(row.id)
            return result


def _work_on(session: Session, src: ShardedSource, row: SetRow, lease: Lease, sets: ShardSets,
             tags: list[str] | None, options: WorkerOptions, result: WorkerResult) -> bool:
    """One shard; False when the set failed and the worker should stop."""
    log.info("shard %d of %s (set %s, attempt %d)", lease.shard, src.name, row.id, lease.attempt)
    try:
        existing = _existing_snapshot(session, row.id, lease.shard, shard_series(src.name, lease.shard,
                                                                                   row.shards))
        if existing is not None:
            sets.finish(lease, existing.id)
            result.adopted.append(lease.shard)
            return True
        with Heartbeat(sets, lease, src.sharding) as beat:  # type: ignore[arg-type]
            backup = _backup_shard(session, src, row, lease, tags, beat, options)
        crash_point("shard-before-done")
        if not sets.finish(lease, backup.snapshot.id):
            log.warning("shard %d of %s: the lease was taken over while snapshot %s was written; the set "
                        "keeps the first snapshot of the shard", lease.shard, src.name, backup.snapshot.short_id)
        result.results.append(backup)
        return True
    except DrtoolError as exc:
        result.failures.append(f"shard {lease.shard}: {exc.one_line()}")
        return not sets.release(lease, exc.one_line())
    except BaseException as exc:  # a bug or Ctrl-C: give the shard back at once, not after the expiry
        sets.release(lease, f"{type(exc).__name__}: {exc}")
        raise


def _existing_snapshot(session: Session, set_id: str, shard: int, series: str) -> Snapshot | None:
    """A snapshot of this shard of this set already in the repository (a dead worker's), or None."""
    def belongs(snap: Snapshot) -> bool:
        info = set_of(snap)
        return info is not None and info["id"] == set_id and info["shard"] == shard
    known = session.catalog.snapshot_ids()
    for snap in session.catalog.snapshots(series):
        if belongs(snap):
            return snap
    for snap_id in sorted(set(list_snapshot_ids(session.repo)) - known):
        try:
            snap = load_snapshot(session.repo, snap_id)
        except DrtoolError:
            continue
        if belongs(snap):
            session.catalog.add_snapshots([snap])
            return snap
    return None


class Heartbeat:
    """Renews a lease every ``heartbeat_seconds``; ``lost`` once a renewal found it taken."""

    def __init__(self, sets: ShardSets, lease: Lease, sharding: Sharding) -> None:
        self.sets, self.lease, self.sharding = sets, lease, sharding
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shard-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.sharding.heartbeat_seconds):
            try:
                if not self.sets.renew(self.lease, self.sharding.lease_seconds):
                    self.lost = True
                    return
            except DrtoolError as exc:  # the catalog is unreachable: the holds() check decides at the end
                log.warning("could not renew the lease on shard %d: %s", self.lease.shard, exc)
            except Exception as exc:  # noqa: BLE001 - a database driver error: same as above
                log.warning("could not renew the lease on shard %d: %s", self.lease.shard, exc)

    def ensure_held(self) -> None:
        if self.lost or not self.sets.holds(self.lease):
            raise SourceError(f"the lease on shard {self.lease.shard} was lost (not renewed within "
                              f"{self.sharding.lease_seconds:g} s); no snapshot was written for it",
                              hint="another worker takes the shard over; check the catalog's reachability "
                                   "and the host's load")


class _Guard:
    """What ``_commit`` checks before the snapshot is written: the repository lock and the lease."""

    def __init__(self, lock: Lock, beat: Heartbeat) -> None:
        self.lock, self.beat = lock, beat

    def ensure_held(self) -> None:
        self.lock.ensure_held()
        self.beat.ensure_held()


def _backup_shard(session: Session, src: ShardedSource, row: SetRow, lease: Lease, tags: list[str] | None,
                  beat: Heartbeat, options: WorkerOptions) -> BackupResult:
    repo = session.repo  # one process backs up many shards: each snapshot's summary counts its own
    repo.new_blobs = repo.new_bytes_stored = repo.new_bytes_raw = 0
    series = shard_series(src.name, lease.shard, row.shards)
    meta = {"source": src.name, "set": set_meta(row.id, src.name, lease.shard, row.shards,
                                                row.created.isoformat())}
    if isinstance(src, ObjectStoreSource):
        return _shard_objects(session, src, series, lease.shard, row.shards, meta, tags, beat, options)
    return _shard_files(session, src, series, lease.shard, row.shards, meta, tags, beat)


def shard_listing(client: S3SourceClient, shard: int, shards: int, depth: int
                  ) -> Callable[[str], Iterator[ListedObject]]:
    """The objects of one shard in key order: list the unit level with a delimiter, then only
    the units of this shard (their keys are contiguous, and units never prefix one another)."""
    def walk(root: str, prefix: str, level: int) -> Iterator[ListedObject]:
        for key, listed in client.iter_level(prefix):
            if listed is None and level < depth:
                yield from walk(root, key, level + 1)
            elif shard_of(key[len(root):], shards) == shard:
                if listed is not None:
                    yield listed
                else:
                    yield from client.iter_objects(key)

    return lambda prefix: walk(prefix, prefix, 1)


def _shard_objects(session: Session, src: ObjectStoreSource, series: str, shard: int, shards: int,
                   meta: dict[str, Any], tags: list[str] | None, beat: Heartbeat,
                   options: WorkerOptions) -> BackupResult:
    started, when = time.monotonic(), datetime.now(timezone.utc)
    assert src.sharding is not None
    client = options.client_factory(src)
    try:
        client.check_bucket()
        with _backup_frame(session, series) as (lock, parent, pipeline):
            listing = shard_listing(client, shard, shards, src.sharding.depth)
            builder = ObjectTreeBuilder(session.repo, pipeline, client, src.prefix, listing,
                                        content_hash=src.content_hash)
            tree_id = builder.build(parent.tree if parent else None)
            meta.update(source_type=src.type, bucket=src.bucket, prefix=src.prefix, endpoint=src.endpoint or "",
                        requests=client.stats.as_dict())
            snap = _snapshot(session, series, when, tree_id, "objects", parent, tags, builder.stats, started,
                             paths=[src.url], meta=meta)
            _commit(session, cast(Lock, _Guard(lock, beat)), snap)
    finally:
        client.close()
    _record_in_catalog(session, snap)
    requests = session.repo.backend.stats.as_dict()
    requests.update({f"source_{k}": v for k, v in client.stats.as_dict().items()})
    return BackupResult(snap, builder.stats.unreadable, builder.stats.changed, requests, builder.stats.vanished)


def _shard_files(session: Session, src: FilesSource, series: str, shard: int, shards: int,
                 meta: dict[str, Any], tags: list[str] | None, beat: Heartbeat) -> BackupResult:
    """Each backup path is a directory whose top-level entries are the units; the shard's tree
    holds every backup path's directory with only this shard's entries in it."""
    started, when = time.monotonic(), datetime.now(timezone.utc)
    repo = session.repo
    with _backup_frame(session, series) as (lock, parent, pipeline):
        walker = TreeWalker(repo, pipeline, None, src.content_hash)
        old_root = {n.name: n for n in load_tree(repo, parent.tree)} if parent else {}
        nodes = []
        for name, path in fs.iter_paths(src.paths):
            st = _root_dir(path)
            children = sorted(os.path.join(path, c) for c in os.listdir(path) if shard_of(c, shards) == shard)
            old = old_root.get(name)
            old_sub = old.subtree if old is not None and old.type == DIR else None
            node = fs.node_from_stat(name, path, st)
            node.subtree = walker.backup_roots([os.fsdecode(c) for c in children], old_sub) if children \
                else store_tree(repo, [])
            nodes.append(node)
        walker.stats.dirs += len(nodes)
        tree_id = store_tree(repo, sorted(nodes, key=lambda n: n.name))
        meta.update(source_type="files")
        snap = _snapshot(session, series, when, tree_id, "files", parent, tags, walker.stats, started,
                         paths=[os.path.abspath(p) for p in src.paths], meta=meta)
        _commit(session, cast(Lock, _Guard(lock, beat)), snap)
    _record_in_catalog(session, snap)
    return BackupResult(snap, walker.stats.unreadable, walker.stats.changed,
                        repo.backend.stats.as_dict(), walker.stats.vanished)


def _root_dir(path: bytes) -> os.stat_result:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise SourceError(f"backup path {os.fsdecode(path)} cannot be read: {exc.strerror}",
                          hint="check the path exists and is readable") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"backup path {os.fsdecode(path)} of a sharded source is not a directory",
                          hint="a sharded files source splits the entries of directories; list directories")
    return st

