"""Keeping the per-file index (``catalog/files.py``) in step with the snapshots.

A snapshot is indexed by comparing its tree with the previous indexed
snapshot of its series (``trees.tree_changes``): only paths that appear,
change or disappear touch the index.  Backups index their snapshot as they
record it; snapshots that arrive otherwise (another host, ``copy``, a catalog
that predates the index) are indexed when the index is next used, and
``catalog rebuild`` recreates it from the repository alone.  A snapshot that
sorts before the series' last indexed one (a copied old snapshot) makes the
series be indexed again from its first snapshot.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Iterator

from drtool.browse.trees import (Change, WalkedChanges, content_id, content_id_of, data_signature,
                                 first_entries, meta_signature, tree_changes)
from drtool.catalog.files import ChangeBatch, FileIndex, IndexedSnapshot, VersionRow
from drtool.core.session import Session
from drtool.errors import DrtoolError
from drtool.repository.repo import Repository
from drtool.snapshot.model import NODE_DEFAULTS, Node, Snapshot
from drtool.snapshot.names import display

log = logging.getLogger("drtool")
BATCH = 5000  # changes per batch of rows (one transaction for the whole snapshot)
_SIZE, _MTIME, _MODE = NODE_DEFAULTS["size"], NODE_DEFAULTS["mtime_ns"], NODE_DEFAULTS["mode"]


@dataclass
class IndexResult:
    snapshots: int = 0
    versions_added: int = 0
    versions_closed: int = 0
    series_reindexed: int = 0
    failed: list[str] = field(default_factory=list)


def version_row(path: str, node: Node) -> VersionRow:
    """``path``: in the escaped form of ``names.display`` (printable UTF-8, one-to-one), as
    every catalog column: a name that is not UTF-8 cannot be stored as it is.  A tuple in
    the order of ``files.ROW_COLUMNS``: rows go to the driver as they are."""
    return (path, path.rsplit("/", 1)[-1], node.type, node.size, node.mtime_ns, node.mode, content_id(node),
            node.hash or None)


def same_version(before: Node, after: Node) -> bool:
    return before.type == after.type and data_signature(before) == data_signature(after) \
        and meta_signature(before) == meta_signature(after)


def series_of(snap: Snapshot) -> str:
    """The series key, spelled as the catalog stores snapshot names."""
    return display(snap.name)


def _index_one(session: Session, index: FileIndex, snap: Snapshot, last: IndexedSnapshot | None,
               result: IndexResult, walked: WalkedChanges | None = None) -> IndexedSnapshot:
    entry = IndexedSnapshot(snap.id, series_of(snap), last.seq + 1 if last else 1, snap.tree, snap.time)
    old_tree = last.tree if last else None
    if walked is not None and (walked.parent_tree, walked.tree) == (old_tree, snap.tree):
        batches = _batches(walked.all_changes(session.repo), result)  # what the walk found: no tree read
    elif old_tree is None:  # every entry is new: rows straight from the stored entries
        batches = _first_batches(session.repo, snap.tree, result)
    else:
        batches = _batches(tree_changes(session.repo, old_tree, snap.tree, with_hashes=True, checked=False),
                           result)
    index.record(entry, batches)
    result.snapshots += 1
    return entry


def _batches(changes: Iterable[Change], result: IndexResult) -> Iterator[ChangeBatch]:
    """The changes as rows, a bounded batch at a time: a first snapshot of a million files
    is written without holding a million rows in memory."""
    closed: list[str] = []
    added: list[VersionRow] = []
    hashed: dict[str, str] = {}
    for raw_path, before, after in changes:
        path = display(raw_path)
        if before is not None and after is not None and after.hash and same_version(before, after):
            hashed[path] = after.hash  # only the hash is new: the version stays, now with its hash
        else:
            if before is not None:
                closed.append(path)
            if after is not None:
                added.append(version_row(path, after))
        if len(closed) + len(added) + len(hashed) >= BATCH:
            yield closed, added, hashed
            result.versions_added += len(added)
            result.versions_closed += len(closed)
            closed, added, hashed = [], [], {}
    yield closed, added, hashed
    result.versions_added += len(added)
    result.versions_closed += len(closed)


def _first_batches(repo: Repository, tree: str, result: IndexResult) -> Iterator[ChangeBatch]:
    """:func:`_batches` of a series' first snapshot (every entry added), rows made from the
    entries as stored: the same rows in the same order, without a ``Node`` per entry."""
    added: list[VersionRow] = []
    for raw_path, item in first_entries(repo, tree):
        added.append(item_row(display(raw_path), item))
        if len(added) >= BATCH:
            yield [], added, {}
            result.versions_added += len(added)
            added = []
    yield [], added, {}
    result.versions_added += len(added)


def item_row(path: str, item: dict[str, Any]) -> VersionRow:
    """:func:`version_row` of a stored entry (absent fields are ``Node``'s defaults)."""
    kind = item["type"]
    return (path, path.rsplit("/", 1)[-1], kind, item.get("size", _SIZE), item.get("mtime_ns", _MTIME),
            item.get("mode", _MODE), content_id_of(kind, item.get("content", []), item.get("target")),
            item.get("hash") or None)


def index_series(session: Session, index: FileIndex, snaps: list[Snapshot],
                 result: IndexResult | None = None, walked: WalkedChanges | None = None) -> IndexResult:
    """Index the snapshots of one series that the index lacks (``snaps``: all of them, oldest first).
    ``walked``: a backup's changes against its parent (used for that pair of trees only)."""
    result = result or IndexResult()
    if not snaps:
        return result
    series = series_of(snaps[0])
    done = index.indexed(series)
    known = {e.snapshot_id for e in done}
    pending = [s for s in snaps if s.id not in known]
    if not pending:
        return result
    last = done[-1] if done else None
    if last is not None and (pending[0].time, pending[0].id) < (last.time, last.snapshot_id):
        index.drop_series(series)  # an older snapshot arrived: intervals must be recounted
        result.series_reindexed += 1
        last, pending = None, snaps
    for snap in pending:
        try:
            last = _index_one(session, index, snap, last, result, walked)
        except DrtoolError as exc:
            if last is None or last.snapshot_id == snap.id:
                raise
            log.info("file index: the previous snapshot of %s cannot be read (%s); re-indexing the series",
                     series, exc)
            index.drop_series(series)
            result.series_reindexed += 1
            return index_series(session, index, snaps, result)
    return result


def catch_up(session: Session, names: Iterable[str] | None = None, load_index: bool = True,
             lock: Callable[[], ContextManager[Any]] | None = None) -> IndexResult:
    """Index every snapshot the catalog lists but the file index lacks (or those of ``names``).

    ``load_index``: read the repository's blob index first (once, and only if
    something is to be indexed); ``catalog rebuild`` has just built it.
    ``lock``: taken only when trees must be read (``find`` on an index that is
    up to date reads the catalog alone and writes no lock object).
    """
    index = FileIndex(session.catalog)
    snaps = session.snapshots()
    wanted = set(names) if names is not None else None
    by_series: dict[str, list[Snapshot]] = {}
    for snap in snaps:
        if wanted is None or snap.name in wanted or series_of(snap) in wanted:
            by_series.setdefault(series_of(snap), []).append(snap)
    result = IndexResult()
    indexed = {e.snapshot_id for e in index.indexed()}
    pending = {series: snaps for series, snaps in by_series.items() if any(s.id not in indexed for s in snaps)}
    if not pending:
        return result
    with lock() if lock is not None else nullcontext():
        if load_index:
            session.repo.load_index()
        for series, series_snaps in pending.items():
            try:
                index_series(session, index, series_snaps, result)
            except DrtoolError as exc:  # one damaged snapshot must not hide every other series
                log.warning("file index: %s could not be indexed (%s); run 'drtool check'", series, exc)
                result.failed.append(f"{series}: {exc}")
    return result


def index_new_snapshot(session: Session, snap: Snapshot,
                       walked: WalkedChanges | None = None) -> IndexResult:
    """After a backup: index its series from what the catalog lists (no repository listing).
    ``walked``: what the backup's walk found changed (``TreeWalker.walked``): comparing the
    snapshot with its parent then reads no tree back from the repository."""
    snaps = [s for s in session.catalog.snapshots(snap.name) if s.name == snap.name]
    if all(s.id != snap.id for s in snaps):
        snaps.append(snap)
    snaps.sort(key=lambda s: (s.time, s.id))
    return index_series(session, FileIndex(session.catalog), snaps, walked=walked)


def rebuild(session: Session) -> IndexResult:
    """The whole index again from the repository's trees (``drtool catalog rebuild``)."""
    FileIndex(session.catalog).clear()
    return catch_up(session, load_index=False)
