"""Repository check: structure always, data on request.

Structure: every index object opens, every pack it names exists, every
snapshot and tree opens and every blob they reference is indexed.  With
``--read-data`` every pack (or a random subset) is downloaded, its name
checked against its hash, its trailer against the index, and every blob
authenticated.  Damage is reported per object, with the snapshots it hurts.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from drtool.crypto.ids import content_hash
from drtool.errors import DrtoolError
from drtool.core.rollback import detect
from drtool.core.session import Session
from drtool.repository.objects import (INDEX, PACKS, SNAPSHOTS, key_name, object_name, pack_id_from_name,
                                       pack_name)
from drtool.repository.repo import Repository
from drtool.snapshot.model import Snapshot
from drtool.snapshot.names import display
from drtool.snapshot.store import list_snapshot_ids, load_snapshot, load_tree, load_tree_checked


@dataclass
class CheckReport:
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_objects: list[str] = field(default_factory=list)
    affected_snapshots: dict[str, list[str]] = field(default_factory=dict)
    vanished: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__, ok=self.ok)


class Checker:
    def __init__(self, session: Session, progress: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.repo: Repository = session.repo
        self.report = CheckReport()
        self.progress = progress
        self.bad_blobs: set[bytes] = set()
        self.bad_packs: set[bytes] = set()
        self.snaps: list[Snapshot] = []

    def run(self, read_fraction: float = 0.0, seed: int | None = None) -> CheckReport:
        self._check_keys()
        self._load_indexes()
        pack_sizes = {pack_id_from_name(i.name): i.size for i in self.repo.backend.list(f"{PACKS}/")}
        self._check_packs_exist(pack_sizes)
        self._check_snapshots()
        self._check_memory()
        if read_fraction > 0:
            self._read_packs(sorted(pack_sizes), read_fraction, seed)
        if self.bad_blobs or self.bad_packs:
            self._find_affected()
        return self.report

    def _damaged(self, name: str, message: str) -> None:
        self.report.damaged_objects.append(name)
        self.report.errors.append(message)

    def _check_keys(self) -> None:
        for slot in self.repo.list_key_slots():
            if slot.label == "<damaged>":
                self._damaged(key_name(slot.slot_id), f"key slot {key_name(slot.slot_id)} is damaged")

    def _load_indexes(self) -> None:
        for index_id in self.repo.list_objects(INDEX):
            try:
                for pack in self.repo.read_index_object(index_id):
                    self.repo.index.add_pack(pack)
            except DrtoolError as exc:
                self._damaged(object_name(INDEX, index_id), str(exc))

    def _check_packs_exist(self, pack_sizes: dict[bytes, int]) -> None:
        self.report.packs = len(pack_sizes)
        for pack_id in self.repo.index.packs:
            if pack_id not in pack_sizes:
                self.bad_packs.add(pack_id)
                self._damaged(pack_name(pack_id), f"pack {pack_name(pack_id)} is missing")
        for pack_id in pack_sizes.keys() - self.repo.index.packs.keys():
            self.report.warnings.append(f"pack {pack_name(pack_id)} is not in any index "
                                        f"(left by an interrupted run; 'drtool catalog rebuild' "
                                        f"indexes it, prune removes it)")

    def _check_snapshots(self) -> None:
        seen_trees: set[str] = set()
        for snap_id in list_snapshot_ids(self.repo):
            try:
                snap = load_snapshot(self.repo, snap_id)
            except DrtoolError as exc:
                self._damaged(object_name(SNAPSHOTS, snap_id), str(exc))
                continue
            self.snaps.append(snap)
            self.report.snapshots += 1
            self._check_tree(snap.tree, seen_trees)

    def _check_memory(self) -> None:
        """Snapshots and index objects the catalog saw committed must still be there (ops.rollback)."""
        report = detect(self.session, snapshot_ids=set(list_snapshot_ids(self.repo)),
                        index_ids=set(self.repo.list_objects(INDEX)))
        for missing in report.missing:
            fix = (f"restore it from a copy of the repository, or acknowledge the loss with "
                   f"'drtool forget {missing.object_id[:8]}'" if missing.kind == "snapshot" else
                   "'drtool catalog rebuild' re-indexes its packs (and acknowledges it)")
            name = object_name(SNAPSHOTS if missing.kind == "snapshot" else INDEX, missing.object_id)
            self._damaged(name, f"{missing.describe()}: {fix}")
        self.report.warnings.extend(report.resurrected + report.tombstone_problems)
        self.report.vanished = [m.as_dict() for m in report.missing]

    def _check_tree(self, root: str, seen: set[str]) -> None:
        stack = [root]  # not recursive: trees may be deeper than the recursion limit
        while stack:
            tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            try:
                nodes = load_tree_checked(self.repo, tree_id)
            except DrtoolError as exc:
                self.bad_blobs.add(bytes.fromhex(tree_id))
                self.report.errors.append(f"tree {tree_id[:16]}: {exc}")
                continue
            for node in nodes:
                for hexid in node.content:
                    blob_id = bytes.fromhex(hexid)
                    if blob_id not in self.repo.index:
                        if blob_id not in self.bad_blobs:
                            self.report.errors.append(f"data blob {hexid[:16]} is not in any index")
                        self.bad_blobs.add(blob_id)
                if node.subtree:
                    stack.append(node.subtree)

    def _read_packs(self, pack_ids: list[bytes], fraction: float, seed: int | None) -> None:
        if fraction < 1.0:
            count = max(1, round(len(pack_ids) * fraction)) if pack_ids else 0
            pack_ids = sorted(random.Random(seed).sample(pack_ids, count))
        for pack_id in pack_ids:
            if self.progress:
                self.progress(pack_name(pack_id))
            self._read_pack(pack_id)

    def _read_pack(self, pack_id: bytes) -> None:
        name = pack_name(pack_id)
        try:
            data = self.repo.backend.get(name)
        except DrtoolError as exc:
            self.bad_packs.add(pack_id)
            self._damaged(name, f"pack {name} cannot be read: {exc}")
            return
        self.report.packs_read += 1
        if content_hash(data) != pack_id:
            self.bad_packs.add(pack_id)
            self._damaged(name, f"pack {name} does not match its name (bytes changed)")
        entries, problems = self.repo.verify_pack(pack_id, data)
        if problems:
            self.bad_packs.add(pack_id)
            self._damaged(name, f"pack {name}: {problems[0]}"
                          + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        self.report.blobs_read += len(entries)

    def _find_affected(self) -> None:
        for snap in self.snaps:
            hurt = self._tree_hurt(snap.tree, {})
            if hurt:
                label = f"{snap.short_id} ({display(snap.name)} {snap.time.isoformat()})"
                self.report.affected_snapshots[snap.id] = [label]
                self.report.errors.append(f"snapshot {label} is affected by damaged data")

    def _tree_hurt(self, tree_id: str, memo: dict[str, bool]) -> bool:
        if tree_id in memo:
            return memo[tree_id]
        tree_blob = bytes.fromhex(tree_id)
        hurt = tree_blob in self.bad_blobs or self._blob_in_bad_pack(tree_blob)
        if not hurt:
            try:
                nodes = load_tree(self.repo, tree_id)
            except DrtoolError:
                nodes, hurt = [], True
            for node in nodes:
                if any(bytes.fromhex(c) in self.bad_blobs or self._blob_in_bad_pack(bytes.fromhex(c))
                       for c in node.content) or (node.subtree and self._tree_hurt(node.subtree, memo)):
                    hurt = True
                    break
        memo[tree_id] = hurt
        return hurt

    def _blob_in_bad_pack(self, blob_id: bytes) -> bool:
        loc = self.repo.index.get(blob_id)
        return loc is not None and loc.pack_id in self.bad_packs


def check(session: Session, read_fraction: float = 0.0, seed: int | None = None,
          progress: Callable[[str], None] | None = None) -> CheckReport:
    with session.lock("check", read_only_ok=True):
        return Checker(session, progress).run(read_fraction, seed)
