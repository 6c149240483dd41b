"""Migration 0007: the file index keyed by a short integer per repository, index kept intact.

The fixture (tests/fixtures/catalog-0006, see its README) is a shared catalog file that
drtool main made before 0007, holding two repositories' file index.  Upgraded, every
version row must still be there under its repository's key (same version ids, so
nothing was re-indexed), and ``find`` must answer as it did before the upgrade; a backup
after the upgrade adds its rows under the same key.  The same on PostgreSQL: a catalog
made by migrations 0001-0006 holding the fixture's rows, upgraded in place.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import DateTime, MetaData, Table, create_engine, insert, text

from conftest import ROOT, DrEnv, fixture_copy
from drtool.catalog.db import open_engine
from drtool.catalog.peek import MIGRATIONS

FIXTURE = ROOT / "tests" / "fixtures" / "catalog-0006"
FIXTURE_URI = f"file:{FIXTURE / 'catalog.sqlite'}?mode=ro&immutable=1"  # no -wal or -shm beside it
ROW = "id, series, path, basename, type, size, mtime_ns, mode, content, hash, first_seq, end_seq"


def ok(result: Any) -> Any:
    assert result.code == 0, f"exit {result.code}\n{result.out}\n{result.err}"
    return json.loads(result.out) if result.out.lstrip().startswith(("{", "[")) else result.out


def old_rows() -> dict[str, list[tuple[Any, ...]]]:
    """The fixture's version rows as main wrote them, per repository id."""
    conn = sqlite3.connect(FIXTURE_URI, uri=True)
    try:
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for repo_id, *row in conn.execute(f"SELECT repo_id, {ROW} FROM file_versions ORDER BY id"):
            rows.setdefault(repo_id, []).append(tuple(row))
        return rows
    finally:
        conn.close()


def rows_by_repository(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Version rows of an upgraded catalog, per repository id (through ``file_index_repos``)."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    query = (f"SELECT k.repo_id, {', '.join('v.' + c for c in ROW.split(', '))} FROM file_versions v "
             "JOIN file_index_repos k ON k.id = v.repo_key ORDER BY v.id")
    for repo_id, *row in conn.execute(text(query)):
        rows.setdefault(repo_id, []).append(tuple(row))
    return rows


def second_repository(first: DrEnv, tmp: Path) -> DrEnv:
    """The fixture's other repository, on the same catalog as ``first``."""
    env = DrEnv(tmp, tmp / "repo2", first.catalog, dict(first.env, DRTOOL_REPOSITORY=str(tmp / "repo2")))
    shutil.copytree(FIXTURE / "repo2", env.repo)
    (env.repo / "locks").mkdir(exist_ok=True)
    return env


def expected_find(name: str) -> Any:
    return json.loads((FIXTURE / name).read_text())


def test_an_old_sqlite_catalog_keeps_its_file_index(tmp_path: Path) -> None:
    env = fixture_copy(FIXTURE, tmp_path / "dr", old_catalog=True)
    other = second_repository(env, tmp_path / "dr")
    before = old_rows()
    assert len(before) == 2 and sum(map(len, before.values())) == 14
    engine = open_engine(f"sqlite:///{env.catalog}")  # the upgrade alone, before any find could re-index
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
            assert rows_by_repository(conn) == before
            columns = {r[1] for r in conn.execute(text("PRAGMA table_info(file_versions)"))}
            assert "repo_key" in columns and "repo_id" not in columns
            indexed = {r[1]: r[0] for r in conn.execute(text("PRAGMA index_list(file_versions)"))}
            assert {"ix_file_versions_path", "ix_file_versions_basename", "ix_file_versions_hash"} <= set(indexed)
    finally:
        engine.dispose()
    assert ok(env.run("find", "*", "--json")) == expected_find("find-repo.json")
    assert ok(other.run("find", "*", "--json")) == expected_find("find-repo2.json")
    with sqlite3.connect(env.catalog) as conn:  # find re-indexed nothing: the same rows, same ids
        assert rows_by_repository(_Plain(conn)) == before
    src = tmp_path / "src"
    src.mkdir()
    (src / "after.txt").write_text("written after the upgrade\n")
    ok(env.run("backup", str(src), "--name", "later"))
    assert [v["path"] for v in ok(env.run("find", "after.txt", "--json"))] == ["src/after.txt"]
    assert ok(other.run("find", "after.txt", "--json")) == []  # keys keep the repositories apart
    assert ok(other.run("find", "*", "--json")) == expected_find("find-repo2.json")


class _Plain:
    """A DB-API connection where :func:`rows_by_repository` expects SQLAlchemy's (``text``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, query: Any) -> Any:
        return self.conn.execute(str(query))


def _copy_fixture_rows(conn: Any) -> None:
    """The fixture catalog's snapshot list and file index, as rows of a 0006 schema."""
    source = sqlite3.connect(FIXTURE_URI, uri=True)
    try:
        for name in ("snapshots", "file_index_snapshots", "file_versions"):
            table = Table(name, MetaData(), autoload_with=conn)
            cursor = source.execute(f"SELECT * FROM {name}")
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, row)) for row in cursor]
            for column in table.columns:
                if isinstance(column.type, DateTime):
                    for row in rows:
                        if row[column.name] is not None:
                            row[column.name] = datetime.fromisoformat(row[column.name]).replace(tzinfo=timezone.utc)
            conn.execute(insert(table), rows)
    finally:
        source.close()


def test_an_old_postgresql_catalog_keeps_its_file_index(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from dbservers import postgres_server
    with postgres_server() as server:
        server.sql("CREATE DATABASE old_catalog")
        url = f"postgresql+psycopg://postgres@/old_catalog?host={server.root}&port={server.port}"
        engine = create_engine(url)
        with engine.connect() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006")  # main's schema, made by main's migrations
            _copy_fixture_rows(conn)
            conn.commit()
        engine.dispose()
        upgraded = open_engine(url)
        try:
            with upgraded.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
                assert rows_by_repository(conn) == old_rows()
        finally:
            upgraded.dispose()
        env = fixture_copy(FIXTURE, tmp_path / "dr", old_catalog=False)
        env.env["DRTOOL_CATALOG"] = url
        other = second_repository(env, tmp_path / "dr")
        assert ok(env.run("find", "*", "--json")) == expected_find("find-repo.json")
        assert ok(other.run("find", "*", "--json")) == expected_find("find-repo2.json")
        src = tmp_path / "src"
        src.mkdir()
        (src / "after.txt").write_text("written after the upgrade\n")
        ok(env.run("backup", str(src), "--name", "later"))  # new ids past the copied ones
        assert [v["path"] for v in ok(env.run("find", "after.txt", "--json"))] == ["src/after.txt"]
        check = create_engine(url)
        try:
            with check.connect() as conn:
                ids = [r[0] for r in conn.execute(text("SELECT id FROM file_versions ORDER BY id"))]
        finally:
            check.dispose()
        assert ids[:14] == list(range(1, 15)) and len(ids) == 16


def test_an_index_write_that_fails_leaves_no_rows_and_no_key(repo_env: DrEnv) -> None:
    """A repository's key is made inside the transaction of its first version rows: an index
    write that fails half-way (a tree that cannot be read, an interrupted run) leaves neither."""
    from drtool.catalog.files import FileIndex, IndexedSnapshot
    from drtool.errors import DrtoolError

    def batches() -> Any:
        yield [], [("a.txt", "a.txt", "file", 1, 0, 0o644, "", None)], {}
        raise DrtoolError("the next tree cannot be read")

    with repo_env.session() as session:
        index = FileIndex(session.catalog)
        entry = IndexedSnapshot("f" * 64, "media", 1, "e" * 64, datetime.now(timezone.utc))
        with pytest.raises(DrtoolError):
            index.record(entry, batches())
        with session.catalog.engine.connect() as conn:
            counts = [conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
                      for table in ("file_index_repos", "file_versions", "file_index_snapshots")]
        assert counts == [0, 0, 0]
        index.record(entry, iter([([], [("a.txt", "a.txt", "file", 1, 0, 0o644, "", None)], {})]))
        assert index.counts() == {"versions": 1, "snapshots": 1}


def test_a_repository_key_another_host_is_making_is_waited_for_and_taken(tmp_path: Path) -> None:
    """Two hosts write a repository's first index rows into a shared PostgreSQL catalog at once:
    the second waits for the first's key, then uses it (no unique violation, one key)."""
    import threading
    import time

    from dbservers import postgres_server
    from drtool.catalog.files import FileIndex, IndexedSnapshot
    from drtool.catalog.models import file_index_repo_table
    from drtool.catalog.store import Catalog

    with postgres_server() as server:
        server.sql("CREATE DATABASE shared")
        url = f"postgresql+psycopg://postgres@/shared?host={server.root}&port={server.port}"
        repo_id = "ab" * 16
        host_a, host_b = Catalog(open_engine(url), repo_id), Catalog(open_engine(url), repo_id)
        errors: list[BaseException] = []

        def index_on_a() -> None:
            entry = IndexedSnapshot("a" * 64, "alpha", 1, "e" * 64, datetime.now(timezone.utc))
            try:
                FileIndex(host_a).record(entry, iter([([], [("a.txt", "a.txt", "file", 1, 0, 0o644, "", None)], {})]))
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        try:
            with host_b.engine.connect() as conn:  # B made the key and has not committed yet
                conn.execute(insert(file_index_repo_table).values(repo_id=repo_id))
                writer = threading.Thread(target=index_on_a)
                writer.start()
                time.sleep(0.5)  # A now waits on B's uncommitted row
                conn.commit()
            writer.join(timeout=30)
            assert not writer.is_alive() and errors == []
            assert FileIndex(host_b).counts() == {"versions": 1, "snapshots": 1}
            with host_b.engine.connect() as conn:
                assert conn.execute(text("SELECT COUNT(*) FROM file_index_repos")).scalar() == 1
        finally:
            host_a.close()
            host_b.close()
