"""The per-file index behind ``drtool find``: file versions as intervals of snapshots.

A version row (path, size, mtime, mode, content id, optional content hash) is
written when a path appears or changes in a series, and closed (``end_seq``)
when it changes again or disappears; unchanged files cost nothing per
snapshot, so 200 nightly snapshots of a million files cost about as much as
their changes (a row per file per snapshot would be 200 million rows).  Each
indexed snapshot has a position ``seq`` in its series; a version exists in
the snapshots whose position lies in ``[first_seq, end_seq)`` and that are
still in the catalog's snapshot list (a forgotten snapshot simply drops out).
Version rows carry the repository's short integer key (``file_index_repos``,
migration 0007), not its id: the id was ~60 bytes of every row and of each of
its three index entries.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from drtool.catalog.models import file_index_repo_table as repo_key_table
from drtool.catalog.models import file_index_snapshot_table as indexed_table
from drtool.catalog.models import file_version_table as version_table
from drtool.catalog.models import rewrite_table
from drtool.catalog.models import snapshot_table
from drtool.catalog.peek import VersionFilter
from drtool.catalog.store import Catalog, _slices, insert_new
from drtool.errors import CatalogError

INSERT_BATCH = 5000
# SQLite's page cache while a snapshot's rows are written (KiB; the default is 2,000).  The
# rows go to three indexes, the basename one in no useful order: with 2 MiB the transaction
# spilled and re-read index pages, and the first snapshot of 200,000 files took 2.1-2.4 s of
# CPU to insert against 1.7 s with 16 MiB (1.5-1.8 s with 32 MiB).  Put back afterwards.
INSERT_CACHE_KIB = 16 * 1024
# A new version: values of ROW_COLUMNS, in that order.
ROW_COLUMNS = ("path", "basename", "type", "size", "mtime_ns", "mode", "content", "hash")
VersionRow = tuple[str, str, str, int, int, int, str, "str | None"]
# One batch of a snapshot's changes: paths whose version ends, new version rows, path -> hash
# first recorded for a version that is otherwise unchanged.
ChangeBatch = tuple[list[str], list[VersionRow], dict[str, str]]


@dataclass
class IndexedSnapshot:
    snapshot_id: str
    series: str
    seq: int
    tree: str
    time: datetime


class FileIndex:
    """Queries on the file index of one repository's catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.repo_id = catalog.repo_id

    def indexed(self, series: str | None = None) -> list[IndexedSnapshot]:
        cols = indexed_table.c
        query = select(cols.snapshot_id, cols.series, cols.seq, cols.tree, cols.time).where(
            cols.repo_id == self.repo_id)
        if series is not None:
            query = query.where(cols.series == series)
        with self.catalog.engine.connect() as conn:
            rows = conn.execute(query.order_by(cols.series, cols.seq)).all()
        return [IndexedSnapshot(r.snapshot_id, r.series, r.seq, r.tree, _utc(r.time)) for r in rows]

    def _key_query(self) -> Any:
        """The repository's key (``file_index_repos``), as a scalar subquery: NULL, so no rows,
        when it has none yet."""
        return select(repo_key_table.c.id).where(repo_key_table.c.repo_id == self.repo_id).scalar_subquery()

    def _key(self, conn: Any) -> int:
        """The repository's key, made when its first version is written (inside that transaction:
        a failed first write leaves no key behind either).  Another host making it meanwhile is
        fine (``insert_new``: on PostgreSQL this waits for that host's transaction, then takes
        its key)."""
        key = conn.execute(select(self._key_query())).scalar()
        if key is None:
            insert_new(conn, repo_key_table, [{"repo_id": self.repo_id}])
            key = conn.execute(select(self._key_query())).scalar_one()
        return int(key)

    def record(self, entry: IndexedSnapshot, batches: Iterable[ChangeBatch]) -> None:
        """One snapshot's changes in one transaction, batch by batch: close old versions, insert
        new ones, and add content hashes first recorded for unchanged versions (path -> hash).
        Within a batch closes come before inserts (a modified path is in both)."""
        try:
            self._record(entry, batches)
        except IntegrityError:
            raise CatalogError(f"another run indexed a snapshot of {entry.series} at the same time; "
                               f"snapshot {entry.snapshot_id[:8]} is indexed when 'drtool find' next runs") from None

    def _record(self, entry: IndexedSnapshot, batches: Iterable[ChangeBatch]) -> None:
        vcols = version_table.c
        with self.catalog._begin() as conn, _page_cache(conn, INSERT_CACHE_KIB):
            key = self._key(conn)
            for closed, added, hashed in batches:
                for path, digest in hashed.items():
                    conn.execute(update(version_table).where(
                        vcols.repo_key == key, vcols.series == entry.series, vcols.path == path,
                        vcols.end_seq.is_(None)).values(hash=digest))
                for part in _slices(closed):
                    conn.execute(update(version_table).where(
                        vcols.repo_key == key, vcols.series == entry.series, vcols.path.in_(part),
                        vcols.end_seq.is_(None)).values(end_seq=entry.seq))
                _insert_versions(conn, key, entry, added)
            conn.execute(insert(indexed_table), [{
                "repo_id": self.repo_id, "snapshot_id": entry.snapshot_id, "series": entry.series,
                "seq": entry.seq, "tree": entry.tree, "time": entry.time.astimezone(timezone.utc)}])

    def drop_series(self, series: str) -> None:
        with self.catalog._begin() as conn:
            conn.execute(delete(version_table).where(version_table.c.repo_key == self._key_query(),
                                                     version_table.c.series == series))
            conn.execute(delete(indexed_table).where(indexed_table.c.repo_id == self.repo_id,
                                                     indexed_table.c.series == series))

    def clear(self) -> None:
        with self.catalog._begin() as conn:
            conn.execute(delete(version_table).where(version_table.c.repo_key == self._key_query()))
            conn.execute(delete(indexed_table).where(indexed_table.c.repo_id == self.repo_id))

    def counts(self) -> dict[str, int]:
        """Rows in the index (for ``catalog rebuild`` and the growth measurements)."""
        with self.catalog.engine.connect() as conn:
            versions = conn.execute(select(func.count()).select_from(version_table).where(
                version_table.c.repo_key == self._key_query())).scalar_one()
            snaps = conn.execute(select(func.count()).select_from(indexed_table).where(
                indexed_table.c.repo_id == self.repo_id)).scalar_one()
        return {"versions": int(versions), "snapshots": int(snaps)}

    def versions(self, wanted: VersionFilter) -> Iterator[Any]:
        """Rows of (version columns, snapshot id, host, time) for every snapshot a version is in.

        Ordered by version id then snapshot time, so callers can group them.  Not by series and
        path first: SQLite then walks ``ix_file_versions_path`` over every version of the
        repository to spare a sort, instead of ``ix_file_versions_basename`` for a name (0.3-0.8 s
        against 6 ms for one name among 211,000 versions).
        """
        v, f, s = version_table.c, indexed_table.c, snapshot_table.c
        query = (select(v.id, v.series, v.path, v.basename, v.type, v.size, v.mtime_ns, v.mode,
                        v.content, v.hash, s.id.label("snapshot_id"), s.host, s.time)
                 .select_from(version_table
                              .join(indexed_table, and_(f.repo_id == self.repo_id, f.series == v.series,
                                                        f.seq >= v.first_seq,
                                                        or_(v.end_seq.is_(None), f.seq < v.end_seq)))
                              .join(snapshot_table, and_(s.repo_id == f.repo_id, s.id == f.snapshot_id)))
                 .where(v.repo_key == self._key_query()))
        for condition in _conditions(wanted):
            query = query.where(condition)
        with self.catalog.engine.connect() as conn:
            yield from conn.execute(query.order_by(v.id, s.time, s.id))


@contextmanager
def _page_cache(conn: Any, kib: int) -> Iterator[None]:
    """SQLite only: a larger page cache for the block (``PRAGMA cache_size``), then the old one
    again, which also hands the extra pages back."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    before = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute(f"PRAGMA cache_size = {-abs(int(kib))}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA cache_size = {int(before)}")


def _insert_versions(conn: Any, key: int, entry: IndexedSnapshot, added: list[VersionRow]) -> None:
    """Plain DB-API ``executemany`` in batches: the first snapshot of 200,000 files inserts
    200,000 rows, and SQLAlchemy's per-row parameter handling cost ~4x the insert itself
    (20,000 rows: 0.79 s against 0.2 s)."""
    marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
    if marks is None:  # any other driver: the portable way
        for start in range(0, len(added), INSERT_BATCH):
            conn.execute(insert(version_table), [dict(zip(ROW_COLUMNS, row), repo_key=key, series=entry.series,
                                                      first_seq=entry.seq) for row in added[start:start + INSERT_BATCH]])
        return
    columns = ("repo_key", "series", "first_seq") + ROW_COLUMNS
    statement = (f"INSERT INTO file_versions ({', '.join(columns)}) "
                 f"VALUES ({', '.join([marks] * len(columns))})")
    head = (key, entry.series, entry.seq)
    cursor = conn.connection.driver_connection.cursor()
    try:
        for start in range(0, len(added), INSERT_BATCH):
            cursor.executemany(statement, [head + row for row in added[start:start + INSERT_BATCH]])
    finally:
        cursor.close()


def _conditions(wanted: VersionFilter) -> Iterable[Any]:
    v, s = version_table.c, snapshot_table.c
    names: list[Any] = []
    if wanted.basename_equal:
        names.append(v.basename.in_(wanted.basename_equal))
    for pattern in wanted.basename_like or []:
        names.append(v.basename.like(pattern, escape="\\"))
    if names:
        yield or_(*names)
    if wanted.path_like is not None:
        yield v.path.like(wanted.path_like, escape="\\")
    if wanted.series or wanted.series_like:
        yield or_(v.series.in_(wanted.series or []),
                  *(v.series.like(pattern, escape="\\") for pattern in wanted.series_like or []))
    if wanted.host is not None:
        yield s.host == wanted.host
    if wanted.since is not None:
        yield s.time >= wanted.since.astimezone(timezone.utc)
    if wanted.until is not None:
        yield s.time <= wanted.until.astimezone(timezone.utc)
    if wanted.min_size is not None:
        yield v.size >= wanted.min_size
    if wanted.max_size is not None:
        yield v.size <= wanted.max_size
    if wanted.mtime_after_ns is not None:
        yield v.mtime_ns >= wanted.mtime_after_ns
    if wanted.mtime_before_ns is not None:
        yield v.mtime_ns <= wanted.mtime_before_ns
    if wanted.hash_prefixes:
        yield or_(*(column.like(prefix + "%") for prefix in wanted.hash_prefixes
                    for column in (v.hash, v.content)))


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def record_rewrite(catalog: Catalog, rows: list[dict[str, Any]]) -> None:
    """Audit trail of a takedown: who removed which paths from which snapshot, why, and the outcome."""
    if rows:
        with catalog._begin() as conn:
            conn.execute(insert(rewrite_table), [dict(row, repo_id=catalog.repo_id) for row in rows])


def rewrites(catalog: Catalog) -> list[Any]:
    """The audit trail, oldest first."""
    query = select(rewrite_table).where(rewrite_table.c.repo_id == catalog.repo_id)
    with catalog.engine.connect() as conn:
        return list(conn.execute(query.order_by(rewrite_table.c.id)))
