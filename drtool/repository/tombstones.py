"""Tombstones: sealed records of what drtool itself deleted (``tombstones/<id>``).

``forget`` deletes snapshot manifests and ``prune`` deletes index objects.
Before either deletes anything it writes one tombstone naming the objects
it is about to remove, so a catalog that remembers an object can tell a
deletion by drtool -- on any host -- from one by somebody else (a bucket
attacker, a rollback of ``snapshots/`` and ``index/``, a slip of ``rm``).
Tombstones are sealed like every other object: forging one needs the key,
and one cannot be renamed or replayed for other objects.  They are small
and written once per forget or prune that deletes something; they are only
read when an object a catalog remembers is missing.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

from drtool.repository.objects import TOMBSTONE_KIND, TOMBSTONES
from drtool.errors import DrtoolError
from drtool.repository.repo import Repository

KINDS = ("snapshots", "indexes")


@dataclass
class Tombstone:
    tombstone_id: str
    time: str
    host: str
    command: str
    snapshots: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.command} on {self.host} at {self.time}"


def write_tombstone(repo: Repository, command: str, *, snapshots: list[str] | None = None,
                    indexes: list[str] | None = None, host: str | None = None) -> str | None:
    """Record the deletions that are about to happen; call before deleting anything.

    A crash after the tombstone and before the deletion leaves a tombstone
    for an object that still exists: harmless (it is never "missing"), and
    the next forget or prune deletes the object under a new tombstone.
    """
    if not snapshots and not indexes:
        return None
    body = {"version": 1, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": host or socket.gethostname(), "command": command,
            "snapshots": sorted(snapshots or []), "indexes": sorted(indexes or [])}
    return repo.put_object(TOMBSTONES, TOMBSTONE_KIND, json.dumps(body, sort_keys=True).encode())


def read_tombstones(repo: Repository) -> tuple[list[Tombstone], list[str]]:
    """Every readable tombstone, and a message per one that is not (damaged or forged)."""
    found, damaged = [], []
    for tombstone_id in repo.list_objects(TOMBSTONES):
        try:
            data = json.loads(repo.get_object(TOMBSTONES, TOMBSTONE_KIND, tombstone_id))
            found.append(Tombstone(tombstone_id, str(data["time"]), str(data["host"]), str(data["command"]),
                                   [str(i) for i in data.get("snapshots", [])],
                                   [str(i) for i in data.get("indexes", [])]))
        except (DrtoolError, ValueError, KeyError, TypeError) as exc:
            damaged.append(f"tombstone {tombstone_id[:16]}: {exc}")
    return found, damaged


def deletions(tombstones: list[Tombstone]) -> dict[tuple[str, str], Tombstone]:
    """(kind, object id) → the tombstone that accounts for its deletion (kind: snapshot / index)."""
    out: dict[tuple[str, str], Tombstone] = {}
    for stone in tombstones:
        for snapshot_id in stone.snapshots:
            out[("snapshot", snapshot_id)] = stone
        for index_id in stone.indexes:
            out[("index", index_id)] = stone
    return out
