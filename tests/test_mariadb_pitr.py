"""MariaDB point-in-time restore against a real throwaway server.

A consistent dump with binlog coordinates, then rows at t1, t2, t3 with
``FLUSH BINARY LOGS`` between, binlogs shipped by ``drtool mariadb
binlog-push``.  Restoring to a time between t2 and t3 into a new database
must give the dump's rows plus exactly the t1 + t2 rows.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DrEnv, make_env
from dbservers import MariaServer, mariadb_server, stop_restored_mariadb, wiki_history_t0_to_t3, write_config

SOURCE = "wiki"


@dataclass
class Scenario:
    dr: DrEnv
    server: MariaServer
    config: Path
    between: datetime



@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("mypitr"))
    dr.init()
    with mariadb_server() as server:
        config = write_config(dr.tmp / "drtool.toml", str(dr.repo), {SOURCE: server.source(dbname="wiki")})
        dr.env["DRTOOL_CONFIG"] = str(config)
        def backup() -> None:
            result = dr.run("backup", "--source", SOURCE)
            assert result.code == 0, result.err
        between = wiki_history_t0_to_t3(server, backup)
        pushed = dr.run("mariadb", "binlog-push", "--source", SOURCE, "--json")
        assert pushed.code == 0, pushed.err
        assert all(p["status"] == "stored" for p in json.loads(pushed.out))
        yield Scenario(dr, server, config, between)


def test_dump_snapshot_records_binlog_coordinates(scenario: Scenario) -> None:
    snaps = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)
    assert [s["kind"] for s in snaps] == ["mariadb-dump"]
    meta = snaps[0]["meta"]
    assert meta["binlog_file"].startswith("binlog.") and meta["binlog_pos"] > 4
    assert meta["gtid_pos"] and meta["database"] == "wiki"


def test_binlog_push_is_idempotent(scenario: Scenario) -> None:
    again = scenario.dr.run("mariadb", "binlog-push", "--source", SOURCE, "--json")
    assert again.code == 0, again.err
    assert {p["status"] for p in json.loads(again.out)} == {"already-archived"}


def test_restore_between_t2_and_t3_into_new_database(scenario: Scenario) -> None:
    plan = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                           "--target-db", "wiki_pitr", "--dry-run", "--json")
    assert plan.code == 0, plan.err
    assert json.loads(plan.out)["segments"]
    result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                             "--target-db", "wiki_pitr")
    assert result.code == 0, result.err
    rows = scenario.server.sql("SELECT tag, count(*) FROM wiki_pitr.events GROUP BY tag ORDER BY tag")
    assert rows == [("t0", 5), ("t1", 10), ("t2", 20)]
    assert scenario.server.sql("SELECT count(*) FROM wiki.events") == [(65,)]  # source untouched
    again = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                            "--target-db", "wiki_pitr")
    assert again.code == 1 and "already exists" in again.err


def test_named_snapshot_restores_the_dump_without_replay(scenario: Scenario) -> None:
    (snap,) = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)
    plan = scenario.dr.run("restore", snap["id"][:8], "--source", SOURCE, "--target-db", "wiki_named",
                           "--dry-run", "--json")
    assert plan.code == 0, plan.err
    result = scenario.dr.run("restore", snap["id"][:8], "--source", SOURCE, "--target-db", "wiki_named")
    assert result.code == 0, result.err
    rows = scenario.server.sql("SELECT tag, count(*) FROM wiki_named.events GROUP BY tag ORDER BY tag")
    assert rows == [("t0", 5)]  # as dumped: nothing after the dump's coordinates
    wrong = scenario.dr.run("restore", "deadbeef", "--source", SOURCE, "--target-db", "wiki_x")
    assert wrong.code == 1 and "not a single" in wrong.err


def test_latest_into_a_fresh_instance(scenario: Scenario) -> None:
    target = Path(scenario.server.root) / "fresh"
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", str(target),
                             "--start", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    try:
        import pymysql
        conn = pymysql.connect(unix_socket=report["socket"], user="root", password="", database="wiki")
        with conn.cursor() as cur:
            cur.execute("SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag")
            assert list(cur.fetchall()) == [("t0", 5), ("t1", 10), ("t2", 20), ("t3", 30)]
        conn.close()
    finally:
        stop_restored_mariadb(Path(target))


def test_point_after_last_pushed_binlog_is_refused(scenario: Scenario) -> None:
    result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", "now", "--target-db", "x",
                             "--dry-run")
    assert result.code == 1 and "after the last archived binlog event" in result.err


def test_missing_binlog_is_a_gap_and_restore_past_it_fails(scenario: Scenario, tmp_path: Path) -> None:
    copy = make_env(tmp_path / "copy")
    shutil.copytree(scenario.dr.repo, copy.repo)
    copy.env["DRTOOL_CONFIG"] = str(scenario.config)
    copy.env["DRTOOL_REPOSITORY"] = str(copy.repo)
    window = json.loads(copy.run("mariadb", "window", "--source", SOURCE, "--json").out)
    assert window["gaps"] == [] and window["segments"] >= 3
    session = copy.session()
    try:
        from drtool.databases import logarchive
        segs = logarchive.sync_log_segments(session).segments(SOURCE, "binlog")
        second = segs[1].name
        prefix = logarchive.source_prefix(session.repo, "binlog", SOURCE)
        object_id = logarchive.segment_object_id(session.repo, "binlog", SOURCE, second)
    finally:
        session.close()
    for suffix in ("", ".info"):
        os.unlink(copy.repo / prefix / f"{object_id}{suffix}")
    window = json.loads(copy.run("mariadb", "window", "--source", SOURCE, "--json").out)
    assert [g["first_missing"] for g in window["gaps"]] == [second]
    result = copy.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                      "--target-db", "never")
    assert result.code == 1 and f"binlog {second} of source {SOURCE} is missing" in result.err
    assert scenario.server.sql("SHOW DATABASES LIKE 'never'") == []


def test_log_segments_rebuild_from_the_repository_alone(scenario: Scenario, tmp_path: Path) -> None:
    from drtool import api
    from drtool.catalog.logs import LogCatalog
    from drtool.databases.planner import window_from_catalog
    from drtool.databases.logarchive import rebuild_log_segments
    from conftest import PASSWORD
    fresh = api.open_repository(str(scenario.dr.repo), PASSWORD.encode(), catalog=str(tmp_path / "new.sqlite"))
    try:
        assert LogCatalog(fresh.catalog).segments(SOURCE) == []
        assert rebuild_log_segments(fresh) >= 3
        segs = LogCatalog(fresh.catalog).segments(SOURCE, "binlog")
        assert [s.seq for s in segs] == list(range(1, len(segs) + 1))
        assert all(s.first_time and s.last_time and s.extra.get("last_gtid") for s in segs)
        fresh.sync()  # snapshots (catalog rebuild does this part)
        window = window_from_catalog(fresh.catalog, SOURCE)  # the catalog-only variant used by status
        assert window is not None and window.end is not None and window.end > scenario.between
    finally:
        fresh.close()
