"""Rollback and deletion detection: objects the catalog saw committed that are gone.

The repository alone cannot tell that its newest snapshot was deleted, or
that ``snapshots/`` and ``index/`` were rolled back to last week: what is
left is consistent.  The catalog can: it remembers every snapshot and index
object it saw committed (``seen_objects``).  An object that is remembered
but no longer listed is

* **forgotten** when a tombstone (``repository.tombstones``) written by
  drtool's ``forget`` or ``prune`` -- on any host -- names it, or when this
  catalog's own forget/prune removed it;
* **vanished** otherwise: ``check`` fails naming it, and ``snapshots`` and
  ``restore latest`` warn.

A snapshot that was forgotten and is listed again was re-inserted (a rolled
back ``forget``, or a forget interrupted between its tombstone and its
deletion): reported as a warning.  What is not detected is in
docs/threat-model.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from drtool.core.session import Session
from drtool.repository.tombstones import deletions, read_tombstones
from drtool.snapshot.names import display

SNAPSHOT, INDEX = "snapshot", "index"
PRESENT, FORGOTTEN, VANISHED = "present", "forgotten", "vanished"


@dataclass
class Missing:
    kind: str
    object_id: str
    label: str
    first_seen: datetime | None
    since: datetime | None

    @property
    def series(self) -> str:
        """The snapshot's series name as listings show it (labels are "name, time")."""
        return self.label.rsplit(", ", 1)[0]

    def describe(self) -> str:
        seen = f" on {_utc(self.first_seen).date().isoformat()}" if self.first_seen else ""
        if self.kind == SNAPSHOT:
            return (f"snapshot {self.object_id[:8]} ({self.label}) was committed (this catalog saw it{seen}) "
                    f"but is missing from the repository, and no drtool forget removed it")
        return (f"index object index/{self.object_id[:16]} was committed (this catalog saw it{seen}) but "
                f"is missing from the repository, and no drtool prune removed it")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.object_id, "label": self.label,
                "first_seen": _utc(self.first_seen).isoformat() if self.first_seen else None,
                "missing_since": _utc(self.since).isoformat() if self.since else None}


@dataclass
class RollbackReport:
    missing: list[Missing] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    tombstone_problems: list[str] = field(default_factory=list)

    @property
    def missing_snapshots(self) -> list[Missing]:
        return [m for m in self.missing if m.kind == SNAPSHOT]

    def warnings(self) -> list[str]:
        lines = [m.describe() for m in self.missing]
        lines += self.resurrected + self.tombstone_problems
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"missing": [m.as_dict() for m in self.missing], "resurrected": self.resurrected,
                "tombstone_problems": self.tombstone_problems}


def detect(session: Session, *, snapshot_ids: set[str] | None = None,
           index_ids: set[str] | None = None, read_only: bool = False) -> RollbackReport:
    """Compare the listed objects with the catalog's memory, and update the memory.

    ``snapshot_ids`` / ``index_ids``: what the repository lists now (None:
    not checked).  Tombstones are read only when something remembered is
    missing, so the common case costs one query of the catalog.
    ``read_only`` (a restore that never opened the catalog): an SQLite
    catalog is read with the standard library and nothing is updated.
    """
    peek = _peeker(session) if read_only else None
    catalog = None if peek is not None else session.catalog
    report = RollbackReport()
    gone: dict[str, dict[str, Any]] = {}
    for kind, listed in ((SNAPSHOT, snapshot_ids), (INDEX, index_ids)):
        if listed is None:
            continue
        rows = peek(kind) if peek is not None else catalog.seen(kind)  # type: ignore[union-attr]
        gone[kind] = {i: r for i, r in rows.items() if r.state in (PRESENT, VANISHED) and i not in listed}
        back = [i for i, r in rows.items() if r.state == VANISHED and i in listed]
        if catalog is not None:
            catalog.mark_seen(kind, back, PRESENT, "back in the repository")
        if kind == SNAPSHOT:
            report.resurrected = [
                f"snapshot {i[:8]} ({rows[i].label}) was forgotten ({rows[i].note or 'by drtool'}) but is in "
                f"the repository again: a forget was interrupted, or the snapshot was put back; "
                f"'drtool forget {i[:8]}' removes it again"
                for i, r in rows.items() if r.state == FORGOTTEN and i in listed]
    if not any(gone.values()):
        return report
    stones, report.tombstone_problems = read_tombstones(session.repo)
    explained = deletions(stones)
    now = datetime.now(timezone.utc)
    for kind, rows in gone.items():
        accounted: dict[str, list[str]] = {}
        for object_id, row in rows.items():
            stone = explained.get((kind, object_id))
            if stone is not None:
                accounted.setdefault(f"by {stone.describe()}", []).append(object_id)
                continue
            report.missing.append(Missing(kind, object_id, row.label or "", row.first_seen,
                                          row.state_time if row.state == VANISHED else now))
        if catalog is None:
            continue
        for note, ids in accounted.items():
            catalog.mark_seen(kind, ids, FORGOTTEN, note)
        catalog.mark_seen(kind, [m.object_id for m in report.missing
                                 if m.kind == kind and rows[m.object_id].state == PRESENT],
                          VANISHED, f"missing since {now.isoformat(timespec='seconds')}")
    report.missing.sort(key=lambda m: (m.kind != SNAPSHOT, m.label, m.object_id))
    return report


def _peeker(session: Session) -> Callable[[str], dict[str, Any]] | None:
    """A read-only reader of an SQLite catalog that is not open yet; None: use ``session.catalog``."""
    if not session.catalog_deferred:
        return None
    from drtool.catalog.location import sqlite_path
    from drtool.catalog.peek import peek_seen
    path = sqlite_path(session.options.catalog, session.repo.config.repo_id)
    if path is None:
        return None
    if not path.exists():
        return lambda kind: {}  # no catalog, no memory: nothing to compare with
    repo_id = session.repo.config.repo_id
    return lambda kind: peek_seen(path, repo_id, kind)


def record_forgotten(session: Session, kind: str, ids: list[str], command: str,
                     labels: dict[str, str] | None = None) -> None:
    """This run deleted ``ids`` (after writing their tombstone): the memory says so."""
    if ids:
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        session.catalog.mark_seen(kind, ids, FORGOTTEN, f"by {command} on {display(session.host)} at {when}",
                                  labels)


def _utc(when: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were stored in UTC."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
