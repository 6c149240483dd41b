"""``drtool copy``: snapshots into a second repository with its own keys (3-2-1).

The destination is an independent repository: its own master key, its own
keyed blob ids, its own packs and index.  Blob ids are MACs under each
repository's id key, so the same plaintext has different ids on each side
and nothing can be copied byte for byte.  Copying therefore *translates*:

* every data blob a snapshot needs is read from the source (authenticated
  there against its source id, so damage is never copied), its destination
  id computed, and stored unless the destination already has it;
* trees are rewritten bottom-up, because a tree names its files' blobs and
  its subdirectories' trees by id; the rewritten tree is stored as a new
  tree blob;
* the manifest is written last with ``meta.copied_from`` naming the source
  repository and snapshot and the original backup (``origin``), so a later
  run, a copy back, or a copy of the copy skips it.

Reads are kept proportional to what changed: a per-run source→destination
id map is seeded by walking, side by side, the trees of the newest snapshot
of the same series that both repositories already hold (only tree blobs are
read).  An unchanged subtree then maps to its destination tree without being
read at all, and unchanged files cost nothing.  A mapping is trusted only
while the destination index still holds its target.

Write order in the destination is the backup's: packs, then index
(``flush``), then snapshot manifests.  A crash leaves packs and an index
that the next run reuses, never a snapshot pointing at missing data.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from urllib.parse import unquote, urlsplit
from dataclasses import dataclass, field
from typing import Any, Iterator

from drtool.backends.registry import is_local_url, open_backend
from drtool.catalog.logs import LogCatalog
from drtool.core.coldpacks import warm_snapshots
from drtool.crypto.keys import KdfParams
from drtool.errors import DrtoolError, SnapshotNotFound, UsageError
from drtool.databases.engine import engines
from drtool.databases.logarchive import fetch_segment, segment_object_id, store_segment, sync_log_segments
from drtool.core.session import OpenOptions, Session
from drtool.repository.locks import Lock
from drtool.repository.objects import REHEARSAL_KIND, REHEARSALS
from drtool.repository.packfile import DATA_BLOB
from drtool.repository.repo import repository_exists
from drtool.snapshot.model import Node, Snapshot
from drtool.snapshot.store import load_tree, save_snapshot, store_tree
from drtool.testing_hooks import crash_point

log = logging.getLogger("drtool.copy")

COPIED_FROM = "copied_from"
COMMIT_BYTES = 256 * 1024 * 1024  # commit snapshots at least this often (new raw bytes)
READ_BATCH = 4096                 # blob ids per read_blobs call (bounded id lists)
ID_MAP_LIMIT = 1_000_000          # ~170 MB at most; beyond it, blobs are read again


@dataclass
class CopyOptions:
    """``snapshots``: ids, id prefixes or ``latest`` (empty: all); ``name``: series filter.

    Rehearsal records and archived database logs travel too when the whole
    repository is copied (no snapshot and no name given).
    """

    snapshots: list[str] = field(default_factory=list)
    name: str | None = None

    @property
    def everything(self) -> bool:
        return not self.snapshots and not self.name


@dataclass
class CopyReport:
    source: str
    destination: str
    initialized: bool = False
    copied: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    blobs_read: int = 0
    blobs_mapped: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0
    bytes_stored: int = 0
    chain_parents: list[dict[str, Any]] = field(default_factory=list)  # not asked for: an incremental's chain
    refused: list[dict[str, Any]] = field(default_factory=list)        # incrementals whose chain is lost
    rehearsals_copied: int = 0
    log_files_copied: int = 0
    id_map_full: bool = False
    source_requests: dict[str, int] = field(default_factory=dict)
    destination_requests: dict[str, int] = field(default_factory=dict)
    warm: dict[str, Any] | None = None  # source packs in an archive class that were warmed first

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _warm_dict(plan: Any) -> dict[str, Any] | None:
    return plan.as_dict() if plan is not None else None


class IdMap:
    """Source blob id → destination blob id, bounded: when full, new pairs are dropped."""

    def __init__(self, limit: int = ID_MAP_LIMIT) -> None:
        self.limit = limit
        self._pairs: dict[bytes, bytes] = {}
        self.full = False

    def add(self, src: bytes, dst: bytes) -> None:
        if len(self._pairs) < self.limit:
            self._pairs[src] = dst
        else:
            self.full = True

    def get(self, src: bytes) -> bytes | None:
        return self._pairs.get(src)


def check_apart(source: str, destination: str) -> None:
    """Refuse a destination inside the source repository (or the other way round).

    ``copy --to REPO/snapshots`` would create a second repository *inside*
    the first: its objects land in the source's ``snapshots/`` and
    ``keys/``, and the source no longer opens.  Checked before anything is
    created; paths are compared after resolving links, S3 URLs by bucket and
    prefix.
    """
    a, b = _location(source), _location(destination)
    if a is None or b is None or a[0] != b[0]:
        return
    inner = a[1] == b[1] or b[1].startswith(a[1].rstrip("/") + "/") or a[1].startswith(b[1].rstrip("/") + "/")
    if inner or not a[1] or not b[1]:
        raise UsageError(f"the destination {destination} overlaps the source repository {source}",
                         hint="--to must name a separate place (not inside the source, nor around it)")


def _location(url: str) -> tuple[str, str] | None:
    """(namespace, path) to compare: ("file", real path) or ("s3:<bucket>", prefix)."""
    if is_local_url(url):
        path = urlsplit(url).path if url.lower().startswith("file:") else url
        return "file", os.path.realpath(unquote(path))
    parts = urlsplit(url)
    if parts.scheme.lower() == "s3":
        return f"s3:{parts.netloc}", parts.path.strip("/")
    return None


def open_destination(options: OpenOptions, kdf: KdfParams | None = None) -> tuple[Session, bool]:
    """Open the destination, creating the repository when the location holds none."""
    backend = open_backend(options.repository, options.backend_options)
    created = False
    try:
        if not repository_exists(backend):
            Session.init(options, kdf=kdf).close()
            created = True
    finally:
        backend.close()
    return Session.open(options), created


def copy_snapshots(src: Session, dst: Session, options: CopyOptions) -> CopyReport:
    """Copy the selected snapshots (and, for a full copy, rehearsals and logs)."""
    if src.repo.config.repo_id == dst.repo.config.repo_id:
        raise UsageError("the destination is the source repository itself",
                         hint="--to must name another repository")
    with src.lock("copy") as src_lock, dst.lock("copy") as dst_lock:
        copier = Copier(src, dst, src_lock, dst_lock)
        copier.run(options)
    report = copier.report
    report.source_requests = src.repo.backend.stats.as_dict()
    report.destination_requests = dst.repo.backend.stats.as_dict()
    return report


class Copier:
    def __init__(self, src: Session, dst: Session, src_lock: Lock, dst_lock: Lock) -> None:
        self.src = src
        self.dst = dst
        self.locks = (src_lock, dst_lock)
        self.ids = IdMap()
        self.report = CopyReport(src.repo.backend.url, dst.repo.backend.url)
        self.done: dict[str, str] = {}          # source snapshot id → destination snapshot id
        self.dst_snaps: dict[str, Snapshot] = {}
        self.seeded: set[str] = set()           # source tree ids already paired
        self.pending: list[tuple[Snapshot, Snapshot]] = []
        self._committed_bytes = 0

    def run(self, options: CopyOptions) -> None:
        self.src.repo.load_index()
        self.dst.repo.load_index()
        selected = self._select(options)
        self._find_copied()
        selected = self._with_chains(selected, explicit=bool(options.snapshots))
        # A cold source (packs in GLACIER): warm what the snapshots to copy need, and wait.
        self.report.warm = _warm_dict(warm_snapshots(self.src.repo, [s.tree for s in selected
                                                                     if s.id not in self.done]))
        for snap in selected:
            if snap.id in self.done:
                self.report.skipped.append(_brief(snap, self.done[snap.id]))
                continue
            self._copy_one(snap)
            if self.dst.repo.new_bytes_raw - self._committed_bytes >= COMMIT_BYTES:
                self._commit()
        self._commit()
        if options.everything:
            self._copy_rehearsals()
            self._copy_logs()
        self.report.id_map_full = self.ids.full

    # ----- selection and identity ---------------------------------------------------
    def _select(self, options: CopyOptions) -> list[Snapshot]:
        if not options.snapshots:
            return self.src.snapshots(options.name)
        chosen = {s.id: s for s in (self.src.find_snapshot(ref, options.name)
                                    for ref in options.snapshots)}
        return sorted(chosen.values(), key=lambda s: (s.time, s.id))

    def _with_chains(self, selected: list[Snapshot], explicit: bool) -> list[Snapshot]:
        """``selected`` with every snapshot their restore chains read (a MariaDB physical
        incremental's full and parents) that the destination lacks, oldest first, so no copy is
        an incremental without its parents.  An incremental whose chain is in neither repository
        is not copied: named ids stop the copy before anything is written; otherwise it is left
        out and listed in ``refused`` (the CLI exits 3)."""
        source = self.src.snapshots()
        everything = source + list(self.dst_snaps.values())
        in_source = {s.id for s in source}
        chosen = {s.id: s for s in selected}
        for snap in selected:
            engine = next((e for e in engines() if snap.kind in e.base_kinds), None)
            if engine is None:
                continue
            try:
                members = engine.base_chain(snap, everything)
            except SnapshotNotFound as exc:
                if snap.id in self.done:
                    continue  # already there (copied before chains were checked): nothing to add
                problem = _lost_chain(snap, exc)
                if explicit:
                    raise SnapshotNotFound(f"{problem}; nothing was copied",
                                           hint="copy a full backup and the incrementals after it instead "
                                                f"('drtool snapshots --name {snap.name}' shows them)") from None
                log.warning("%s: not copied", problem)
                self.report.refused.append({**_brief(snap, ""), "problem": problem})
                del chosen[snap.id]
                continue
            for member in members[:-1]:
                if member.id in in_source and member.id not in self.done and member.id not in chosen:
                    chosen[member.id] = member
                    self.report.chain_parents.append(_brief(member, ""))
                    log.info("snapshot %s is copied too: incremental %s needs it", member.short_id, snap.short_id)
        return sorted(chosen.values(), key=lambda s: (s.time, s.id))

    def _find_copied(self) -> None:
        """Pair snapshots both sides already hold (same origin, name, host and time).

        The origin survives chains of copies (A → B → C) and copies back
        (B → A), so none of them duplicates a snapshot.
        """
        src_repo, dst_repo = self.src.repo.config.repo_id, self.dst.repo.config.repo_id
        by_origin: dict[tuple[str, str], Snapshot] = {}
        for snap in self.dst.snapshots():
            self.dst_snaps[snap.id] = snap
            by_origin[_origin(snap, dst_repo)] = snap
        for snap in self.src.snapshots():
            twin = by_origin.get(_origin(snap, src_repo))
            if twin is not None and _same_backup(snap, twin):
                self.done[snap.id] = twin.id

    # ----- one snapshot ---------------------------------------------------------------
    def _copy_one(self, snap: Snapshot) -> None:
        self._seed_from_relative(snap)
        before = self.dst.repo.new_blobs
        tree = self._tree(snap.tree)
        meta = dict(snap.meta)
        src_repo = self.src.repo.config.repo_id
        origin_repo, origin_snap = _origin(snap, src_repo)
        meta[COPIED_FROM] = {"repository": src_repo, "snapshot": snap.id,
                             "origin": {"repository": origin_repo, "snapshot": origin_snap}}
        new = Snapshot(name=snap.name, host=snap.host, time=snap.time, tree=tree, kind=snap.kind,
                       paths=list(snap.paths), tags=list(snap.tags), summary=dict(snap.summary),
                       meta=meta, program_version=snap.program_version)
        self.pending.append((snap, new))
        log.info("snapshot %s (%s) translated: %d new blob(s)", snap.short_id, snap.name,
                 self.dst.repo.new_blobs - before)

    def _commit(self) -> None:
        """Packs and index first (flush), then the manifests: the commit point."""
        self.dst.repo.flush()
        self._committed_bytes = self.dst.repo.new_bytes_raw
        self.report.blobs_copied = self.dst.repo.new_blobs
        self.report.bytes_copied = self.dst.repo.new_bytes_raw
        self.report.bytes_stored = self.dst.repo.new_bytes_stored
        if not self.pending:
            return
        crash_point("copy-before-snapshot")
        for lock in self.locks:
            lock.ensure_held()
        saved = []
        for source, new in self.pending:
            new.parent = self.done.get(source.parent) if source.parent else None
            save_snapshot(self.dst.repo, new)
            self.done[source.id] = new.id
            self.dst_snaps[new.id] = new
            self.report.copied.append(_brief(source, new.id))
            saved.append(new)
        self.pending = []
        self.dst.catalog.add_snapshots(saved)

    # ----- seeding the id map -----------------------------------------------------------
    def _seed_from_relative(self, snap: Snapshot) -> None:
        """Pair the trees of the newest earlier snapshot of the series both sides hold."""
        relative = None
        if snap.parent and snap.parent in self.done:
            relative = snap.parent
        else:
            older = [s for s in self.src.snapshots(snap.name)
                     if s.id in self.done and (s.time, s.id) < (snap.time, snap.id)]
            relative = older[-1].id if older else None
        if relative is None:
            return
        dst_snap = self.dst_snaps.get(self.done[relative])
        src_snap = next((s for s in self.src.snapshots(snap.name) if s.id == relative), None)
        if dst_snap is not None and src_snap is not None:
            self._seed(src_snap.tree, dst_snap.tree)

    def _seed(self, src_tree: str, dst_tree: str) -> None:
        """Walk two trees that are copies of each other; record every id pair.

        Only tree blobs are read.  A position whose names or content lengths
        differ is not trusted (it is simply read again when needed).
        """
        stack = [(src_tree, dst_tree)]
        while stack:
            s_id, d_id = stack.pop()
            if s_id in self.seeded:
                continue
            self.seeded.add(s_id)
            try:
                s_nodes, d_nodes = load_tree(self.src.repo, s_id), load_tree(self.dst.repo, d_id)
            except DrtoolError as exc:
                log.debug("not seeding from tree %s: %s", s_id[:16], exc)
                continue
            if [n.name for n in s_nodes] != [n.name for n in d_nodes]:
                continue
            self.ids.add(bytes.fromhex(s_id), bytes.fromhex(d_id))
            for a, b in zip(s_nodes, d_nodes):
                if len(a.content) == len(b.content):
                    for x, y in zip(a.content, b.content):
                        self.ids.add(bytes.fromhex(x), bytes.fromhex(y))
                if a.subtree and b.subtree:
                    stack.append((a.subtree, b.subtree))

    # ----- translation ----------------------------------------------------------------------
    def _known(self, src_id: bytes) -> bytes | None:
        """The destination id of a source blob, if mapped and still in the destination."""
        dst_id = self.ids.get(src_id)
        return dst_id if dst_id is not None and self.dst.repo.is_known(dst_id) else None

    def _tree(self, tree_id: str) -> str:
        """Destination id of the translated tree (recursively, bottom-up)."""
        mapped = self._known(bytes.fromhex(tree_id))
        if mapped is not None:
            self.report.blobs_mapped += 1
            return mapped.hex()
        nodes = load_tree(self.src.repo, tree_id)
        self._translate_contents(nodes)
        for node in nodes:
            if node.subtree:
                node.subtree = self._tree(node.subtree)
        new_id = store_tree(self.dst.repo, nodes)
        self.ids.add(bytes.fromhex(tree_id), bytes.fromhex(new_id))
        return new_id

    def _translate_contents(self, nodes: list[Node]) -> None:
        """Rewrite every file's blob list; read only blobs the destination may lack."""
        local: dict[bytes, bytes] = {}
        wanted: list[bytes] = []
        for node in nodes:
            for hexid in node.content:
                src_id = bytes.fromhex(hexid)
                if src_id in local:
                    continue
                dst_id = self._known(src_id)
                if dst_id is None:
                    wanted.append(src_id)
                    local[src_id] = b""
                else:
                    local[src_id] = dst_id
                    self.report.blobs_mapped += 1
        for src_id, dst_id in self._copy_blobs(wanted):
            local[src_id] = dst_id
            self.ids.add(src_id, dst_id)
        for node in nodes:
            if node.content:
                node.content = [local[bytes.fromhex(h)].hex() for h in node.content]

    def _copy_blobs(self, wanted: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Read blobs in pack order (neighbours share ranged reads); store what is new."""
        ordered = sorted(wanted, key=self._location)
        for start in range(0, len(ordered), READ_BATCH):
            batch = ordered[start:start + READ_BATCH]
            for src_id, data in zip(batch, self.src.repo.read_blobs(batch)):
                self.report.blobs_read += 1
                dst_id = self.dst.repo.ids.blob_id(data)
                self.dst.repo.add_blob(DATA_BLOB, dst_id, data)
                yield src_id, dst_id

    def _location(self, blob_id: bytes) -> tuple[bytes, int, int]:
        loc = self.src.repo.locate(blob_id)
        return loc.pack_id, loc.offset, loc.inner

    # ----- rehearsal records and archived logs ---------------------------------------------
    def _copy_rehearsals(self) -> None:
        """Rehearsal history is part of the DR record: it travels with a full copy."""
        present = set(self.dst.repo.list_objects(REHEARSALS))
        kind = REHEARSAL_KIND.decode()
        for object_id in self.src.repo.list_objects(REHEARSALS):
            raw = self.src.repo.get_object(REHEARSALS, REHEARSAL_KIND, object_id)
            if self.dst.repo.ids.object_id(kind, raw).hex() in present:
                continue
            self.dst.repo.put_object(REHEARSALS, REHEARSAL_KIND, raw)
            self.report.rehearsals_copied += 1

    def _copy_logs(self) -> None:
        """WAL and binlog files, so point-in-time recovery works at the second site too.

        Object names are keyed by each repository's id key, so the destination
        name is recomputed from (kind, source, file name) without reading data.
        """
        src_logs = sync_log_segments(self.src).segments()
        if not src_logs:
            return
        present = LogCatalog(self.dst.catalog)
        present_ids = sync_log_segments(self.dst).known_object_ids()
        added = []
        for seg in src_logs:
            new_id = segment_object_id(self.dst.repo, seg.kind, seg.source, seg.name)
            if new_id in present_ids:
                continue
            for lock in self.locks:
                lock.ensure_held()
            payload = fetch_segment(self.src.repo, seg.kind, seg.source, seg.name)
            copied = dataclasses.replace(seg, object_id=new_id)
            store_segment(self.dst.repo, copied, payload)
            added.append(copied)
        self.report.log_files_copied = present.add(added)


def _origin(snap: Snapshot, repo_id: str) -> tuple[str, str]:
    """(repository id, snapshot id) of the backup ``snap`` (held in ``repo_id``) is a copy of."""
    copied = snap.meta.get(COPIED_FROM)
    if isinstance(copied, dict):
        origin = copied.get("origin") if isinstance(copied.get("origin"), dict) else copied
        repo, snap_id = origin.get("repository"), origin.get("snapshot")
        if isinstance(repo, str) and isinstance(snap_id, str):
            return repo, snap_id
    return repo_id, snap.id


def _lost_chain(snap: Snapshot, exc: SnapshotNotFound) -> str:
    """One line: which ancestor of incremental ``snap`` neither repository holds."""
    missing, child = getattr(exc, "missing", ""), getattr(exc, "child", None)
    if not missing or child is None:
        return f"snapshot {snap.short_id}: {exc}"
    return (f"snapshot {snap.short_id} of {snap.name} is an incremental physical backup whose chain needs snapshot "
            f"{missing[:8]} (parent of {child.short_id}), which is in neither repository: a copy could not "
            f"be restored")


def _same_backup(a: Snapshot, b: Snapshot) -> bool:
    return a.name == b.name and a.host == b.host and a.time == b.time


def _brief(snap: Snapshot, dst_id: str) -> dict[str, Any]:
    return {"source": snap.id, "id": dst_id, "name": snap.name,
            "time": snap.time.astimezone().isoformat()}


def summary_line(report: CopyReport) -> str:
    """One line for people (the CLI prints it; scripts use --json)."""
    mib = 1024 * 1024
    extras = ""
    if report.chain_parents:
        extras += f"; copied with them: {len(report.chain_parents)} parent(s) that incremental(s) need"
    if report.refused:
        extras += f"; {len(report.refused)} incremental(s) with a lost chain not copied"
    if report.rehearsals_copied or report.log_files_copied:
        extras += (f"; {report.rehearsals_copied} rehearsal record(s), "
                  f"{report.log_files_copied} log file(s)")
    return (f"copied {len(report.copied)} snapshot(s) to {report.destination}, "
            f"{len(report.skipped)} already there; {report.blobs_copied} new blob(s), "
            f"{report.bytes_copied / mib:.1f} MiB ({report.bytes_stored / mib:.1f} MiB stored)"
            f"{extras}")


__all__ = ["CopyOptions", "CopyReport", "copy_snapshots", "open_destination", "summary_line"]
