"""Reading and writing snapshot manifests and trees through a repository."""
from __future__ import annotations

import io
import json
from typing import Any, Iterator

from drtool.errors import IntegrityError, SnapshotNotFound
from drtool.repository.objects import SNAPSHOT_KIND, SNAPSHOTS
from drtool.repository.packfile import TREE_BLOB
from drtool.repository.repo import Repository
from drtool.snapshot.model import FILE, Node, Snapshot, decode_tree, encode_tree


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


def walk_tree(repo: Repository, tree_id: str, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Depth-first (path, node) pairs; directories come before their contents.

    An explicit stack, not recursion: trees can be deeper than Python's
    recursion limit (a backup accepts any depth the file system allows).
    """
    stack: list[tuple[str, Iterator[Node]]] = [(prefix, iter(load_tree(repo, tree_id)))]
    while stack:
        base, nodes = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        path = f"{base}/{node.name}" if base else node.name
        yield path, node
        if node.subtree:
            stack.append((path, iter(load_tree(repo, node.subtree))))


def stream_chunks(repo: Repository, snap: Snapshot) -> Iterator[bytes]:
    """The plaintext of a stream snapshot (a dump, a base backup: one file), blob by blob, verified."""
    nodes = [n for n in load_tree(repo, snap.tree) if n.type == FILE]
    if len(nodes) != 1:
        raise IntegrityError(f"snapshot {snap.short_id} is not a single-file stream ({len(nodes)} files)")
    for hexid in nodes[0].content:
        yield repo.read_blob(bytes.fromhex(hexid))


class StreamReader(io.RawIOBase):
    """A stream snapshot as a sequential, non-seekable file object (``tarfile.open(mode="r|")``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buf:
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
