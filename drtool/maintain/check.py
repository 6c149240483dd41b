"""Repository check: structure always, data on request.

Structure: every index object opens, every pack it names exists, every
snapshot and tree opens and every blob they reference is indexed.  With
``--read-data`` every pack (or a random subset) is downloaded, its name
checked against its hash, its trailer against the index, and every blob
authenticated.  Damage is reported per object, with the snapshots it hurts.
"""
from __future__ import annotations

from typing import Callable

from drtool.crypto.ids import content_hash
from drtool.errors import DrtoolError
from drtool.core.rollback import detect
from drtool.core.session import Session
from drtool.maintain.checkreport import CheckReport, Problem, broken_chains, summarise  # noqa: F401 - CheckReport re-exported
from drtool.maintain.subset import DataSubset
from drtool.repository.objects import (INDEX, PACKS, SNAPSHOTS, key_name, object_name, pack_id_from_name,
                                       pack_name)
from drtool.repository.packinspect import verify_pack
from drtool.repository.repo import Repository
from drtool.snapshot.model import Snapshot
from drtool.snapshot.names import display
from drtool.snapshot.store import list_snapshot_ids, load_snapshot, load_tree, load_tree_checked


class Checker:
    def __init__(self, session: Session, progress: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.repo: Repository = session.repo
        self.report = CheckReport()
        self.progress = progress
        self.bad_blobs: set[bytes] = set()
        self.bad_packs: set[bytes] = set()
        self.snaps: list[Snapshot] = []
        self.damaged_snapshots: set[str] = set()  # ids whose manifest cannot be read
        self.culprits: dict[str, str] = {}  # affected snapshot id -> the damaged pack, blob or tree it needs
        self.problems: dict[str, Problem] = {}  # one per damaged thing, in the order found (checkreport)

    def run(self, read: DataSubset | None = None, seed: int | None = None) -> CheckReport:
        """``read``: which packs to download and verify (none without it); ``seed``: of a random subset."""
        self._check_keys()
        self._load_indexes()
        pack_sizes = {pack_id_from_name(i.name): i.size for i in self.repo.backend.list(f"{PACKS}/")}
        self._check_packs_exist(pack_sizes)
        self._check_snapshots()
        self._check_memory()
        if read is not None:
            self.report.read_subset = read.describe()
            self._read_packs(read.select(pack_sizes, seed))
        if self.bad_blobs or self.bad_packs:
            self._find_affected()
        self.report.broken_chains = broken_chains(self.snaps, self.damaged_snapshots, self.culprits)
        self.report.errors = summarise(self.problems, self.snaps, self.culprits, self.report.broken_chains)
        self.report.problems = [p.as_dict() for p in self.problems.values()]
        return self.report

    def _damaged(self, name: str, message: str) -> None:
        """A repository object is damaged or missing: named once, however many ways it failed."""
        if name not in self.problems:
            self.report.damaged_objects.append(name)
        self._problem(name, message)

    def _problem(self, key: str, message: str) -> None:
        problem = self.problems.setdefault(key, Problem(key))
        if message not in problem.messages:
            problem.messages.append(message)

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
                self.damaged_snapshots.add(snap_id)
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
                self._problem(f"tree {tree_id[:16]}", f"tree {tree_id[:16]}: {exc}")
                continue
            for node in nodes:
                for hexid in node.content:
                    blob_id = bytes.fromhex(hexid)
                    if blob_id not in self.repo.index:
                        self._problem(f"blob {hexid[:16]}", f"data blob {hexid[:16]} is not in any index")
                        self.bad_blobs.add(blob_id)
                if node.subtree:
                    stack.append(node.subtree)

    def _read_packs(self, pack_ids: list[bytes]) -> None:
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
        message = "" if content_hash(data) == pack_id else f"pack {name} does not match its name (bytes changed)"
        entries, problems = verify_pack(self.repo, pack_id, data)
        if problems:  # one message: the pack is named once however many ways it fails
            message = (f"{message}; " if message else f"pack {name}: ") + problems[0] + (
                f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        if message:
            self.bad_packs.add(pack_id)
            self._damaged(name, message)
        self.report.blobs_read += len(entries)

    def _find_affected(self) -> None:
        memo: dict[str, str] = {}
        for snap in self.snaps:
            culprit = self._tree_hurt(snap.tree, memo)
            if culprit:  # reported with the culprit's problem (checkreport.summarise)
                label = f"{snap.short_id} ({display(snap.name)} {snap.time.isoformat()})"
                self.report.affected_snapshots[snap.id] = [label]
                self.culprits[snap.id] = culprit

    def _tree_hurt(self, tree_id: str, memo: dict[str, str]) -> str:
        """The first damaged thing the tree needs ("pack packs/…", "blob …", "tree …"), or ""."""
        if tree_id in memo:
            return memo[tree_id]
        tree_blob = bytes.fromhex(tree_id)
        hurt = self._blob_hurt(tree_blob, "tree")
        if not hurt:
            try:
                nodes = load_tree(self.repo, tree_id)
            except DrtoolError:
                nodes, hurt = [], f"tree {tree_id[:16]}"
            for node in nodes:
                hurt = next((h for h in (self._blob_hurt(bytes.fromhex(c), "blob") for c in node.content) if h),
                            "") or (self._tree_hurt(node.subtree, memo) if node.subtree else "")
                if hurt:
                    break
        memo[tree_id] = hurt
        return hurt

    def _blob_hurt(self, blob_id: bytes, what: str) -> str:
        loc = self.repo.index.get(blob_id)
        if loc is not None and loc.pack_id in self.bad_packs:
            return f"pack {pack_name(loc.pack_id)}"
        return f"{what} {blob_id.hex()[:16]}" if blob_id in self.bad_blobs else ""


def check(session: Session, read: DataSubset | None = None, seed: int | None = None,
          progress: Callable[[str], None] | None = None) -> CheckReport:
    with session.lock("check", read_only_ok=True):
        return Checker(session, progress).run(read, seed)
