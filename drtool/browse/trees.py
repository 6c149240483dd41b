"""Comparing two snapshot trees without reading what they share.

Unchanged directories keep their tree id from one backup to the next, so a
comparison descends only into subtrees whose ids differ: a nightly snapshot
with 1 % of 200,000 files changed reads the trees on the paths to the
changes, not 200,000 nodes.  Both the file index and ``drtool diff`` use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from drtool.digests import blake2b
from drtool.errors import UsageError
from drtool.repository.repo import Repository
from drtool.snapshot.model import DIR, FILE, SYMLINK, Node
from drtool.snapshot.store import load_tree, load_tree_checked, load_tree_entries

Change = tuple[str, "Node | None", "Node | None"]


def normal_path(path: str) -> str:
    """A path inside a snapshot as ``restore --include`` takes it: no leading '/', no '.' or '..'."""
    parts = [p for p in path.strip().split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"path {path!r} is not a path inside a snapshot",
                         hint="give a path as 'drtool ls' prints it, e.g. media/photos")
    return "/".join(parts)


def content_id(node: Node) -> str:
    """A short id of what a file holds (its blob ids) or where a link points; '' for the rest.

    A file of one blob (every file under 256 KiB) is named by its blob id, a keyed
    hash of the content already: no hashing per file while indexing."""
    return content_id_of(node.type, node.content, node.target)


def content_id_of(kind: str, content: list[str], target: str | None) -> str:
    """:func:`content_id` from an entry's fields (a raw tree item has no ``Node``)."""
    if kind == FILE and len(content) == 1:
        return content[0][:32]
    if kind == FILE:
        digest = blake2b(digest_size=16)
        for blob in content:
            digest.update(blob.encode())
        return digest.hexdigest()
    if kind == SYMLINK and target is not None:
        return blake2b(target.encode(errors="surrogateescape"), digest_size=16).hexdigest()
    return ""


def data_signature(node: Node) -> tuple[object, ...]:
    """What the entry holds: a change here is a modification."""
    if node.type == DIR:
        return (DIR,)
    return (node.type, node.size, node.content, node.target, node.rdev)


def meta_signature(node: Node) -> tuple[object, ...]:
    """Metadata a restore sets.  A directory's mtime and size follow every change inside it,
    so they are left out (they would mark every parent of a change)."""
    if node.type == DIR:
        return (node.mode, node.uid, node.gid)
    return (node.mode, node.uid, node.gid, node.mtime_ns)


def level_changes(base: str, old_nodes: list[Node], new_nodes: list[Node], with_hashes: bool = False
                  ) -> tuple[list[Change], list[tuple[str, str | None, str | None]]]:
    """One directory of :func:`tree_changes`: its changed entries, and the subdirectories
    whose tree ids differ (path, old subtree, new subtree), to be compared next."""
    old = {n.name: n for n in old_nodes}
    new = {n.name: n for n in new_nodes}
    changes: list[Change] = []
    below: list[tuple[str, str | None, str | None]] = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        path = f"{base}/{name}" if base else name
        if before is None or after is None or before.type != after.type \
                or data_signature(before) != data_signature(after) \
                or meta_signature(before) != meta_signature(after) \
                or with_hashes and before.hash != after.hash:
            changes.append((path, before, after))
        old_sub = before.subtree if before is not None and before.type == DIR else None
        new_sub = after.subtree if after is not None and after.type == DIR else None
        if old_sub != new_sub:
            below.append((path, old_sub, new_sub))
    return changes, below


def tree_changes(repo: Repository, old_tree: str | None, new_tree: str | None,
                 prefix: str = "", with_hashes: bool = False, checked: bool = True) -> Iterator[Change]:
    """(path, old node, new node) for every entry added (old None), removed (new None) or
    changed in data or metadata, parents before children; paths as ``restore --include``
    takes them (relative to the snapshot's root, '/'-separated).  ``with_hashes``: also an
    entry whose recorded content hash differs (first recorded: the file index keeps it).
    ``checked=False`` skips the entry-name checks of ``load_tree_checked`` (a third of the
    cost): for the file index, which only records names and never turns them into paths."""
    load = load_tree_checked if checked else load_tree
    stack: list[tuple[str, str | None, str | None]] = [(prefix, old_tree, new_tree)]
    while stack:
        base, old_id, new_id = stack.pop()
        if old_id == new_id:
            continue
        changes, below = level_changes(base, load(repo, old_id) if old_id else [],
                                       load(repo, new_id) if new_id else [], with_hashes)
        yield from changes
        stack.extend(reversed(below))


def first_entries(repo: Repository, tree_id: str, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, entry as stored) for every entry under ``tree_id``, in the order
    ``tree_changes(repo, None, tree_id)`` yields them as additions (parents before children,
    names sorted), without a ``Node`` each: the file index of a first snapshot copies a few
    fields of every entry, and building 200,000 nodes was a third of that step's Python."""
    stack: list[tuple[str, str]] = [(prefix, tree_id)]
    while stack:
        base, tree = stack.pop()
        by_name = {item["name"]: item for item in load_tree_entries(repo, tree)}
        below: list[tuple[str, str]] = []
        for name in sorted(by_name):
            item = by_name[name]
            path = f"{base}/{name}" if base else name
            yield path, item
            if item["type"] == DIR and item.get("subtree"):
                below.append((path, item["subtree"]))
        stack.extend(reversed(below))


@dataclass
class WalkedChanges:
    """What a backup changed against its parent snapshot, collected by the walk itself.

    The walk compares every directory with the parent's anyway; the file index
    needs the same comparison (``tree_changes``), which otherwise reads back the
    trees the backup just wrote (all of them after a first backup; on 200,000
    files with 1 % changed, ~1,500 directories' old and new trees).  ``removed``:
    directories that are gone (or no longer directories), whose old trees are
    read at indexing time to close what they held.  Valid for exactly the pair
    of trees (``parent_tree``, ``tree``).
    """
    parent_tree: str | None
    tree: str | None = None
    changes: list[Change] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)

    def all_changes(self, repo: Repository) -> Iterator[Change]:
        yield from self.changes
        for path, old_tree in self.removed:
            yield from tree_changes(repo, old_tree, None, prefix=path, with_hashes=True, checked=False)
