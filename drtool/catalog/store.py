"""Catalog queries.  The repository stays the source of truth: the catalog
follows it (``sync_snapshots``) and can be dropped and rebuilt at any time.
"""
from __future__ import annotations

import importlib
import json
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import Connection, Engine, delete, insert, or_, select, update
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

from drtool.catalog.db import catalog_url, open_engine
from drtool.catalog.models import index_file_table, index_pack_table, run_table, seen_table, snapshot_table
from drtool.errors import CatalogError
from drtool.repository.index import PackRecord
from drtool.repository.objects import INDEX, object_name
from drtool.snapshot.model import Snapshot
from drtool.snapshot.names import display


class Catalog:
    """The catalog for one repository (rows keyed by ``repo_id``)."""

    def __init__(self, engine: Engine, repo_id: str) -> None:
        self.engine = engine
        self.repo_id = repo_id

    @classmethod
    def open(cls, value: str | None, repo_id: str, replace_damaged: bool = False,
             full_check: bool = False) -> "Catalog":
        """``full_check``: check every page now (``db.open_engine``), not only when there is a reason."""
        return cls(open_engine(catalog_url(value, repo_id), replace_damaged, explicit=bool(value),
                               full_check=full_check), repo_id)

    def close(self) -> None:
        self.engine.dispose()

    # ----- snapshots ----------------------------------------------------------
    def snapshot_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(snapshot_table.c.id).where(snapshot_table.c.repo_id == self.repo_id))
            return {r[0] for r in rows}

    def add_snapshots(self, snaps: Iterable[Snapshot]) -> None:
        """Cache the manifests, and remember that these snapshots were committed."""
        snaps = list(snaps)
        rows = [self._row(s) for s in snaps]
        if rows:
            with self._begin() as conn:
                insert_new(conn, snapshot_table, rows)
                self._remember(conn, "snapshot", {s.id: _snapshot_label(s) for s in snaps})

    def remove_snapshots(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            with self._begin() as conn:
                conn.execute(delete(snapshot_table).where(snapshot_table.c.repo_id == self.repo_id,
                                                       snapshot_table.c.id.in_(ids)))

    def sync_snapshots(self, repo_ids: set[str], load: Callable[[str], Snapshot | None]) -> None:
        """Make the catalog list exactly the readable snapshots the repository holds."""
        known = self.snapshot_ids()
        self.remove_snapshots(known - repo_ids)
        loaded = (load(i) for i in sorted(repo_ids - known))
        self.add_snapshots(s for s in loaded if s is not None)

    def snapshots(self, name: str | None = None) -> list[Snapshot]:
        cols = snapshot_table.c
        query = select(cols.id, cols.manifest).where(cols.repo_id == self.repo_id)
        if name:  # as stored, or in the escaped form listings show (names.matches)
            forms = {display(name)}
            if name.isascii() or _encodable(name):
                forms.add(name)
            query = query.where(or_(*(cols.name == form for form in sorted(forms))))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(cols.time, cols.id)).all()
        return [Snapshot.from_json(r.manifest.encode(), r.id) for r in rows]

    def _row(self, snap: Snapshot) -> dict[str, Any]:
        return {
            # Escaped: a name an older version accepted (not UTF-8) must not break the insert.
            "repo_id": self.repo_id, "id": snap.id, "name": display(snap.name), "host": display(snap.host),
            "time": snap.time.astimezone(timezone.utc), "kind": snap.kind, "parent": snap.parent,
            "tree": snap.tree, "size": int(snap.summary.get("size", 0)),
            "files": int(snap.summary.get("files", 0)),
            "bytes_added": int(snap.summary.get("bytes_added", 0)),
            "manifest": snap.to_json().decode(),
        }

    # ----- index cache (implements repository.index.IndexCache) ---------------
    def cached_index_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(index_file_table.c.index_id)
                                .where(index_file_table.c.repo_id == self.repo_id))
            return {r[0] for r in rows}

    def cached_pack_entries(self, index_ids: set[str]) -> Iterator[tuple[bytes, bytes]]:
        if not index_ids:
            return
        cols = index_pack_table.c
        query = select(cols.index_id, cols.pack_id, cols.entries).where(cols.repo_id == self.repo_id)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                if row.index_id in index_ids:
                    yield bytes.fromhex(row.pack_id), bytes(row.entries)

    def store_index(self, index_id: str, packs: list[PackRecord]) -> None:
        """One transaction per index object (batched, WAL mode)."""
        self.store_index_packed(index_id, [(p.pack_id, p.packed()) for p in packs])

    def store_index_packed(self, index_id: str, packs: list[tuple[bytes, bytes]]) -> None:
        """:meth:`store_index` from (pack id, its entries packed), as ``read_index_packed`` gives
        them: the rows keep entries packed, so none is decoded (41,000 cost ~0.1 s of CPU)."""
        rows = [{"repo_id": self.repo_id, "index_id": index_id, "pack_id": pack_id.hex(),
                 "entries": entries} for pack_id, entries in packs]
        with self._begin() as conn:
            conn.execute(delete(index_pack_table).where(index_pack_table.c.repo_id == self.repo_id,
                                                    index_pack_table.c.index_id == index_id))
            conn.execute(delete(index_file_table).where(index_file_table.c.repo_id == self.repo_id,
                                                    index_file_table.c.index_id == index_id))
            if rows:
                insert_new(conn, index_pack_table, rows)
            insert_new(conn, index_file_table, [{"repo_id": self.repo_id, "index_id": index_id}])
            self._remember(conn, "index", {index_id: object_name(INDEX, index_id)})

    def drop_indexes(self, index_ids: set[str]) -> None:
        if not index_ids:
            return
        with self._begin() as conn:
            for table in (index_pack_table, index_file_table):
                conn.execute(delete(table).where(table.c.repo_id == self.repo_id,
                                                 table.c.index_id.in_(list(index_ids))))

    # ----- memory of committed objects (rollback and deletion detection) ---------
    def _remember(self, conn: Connection, kind: str, labels: dict[str, str]) -> None:
        """New objects are remembered as present; ones that had gone missing are present again."""
        now = datetime.now(timezone.utc)
        insert_new(conn, seen_table, [{"repo_id": self.repo_id, "kind": kind, "object_id": object_id,
                                       "label": label, "first_seen": now, "state": "present",
                                       "state_time": None, "note": ""}
                                      for object_id, label in labels.items()])
        cols = seen_table.c
        for part in _slices(list(labels)):
            conn.execute(update(seen_table).where(cols.repo_id == self.repo_id, cols.kind == kind,
                                                  cols.state == "vanished", cols.object_id.in_(part))
                         .values(state="present", state_time=now, note="back in the repository"))

    def seen(self, kind: str) -> dict[str, Any]:
        """Every remembered object of ``kind`` (rows with object_id, label, first_seen, state, ...)."""
        cols = seen_table.c
        query = select(seen_table).where(cols.repo_id == self.repo_id, cols.kind == kind)
        with self.engine.connect() as conn:
            return {row.object_id: row for row in conn.execute(query)}

    def mark_seen(self, kind: str, ids: Iterable[str], state: str, note: str,
                  labels: dict[str, str] | None = None) -> None:
        """Record what became of remembered objects (``forgotten`` by drtool, ``vanished``, ...).

        Objects not remembered yet (``drtool forget`` of an id this catalog
        never saw) get a row, so the memory says how they went.
        """
        ids = list(ids)
        if not ids:
            return
        now = datetime.now(timezone.utc)
        cols = seen_table.c
        with self._begin() as conn:
            insert_new(conn, seen_table, [{"repo_id": self.repo_id, "kind": kind, "object_id": i,
                                           "label": (labels or {}).get(i, ""), "first_seen": now,
                                           "state": state, "state_time": now, "note": note} for i in ids])
            for part in _slices(ids):
                conn.execute(update(seen_table).where(cols.repo_id == self.repo_id, cols.kind == kind,
                                                      cols.object_id.in_(part), cols.state != state)
                             .values(state=state, state_time=now, note=note))

    # ----- run history ----------------------------------------------------------
    def start_run(self, command: str, host: str, name: str | None = None) -> int:
        with self._begin() as conn:
            result = conn.execute(insert(run_table).values(
                repo_id=self.repo_id, command=command, name=name, host=host,
                started=datetime.now(timezone.utc), status="running"))
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, status: str, exit_code: int, *, snapshot_id: str | None = None,
                   bytes_added: int = 0, message: str = "", stats: dict[str, Any] | None = None) -> None:
        with self._begin() as conn:
            conn.execute(update(run_table).where(run_table.c.id == run_id).values(
                finished=datetime.now(timezone.utc), status=status, exit_code=exit_code,
                snapshot_id=snapshot_id, bytes_added=bytes_added, message=message[:2000],
                stats=json.dumps(stats or {})))

    def runs(self, command: str | None = None, limit: int = 100) -> list[Any]:
        """Run history rows, newest first (attributes named as the ``runs`` columns)."""
        query = select(run_table).where(run_table.c.repo_id == self.repo_id)
        if command:
            query = query.where(run_table.c.command == command)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(run_table.c.id.desc()).limit(limit)))

    # ----- rebuild ----------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget everything rebuildable for this repository (keeps run history)."""
        with self._begin() as conn:
            for table in (snapshot_table, index_pack_table, index_file_table):
                conn.execute(delete(table).where(table.c.repo_id == self.repo_id))

    def _begin(self):  # type: ignore[no-untyped-def]
        try:
            return self.engine.begin()
        except (DatabaseError, OperationalError) as exc:
            raise CatalogError(f"the catalog cannot be written: {exc}") from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _slices(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """IN lists of bounded length (SQLite limits the parameters of one statement)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _snapshot_label(snap: Snapshot) -> str:
    """How a vanished snapshot is named in warnings (its manifest may be gone by then)."""
    return f"{display(snap.name)}, {snap.time.astimezone(timezone.utc).isoformat(timespec='seconds')}"


def insert_new(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT that skips rows another process inserted first.

    A shared catalog (PostgreSQL, or one SQLite file used by several runs)
    is written by many hosts at once: two backups sync the same new
    snapshot, or cache the same index object, between one's SELECT and its
    INSERT.  Every such row caches an immutable repository object, so a row
    that already exists is already right.
    """
    if not rows:
        return
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
