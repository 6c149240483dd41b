"""Parallel logical MariaDB backups with mydumper / myloader against a real throwaway server.

Night 1: a ~3 MB ``pages`` table, a small ``events`` table, mydumper with 2
threads stored as a tree (one file per table).  Then rows at t1, a moment,
rows at t2, binlogs shipped, and night 2 (only ``events`` changed): it must
store a small fraction of the dump.  Restores: the whole database to the
moment (myloader + binlog replay), and one table alone from a snapshot.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import DrEnv, make_env
from dbservers import MariaServer, insert_events, mariadb_server, write_config

SOURCE = "wikimd"
PAGE_ROWS = 30_000


@dataclass
class Scenario:
    dr: DrEnv
    server: MariaServer
    between: datetime
    nights: list[dict[str, Any]]


def _backup(dr: DrEnv) -> dict[str, Any]:
    result = dr.run("backup", "--source", SOURCE)
    assert result.code == 0, result.err
    return json.loads(dr.run("snapshots", "--name", SOURCE, "--json").out)[-1]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("mydumper"))
    dr.init()
    with mariadb_server() as server:
        dr.env["DRTOOL_CONFIG"] = str(write_config(dr.tmp / "drtool.toml", str(dr.repo), {
            SOURCE: server.source(dbname="wiki", method="mydumper", threads=2)}))
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        server.sql("CREATE TABLE wiki.pages (id INT PRIMARY KEY, title VARCHAR(40), body TEXT)")
        conn = server.connect("wiki")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pages VALUES (%s, %s, %s)",
                            [(i, f"page {i}", hashlib.sha256(str(i).encode()).hexdigest() * 2)
                             for i in range(PAGE_ROWS)])  # hex: compresses about 2:1, like real text
        conn.close()
        insert_events(server, "t0", 5)
        first = _backup(dr)
        insert_events(server, "t1", 10)
        server.sql("FLUSH BINARY LOGS")
        time.sleep(1.1)
        between = datetime.now(timezone.utc)
        time.sleep(1.1)
        insert_events(server, "t2", 20)
        server.sql("FLUSH BINARY LOGS")
        pushed = dr.run("mariadb", "binlog-push", "--source", SOURCE)
        assert pushed.code == 0, pushed.err
        second = _backup(dr)
        yield Scenario(dr, server, between, [first, second])


def test_snapshot_is_a_tree_of_table_files_with_coordinates(scenario: Scenario) -> None:
    snap = scenario.nights[0]
    assert snap["kind"] == "mariadb-mydumper"
    meta = snap["meta"]
    assert meta["tables"] == ["wiki.events", "wiki.pages"] and meta["threads"] == 2
    assert meta["binlog_file"].startswith("binlog.") and meta["gtid_pos"].startswith("0-1-")
    listing = scenario.dr.run("ls", snap["id"][:8], "dump", "--json")
    assert listing.code == 0, listing.err
    names = {entry["path"].rsplit("/", 1)[-1] for entry in json.loads(listing.out)}
    assert {"metadata", "wiki.pages.sql", "wiki.pages-schema.sql", "wiki.events.sql"} <= names


def test_night_two_stores_only_what_changed(scenario: Scenario) -> None:
    first, second = scenario.nights
    size = second["meta"]["dump_bytes"]
    assert size > 2_000_000
    assert first["summary"]["bytes_added"] > size / 4  # night 1 stored the pages (compressed)
    assert second["summary"]["bytes_added"] < first["summary"]["bytes_added"] / 20, second["summary"]


def test_whole_database_to_a_point_in_time(scenario: Scenario) -> None:
    plan = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                           "--target-db", "wiki_pit", "--dry-run", "--json")
    assert plan.code == 0, plan.err
    assert json.loads(plan.out)["base"]["snapshot"] == scenario.nights[0]["id"]
    result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                             "--target-db", "wiki_pit")
    assert result.code == 0, result.err
    rows = scenario.server.sql("SELECT tag, count(*) FROM wiki_pit.events GROUP BY tag ORDER BY tag")
    assert rows == [("t0", 5), ("t1", 10)]
    assert scenario.server.sql("SELECT count(*) FROM wiki_pit.pages") == [(PAGE_ROWS,)]


def test_one_table_from_a_snapshot(scenario: Scenario) -> None:
    snap = scenario.nights[1]["id"][:8]
    result = scenario.dr.run("restore", snap, "--source", SOURCE, "--table", "wiki.events", "--target-db", "one")
    assert result.code == 0, result.err
    assert scenario.server.sql("SHOW TABLES FROM one") == [("events",)]
    rows = scenario.server.sql("SELECT tag, count(*) FROM one.events GROUP BY tag ORDER BY tag")
    assert rows == [("t0", 5), ("t1", 10), ("t2", 20)]
    missing = scenario.dr.run("restore", snap, "--source", SOURCE, "--table", "wiki.nope", "--target-db", "two")
    assert missing.code == 2 and "holds no table wiki.nope" in missing.err
    assert scenario.server.sql("SHOW DATABASES LIKE 'two'") == []


def test_one_table_to_a_point_in_time_replays_only_its_rows(scenario: Scenario) -> None:
    result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                             "--table", "wiki.events", "--target-db", "one_pit")
    assert result.code == 0, result.err
    assert scenario.server.sql("SHOW TABLES FROM one_pit") == [("events",)]
    rows = scenario.server.sql("SELECT tag, count(*) FROM one_pit.events GROUP BY tag ORDER BY tag")
    assert rows == [("t0", 5), ("t1", 10)]


def test_rehearsal_loads_the_table_files_and_replays_to_the_point(scenario: Scenario, tmp_path: Path) -> None:
    """A mariadb sandbox for a mydumper snapshot: myloader into a fresh instance, replay, validate, remove."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    runbook = tmp_path / "mydumper.toml"
    runbook.write_text(f'''source = "{SOURCE}"
point_in_time = "{scenario.between.isoformat()}"
sandbox = {{ type = "mariadb", database = "wiki", path = "{root}" }}
[[validations]]
type = "sql"
query = "SELECT COUNT(*) FROM events"
expect = 15
[[validations]]
type = "sql"
query = "SELECT COUNT(*) FROM pages"
expect = {PAGE_ROWS}
''')
    result = scenario.dr.run("rehearse", str(runbook), "--json")
    assert result.code == 0, result.out + result.err
    (doc,) = json.loads(result.out)
    assert doc["status"] == "passed"
    assert list(root.iterdir()) == []


def test_metadata_of_a_replica_dump_gives_the_primary_gtid() -> None:
    """mydumper's metadata on a replica (format of mydumper 0.10): no own GTID, the primary's in the slave part."""
    from drtool.sources.mydumper import parse_metadata
    text = ("Started dump at: 2026-12-03 16:43:08\nSHOW MASTER STATUS:\n\tLog: binlog.000001\n\tPos: 1560\n"
            "\tGTID:\n\nSHOW SLAVE STATUS:\n\tHost: 10.0.0.1\n\tLog: binlog.000003\n\tPos: 99\n\tGTID:0-1-77\n\n"
            "Finished dump at: 2026-12-03 16:43:09\n")
    assert parse_metadata(text) == {"binlog_file": "binlog.000001", "binlog_pos": 1560, "primary_gtid_pos": "0-1-77"}
