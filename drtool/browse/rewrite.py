"""``drtool rewrite --exclude PATH...``: take files out of existing snapshots (legal takedowns).

Each affected snapshot is replaced by a new one without the paths: same
name, host, time, tags, paths and parent, its summary reduced by what was
taken out, and ``meta["rewritten"]`` recording the original id, the paths,
the reason, when and where.  Only trees on the way to an excluded path are
written again; everything else keeps its blobs.  Write order as a backup:
new trees -> packs -> index, then the new snapshots, then a tombstone and
the deletion of the originals (as ``forget``).  The excluded data itself
stays until the next ``prune`` finds it unreferenced.

Under S3 Object Lock nothing can be deleted before its retention ends: the
result names each locked object (the original snapshot, the packs holding the
excluded data) and the date it can go.  The new snapshots are written anyway;
a later ``rewrite`` with the same paths finds them (``meta["rewritten"]``)
and only deletes the originals, and ``prune`` after that date frees the data.
Every outcome is written to the catalog's audit trail (``rewrites``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from drtool.backends import capabilities
from drtool.browse.index import catch_up
from drtool.browse.trees import normal_path
from drtool.catalog.files import record_rewrite
from drtool.core.rollback import record_forgotten
from drtool.core.session import Session
from drtool.errors import DrtoolError, ObjectMissing, UsageError
from drtool.repository.objects import SNAPSHOTS, object_name, pack_name
from drtool.repository.repo import Repository
from drtool.repository.tombstones import write_tombstone
from drtool.snapshot.model import DIR, FILE, Node, Snapshot
from drtool.snapshot.names import display
from drtool.snapshot.store import load_tree_checked, save_snapshot, store_tree, walk_tree

log = logging.getLogger("drtool")


@dataclass
class Affected:
    original: Snapshot
    tree: str
    removed: list[str]
    files: int = 0
    bytes: int = 0
    blobs: set[str] = field(default_factory=set)
    new_id: str | None = None
    deleted: bool = False
    already_rewritten: str | None = None   # a previous run wrote the replacement
    locked: list[tuple[str, datetime]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        snap = self.original
        return {"id": snap.id, "short_id": snap.short_id, "name": snap.name, "host": snap.host,
                "time": snap.time.astimezone().isoformat(), "removed": self.removed, "files": self.files,
                "bytes": self.bytes, "new_id": self.new_id or self.already_rewritten,
                "original_deleted": self.deleted,
                "locked": [{"object": name, "until": until.isoformat()} for name, until in self.locked]}

    def text(self, dry_run: bool) -> str:
        snap = self.original
        head = (f"{snap.short_id} ({display(snap.name)}, {snap.time.astimezone().isoformat(timespec='seconds')}): "
                f"{', '.join(display(p) for p in self.removed) or '(nothing left to remove)'} "
                f"({self.files} file(s), {self.bytes} bytes)")
        if dry_run:
            head = "would rewrite " + head
        elif self.already_rewritten and not self.new_id:
            head += f"; already rewritten as {self.already_rewritten[:8]}"
        elif self.new_id:
            head += f" -> {self.new_id[:8]}"
        if not dry_run:
            head += "; original forgotten" if self.deleted else "; original NOT deleted yet"
        lines = [head] + [f"    {name} is under Object Lock until {until.isoformat(timespec='seconds')}: "
                          f"it cannot be deleted before then" for name, until in self.locked]
        return "\n".join(lines)


@dataclass
class RewriteResult:
    dry_run: bool
    reason: str
    excluded: list[str]
    affected: list[Affected] = field(default_factory=list)
    unaffected: int = 0

    @property
    def complete(self) -> bool:
        """Every original is gone (a takedown under Object Lock completes after its retention)."""
        return self.dry_run or all(a.deleted for a in self.affected)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "reason": self.reason, "excluded": self.excluded,
                "affected": [a.as_dict() for a in self.affected], "unaffected": self.unaffected,
                "complete": self.complete}


def without(repo: Repository, tree_id: str, paths: list[list[str]], base: str = "",
            store: bool = True) -> tuple[str, list[tuple[str, Node]]]:
    """``tree_id`` with the entries at ``paths`` (split into components) left out.

    Returns the new tree id (the same id when nothing was there; '' when
    ``store`` is False: a dry run writes nothing, not even a pending blob) and
    the (path, node) pairs taken out.  Only trees on the way are loaded and stored.
    """
    here = {p[0] for p in paths if len(p) == 1}
    deeper: dict[str, list[list[str]]] = {}
    for p in paths:
        if len(p) > 1 and p[0] not in here:
            deeper.setdefault(p[0], []).append(p[1:])
    nodes = load_tree_checked(repo, tree_id)
    kept: list[Node] = []
    removed: list[tuple[str, Node]] = []
    for node in nodes:
        path = f"{base}/{node.name}" if base else node.name
        if node.name in here:
            removed.append((path, node))
            continue
        if node.name in deeper and node.type == DIR and node.subtree:
            sub, gone = without(repo, node.subtree, deeper[node.name], path, store)
            if gone:
                node = replace(node, subtree=sub)
                removed += gone
        kept.append(node)
    if not removed:
        return tree_id, []
    return (store_tree(repo, kept) if store else ""), removed


def _measure(repo: Repository, item: Affected, removed: list[tuple[str, Node]]) -> None:
    for path, node in removed:
        below = walk_tree(repo, node.subtree, path) if node.type == DIR and node.subtree else iter(())
        for _path, entry in [(path, node), *below]:
            if entry.type == FILE:
                item.files += 1
                item.bytes += entry.size
                item.blobs.update(entry.content)


def _locked(repo: Repository, item: Affected, now: datetime) -> None:
    """Objects Object Lock keeps: the original manifest and the packs with the excluded data."""
    lock = capabilities.object_lock(repo.backend)
    if lock is None:
        return
    names = [object_name(SNAPSHOTS, item.original.id)]
    locations = (repo.index.get(bytes.fromhex(b)) for b in item.blobs)
    names += sorted({pack_name(loc.pack_id) for loc in locations if loc is not None})
    for name in names:
        try:
            until = lock.retention_until(name)
        except ObjectMissing:
            continue
        if until is not None and until > now:
            item.locked.append((name, until))


def plan(session: Session, paths: list[str], snaps: list[Snapshot], all_snaps: list[Snapshot],
         now: datetime, store: bool) -> tuple[list[Affected], int]:
    parts = [p.split("/") for p in paths]
    replaced = {r.get("from"): s.id for s in all_snaps for r in s.meta.get("rewritten", [])
                if isinstance(r, dict) and sorted(r.get("excluded_asked", [])) == sorted(paths)}
    affected, unaffected = [], 0
    for snap in snaps:
        tree, removed = without(session.repo, snap.tree, parts, store=store)
        if not removed and snap.id not in replaced:
            unaffected += 1
            continue
        item = Affected(snap, tree, [p for p, _ in removed], already_rewritten=replaced.get(snap.id))
        _measure(session.repo, item, removed)
        _locked(session.repo, item, now)
        affected.append(item)
    return affected, unaffected


def rewrite(session: Session, excludes: list[str], refs: list[str], *, name: str | None, reason: str,
            dry_run: bool = False, command: str = "", now: datetime | None = None) -> RewriteResult:
    """Replace every affected snapshot (of ``refs``, else all; ``name``: one series) by one without
    ``excludes``; see the module docstring for the order of writes and Object Lock."""
    paths = _checked_paths(excludes)
    if not reason.strip():
        raise UsageError("--reason is required: the audit trail records why data was removed",
                         hint="e.g. --reason 'takedown request T1234'")
    now = now or datetime.now(timezone.utc)
    result = RewriteResult(dry_run, reason, paths)
    with session.lock("rewrite") as lock:
        session.repo.load_index()
        all_snaps = session.snapshots()
        chosen = [session.find_snapshot(r, name) for r in refs] if refs else session.snapshots(name)
        chosen = list({s.id: s for s in chosen}.values())
        result.affected, result.unaffected = plan(session, paths, chosen, all_snaps, now, store=not dry_run)
        if not result.affected:
            _nothing_matched(paths, chosen, all_snaps)
            return result
        if dry_run:
            return result
        _write_replacements(session, result, now)
        lock.ensure_held()
        _delete_originals(session, lock, result)
    _audit(session, result, command, now)
    catch_up(session, {a.original.name for a in result.affected})
    return result


def _nothing_matched(paths: list[str], chosen: list[Snapshot], all_snaps: list[Snapshot]) -> None:
    """A path in no snapshot is a typo (exit 1), unless an earlier rewrite already took it out."""
    done = any(sorted(r.get("excluded_asked", [])) == paths for s in all_snaps
               for r in s.meta.get("rewritten", []) if isinstance(r, dict))
    if not done:
        raise DrtoolError(f"--exclude {', '.join(paths)} matches nothing in the {len(chosen)} snapshot(s) "
                          f"considered; nothing was rewritten",
                          hint="check the path with 'drtool find NAME' (paths start with the backed-up "
                               "directory's name)")


def _checked_paths(excludes: list[str]) -> list[str]:
    if not excludes:
        raise UsageError("rewrite needs at least one --exclude PATH", hint="paths as 'drtool find' prints them")
    paths = [normal_path(e) for e in excludes]
    if "" in paths:
        raise UsageError("--exclude must name a path inside the snapshot, not its root",
                         hint="to remove whole snapshots use 'drtool forget ID'")
    return sorted(set(paths))


def _write_replacements(session: Session, result: RewriteResult, now: datetime) -> None:
    """New trees are stored by ``without``; flush packs and index, then write the snapshots."""
    repo = session.repo
    repo.flush()
    fresh = []
    for item in result.affected:
        if item.already_rewritten:
            continue
        snap = item.original
        record = {"from": snap.id, "reason": result.reason, "excluded": item.removed,
                  "excluded_asked": result.excluded, "time": now.isoformat(), "host": session.host}
        summary = dict(snap.summary, files=max(0, int(snap.summary.get("files", 0)) - item.files),
                       size=max(0, int(snap.summary.get("size", 0)) - item.bytes))
        meta = dict(snap.meta, rewritten=[*snap.meta.get("rewritten", []), record])
        new = replace(snap, id="", tree=item.tree, summary=summary, meta=meta)
        item.new_id = save_snapshot(repo, new)
        fresh.append(new)
    session.catalog.add_snapshots(fresh)


def _delete_originals(session: Session, lock: Any, result: RewriteResult) -> None:
    doomed = [a for a in result.affected if not any(n.startswith(f"{SNAPSHOTS}/") for n, _ in a.locked)]
    if not doomed:
        return
    write_tombstone(session.repo, "rewrite", snapshots=[a.original.id for a in doomed], host=session.host)
    for item in doomed:
        lock.ensure_held()
        try:
            session.repo.backend.delete(object_name(SNAPSHOTS, item.original.id))
            item.deleted = True
        except DrtoolError as exc:
            log.warning("could not delete the original snapshot %s: %s", item.original.short_id, exc)
    gone = [a.original.id for a in doomed if a.deleted]
    session.catalog.remove_snapshots(gone)
    record_forgotten(session, "snapshot", gone, "rewrite")


def _audit(session: Session, result: RewriteResult, command: str, now: datetime) -> None:
    rows = []
    for item in result.affected:
        outcome = "original forgotten" if item.deleted else "original kept: " + "; ".join(
            f"{n} locked until {u.isoformat(timespec='seconds')}" for n, u in item.locked)
        rows.append({"time": now, "host": session.host, "command": command, "reason": result.reason,
                     "excluded": json.dumps(item.removed), "original_id": item.original.id,
                     "new_id": item.new_id or item.already_rewritten, "outcome": outcome})
    record_rewrite(session.catalog, rows)
