"""Incremental MariaDB physical backups: when a night is full or incremental, and the chains they form.

A ``method = "physical"`` night after the first is ``mariabackup --backup
--incremental-lsn=L``: only the InnoDB pages changed since ``L``, the
``to_lsn`` of the previous physical snapshot of the source, recorded in its
meta from the stream's ``xtrabackup_checkpoints``.  No base directory is
kept on the database host: the LSN is all mariabackup needs.  Each
incremental names its parent (``incremental_parent``), so a restore rebuilds
the chain full → incremental … → the chosen one from the catalog alone.

An incremental is only as good as the LSN lineage it continues.  The policy
(:func:`choose`) takes a full backup whenever that lineage is in doubt:
``--full``; no previous physical snapshot; a previous snapshot from before
incrementals (no ``to_lsn``/identity in its meta: it restores as a full
base, but nothing says it came from this server); a server that is not the
one the chain was taken from (``server_id``, host name, data directory, or
the system tablespace file's inode — a re-cloned or restored data directory
gets new files); a server whose current LSN is behind the parent's
``to_lsn``; a parent whose own chain is broken (a member missing, or one whose
copied redo log stops short of its checkpoint, which ``--prepare`` refuses:
:class:`ChainUnpreparable`); or a chain that has reached
``full_every`` members (one full plus ``full_every - 1`` incrementals), which
bounds both the restore's prepare work and how much one damaged member can
take down.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from drtool.errors import SnapshotNotFound
from drtool.snapshot.model import Snapshot
from drtool.sources.mariabackup import FILE_CHECKPOINT_SIZE, redo_stops_short

PHYSICAL_KIND = "mariadb-physical"
CHECKPOINTS_FILE = b"xtrabackup_checkpoints"
FULL_EVERY = 7
PARENT = "incremental_parent"
_CHECKPOINT_RE = re.compile(r"^(backup_type|from_lsn|to_lsn|last_lsn)\s*=\s*(\S+)\s*$", re.M)


class ChainBroken(SnapshotNotFound):
    """An incremental's ancestor is not in the repository: the chain cannot be restored.

    ``snapshot`` is the incremental asked for, ``missing`` the id of the absent ancestor and
    ``child`` the member that names it as its parent, so callers (window, copy) can say it
    in their own words."""

    hint = ("restore an older base (drtool restore SNAPSHOT --source NAME, or an earlier --point-in-time), "
            "and take a full backup now: drtool backup --source NAME --full")

    def __init__(self, message: str, hint: str | None = None, *, snapshot: Snapshot | None = None,
                 missing: str = "", child: Snapshot | None = None) -> None:
        super().__init__(message, hint)
        self.snapshot, self.missing, self.child = snapshot, missing, child


class ChainUnpreparable(ChainBroken):
    """Every member is present, but one is an incremental whose copied redo log ends before its
    checkpoint's record (``mariabackup.redo_stops_short``): ``--prepare`` refuses it, so it and
    every later member of its chain cannot be restored.  ``member`` is that incremental.  drtool
    refuses such copies at backup time; older drtool versions stored them."""

    def __init__(self, message: str, *, snapshot: Snapshot, member: Snapshot) -> None:
        super().__init__(message, snapshot=snapshot)
        self.member = member


def parse_checkpoints(text: str) -> dict[str, Any]:
    """``backup_type`` and the LSNs of ``xtrabackup_checkpoints`` (``to_lsn``: where the next night starts)."""
    found = dict(_CHECKPOINT_RE.findall(text))
    meta: dict[str, Any] = {}
    if "backup_type" in found:
        meta["backup_type"] = "incremental" if found["backup_type"] == "incremental" else "full"
    for key in ("from_lsn", "to_lsn", "last_lsn"):
        if key in found and found[key].isdigit():
            meta[key] = int(found[key])
    return meta


def is_incremental(snap: Snapshot) -> bool:
    return bool(snap.meta.get(PARENT))


def chain_of(snap: Snapshot, snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """``snap`` and the ancestors it is incremental to, full first; ChainBroken names a missing one.

    A snapshot without a parent (a full one, or one from before incrementals) is its own chain.
    In a repository filled by ``drtool copy`` the ids differ from the original's: a parent is
    also found by the snapshot id it was copied from (``copied_from``, and its ``origin``).
    """
    by_id: dict[str, Snapshot] = {}
    for snap_ in snapshots:
        by_id[snap_.id] = snap_
        for copied in _copied_ids(snap_):
            by_id.setdefault(copied, snap_)
    chain = [snap]
    while is_incremental(chain[0]):
        parent_id = str(chain[0].meta[PARENT])
        parent = by_id.get(parent_id)
        if parent is None:
            raise ChainBroken(f"snapshot {snap.short_id} of source {snap.name} is an incremental physical backup "
                              f"whose chain needs snapshot {parent_id[:8]} (parent of {chain[0].short_id}), "
                              f"which is not in the repository", snapshot=snap, missing=parent_id,
                              child=chain[0])
        if parent in chain or len(chain) > 10_000:
            raise ChainBroken(f"the incremental chain of snapshot {snap.short_id} loops at {parent.short_id}",
                              snapshot=snap, missing=parent.id, child=chain[0])
        chain.insert(0, parent)
    short = next((member for member in chain if redo_stops_short(member.meta)), None)
    if short is not None:
        which = "it is an incremental" if short is snap else f"its chain holds incremental {short.short_id},"
        raise ChainUnpreparable(f"snapshot {snap.short_id} of source {snap.name} cannot be prepared: {which} whose "
                                f"copied redo log ends before its checkpoint (last_lsn {short.meta['last_lsn']} < "
                                f"to_lsn {short.meta['to_lsn']} + {FILE_CHECKPOINT_SIZE}), which mariabackup "
                                f"--prepare refuses", snapshot=snap, member=short)
    return chain


def _copied_ids(snap: Snapshot) -> list[str]:
    """The ids this snapshot had in the repositories it was copied from (``maintain.copy``)."""
    copied = snap.meta.get("copied_from")
    if not isinstance(copied, dict):
        return []
    origin = copied.get("origin")
    ids = [copied.get("snapshot"), origin.get("snapshot") if isinstance(origin, dict) else None]
    return [i for i in ids if isinstance(i, str) and i]


@dataclass(frozen=True)
class Night:
    """What tonight's physical backup is: full (no parent) or incremental to ``parent`` from ``lsn``."""

    parent: Snapshot | None
    reason: str
    chain_length: int = 1

    @property
    def lsn(self) -> int | None:
        return int(self.parent.meta["to_lsn"]) if self.parent is not None else None

    def meta(self) -> dict[str, Any]:
        if self.parent is None:
            return {"chain_length": 1, "chain_reason": self.reason}
        return {PARENT: self.parent.id, "chain_length": self.chain_length, "chain_reason": self.reason}


IDENTITY_KEYS = ("server_id", "hostname", "datadir", "system_tablespace")


def choose(snapshots: list[Snapshot], identity: dict[str, Any], current_lsn: int | None, full_every: int,
           force_full: bool = False) -> Night:
    """Full or incremental tonight, and why (the reason is recorded in the snapshot's meta and logged)."""
    if force_full:
        return Night(None, "full: --full given")
    physical = [s for s in snapshots if s.kind == PHYSICAL_KIND]
    if not physical:
        return Night(None, "full: no previous physical snapshot of this source")
    prev = physical[-1]
    if "to_lsn" not in prev.meta or "server_identity" not in prev.meta:
        return Night(None, f"full: the previous snapshot {prev.short_id} predates incremental backups")
    changed = [k for k in IDENTITY_KEYS if prev.meta["server_identity"].get(k) != identity.get(k)]
    if changed:
        return Night(None, f"full: the server is not the one snapshot {prev.short_id} was taken from "
                           f"({', '.join(changed)} changed)")
    if current_lsn is not None and current_lsn < int(prev.meta["to_lsn"]):
        return Night(None, f"full: the server's LSN {current_lsn} is behind snapshot {prev.short_id}'s "
                           f"{prev.meta['to_lsn']} (a restored or rebuilt server)")
    try:
        length = len(chain_of(prev, physical))
    except ChainBroken as exc:
        return Night(None, f"full: the chain of the previous snapshot is broken ({exc})")
    if length >= full_every:
        return Night(None, f"full: the chain of {prev.short_id} has {length} member(s) (full_every = {full_every})")
    return Night(prev, f"incremental to {prev.short_id} (chain member {length + 1} of at most {full_every})",
                 length + 1)
