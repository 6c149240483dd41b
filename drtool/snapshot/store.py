"""Reading and writing snapshot manifests and trees through a repository."""
from __future__ import annotations

import json
from typing import Iterator

from drtool.errors import IntegrityError, SnapshotNotFound
from drtool.repository.packfile import TREE_BLOB
from drtool.repository.repo import Repository
from drtool.snapshot.model import Node, Snapshot, decode_tree, encode_tree

SNAPSHOT_KIND = b"snapshot"


def save_snapshot(repo: Repository, snap: Snapshot) -> str:
    """Commit point of a backup: call only after ``repo.flush()``."""
    snap.id = repo.put_object("snapshots", SNAPSHOT_KIND, snap.to_json())
    return snap.id


def load_snapshot(repo: Repository, snapshot_id: str) -> Snapshot:
    raw = repo.get_object("snapshots", SNAPSHOT_KIND, snapshot_id)
    try:
        return Snapshot.from_json(raw, snapshot_id)
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"snapshot {snapshot_id[:8]} is malformed: {exc}") from None


def list_snapshot_ids(repo: Repository) -> list[str]:
    return repo.list_objects("snapshots")


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
