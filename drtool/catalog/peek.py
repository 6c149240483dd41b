"""Read an SQLite catalog without SQLAlchemy, and without writing.

A restore from a local repository does not open the catalog (importing
SQLAlchemy and opening it costs ~0.5 s of CPU, a sixth of the bench
restore); it only needs to know whether a snapshot it remembers is gone,
so that ``restore latest`` can warn.  ``find`` on an index that is up to
date needs three reads (``index_state``, the memory, ``versions``) and
nothing else: through the standard library it skips the ~0.3 s import.
"""
from __future__ import annotations

import sqlite3
from collections import namedtuple
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from drtool.errors import CatalogError

MIGRATIONS = Path(__file__).parent / "migrations"


def head_revision() -> str:
    """Revisions are named NNNN_*.py with revision id NNNN, so the head is the highest."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


class PeekFailed(CatalogError):
    """The catalog file could not be read (damaged, locked, not a database)."""


class PeekDamaged(PeekFailed):
    """SQLite says the file is damaged: reported as such, never worked around."""


@dataclass
class VersionFilter:
    """What ``find`` asks for; every field optional.  Globs are matched again in Python."""
    basename_like: list[str] | None = None
    basename_equal: list[str] | None = None
    path_like: str | None = None
    series: list[str] | None = None
    series_like: list[str] | None = None  # LIKE patterns (escape "\\") for more series: a source's shards
    host: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_size: int | None = None
    max_size: int | None = None
    mtime_after_ns: int | None = None
    mtime_before_ns: int | None = None
    hash_prefixes: list[str] | None = None  # "sha256:ab12", "sha1:..." or a content id prefix


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


@dataclass
class IndexState:
    """What decides whether ``find`` can answer from the file as it is."""
    at_head: bool            # the schema needs no migration
    snapshots: set[str]      # the snapshot list of this repository
    indexed: set[str]        # the snapshots in the file index


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise PeekFailed(str(exc)) from None


def _failed(path: Path, exc: sqlite3.Error) -> PeekFailed:
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and any(s in text for s in ("malformed", "not a database")):
        return PeekDamaged(f"the catalog {path} is damaged ({text})")
    return PeekFailed(text)


def index_state(path: Path, repo_id: str) -> IndexState | None:
    """None: an older schema without the tables (the catalog must be opened and migrated)."""
    conn = _connect(path)
    try:
        head = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        snaps = {r[0] for r in conn.execute("SELECT id FROM snapshots WHERE repo_id = ?", (repo_id,))}
        indexed = {r[0] for r in conn.execute("SELECT snapshot_id FROM file_index_snapshots WHERE repo_id = ?",
                                              (repo_id,))}
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise _failed(path, exc) from None
    except sqlite3.Error as exc:
        raise _failed(path, exc) from None
    finally:
        conn.close()
    return IndexState(head is not None and head[0] == head_revision(), snaps, indexed)


def repo_ids(path: Path) -> list[str]:
    """The repositories an SQLite catalog holds snapshots of."""
    conn = _connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT DISTINCT repo_id FROM snapshots")]
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return []
        raise _failed(path, exc) from None
    finally:
        conn.close()


VersionRow = namedtuple("VersionRow", "id series path basename type size mtime_ns mode content hash "
                                      "snapshot_id host time")
_VERSIONS = ("SELECT v.id, v.series, v.path, v.basename, v.type, v.size, v.mtime_ns, v.mode, v.content, "
             "v.hash, s.id, s.host, s.time FROM file_versions v "
             "JOIN file_index_snapshots f ON f.repo_id = ? AND f.series = v.series "
             "AND f.seq >= v.first_seq AND (v.end_seq IS NULL OR f.seq < v.end_seq) "
             "JOIN snapshots s ON s.repo_id = f.repo_id AND s.id = f.snapshot_id "
             "WHERE v.repo_key = (SELECT id FROM file_index_repos WHERE repo_id = ?)")  # migration 0007


def versions(path: Path, repo_id: str, wanted: VersionFilter) -> Iterator[VersionRow]:
    """``files.FileIndex.versions`` through the standard library: the same rows, in the same order
    (tests/test_find_readonly.py compares the two)."""
    sql, params = _VERSIONS, [repo_id, repo_id]
    for condition, values in _conditions(wanted):
        sql += f" AND {condition}"
        params += values
    sql += " ORDER BY v.id, s.time, s.id"  # as FileIndex.versions, and why
    conn = _connect(path)
    try:
        for row in conn.execute(sql, params):
            yield VersionRow(*row[:12], _stored_time(row[12]))
    except sqlite3.Error as exc:
        raise _failed(path, exc) from None
    finally:
        conn.close()


def _conditions(wanted: VersionFilter) -> Iterator[tuple[str, list[Any]]]:
    names: list[tuple[str, list[Any]]] = []
    if wanted.basename_equal:
        names.append((f"v.basename IN ({', '.join('?' * len(wanted.basename_equal))})", list(wanted.basename_equal)))
    names += [("v.basename LIKE ? ESCAPE '\\'", [p]) for p in wanted.basename_like or []]
    if names:
        yield "(" + " OR ".join(c for c, _ in names) + ")", [v for _, vs in names for v in vs]
    if wanted.path_like is not None:
        yield "v.path LIKE ? ESCAPE '\\'", [wanted.path_like]
    if wanted.series or wanted.series_like:
        series = [("v.series IN (" + ", ".join("?" * len(wanted.series)) + ")", list(wanted.series))] \
            if wanted.series else []
        series += [("v.series LIKE ? ESCAPE '\\'", [p]) for p in wanted.series_like or []]
        yield "(" + " OR ".join(c for c, _ in series) + ")", [v for _, vs in series for v in vs]
    if wanted.host is not None:
        yield "s.host = ?", [wanted.host]
    if wanted.since is not None:
        yield "s.time >= ?", [_time_param(wanted.since)]
    if wanted.until is not None:
        yield "s.time <= ?", [_time_param(wanted.until)]
    for column, op, value in (("v.size", ">=", wanted.min_size), ("v.size", "<=", wanted.max_size),
                              ("v.mtime_ns", ">=", wanted.mtime_after_ns),
                              ("v.mtime_ns", "<=", wanted.mtime_before_ns)):
        if value is not None:
            yield f"{column} {op} ?", [value]
    if wanted.hash_prefixes:
        likes = [(f"{column} LIKE ?", prefix + "%") for prefix in wanted.hash_prefixes
                 for column in ("v.hash", "v.content")]
        yield "(" + " OR ".join(c for c, _ in likes) + ")", [p for _, p in likes]


_STORED = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's DateTime stores a time in SQLite (UTC here)


def _time_param(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(_STORED)


def _stored_time(value: object) -> datetime:
    return datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc)
