"""Read the catalog's memory of committed objects without SQLAlchemy, and without writing.

A restore from a local repository does not open the catalog (importing
SQLAlchemy and opening it costs ~0.5 s of CPU, a sixth of the bench
restore); it only needs to know whether a snapshot it remembers is gone,
so that ``restore latest`` can warn.  For an SQLite catalog that is one
read-only query through the standard library.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from drtool.errors import CatalogError


class PeekFailed(CatalogError):
    """The catalog file could not be read (damaged, locked, not a database)."""


@dataclass
class SeenRow:
    object_id: str
    label: str
    first_seen: datetime | None
    state: str
    state_time: datetime | None
    note: str


def peek_seen(path: Path, repo_id: str, kind: str) -> dict[str, SeenRow]:
    """Remembered objects of ``kind``; empty when the catalog has no memory yet (older schema)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise PeekFailed(str(exc)) from None
    try:
        try:
            rows = conn.execute("SELECT object_id, label, first_seen, state, state_time, note FROM seen_objects "
                                "WHERE repo_id = ? AND kind = ?", (repo_id, kind)).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise PeekFailed(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise PeekFailed(str(exc)) from None
    finally:
        conn.close()
    return {r[0]: SeenRow(r[0], r[1] or "", _when(r[2]), r[3], _when(r[4]), r[5] or "") for r in rows}


def _when(value: object) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
