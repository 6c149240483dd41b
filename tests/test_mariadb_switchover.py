"""Point-in-time restore across a MariaDB switchover: binlogs chained by GTID, not by file name.

A primary (server 1) and a replica (server 2, ``log_slave_updates``).  A dump
of the primary, rows at t1 archived from the primary, rows at t1b written on
the primary just before the switchover and never archived from it; then the
replica is promoted, archiving moves to it (its binlogs have the same file
names as the old primary's), rows at t2, a moment, rows at t3.  A restore to
the moment must replay the old primary's files, then the new primary's from
the GTID after the last replayed one (t1b is only in the new primary's
files, next to the replicated copies of t0/t1 it must skip): exactly
t0 + t1 + t1b + t2.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DrEnv, make_env
from dbservers import MariaServer, insert_events, mariadb_server, replicate, wait_caught_up, write_config

SOURCE = "wikiha"


@dataclass
class Scenario:
    dr: DrEnv
    old: MariaServer
    new: MariaServer
    between: datetime


def _push(dr: DrEnv) -> list[dict[str, object]]:
    pushed = dr.run("mariadb", "binlog-push", "--source", SOURCE, "--json")
    assert pushed.code == 0, pushed.err
    return json.loads(pushed.out)


def _switch_over(old: MariaServer, new: MariaServer) -> None:
    """Planned switchover: the old primary stops writing, the replica catches up and is promoted."""
    old.sql("SET GLOBAL read_only = 1")
    wait_caught_up(new, old)
    new.sql("STOP SLAVE")
    new.sql("RESET SLAVE ALL")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("myha"))
    dr.init()
    with mariadb_server() as old, mariadb_server(server_id=2, extra=["--log-slave-updates"]) as new:
        replicate(new, old)
        dr.env["DRTOOL_CONFIG"] = str(write_config(dr.tmp / "old.toml", str(dr.repo),
                                                   {SOURCE: old.source(dbname="wiki")}))
        old.sql("CREATE DATABASE wiki")
        old.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        insert_events(old, "t0", 5)
        backup = dr.run("backup", "--source", SOURCE)
        assert backup.code == 0, backup.err
        insert_events(old, "t1", 10)
        old.sql("FLUSH BINARY LOGS")
        assert _push(dr)
        insert_events(old, "t1b", 4)  # never archived from the old primary
        _switch_over(old, new)
        dr.env["DRTOOL_CONFIG"] = str(write_config(dr.tmp / "new.toml", str(dr.repo),
                                                   {SOURCE: new.source(dbname="wiki")}))
        new.sql("FLUSH BINARY LOGS")
        insert_events(new, "t2", 20)
        new.sql("FLUSH BINARY LOGS")
        time.sleep(1.1)
        between = datetime.now(timezone.utc)
        time.sleep(1.1)
        insert_events(new, "t3", 30)
        new.sql("FLUSH BINARY LOGS")
        pushed = _push(dr)
        assert all(str(p["name"]).startswith("s2-binlog.") for p in pushed)
        yield Scenario(dr, old, new, between)


def _plan(scenario: Scenario, *args: str) -> dict[str, object]:
    plan = scenario.dr.run("restore", "--source", SOURCE, *args, "--dry-run", "--json")
    assert plan.code == 0, plan.err
    return json.loads(plan.out)


def test_both_servers_binlogs_are_archived_under_their_own_names(scenario: Scenario) -> None:
    window = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json").out)
    assert window["gaps"] == []
    session = scenario.dr.session()
    try:
        from drtool.databases import logarchive
        segs = logarchive.sync_log_segments(session).segments(SOURCE, "binlog")
    finally:
        session.close()
    servers = {s.name.split("-", 1)[0] for s in segs}
    assert servers == {"s1", "s2"}
    names = {s.extra["file"] for s in segs if s.name.startswith("s1-")}
    assert names & {s.extra["file"] for s in segs if s.name.startswith("s2-")}  # same file names, both kept
    assert all(s.extra["gtid_end"].startswith("0-") for s in segs if s.extra.get("last_gtid"))


def test_restore_to_a_time_after_the_switchover(scenario: Scenario) -> None:
    plan = _plan(scenario, "--point-in-time", scenario.between.isoformat(), "--target-db", "wiki_pit")
    files = plan["segments"]
    assert isinstance(files, list) and files[0].startswith("s1-") and files[-1].startswith("s2-")
    result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                             "--target-db", "wiki_pit")
    assert result.code == 0, result.err
    rows = scenario.new.sql("SELECT tag, count(*) FROM wiki_pit.events GROUP BY tag ORDER BY tag")
    assert rows == [("t0", 5), ("t1", 10), ("t1b", 4), ("t2", 20)]
    assert scenario.new.sql("SELECT count(*), count(DISTINCT id) FROM wiki_pit.events") == [(39, 39)]


def test_latest_reaches_the_new_primary_last_archived_event(scenario: Scenario) -> None:
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target-db", "wiki_last")
    assert result.code == 0, result.err
    rows = scenario.new.sql("SELECT tag, count(*) FROM wiki_last.events GROUP BY tag ORDER BY tag")
    assert rows == [("t0", 5), ("t1", 10), ("t1b", 4), ("t2", 20), ("t3", 30)]


def test_missing_gtids_across_servers_are_a_gap(scenario: Scenario, tmp_path: Path) -> None:
    """Without the new primary's file holding t1b..t2, the chain cannot cross: a gap named by GTID."""
    import shutil
    copy = make_env(tmp_path / "copy")
    shutil.copytree(scenario.dr.repo, copy.repo)
    copy.env["DRTOOL_CONFIG"] = scenario.dr.env["DRTOOL_CONFIG"]
    copy.env["DRTOOL_REPOSITORY"] = str(copy.repo)
    session = copy.session()
    try:
        from drtool.databases import logarchive
        segs = logarchive.sync_log_segments(session).segments(SOURCE, "binlog")
        holding = [s for s in segs if s.name.startswith("s2-") and s.extra.get("last_gtid")]
        prefix = logarchive.source_prefix(session.repo, "binlog", SOURCE)
    finally:
        session.close()
    first_after = min(holding, key=lambda s: s.seq or 0)  # the replica's oldest archived file with GTIDs
    for seg in [s for s in holding if (s.seq or 0) <= (first_after.seq or 0) + 1]:
        for suffix in ("", ".info"):
            (copy.repo / prefix / f"{seg.object_id}{suffix}").unlink()
    window = json.loads(copy.run("mariadb", "window", "--source", SOURCE, "--json").out)
    assert len(window["gaps"]) == 1 and "binlog events after GTID 0-" in window["gaps"][0]["first_missing"]
    result = copy.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                      "--target-db", "never", "--dry-run")
    assert result.code == 1 and "binlog events after GTID" in result.err


def test_dump_of_a_replica_replays_the_primary_archive_by_gtid(tmp_path: Path) -> None:
    """Backed up on a dedicated replica, binlogs archived on the primary (each host runs drtool with its own
    config for the one source): the replica's binlog coordinates name no archived file; the restore
    starts in the primary's binlogs after the dump's GTID position."""
    dr = make_env(tmp_path / "dr")
    dr.init()
    with mariadb_server() as primary, mariadb_server(server_id=2, extra=["--log-slave-updates"]) as replica:
        replicate(replica, primary)
        on_replica = str(write_config(dr.tmp / "replica.toml", str(dr.repo), {SOURCE: replica.source(dbname="wiki")}))
        on_primary = str(write_config(dr.tmp / "primary.toml", str(dr.repo), {SOURCE: primary.source(dbname="wiki")}))
        primary.sql("CREATE DATABASE wiki")
        primary.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        insert_events(primary, "t0", 5)
        wait_caught_up(replica, primary)
        backup = dr.run("backup", "--source", SOURCE, env={"DRTOOL_CONFIG": on_replica})
        assert backup.code == 0, backup.err
        insert_events(primary, "t1", 10)
        primary.sql("FLUSH BINARY LOGS")
        time.sleep(1.1)
        between = datetime.now(timezone.utc)
        time.sleep(1.1)
        insert_events(primary, "t2", 20)
        primary.sql("FLUSH BINARY LOGS")
        pushed = dr.run("mariadb", "binlog-push", "--source", SOURCE, env={"DRTOOL_CONFIG": on_primary})
        assert pushed.code == 0, pushed.err
        (snap,) = json.loads(dr.run("snapshots", "--name", SOURCE, "--json").out)
        assert snap["meta"]["server_id"] == 2
        result = dr.run("restore", "--source", SOURCE, "--point-in-time", between.isoformat(), "--target-db",
                        "wiki_pit", "--json", env={"DRTOOL_CONFIG": on_primary})
        assert result.code == 0, result.err
        assert all(name.startswith("s1-") for name in json.loads(result.out)["plan"]["segments"])
        rows = primary.sql("SELECT tag, count(*) FROM wiki_pit.events GROUP BY tag ORDER BY tag")
        assert rows == [("t0", 5), ("t1", 10)]


def test_binlogs_archived_under_bare_names_by_an_earlier_drtool_still_chain(tmp_path: Path) -> None:
    """An archive written before per-server names: binlog.000001 (no GTID range in its record) stays,
    binlog-push counts it as archived, and the chain goes on by GTID into s1-binlog.000002."""
    import os

    from drtool.databases import logarchive
    from drtool.sources.mariadb import MariaSource
    dr = make_env(tmp_path / "dr")
    dr.init()
    with mariadb_server() as server:
        table = server.source(dbname="wiki")
        dr.env["DRTOOL_CONFIG"] = str(write_config(dr.tmp / "c.toml", str(dr.repo), {SOURCE: table}))
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        insert_events(server, "t0", 5)
        assert dr.run("backup", "--source", SOURCE).code == 0
        insert_events(server, "t1", 10)
        server.sql("FLUSH BINARY LOGS")
        session = dr.session()
        try:  # what an earlier drtool stored: the bare file name, Gtid_list + first/last GTID only
            path = os.path.join(server.datadir, "binlog.000001")
            payload = Path(path).read_bytes()
            src = MariaSource.from_config(SOURCE, {k: v for k, v in table.items() if k != "type"})
            seg = logarchive.binlog_record(session.repo, src, "binlog.000001", path, len(payload))
            for key in ("gtid_start", "gtid_end", "server_id", "file"):
                del seg.extra[key]
            assert logarchive.store_segment(session.repo, seg, payload) == "stored"
        finally:
            session.close()
        time.sleep(1.1)
        between = datetime.now(timezone.utc)
        time.sleep(1.1)
        insert_events(server, "t2", 20)
        server.sql("FLUSH BINARY LOGS")
        pushed = {p["name"]: p["status"] for p in _push(dr)}
        assert pushed == {"binlog.000001": "already-archived", "s1-binlog.000002": "stored"}
        expected = [("t0", 5), ("t1", 10), ("t2", 20)]
        for when, target, rows in ((["--point-in-time", between.isoformat()], "w_pit", expected[:2]),
                                   (["--latest"], "w_last", expected)):
            result = dr.run("restore", "--source", SOURCE, *when, "--target-db", target)
            assert result.code == 0, result.err
            assert server.sql(f"SELECT tag, count(*) FROM {target}.events GROUP BY tag ORDER BY tag") == rows
