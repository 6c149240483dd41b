"""``drtool ls`` and ``drtool diff``: read straight from the snapshot trees.

Paths are spelled as ``restore --include`` and ``find`` spell them: relative
to the snapshot's root, '/'-separated (``media/photos/a.jpg``).
"""
from __future__ import annotations

import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from drtool.browse.trees import data_signature, normal_path, tree_changes
from drtool.errors import DrtoolError, IntegrityError
from drtool.repository.repo import Repository
from drtool.snapshot.model import BLOCKDEV, CHARDEV, DIR, FIFO, SOCKET, SYMLINK, Node, Snapshot
from drtool.snapshot.names import display
from drtool.snapshot.store import load_tree_checked, load_tree_items, walk_tree

_TYPE_BITS = {DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, FIFO: stat.S_IFIFO, SOCKET: stat.S_IFSOCK,
              CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK}


@dataclass
class Entry:
    path: str
    node: Node

    def as_dict(self) -> dict[str, Any]:
        n = self.node
        data: dict[str, Any] = {"path": self.path, "name": n.name, "type": n.type, "size": n.size,
                                "mode": f"{n.mode:04o}", "uid": n.uid, "gid": n.gid,
                                "mtime": mtime_of(n).astimezone().isoformat()}
        if n.target is not None:
            data["target"] = n.target
        if n.hash:
            data["hash"] = n.hash
        return data

    def short_line(self) -> str:
        return display(self.path) + ("/" if self.node.type == DIR else "")

    def long_line(self) -> str:
        """One ``ls -l`` line: mode, owner, size, mtime, path (and a link's target)."""
        n = self.node
        when = mtime_of(n).astimezone().strftime("%Y-%m-%d %H:%M")
        line = (f"{stat.filemode(_TYPE_BITS.get(n.type, stat.S_IFREG) | n.mode)} {n.uid:>5} {n.gid:>5} "
                f"{n.size:>12} {when} {display(self.path)}")
        return line + (f" -> {display(n.target)}" if n.type == SYMLINK and n.target is not None else "")


def mtime_of(node: Node) -> datetime:
    return datetime.fromtimestamp(node.mtime_ns / 1e9, timezone.utc)


def root_node(snap: Snapshot) -> Node:
    return Node(name="", type=DIR, mode=0o755, mtime_ns=int(snap.time.timestamp() * 1e9), subtree=snap.tree)


def resolve(repo: Repository, snap: Snapshot, path: str) -> Node:
    """The node at ``path`` (the snapshot's root for '' or '/'); a clear error if there is none."""
    parts = normal_path(path).split("/") if normal_path(path) else []
    node = root_node(snap)
    for depth, part in enumerate(parts):
        if node.type != DIR:
            raise DrtoolError(f"{'/'.join(parts[:depth])!r} is not a directory in snapshot {snap.short_id}",
                              hint="'drtool ls SNAPSHOT' shows what the snapshot holds")
        nodes = load_tree_checked(repo, node.subtree) if node.subtree else []
        found = next((n for n in nodes if n.name == part), None)
        if found is None:
            names = ", ".join(display(n.name) for n in nodes[:8]) + (", ..." if len(nodes) > 8 else "")
            raise DrtoolError(f"snapshot {snap.short_id} has no {'/'.join(parts[:depth + 1])!r}",
                              hint=f"{'/'.join(parts[:depth]) or 'its top level'} holds: {names or '(nothing)'}")
        node = found
    return node


def ls(repo: Repository, snap: Snapshot, path: str = "", recursive: bool = False) -> Iterator[Entry]:
    """The entries of a directory (all below it with ``recursive``), or the one entry a path names."""
    base = normal_path(path)
    node = resolve(repo, snap, base)
    if node.type != DIR:
        yield Entry(base, node)
        return
    if not node.subtree:
        return
    if recursive:
        for child_path, child in walk_tree(repo, node.subtree, base):
            yield Entry(child_path, child)
        return
    for child in load_tree_checked(repo, node.subtree):
        yield Entry(f"{base}/{child.name}" if base else child.name, child)


def ls_lines(repo: Repository, snap: Snapshot, path: str = "", recursive: bool = False,
             long_format: bool = False) -> Iterator[str]:
    """What ``ls`` prints, a line at a time, straight from the stored tree entries.

    ``ls -R`` of 200,000 entries built a ``Node`` (with every field checked,
    as a restore needs) and an ``Entry`` per entry before printing a line;
    here each entry is formatted from the decoded tree as it is, checked for
    what a listing relies on (``load_tree_items``; printed fields by ``_field``).
    """
    base = normal_path(path)
    node = resolve(repo, snap, base)
    line = _long_item if long_format else _short_item
    if node.type != DIR:
        entry = Entry(base, node)
        yield entry.long_line() if long_format else entry.short_line()
        return
    if not node.subtree:
        return
    stack: list[tuple[str, Iterator[dict[str, Any]]]] = [(base, iter(load_tree_items(repo, node.subtree)))]
    while stack:
        parent, items = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        child = f"{parent}/{item['name']}" if parent else item["name"]
        yield line(child, item)
        subtree = item.get("subtree")
        if recursive and subtree:
            stack.append((child, iter(load_tree_items(repo, subtree))))


def _short_item(path: str, item: dict[str, Any]) -> str:
    return display(path) + ("/" if item["type"] == DIR else "")


_LONG_DEFAULTS = {"mode": 0o644, "uid": 0, "gid": 0, "size": 0, "mtime_ns": 0}


def _field(item: dict[str, Any], name: str) -> int:
    value = item.get(name, _LONG_DEFAULTS[name])
    if type(value) is not int or value < 0:
        raise IntegrityError(f"tree entry {display(str(item['name']))!r}: {name} is not a non-negative integer",
                             hint="a backup never writes such an entry; run 'drtool check'")
    return value


def _long_item(path: str, item: dict[str, Any]) -> str:
    """``Entry.long_line`` for a stored entry."""
    kind = item["type"]
    when = datetime.fromtimestamp(_field(item, "mtime_ns") / 1e9, timezone.utc).astimezone()
    line = (f"{stat.filemode(_TYPE_BITS.get(kind, stat.S_IFREG) | _field(item, 'mode'))} "
            f"{_field(item, 'uid'):>5} {_field(item, 'gid'):>5} {_field(item, 'size'):>12} "
            f"{when.strftime('%Y-%m-%d %H:%M')} {display(path)}")
    target = item.get("target")
    return line + (f" -> {display(str(target))}" if kind == SYMLINK and target is not None else "")


@dataclass
class DiffResult:
    added: list[Entry] = field(default_factory=list)
    removed: list[Entry] = field(default_factory=list)
    modified: list[tuple[Entry, Entry]] = field(default_factory=list)
    metadata: list[tuple[Entry, Entry]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"added": [e.as_dict() for e in self.added],
                "removed": [e.as_dict() for e in self.removed],
                "modified": [{"path": a.path, "before": a.as_dict(), "after": b.as_dict()}
                             for a, b in self.modified],
                "metadata": [{"path": a.path, "before": a.as_dict(), "after": b.as_dict()}
                             for a, b in self.metadata],
                "summary": {"added": len(self.added), "removed": len(self.removed),
                            "modified": len(self.modified), "metadata": len(self.metadata)}}

    def lines(self) -> Iterator[str]:
        """restic's letters: + added, - removed, M content changed, U metadata only, sorted by path."""
        marked = [("+", e.path) for e in self.added] + [("-", e.path) for e in self.removed]
        marked += [("M", a.path) for a, _ in self.modified] + [("U", a.path) for a, _ in self.metadata]
        for mark, path in sorted(marked, key=lambda m: (m[1], m[0])):
            yield f"{mark}    {display(path)}"


def diff(repo: Repository, old: Snapshot, new: Snapshot) -> DiffResult:
    result = DiffResult()
    for path, before, after in tree_changes(repo, old.tree, new.tree):
        if before is None:
            result.added.append(Entry(path, after))  # type: ignore[arg-type]
        elif after is None:
            result.removed.append(Entry(path, before))
        elif before.type != after.type or data_signature(before) != data_signature(after):
            result.modified.append((Entry(path, before), Entry(path, after)))
        else:
            result.metadata.append((Entry(path, before), Entry(path, after)))
    return result
