"""Catalog queries.  The repository stays the source of truth: the catalog
follows it (``sync_snapshots``) and can be dropped and rebuilt at any time.
"""
from __future__ import annotations

import importlib
import json
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session as OrmSession

from drtool.catalog.db import catalog_url, open_engine
from drtool.catalog.models import IndexFileRow, IndexPackRow, RunRow, SnapshotRow
from drtool.errors import CatalogError
from drtool.repository.index import PackRecord
from drtool.repository.packfile import pack_entries
from drtool.snapshot.model import Snapshot


class Catalog:
    """The catalog for one repository (rows keyed by ``repo_id``)."""

    def __init__(self, engine: Engine, repo_id: str) -> None:
        self.engine = engine
        self.repo_id = repo_id

    @classmethod
    def open(cls, value: str | None, repo_id: str) -> "Catalog":
        return cls(open_engine(catalog_url(value, repo_id)), repo_id)

    def close(self) -> None:
        self.engine.dispose()

    # ----- snapshots ----------------------------------------------------------
    def snapshot_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(SnapshotRow.id).where(SnapshotRow.repo_id == self.repo_id))
            return {r[0] for r in rows}

    def add_snapshots(self, snaps: Iterable[Snapshot]) -> None:
        rows = [self._row(s) for s in snaps]
        if rows:
            with self._begin() as conn:
                insert_new(conn, SnapshotRow, rows)

    def remove_snapshots(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            with self._begin() as conn:
                conn.execute(delete(SnapshotRow).where(SnapshotRow.repo_id == self.repo_id,
                                                       SnapshotRow.id.in_(ids)))

    def sync_snapshots(self, repo_ids: set[str], load: Callable[[str], Snapshot | None]) -> None:
        """Make the catalog list exactly the readable snapshots the repository holds."""
        known = self.snapshot_ids()
        self.remove_snapshots(known - repo_ids)
        loaded = (load(i) for i in sorted(repo_ids - known))
        self.add_snapshots(s for s in loaded if s is not None)

    def snapshots(self, name: str | None = None) -> list[Snapshot]:
        query = select(SnapshotRow.id, SnapshotRow.manifest).where(SnapshotRow.repo_id == self.repo_id)
        if name:
            query = query.where(SnapshotRow.name == name)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(SnapshotRow.time, SnapshotRow.id)).all()
        return [Snapshot.from_json(r.manifest.encode(), r.id) for r in rows]

    def _row(self, snap: Snapshot) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id, "id": snap.id, "name": snap.name, "host": snap.host,
            "time": snap.time.astimezone(timezone.utc), "kind": snap.kind, "parent": snap.parent,
            "tree": snap.tree, "size": int(snap.summary.get("size", 0)),
            "files": int(snap.summary.get("files", 0)),
            "bytes_added": int(snap.summary.get("bytes_added", 0)),
            "manifest": snap.to_json().decode(),
        }

    # ----- index cache (implements repository.index.IndexCache) ---------------
    def cached_index_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(IndexFileRow.index_id).where(IndexFileRow.repo_id == self.repo_id))
            return {r[0] for r in rows}

    def cached_pack_entries(self, index_ids: set[str]) -> Iterator[tuple[bytes, bytes]]:
        if not index_ids:
            return
        query = select(IndexPackRow.index_id, IndexPackRow.pack_id, IndexPackRow.entries).where(
            IndexPackRow.repo_id == self.repo_id)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                if row.index_id in index_ids:
                    yield bytes.fromhex(row.pack_id), bytes(row.entries)

    def store_index(self, index_id: str, packs: list[PackRecord]) -> None:
        """One transaction per index object (batched, WAL mode)."""
        rows = [{"repo_id": self.repo_id, "index_id": index_id, "pack_id": p.pack_id.hex(),
                 "entries": pack_entries(p.entries)} for p in packs]
        with self._begin() as conn:
            conn.execute(delete(IndexPackRow).where(IndexPackRow.repo_id == self.repo_id,
                                                    IndexPackRow.index_id == index_id))
            conn.execute(delete(IndexFileRow).where(IndexFileRow.repo_id == self.repo_id,
                                                    IndexFileRow.index_id == index_id))
            if rows:
                insert_new(conn, IndexPackRow, rows)
            insert_new(conn, IndexFileRow, [{"repo_id": self.repo_id, "index_id": index_id}])

    def drop_indexes(self, index_ids: set[str]) -> None:
        if not index_ids:
            return
        with self._begin() as conn:
            for table in (IndexPackRow, IndexFileRow):
                conn.execute(delete(table).where(table.repo_id == self.repo_id,
                                                 table.index_id.in_(list(index_ids))))

    # ----- run history ----------------------------------------------------------
    def start_run(self, command: str, host: str, name: str | None = None) -> int:
        with self._begin() as conn:
            result = conn.execute(insert(RunRow).values(
                repo_id=self.repo_id, command=command, name=name, host=host,
                started=datetime.now(timezone.utc), status="running"))
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, status: str, exit_code: int, *, snapshot_id: str | None = None,
                   bytes_added: int = 0, message: str = "", stats: dict[str, Any] | None = None) -> None:
        with self._begin() as conn:
            conn.execute(update(RunRow).where(RunRow.id == run_id).values(
                finished=datetime.now(timezone.utc), status=status, exit_code=exit_code,
                snapshot_id=snapshot_id, bytes_added=bytes_added, message=message[:2000],
                stats=json.dumps(stats or {})))

    def runs(self, command: str | None = None, limit: int = 100) -> list[RunRow]:
        query = select(RunRow).where(RunRow.repo_id == self.repo_id)
        if command:
            query = query.where(RunRow.command == command)
        with OrmSession(self.engine, expire_on_commit=False) as orm:
            return list(orm.scalars(query.order_by(RunRow.id.desc()).limit(limit)))

    # ----- rebuild ----------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget everything rebuildable for this repository (keeps run history)."""
        with self._begin() as conn:
            for table in (SnapshotRow, IndexPackRow, IndexFileRow):
                conn.execute(delete(table).where(table.repo_id == self.repo_id))

    def _begin(self):  # type: ignore[no-untyped-def]
        try:
            return self.engine.begin()
        except (DatabaseError, OperationalError) as exc:
            raise CatalogError(f"the catalog cannot be written: {exc}") from None


def insert_new(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT that skips rows another process inserted first.

    A shared catalog (PostgreSQL, or one SQLite file used by several runs)
    is written by many hosts at once: two backups sync the same new
    snapshot, or cache the same index object, between one's SELECT and its
    INSERT.  Every such row caches an immutable repository object, so a row
    that already exists is already right.
    """
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        module = importlib.import_module(f"sqlalchemy.dialects.{dialect}")
        conn.execute(module.insert(table).on_conflict_do_nothing(), rows)
        return
    for row in rows:  # other databases: one savepoint per row
        try:
            with conn.begin_nested():
                conn.execute(insert(table), [row])
        except IntegrityError:
            pass
