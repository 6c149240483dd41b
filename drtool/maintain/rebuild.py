"""``drtool catalog rebuild``: the catalog from the repository alone.

Also repairs the repository's index: packs that no index object lists (an
interrupted backup that stored packs but not its index) are read and a new
index object is written for them, so their blobs are reused, not re-uploaded.

The catalog's memory of committed snapshots and index objects (``ops.rollback``)
is history, not cache: it survives the rebuild.  Missing snapshots stay
reported (only ``drtool forget ID`` acknowledges one); a missing index object
is acknowledged here, because its packs have just been re-indexed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from drtool.errors import DrtoolError
from drtool.core.rollback import FORGOTTEN, detect
from drtool.core.rollback import INDEX as SEEN_INDEX
from drtool.core.session import Session
from drtool.repository.index import PackRecord
from drtool.repository.objects import INDEX, PACKS, pack_id_from_name
from drtool.repository.packinspect import read_pack_entries
from drtool.snapshot.store import list_snapshot_ids, load_snapshot
from drtool.testing_hooks import crash_point


@dataclass
class RebuildResult:
    snapshots: int
    index_objects: int
    packs_reindexed: int
    damaged: list[str]
    log_segments: int = 0
    rehearsals: int = 0
    vanished: list[str] = field(default_factory=list)
    file_versions: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def rebuild_catalog(session: Session) -> RebuildResult:
    repo, catalog = session.repo, session.catalog
    with session.lock("rebuild"):
        catalog.clear_cache()
        crash_point("rebuild-after-clear")
        damaged: list[str] = []
        index_ids = repo.list_objects(INDEX)
        for index_id in index_ids:
            try:
                packs = repo.read_index_object(index_id)
            except DrtoolError as exc:
                damaged.append(str(exc))
                continue
            catalog.store_index(index_id, packs)
            for pack in packs:
                repo.index.add_pack(pack)
        reindexed = _index_loose_packs(session, damaged)
        snaps = []
        for snap_id in list_snapshot_ids(repo):
            try:
                snaps.append(load_snapshot(repo, snap_id))
            except DrtoolError as exc:
                damaged.append(str(exc))
        catalog.add_snapshots(snaps)
        logs, rehearsals = _rebuild_history(session, damaged)
        vanished = _compare_with_memory(session, set(index_ids))
        versions = _rebuild_file_index(session, damaged)
    return RebuildResult(len(snaps), len(index_ids), reindexed, damaged, logs, rehearsals, vanished,
                         versions)


def _rebuild_file_index(session: Session, damaged: list[str]) -> int:
    """The per-file index (``drtool find``) from the snapshot trees."""
    from drtool.browse.index import rebuild
    try:
        result = rebuild(session)
        damaged.extend(f"file index: {problem}" for problem in result.failed)
        return result.versions_added
    except DrtoolError as exc:
        damaged.append(f"file index: {exc}")
        return 0


def _compare_with_memory(session: Session, index_ids: set[str]) -> list[str]:
    """Report what the memory misses; accept missing index objects (their packs are indexed now)."""
    report = detect(session, snapshot_ids=set(list_snapshot_ids(session.repo)),
                    index_ids=index_ids | set(session.repo.list_objects(INDEX)))
    lost_indexes = [m.object_id for m in report.missing if m.kind == SEEN_INDEX]
    session.catalog.mark_seen(SEEN_INDEX, lost_indexes, FORGOTTEN,
                              "accepted by catalog rebuild (unindexed packs were indexed again)")
    lines = [m.describe() + ("; its packs were indexed again, the loss is acknowledged"
                             if m.kind == SEEN_INDEX else "; restore it from a copy, or 'drtool forget "
                             f"{m.object_id[:8]}' to acknowledge the loss") for m in report.missing]
    return lines + report.resurrected + report.tombstone_problems


def _rebuild_history(session: Session, damaged: list[str]) -> tuple[int, int]:
    """Archived WAL/binlog ranges and rehearsal results also live in the repository."""
    from drtool.databases.logarchive import rebuild_log_segments
    from drtool.rehearse.drill import rebuild_rehearsals

    logs = rehearsals = 0
    try:
        logs = rebuild_log_segments(session)
    except DrtoolError as exc:
        damaged.append(f"archived log list: {exc}")
    try:
        result = rebuild_rehearsals(session)
        rehearsals = result.total
        damaged.extend(f"rehearsal {d}" for d in result.damaged)
    except DrtoolError as exc:
        damaged.append(f"rehearsal history: {exc}")
    return logs, rehearsals


def _index_loose_packs(session: Session, damaged: list[str]) -> int:
    repo = session.repo
    loose = [pack_id_from_name(i.name) for i in repo.backend.list(f"{PACKS}/")
             if pack_id_from_name(i.name) not in repo.index.packs]
    records = []
    for pack_id in loose:
        try:
            records.append(PackRecord(pack_id, read_pack_entries(repo, pack_id)))
        except DrtoolError as exc:
            damaged.append(str(exc))
    if records:
        repo.write_index(records)
        for record in records:
            repo.index.add_pack(record)
    return len(records)
