"""Reading and writing snapshot manifests and trees through a repository."""
from __future__ import annotations

import io
import json
from typing import Any, Iterator

from drtool.errors import IntegrityError, SnapshotNotFound
from drtool.repository.objects import SNAPSHOT_KIND, SNAPSHOTS
from drtool.repository.packfile import TREE_BLOB
from drtool.repository.repo import Repository
from drtool.snapshot.model import (FILE, NODE_TYPES, Node, Snapshot, check_item, decode_tree, decode_tree_items,
                                   encode_tree)
from drtool.snapshot.names import tree_names_problem


def save_snapshot(repo: Repository, snap: Snapshot) -> str:
    """Commit point of a backup: call only after ``repo.flush()``."""
    snap.id = repo.put_object(SNAPSHOTS, SNAPSHOT_KIND, snap.to_json())
    return snap.id


def load_snapshot(repo: Repository, snapshot_id: str) -> Snapshot:
    raw = repo.get_object(SNAPSHOTS, SNAPSHOT_KIND, snapshot_id)
    try:
        return Snapshot.from_json(raw, snapshot_id)
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"snapshot {snapshot_id[:8]} is malformed: {exc}") from None


def list_snapshot_ids(repo: Repository) -> list[str]:
    return repo.list_objects(SNAPSHOTS)


def resolve_snapshot_id(ids: list[str], prefix: str) -> str:
    matches = [i for i in ids if i.startswith(prefix)]
    if not matches:
        raise SnapshotNotFound(f"no snapshot with id {prefix!r}")
    if len(matches) > 1:
        raise SnapshotNotFound(f"snapshot id {prefix!r} is ambiguous ({len(matches)} matches)",
                               hint="give more characters of the id")
    return matches[0]


def store_tree(repo: Repository, nodes: list[Node]) -> str:
    return repo.store_blob(TREE_BLOB, encode_tree(nodes)).hex()


def load_tree(repo: Repository, tree_id: str) -> list[Node]:
    raw = repo.read_blob(bytes.fromhex(tree_id))
    try:
        return decode_tree(raw)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"tree {tree_id[:16]} is malformed: {exc}") from None


def load_tree_entries(repo: Repository, tree_id: str) -> list[dict[str, Any]]:
    """A tree's entries as stored (sparse dicts), checked only as :func:`load_tree` checks them
    (names are not: see :func:`load_tree_items`), without a ``Node`` each: for the file index of
    a first snapshot, which copies a few fields and never turns names into paths."""
    raw = repo.read_blob(bytes.fromhex(tree_id))
    try:
        items = decode_tree_items(raw)
        for item in items:
            check_item(item)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"tree {tree_id[:16]} is malformed: {exc}") from None
    return items


def load_tree_checked(repo: Repository, tree_id: str) -> list[Node]:
    """A tree whose entry names are safe to join under a directory (see ``snapshot.names``).

    Backups never write a bad name, so one means a tree forged by someone
    holding the key (or a bug): every caller that turns names into paths
    reads trees through here.
    """
    nodes = load_tree(repo, tree_id)
    problem = tree_names_problem([n.name for n in nodes])
    for node in nodes:
        if problem is not None:
            break
        problem = _node_problem(node)
    if problem is not None:
        raise IntegrityError(f"tree {tree_id[:16]} is malformed: {problem}",
                             hint="a backup never writes such a name: the repository was tampered with "
                                  "by someone holding the key; run 'drtool check'")
    return nodes


def load_tree_items(repo: Repository, tree_id: str) -> list[dict[str, Any]]:
    """A tree's entries as stored (``decode_tree_items``), with the checks a listing relies
    on: safe, distinct names, known types, subtrees that are tree ids.  The fields a listing
    prints are checked by whoever prints them (``browse.listing``)."""
    raw = repo.read_blob(bytes.fromhex(tree_id))
    try:
        items = decode_tree_items(raw)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"tree {tree_id[:16]} is malformed: {exc}") from None
    problem = tree_names_problem([item.get("name") for item in items])
    for item in items:
        if problem is not None:
            break
        if item.get("type") not in NODE_TYPES:
            problem = f"entry {item['name']!r}: unknown type {item.get('type')!r}"
        elif item.get("subtree") is not None and not _is_blob_id(item["subtree"]):
            problem = f"entry {item['name']!r}: subtree is not a tree id"
    if problem is not None:
        raise IntegrityError(f"tree {tree_id[:16]} is malformed: {problem}",
                             hint="a backup never writes such a name: the repository was tampered with "
                                  "by someone holding the key; run 'drtool check'")
    return items


def walk_tree(repo: Repository, tree_id: str, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Depth-first (path, node) pairs; directories come before their contents.

    An explicit stack, not recursion: trees can be deeper than Python's
    recursion limit (a backup accepts any depth the file system allows).
    Entry names are checked (:func:`load_tree_checked`): paths never escape.
    """
    stack: list[tuple[str, Iterator[Node]]] = [(prefix, iter(load_tree_checked(repo, tree_id)))]
    while stack:
        base, nodes = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        path = f"{base}/{node.name}" if base else node.name
        yield path, node
        if node.subtree:
            stack.append((path, iter(load_tree_checked(repo, node.subtree))))


_INT_FIELDS = ("mode", "uid", "gid", "mtime_ns", "size", "rdev")


def _node_problem(node: Node) -> str | None:
    """Field types a restore relies on (a forged node must fail here, not deep inside a write)."""
    for name in _INT_FIELDS:
        value = getattr(node, name)
        if type(value) is not int or value < 0:
            return f"entry {node.name!r}: {name} is not a non-negative integer"
    if not isinstance(node.content, list) or not all(_is_blob_id(c) for c in node.content):
        return f"entry {node.name!r}: content is not a list of blob ids"
    if node.subtree is not None and not _is_blob_id(node.subtree):
        return f"entry {node.name!r}: subtree is not a tree id"
    if node.target is not None and (not isinstance(node.target, str) or "\0" in node.target):
        return f"entry {node.name!r}: symbolic link target is not a string"
    if node.link_key is not None and not isinstance(node.link_key, str):
        return f"entry {node.name!r}: link key is not a string"
    return None


def _is_blob_id(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


STREAM_BATCH = 256


def stream_ids(repo: Repository, snap: Snapshot, filename: str | None = None) -> list[bytes]:
    """The blob ids of a stream snapshot's file (the only one, or ``filename``)."""
    nodes = [n for n in load_tree(repo, snap.tree) if n.type == FILE]
    if filename is not None:
        nodes = [n for n in nodes if n.name == filename]
        if not nodes:
            raise IntegrityError(f"snapshot {snap.short_id} has no file {filename}")
    if len(nodes) != 1:
        raise IntegrityError(f"snapshot {snap.short_id} is not a single-file stream ({len(nodes)} files)")
    return [bytes.fromhex(hexid) for hexid in nodes[0].content]


def stream_chunks(repo: Repository, snap: Snapshot, filename: str | None = None) -> Iterator[bytes]:
    """The plaintext of a stream snapshot (a dump, a base backup: one file), blob by blob, verified.

    ``filename`` picks one file of a snapshot of several streams (a base
    backup with tablespaces: one tar per tablespace).
    """
    ids = stream_ids(repo, snap, filename)
    for start in range(0, len(ids), STREAM_BATCH):  # neighbouring blobs of a pack in one ranged read
        for view in repo.read_blobs(ids[start:start + STREAM_BATCH]):
            yield bytes(view)


def prefetched(chunks: Iterator[bytes], depth: int = 16) -> Iterator[bytes]:
    """``chunks`` read ahead by a thread, so reading, verifying and decompressing the next blobs
    overlaps with whatever consumes these (a pipe into mbstream, tar extraction).

    Errors of the reader (a damaged blob) are raised here, in order; stopping
    early (the consumer failed) lets the thread finish its current blob and end.
    """
    import queue
    import threading
    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        items.put(("data", chunk), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            items.put(("error", exc))

    thread = threading.Thread(target=produce, name="stream-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.1)


class StreamReader(io.RawIOBase):
    """A stream snapshot as a sequential, non-seekable file object (``tarfile.open(mode="r|")``)."""

    def __init__(self, chunks: Iterator[bytes] | Iterator[memoryview]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Copies out of the current chunk by offset (slicing off the rest each time was
        quadratic in the chunk size: windows are several MiB)."""
        while self._pos >= len(self._buf):
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf, self._pos = memoryview(chunk), 0
        n = min(len(buffer), len(self._buf) - self._pos)
        buffer[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n
