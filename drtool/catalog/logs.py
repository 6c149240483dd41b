"""Archived database log segments (PostgreSQL WAL, MariaDB binlogs) in the catalog.

Point-in-time restore needs an unbroken run of log segments from a base
backup (or dump) to the requested time.  The repository holds the segments
themselves (``wal/…``, ``binlog/…``); these rows are a cache of their small
``.info`` companions, so a recovery window or a gap can be computed without
downloading a single segment.  Rows are rebuilt from the repository by
``drtool.databases.logarchive.rebuild_log_segments``.

The gap and window logic is pure and lives in ``drtool.snapshot.logwindow``;
this module keeps the rows.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import delete, select

from drtool.catalog.models import log_segment_table
from drtool.catalog.store import Catalog, insert_new
from drtool.snapshot.logwindow import Segment

def _aware(value: datetime | None) -> datetime | None:
    """SQLite drops the zone of DateTime(timezone=True) values; they are stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(timezone.utc) if value is not None else None


def _from_row(row: Any) -> Segment:
    return Segment(source=row.source, kind=row.kind, name=row.name, object_id=row.object_id,
                   size=row.size, archived_at=_aware(row.archived_at) or datetime.now(timezone.utc),
                   timeline=row.timeline, seq=row.seq, first_time=_aware(row.first_time),
                   last_time=_aware(row.last_time), start_pos=row.start_pos, end_pos=row.end_pos,
                   extra=json.loads(row.extra or "{}"))


class LogCatalog:
    """Queries on ``log_segments`` for one repository (rows keyed by ``repo_id``)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.repo_id = catalog.repo_id

    def known_object_ids(self) -> set[str]:
        with self.catalog.engine.connect() as conn:
            rows = conn.execute(select(log_segment_table.c.object_id)
                                .where(log_segment_table.c.repo_id == self.repo_id))
            return {r[0] for r in rows}

    def add(self, segments: Iterable[Segment]) -> int:
        rows = [self._row(s) for s in segments]
        if rows:
            ids = [r["object_id"] for r in rows]
            with self.catalog._begin() as conn:
                conn.execute(delete(log_segment_table).where(log_segment_table.c.repo_id == self.repo_id,
                                                         log_segment_table.c.object_id.in_(ids)))
                insert_new(conn, log_segment_table, rows)  # another host may sync the same rows
        return len(rows)

    def remove(self, object_ids: Iterable[str]) -> None:
        ids = list(object_ids)
        if ids:
            with self.catalog._begin() as conn:
                conn.execute(delete(log_segment_table).where(log_segment_table.c.repo_id == self.repo_id,
                                                         log_segment_table.c.object_id.in_(ids)))

    def clear(self) -> None:
        with self.catalog._begin() as conn:
            conn.execute(delete(log_segment_table).where(log_segment_table.c.repo_id == self.repo_id))

    def segments(self, source: str | None = None, kind: str | None = None) -> list[Segment]:
        query = select(log_segment_table).where(log_segment_table.c.repo_id == self.repo_id)
        if source is not None:
            query = query.where(log_segment_table.c.source == source)
        if kind is not None:
            query = query.where(log_segment_table.c.kind == kind)
        with self.catalog.engine.connect() as conn:
            rows = conn.execute(query.order_by(log_segment_table.c.seq, log_segment_table.c.name)).all()
        return [_from_row(r) for r in rows]

    def _row(self, seg: Segment) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "object_id": seg.object_id, "source": seg.source,
                "kind": seg.kind, "name": seg.name, "timeline": seg.timeline, "seq": seg.seq,
                "first_time": _utc(seg.first_time), "last_time": _utc(seg.last_time),
                "start_pos": seg.start_pos, "end_pos": seg.end_pos, "size": seg.size,
                "archived_at": _utc(seg.archived_at), "extra": json.dumps(seg.extra, sort_keys=True)}
