"""Prune: free the space no snapshot needs without endangering one that does.

Deleting is the one thing a backup tool must never get wrong, so prune is a
two-phase mark and sweep (design and crash analysis in docs/operations.md):

* **Mark.** Under the exclusive lock, walk every snapshot's trees to get the
  used blob set, pick one surviving copy ("keeper") of each used blob, and
  *condemn* packs that hold no keeper: fully unused packs, duplicates, and
  packs just repacked.  Condemned packs are dropped from the index (a new
  consolidated index is written first, then the old index objects deleted,
  so a live pack is never unindexed) and recorded in a sealed
  ``prune/<id>`` object with the mark time.  Nothing is deleted.
* **Sweep.** A later prune, once ``grace`` has passed since the mark,
  deletes a condemned pack only if it still holds no blob that a snapshot
  needs and no copy elsewhere provides, and if no index object written after
  the mark lists it.  Either kind of reference "un-condemns" the pack, which
  is re-indexed instead.

The grace period is what protects a backup on another host whose lock this
prune could not see (listing lag, a clock or network hiccup): such a backup
either committed its snapshot before the sweep (and its blobs are used), or
wrote an index naming its packs (and they are spared).  Every phase is a
:func:`crash_point`; a kill anywhere leaves only garbage a later prune
removes, never a snapshot that points at missing data.
"""
from __future__ import annotations

import json
import logging
import math
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from drtool.backends import capabilities
from drtool.errors import DrtoolError, IntegrityError, ObjectMissing, UsageError
from drtool.core.rollback import record_forgotten
from drtool.core.session import Session
from drtool.repository.index import MemoryIndex, PackRecord
from drtool.repository.locks import Lock
from drtool.repository.objects import (CONFIG, INDEX, KEYS, PACKS, PRUNE, PRUNE_KIND, SNAPSHOTS, object_name,
                                       pack_id_from_name, pack_name)
from drtool.repository.packfile import BlobEntry
from drtool.repository.packinspect import read_pack_trailer
from drtool.repository.repo import Repository
from drtool.repository.tombstones import write_tombstone
from drtool.snapshot.store import list_snapshot_ids, load_snapshot, load_tree
from drtool.testing_hooks import crash_point

log = logging.getLogger("drtool.prune")

RECORD_VERSION = 1
DEFAULT_GRACE = timedelta(hours=24)
MIN_TEMPORARY_AGE = timedelta(hours=1)
DEFAULT_MAX_UNUSED = 10.0
INDEX_PACKS_PER_OBJECT = 4096
CRASH_POINTS = ("prune-after-repack", "prune-after-index-write", "prune-after-record",
                "prune-after-index-delete", "prune-mid-pack-delete", "prune-after-pack-delete")
_REFUSE_HINT = "prune refuses to run on a damaged repository; run 'drtool check --read-data'"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class PruneOptions:
    """``max_unused``: percent of unused space tolerated in partly used packs
    (restic's semantics: repack the most wasteful packs until unused ≤ X% of
    the total); ``grace``: how long a condemned pack waits before deletion."""

    dry_run: bool = False
    max_unused: float = DEFAULT_MAX_UNUSED
    grace: timedelta = DEFAULT_GRACE
    clock: Callable[[], datetime] = _utcnow
    object_lock_days: int | None = None
    renew_within: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        if not 0 <= self.max_unused <= 100:
            raise UsageError(f"--max-unused must be between 0% and 100%, got {self.max_unused}%")
        if self.grace < timedelta(0):
            raise UsageError("--grace must not be negative")


@dataclass
class PackInfo:
    entries: list[BlobEntry]
    exists: bool
    indexed: bool
    size: int = 0
    density: float = 0.0       # fraction of entries whose blob some snapshot uses
    keepers: int = 0           # entries for which this pack holds the chosen copy
    keeper_bytes: float = 0.0  # their share of the pack's stored bytes

    @property
    def total_bytes(self) -> int:
        """Stored bytes of the pack's sealed groups (blobs share their group's bytes)."""
        return sum({e.offset: e.length for e in self.entries}.values())

    def shares(self) -> dict[bytes, float]:
        """Each blob's share of its compressed group, in proportion to its raw size."""
        raw_totals: dict[int, int] = {}
        counts: dict[int, int] = {}
        for e in self.entries:
            raw_totals[e.offset] = raw_totals.get(e.offset, 0) + e.raw_length
            counts[e.offset] = counts.get(e.offset, 0) + 1
        return {e.blob_id: (e.length * e.raw_length / raw_totals[e.offset] if raw_totals[e.offset]
                            else e.length / counts[e.offset]) for e in self.entries}


@dataclass
class PruneState:
    """What earlier prunes condemned, and which index objects they have checked."""

    condemned: dict[bytes, datetime] = field(default_factory=dict)
    indexes: set[str] = field(default_factory=set)
    record_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_records(cls, records: list[tuple[str, dict[str, Any]]]) -> "PruneState":
        """Merge records; one naming another in ``supersedes`` replaces it.

        Two live records only exist after a crash between writing the new one
        and deleting the old; merging them conservatively (later mark time,
        fewer checked indexes) can only delay deletion, never hasten it.
        """
        superseded = {rid for _, data in records for rid in data.get("supersedes", [])}
        state = cls(record_ids=[rid for rid, _ in records])
        live = [data for rid, data in records if rid not in superseded]
        for i, data in enumerate(live):
            for hexid, when in data.get("condemned", {}).items():
                marked = datetime.fromisoformat(when)
                pack_id = bytes.fromhex(hexid)
                state.condemned[pack_id] = max(marked, state.condemned.get(pack_id, marked))
            known = set(data.get("indexes", []))
            state.indexes = known if i == 0 else state.indexes & known
        return state


@dataclass
class PruneReport:
    dry_run: bool = False
    snapshots: int = 0
    packs: int = 0
    used_blobs: int = 0
    used_bytes: int = 0
    unused_bytes: int = 0
    packs_condemned: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    blobs_repacked: int = 0
    packs_spared: int = 0
    packs_pending: int = 0
    packs_deleted: int = 0
    bytes_freed: int = 0
    index_written: int = 0
    index_deleted: int = 0
    locked_skipped: int = 0
    retention_extended: int = 0
    temporaries_removed: int = 0
    next_deletion: datetime | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["next_deletion"] = self.next_deletion.isoformat() if self.next_deletion else None
        return data


def prune(session: Session, options: PruneOptions | None = None) -> PruneReport:
    """Run one prune pass (exclusive lock; a dry run only takes a shared one)."""
    options = options or PruneOptions()
    with session.lock("prune", exclusive=not options.dry_run) as lock:
        try:
            report = Pruner(session, lock, options).run()
        finally:
            session.repo.index = MemoryIndex()  # stale after prune: force a reload
    log.info("prune finished: %d pack(s) condemned, %d deleted, %d repacked, %d bytes freed",
             report.packs_condemned, report.packs_deleted, report.packs_repacked, report.bytes_freed,
             extra={"fields": {"event": "prune", **report.as_dict()}})
    return report


class Pruner:
    def __init__(self, session: Session, lock: Lock, options: PruneOptions) -> None:
        self.session = session
        self.repo = session.repo
        self.backend = session.repo.backend
        self.lock = lock
        self.opt = options
        self.now = options.clock()
        self.report = PruneReport(dry_run=options.dry_run)
        self.index_contents: dict[str, list[bytes]] = {}
        self.packs: dict[bytes, PackInfo] = {}
        self.unreadable: set[bytes] = set()
        self.used: set[bytes] = set()
        self.keeper: dict[bytes, bytes] = {}
        self.state = PruneState()
        self.new_condemned: set[bytes] = set()
        self.repack: list[bytes] = []
        self.due: list[bytes] = []
        self.still_listed: set[bytes] = set()
        self.deleted: set[bytes] = set()
        self.snapshot_ids: list[str] = []

    def run(self) -> PruneReport:
        self._load_packs()
        self.state = self._load_state()
        self._find_used()
        self._spare_reindexed()
        self._assign_keepers()
        self._plan()
        if not self.opt.dry_run:
            self._do_repack()
            final_ids, rewritten = self._rewrite_index()
            self._write_state(final_ids)
            self._delete_old_indexes(final_ids, rewritten)
            self._delete_packs()
            self._extend_retention(final_ids)
            # Leftovers of killed writers (e.g. a pack a killed backup was streaming);
            # the exclusive lock rules out live writers, the age rules out stale-lock ones.
            self.report.temporaries_removed = capabilities.remove_abandoned_temporaries(
                self.backend, max(self.opt.grace, MIN_TEMPORARY_AGE).total_seconds())
        return self._finish_report()

    # ----- loading ------------------------------------------------------------------
    def _load_packs(self) -> None:
        listed: dict[bytes, int] = {}
        for info in self.backend.list(f"{PACKS}/"):
            try:
                listed[pack_id_from_name(info.name)] = info.size
            except ValueError:
                self.report.warnings.append(f"ignoring unexpected object {info.name}")
        for index_id in self.repo.list_objects(INDEX):
            self._read_index(index_id)
        for pack_id, info in self.packs.items():
            info.exists = pack_id in listed or self.backend.stat(pack_name(pack_id)) is not None
            info.size = listed.get(pack_id, info.total_bytes)
        for pack_id, size in listed.items():
            if pack_id not in self.packs:
                self._load_loose(pack_id, size)

    def _read_index(self, index_id: str) -> None:
        try:
            records = self.repo.read_index_object(index_id)
        except ObjectMissing:
            return  # deleted since listing: nothing to account for
        except IntegrityError as exc:
            raise IntegrityError(f"{exc}", hint=_REFUSE_HINT) from None
        self.index_contents[index_id] = [r.pack_id for r in records]
        for record in records:
            if record.pack_id not in self.packs:
                self.packs[record.pack_id] = PackInfo(record.entries, exists=False, indexed=True)

    def _load_loose(self, pack_id: bytes, size: int) -> None:
        """A pack no index lists (interrupted backup, or condemned): read its trailer only."""
        try:
            entries = read_pack_trailer(self.repo, pack_id, size)
        except ObjectMissing:
            return  # deleted since listing
        except DrtoolError as exc:
            self.unreadable.add(pack_id)
            self.report.warnings.append(f"unindexed pack {pack_name(pack_id)} cannot be read ({exc}); "
                                        "left alone")
            return
        self.packs[pack_id] = PackInfo(entries, exists=True, indexed=False, size=size)

    def _load_state(self) -> PruneState:
        records: list[tuple[str, dict[str, Any]]] = []
        for record_id in self.repo.list_objects(PRUNE):
            try:
                data = json.loads(self.repo.get_object(PRUNE, PRUNE_KIND, record_id))
                if data.get("version") != RECORD_VERSION:
                    raise ValueError(f"unknown version {data.get('version')}")
            except (DrtoolError, ValueError) as exc:
                # Losing a record only forgets condemnations: packs wait longer, none is lost.
                self.report.warnings.append(f"ignoring unreadable prune record {record_id[:8]}: {exc}")
                records.append((record_id, {}))
                continue
            records.append((record_id, data))
        state = PruneState.from_records(records)
        for pack_id in list(state.condemned):
            info = self.packs.get(pack_id)
            if info is None or not info.exists:
                del state.condemned[pack_id]  # deleted by an earlier sweep
        return state

    def _find_used(self) -> None:
        """Mark: every blob reachable from any snapshot, read through every existing pack."""
        index = MemoryIndex()
        for pack_id, info in sorted(self.packs.items(), key=lambda kv: not kv[1].indexed):
            if info.exists:
                index.add_pack(PackRecord(pack_id, info.entries))
        self.repo.index = index
        self.snapshot_ids = list_snapshot_ids(self.repo)
        stack: list[str] = []
        for snap_id in self.snapshot_ids:
            try:
                stack.append(load_snapshot(self.repo, snap_id).tree)
            except DrtoolError as exc:
                raise IntegrityError(f"snapshot {snap_id[:8]} cannot be read: {exc}",
                                     hint=_REFUSE_HINT) from None
        seen: set[str] = set()
        while stack:
            tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            self.used.add(bytes.fromhex(tree_id))
            try:
                nodes = load_tree(self.repo, tree_id)
            except DrtoolError as exc:
                raise IntegrityError(f"tree {tree_id[:16]} cannot be read: {exc}",
                                     hint=_REFUSE_HINT) from None
            for node in nodes:
                self.used.update(bytes.fromhex(c) for c in node.content)
                if node.subtree:
                    stack.append(node.subtree)

    # ----- planning -----------------------------------------------------------------
    def _spare_reindexed(self) -> None:
        """An index written after the mark that lists a condemned pack un-condemns it."""
        for index_id, pack_ids in self.index_contents.items():
            if index_id in self.state.indexes:
                continue
            for pack_id in pack_ids:
                if self.state.condemned.pop(pack_id, None) is not None:
                    self.report.packs_spared += 1

    def _assign_keepers(self) -> None:
        """Pick one copy of each used blob, preferring packs not condemned, then dense ones."""
        copies: dict[bytes, list[tuple[bytes, float]]] = {}
        for pack_id, info in self.packs.items():
            if not info.exists:
                continue
            shares = info.shares()
            used = {b for b in shares if b in self.used}
            info.density = len(used) / len(shares) if shares else 0.0
            for blob_id in used:
                copies.setdefault(blob_id, []).append((pack_id, shares[blob_id]))
        missing = 0
        for blob_id in self.used:
            candidates = copies.get(blob_id)
            if not candidates:
                missing += 1
                continue
            live = [c for c in candidates if c[0] not in self.state.condemned] or candidates
            pack_id, length = max(live, key=lambda c: (self.packs[c[0]].density, c[0]))
            if self.state.condemned.pop(pack_id, None) is not None:
                self.report.packs_spared += 1  # a snapshot needs it after all: re-index it
            self.keeper[blob_id] = pack_id
            self.packs[pack_id].keepers += 1
            self.packs[pack_id].keeper_bytes += length
        if missing:
            raise IntegrityError(f"{missing} blob(s) used by snapshots are in no pack",
                                 hint=_REFUSE_HINT)

    def _plan(self) -> None:
        live = [p for p, i in self.packs.items()
                if i.exists and p not in self.state.condemned and p not in self.unreadable]
        self.new_condemned = {p for p in live if self.packs[p].keepers == 0}
        partial = [p for p in live
                   if 0 < self.packs[p].keepers < len({e.blob_id for e in self.packs[p].entries})]
        used_total = sum(self.packs[p].keeper_bytes for p in live)
        unused = sum(self.packs[p].total_bytes - self.packs[p].keeper_bytes for p in partial)
        limit = _max_unused_bytes(used_total, self.opt.max_unused)

        def waste(p: bytes) -> tuple[float, bytes]:
            info = self.packs[p]
            return (1 - info.keeper_bytes / info.total_bytes, p)
        for pack_id in sorted(partial, key=waste, reverse=True):
            if unused <= limit:
                break
            self.repack.append(pack_id)
            unused -= self.packs[pack_id].total_bytes - self.packs[pack_id].keeper_bytes
        self.due = sorted(p for p, marked in self.state.condemned.items()
                          if marked + self.opt.grace <= self.now)
        self.report.used_blobs = len(self.used)
        self.report.used_bytes = round(used_total)
        self.report.unused_bytes = round(sum(i.total_bytes for i in self.packs.values() if i.exists)
                                         - used_total)
        self.report.packs_condemned = len(self.new_condemned) + len(self.repack)
        self.report.packs_repacked = len(self.repack)

    # ----- acting -------------------------------------------------------------------
    def _do_repack(self) -> None:
        """Copy the keeper blobs of wasteful packs into new packs through a Repository.

        Blobs are read (authenticated against their ids, so damage is never
        copied) and stored again by a writer with an empty index, which seals
        fresh compression groups and writes packs, then their index.
        """
        if not self.repack:
            return
        capture = _CapturedIndexes(self.session.catalog)
        writer = Repository(self.backend, self.repo.master, self.repo.config, self.repo.slot_id,
                            cache=capture)
        try:
            for pack_id in self.repack:
                self.lock.ensure_held()
                entries = sorted((e for e in self.packs[pack_id].entries
                                  if self.keeper.get(e.blob_id) == pack_id),
                                 key=lambda e: (e.offset, e.inner))
                self.repo.index = MemoryIndex()
                self.repo.index.add_pack(PackRecord(pack_id, self.packs[pack_id].entries))
                blob_ids = [e.blob_id for e in entries]
                for entry, data in zip(entries, self.repo.read_blobs(blob_ids)):
                    writer.add_blob(entry.blob_type, entry.blob_id, data)
                    self.report.blobs_repacked += 1
            writer.flush()  # write order: packs, then their index
        finally:
            writer.close()
        crash_point("prune-after-repack")
        self._adopt(capture.written)
        self.new_condemned.update(self.repack)

    def _adopt(self, written: list[tuple[str, list[PackRecord]]]) -> None:
        """Take the repack's packs and index objects into the model."""
        for index_id, records in written:
            self.index_contents[index_id] = [r.pack_id for r in records]
            for record in records:
                self.packs[record.pack_id] = PackInfo(record.entries, exists=True, indexed=True,
                                                      density=1.0, keepers=len(record.entries))
                for e in record.entries:
                    self.keeper[e.blob_id] = record.pack_id
                self.report.packs_written += 1

    def _rewrite_index(self) -> tuple[list[str], bool]:
        """Write a consolidated index of every live pack (before any old index is deleted)."""
        condemned = set(self.state.condemned) | self.new_condemned
        desired = sorted(p for p, i in self.packs.items()
                         if i.exists and p not in condemned and p not in self.unreadable)
        current = {p for ids in self.index_contents.values() for p in ids}
        needed = max(1, math.ceil(len(desired) / INDEX_PACKS_PER_OBJECT))
        if set(desired) == current and len(self.index_contents) <= needed:
            return list(self.index_contents), False
        self.lock.ensure_held()
        new_ids = []
        for start in range(0, len(desired), INDEX_PACKS_PER_OBJECT):
            chunk = desired[start:start + INDEX_PACKS_PER_OBJECT]
            new_ids.append(self.repo.write_index([PackRecord(p, self.packs[p].entries) for p in chunk]))
        crash_point("prune-after-index-write")
        self.report.index_written = len(new_ids)
        return new_ids, True

    def _write_state(self, final_ids: list[str]) -> None:
        """Record condemned packs (mark times kept) before any deletion relies on them."""
        condemned = dict(self.state.condemned)
        condemned.update({p: self.now for p in self.new_condemned})
        self.state.condemned = condemned
        if condemned:
            body = {"version": RECORD_VERSION, "time": self.now.isoformat(),
                    "host": socket.gethostname(), "supersedes": self.state.record_ids,
                    "indexes": sorted(set(self.index_contents) | set(final_ids)),
                    "condemned": {p.hex(): t.isoformat() for p, t in sorted(condemned.items())}}
            self.lock.ensure_held()
            new_id = self.repo.put_object(PRUNE, PRUNE_KIND, json.dumps(body, sort_keys=True).encode())
            crash_point("prune-after-record")
        else:
            new_id = ""
        for record_id in self.state.record_ids:
            if record_id != new_id:
                self._delete(object_name(PRUNE, record_id))

    def _delete_old_indexes(self, final_ids: list[str], rewritten: bool) -> None:
        remaining = set(final_ids)
        if rewritten:
            deleted = set()
            doomed = [i for i in self.index_contents if i not in remaining]
            if doomed:  # every catalog that remembers them learns drtool removed them (ops.rollback)
                self.lock.ensure_held()
                write_tombstone(self.repo, "prune", indexes=doomed, host=self.session.host)
            for index_id in doomed:
                if self._delete(object_name(INDEX, index_id)):
                    deleted.add(index_id)
                    self.report.index_deleted += 1
                else:
                    remaining.add(index_id)
            if self.session.catalog is not None:
                self.session.catalog.drop_indexes(deleted)
                record_forgotten(self.session, "index", sorted(deleted), "prune")
            crash_point("prune-after-index-delete")
        else:
            remaining.update(self.index_contents)
        self.still_listed = {p for i in remaining for p in self.index_contents.get(i, [])}

    def _delete_packs(self) -> None:
        """Sweep: condemned, past grace, still unneeded, and listed by no surviving index."""
        first = True
        for pack_id in self.due:
            if pack_id not in self.state.condemned or pack_id in self.still_listed:
                continue
            if self._delete(pack_name(pack_id)):
                self.deleted.add(pack_id)
                self.report.packs_deleted += 1
                self.report.bytes_freed += self.packs[pack_id].size
                if first:
                    crash_point("prune-mid-pack-delete")
                    first = False
        crash_point("prune-after-pack-delete")

    def _delete(self, name: str) -> bool:
        """Delete one object unless Object Lock protects it; True when it is gone."""
        self.lock.ensure_held()
        try:
            if capabilities.is_locked(self.backend, name):
                self.report.locked_skipped += 1
                return False
            self.backend.delete(name)
        except DrtoolError as exc:
            self.report.warnings.append(f"could not delete {name}: {exc}; a later prune retries")
            return False
        return True

    def _extend_retention(self, final_ids: list[str]) -> None:
        """Keep everything still referenced under Object Lock (ransomware protection).

        Objects whose retention ends within ``renew_within`` are extended to
        ``object_lock_days`` from now; unreferenced ones are left to expire so
        a later sweep can delete them.
        """
        lock = capabilities.object_lock(self.backend)
        if lock is None or not self.opt.object_lock_days:
            return
        condemned = set(self.state.condemned) | self.new_condemned
        names = [pack_name(p) for p, i in self.packs.items() if i.exists and p not in condemned]
        names += [object_name(INDEX, i) for i in final_ids]
        names += [object_name(SNAPSHOTS, s) for s in self.snapshot_ids]
        names += [info.name for info in self.backend.list(f"{KEYS}/")] + [CONFIG]
        horizon = self.now + self.opt.renew_within
        new_until = self.now + timedelta(days=self.opt.object_lock_days)
        for name in names:
            try:
                until = lock.retention_until(name)
                if until is not None and until < horizon:
                    lock.extend_retention(name, new_until)
                    self.report.retention_extended += 1
            except DrtoolError as exc:
                self.report.warnings.append(f"could not extend retention of {name}: {exc}")

    def _finish_report(self) -> PruneReport:
        r = self.report
        r.snapshots = len(self.snapshot_ids)
        r.packs = sum(1 for i in self.packs.values() if i.exists)
        condemned = dict(self.state.condemned)
        condemned.update({p: self.now for p in self.new_condemned})
        gone = set(self.due) if r.dry_run else self.deleted
        if r.dry_run:
            r.packs_deleted = len(self.due)
            r.bytes_freed = sum(self.packs[p].size for p in self.due)
        pending = [t for p, t in condemned.items() if p not in gone]
        r.packs_pending = len(pending)
        r.next_deletion = min(pending) + self.opt.grace if pending else None
        return r


class _CapturedIndexes:
    """An IndexCache that notes which index objects the repack writer stored."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog
        self.written: list[tuple[str, list[PackRecord]]] = []

    def cached_index_ids(self) -> set[str]:
        return set()

    def cached_pack_entries(self, index_ids: set[str]) -> Any:
        return iter(())

    def store_index(self, index_id: str, packs: list[PackRecord]) -> None:
        self.written.append((index_id, list(packs)))
        if self.catalog is not None:
            self.catalog.store_index(index_id, packs)

    def drop_indexes(self, index_ids: set[str]) -> None:
        """Never called: the writer does not load indexes."""


def _max_unused_bytes(used: float, percent: float) -> float:
    """Unused bytes allowed so that unused ≤ percent of (used + unused)."""
    if percent >= 100:
        return math.inf
    return used * percent / (100 - percent)
