"""Incremental MariaDB physical backups against a real throwaway server.

Three nights of ``method = "physical"`` with ``full_every = 3``: a full, then
two incrementals (``mariabackup --incremental-lsn``), with scattered page
updates and inserts between them and binlogs shipped by ``binlog-push``.
Restores rebuild the chain (extract each member, prepare the full, apply
each incremental) and replay binlogs from the chosen member's coordinates;
the restored tables must match the source's ``CHECKSUM TABLE`` at that point.
Tests run in file order (one worker per file): the later ones add nights.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pymysql
import pytest

from conftest import PASSWORD, DrEnv, make_env
from dbservers import MariaServer, insert_events, mariadb_server, stop_restored_mariadb, write_config
from pagecache import unwritten_pages

SOURCE = "wikiinc"
OLD = "wikiold"
TABLES = "wiki.pages, wiki.events"


@dataclass
class Scenario:
    dr: DrEnv
    server: MariaServer
    snaps: list[dict[str, Any]]
    between: datetime
    at_between: list[tuple[Any, ...]]
    at_latest: list[tuple[Any, ...]]


def touch_pages(server: MariaServer, residue: int) -> None:
    """Scattered row updates: every 50th row of ``pages`` (a few of its 16 KiB pages each time)."""
    server.sql(f"UPDATE wiki.pages SET body = REVERSE(body), n = n + 1 WHERE id % 50 = {residue}")


def settle(server: MariaServer, timeout: float = 60.0) -> None:
    """Flush every dirty page so the checkpoint passes the bulk load, as it soon would on a server
    that runs for a while: the nights' ``to_lsn`` is the checkpoint, and a table created after it is
    copied whole (``.new``) by every backup until a checkpoint passes its creation."""
    want = int(server.sql("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")[0][1])
    server.sql("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001, innodb_max_dirty_pages_pct = 0")
    deadline = time.monotonic() + timeout
    while int(server.sql("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_last_checkpoint'")[0][1]) < want:
        assert time.monotonic() < deadline, "the InnoDB checkpoint did not pass the load"
        server.sql("FLUSH TABLES")
        time.sleep(0.2)


def checksums(server: MariaServer) -> list[tuple[Any, ...]]:
    return server.sql(f"CHECKSUM TABLE {TABLES}")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("myinc"))
    dr.init()
    with mariadb_server() as server:
        config = write_config(dr.tmp / "drtool.toml", str(dr.repo),
                              {SOURCE: server.source(method="physical", full_every=3),
                               OLD: server.source(method="physical")})
        dr.env["DRTOOL_CONFIG"] = str(config)

        def backup() -> None:
            result = dr.run("backup", "--source", SOURCE)
            assert result.code == 0, result.err
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        server.sql("CREATE TABLE wiki.pages (id INT PRIMARY KEY, n INT, body VARCHAR(400))")
        server.sql("INSERT INTO pages SELECT seq, 0, REPEAT(SHA2(seq, 256), 6) FROM seq_1_to_20000", "wiki")
        insert_events(server, "t0", 5)
        settle(server)
        backup()                                   # night 1: full
        touch_pages(server, 0)
        insert_events(server, "t1", 10)
        backup()                                   # night 2: incremental to night 1
        insert_events(server, "t1b", 7)
        server.sql("FLUSH BINARY LOGS")
        time.sleep(1.1)
        between, at_between = datetime.now(timezone.utc), checksums(server)
        time.sleep(1.1)
        touch_pages(server, 1)
        insert_events(server, "t2", 20)
        backup()                                   # night 3: incremental to night 2
        touch_pages(server, 2)
        insert_events(server, "t3", 30)
        server.sql("FLUSH BINARY LOGS")
        pushed = dr.run("mariadb", "binlog-push", "--source", SOURCE)
        assert pushed.code == 0, pushed.err
        snaps = json.loads(dr.run("snapshots", "--name", SOURCE, "--json").out)
        yield Scenario(dr, server, snaps, between, at_between, checksums(server))


def restored_checksums(socket: str, password: str) -> list[tuple[Any, ...]]:
    conn = pymysql.connect(unix_socket=socket, user="root", password=password)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CHECKSUM TABLE {TABLES}")
            return list(cur.fetchall())
    finally:
        conn.close()


def test_nights_two_and_three_are_incremental_links_of_one_chain(scenario: Scenario) -> None:
    full, inc1, inc2 = (s["meta"] for s in scenario.snaps)
    assert full["backup_type"] == "full" and "incremental_parent" not in full and full["chain_length"] == 1
    assert inc1["backup_type"] == "incremental" and inc1["incremental_parent"] == scenario.snaps[0]["id"]
    assert inc2["incremental_parent"] == scenario.snaps[1]["id"] and inc2["chain_length"] == 3
    assert inc1["from_lsn"] == full["to_lsn"] and inc2["from_lsn"] == inc1["to_lsn"]
    assert inc1["server_identity"] == full["server_identity"]
    assert inc1["server_identity"]["server_id"] == 1
    # only changed pages: an incremental streams a fraction of the full's bytes
    assert inc1["dump_bytes"] < full["dump_bytes"] / 2 and inc2["dump_bytes"] < full["dump_bytes"] / 2


def test_a_chain_restored_without_replay_is_on_disk_when_the_restore_returns(scenario: Scenario,
                                                                            tmp_path: Path) -> None:
    """A chain's members are written through the page cache (the rebuild and the prepares read them
    back): the restore syncs the prepared tree before it says done, so no page of it is dirty."""
    target = tmp_path / "chain"
    result = scenario.dr.run("-v", "restore", scenario.snaps[2]["id"][:12], "--source", SOURCE,
                             "--target", str(target))
    assert result.code == 0, result.err
    assert "syncing the restored files to disk" in result.err
    files = [p for p in target.rglob("*") if p.is_file()]
    assert len(files) > 5 and not (target / "incremental-1").exists()
    assert unwritten_pages(files) == {}


def test_dry_run_shows_the_chain(scenario: Scenario) -> None:
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", "/nonexistent", "--dry-run")
    assert result.code == 0, result.err
    ids = [s["id"][:8] for s in scenario.snaps]
    assert f"chain: full {ids[0]} (" in result.out and f"+ 2 incremental(s) {ids[1]}, {ids[2]}" in result.out
    plan = json.loads(scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", "/nonexistent",
                                      "--dry-run", "--json").out)
    assert plan["chain"] == [s["id"] for s in scenario.snaps] and plan["base"]["snapshot"] == scenario.snaps[2]["id"]


def test_latest_restore_applies_both_incrementals_then_the_binlogs(scenario: Scenario, tmp_path: Path) -> None:
    target = Path(scenario.server.root) / "latest"
    try:
        result = scenario.dr.run("-v", "restore", "--source", SOURCE, "--latest", "--target", str(target),
                                 "--start", "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["plan"]["chain"] == [s["id"] for s in scenario.snaps]
        ids = [s["id"][:8] for s in scenario.snaps]  # -v: each member extracted, then applied in order
        assert re.findall(r"INFO: (?:extracting|applying) (?:the full|incremental) (\w+) \((\d) of 3\)"
                          r"[^\n]*: done in", result.err) == [(ids[0], "1"), (ids[1], "2"), (ids[2], "3"),
                                                             (ids[1], "2"), (ids[2], "3")], result.err
        assert restored_checksums(report["socket"], scenario.server.password) == scenario.at_latest
        assert not list(target.glob("incremental-*"))  # applied, then removed
    finally:
        stop_restored_mariadb(target)


def test_point_in_time_between_nights_starts_from_the_second_night(scenario: Scenario) -> None:
    target = Path(scenario.server.root) / "between"
    try:
        result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                                 "--target", str(target), "--start", "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["plan"]["base"]["snapshot"] == scenario.snaps[1]["id"]
        assert report["plan"]["chain"] == [s["id"] for s in scenario.snaps[:2]] and report["plan"]["segments"]
        assert restored_checksums(report["socket"], scenario.server.password) == scenario.at_between
        conn = pymysql.connect(unix_socket=report["socket"], user="root", password=scenario.server.password)
        with conn.cursor() as cur:
            cur.execute("SELECT tag, count(*) FROM wiki.events GROUP BY tag ORDER BY tag")
            assert list(cur.fetchall()) == [("t0", 5), ("t1", 10), ("t1b", 7)]
        conn.close()
    finally:
        stop_restored_mariadb(target)


def test_a_missing_chain_member_is_named_in_one_line(scenario: Scenario, tmp_path: Path) -> None:
    """The full is gone (lost, not forgotten by drtool): the restore stops before writing anything."""
    copy = tmp_path / "repo"
    shutil.copytree(scenario.dr.repo, copy)
    os.unlink(copy / "snapshots" / scenario.snaps[0]["id"])
    target = tmp_path / "never"
    env = {"DRTOOL_REPOSITORY": str(copy), "DRTOOL_CATALOG": str(tmp_path / "catalog.sqlite")}
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", str(target), env=env)
    full, inc1, inc2 = (s["id"][:8] for s in scenario.snaps)
    assert result.code == 1, result.err
    assert f"snapshot {inc2} of source {SOURCE} is an incremental physical backup whose chain needs " \
           f"snapshot {full} (parent of {inc1}), which is not in the repository" in result.err
    assert "Traceback" not in result.err and not target.exists()


def test_retention_keeps_the_chain_and_forget_by_id_refuses_to_break_it(scenario: Scenario) -> None:
    ids = [s["id"] for s in scenario.snaps]
    result = scenario.dr.run("forget", "--name", SOURCE, "--keep-last", "1", "--json")
    assert result.code == 0, result.err
    (series,) = json.loads(result.out)["series"]
    assert {k["id"] for k in series["keep"]} == set(ids) and series["removed"] == []
    reasons = {k["id"]: k["reasons"] for k in series["keep"]}
    assert any(f"in the chain of kept incremental {ids[2][:8]}" in r for r in reasons[ids[0]])
    refused = scenario.dr.run("forget", ids[1][:8])
    assert refused.code == 2
    assert f"snapshot {ids[1][:8]} is in the restore chain of incremental backup(s) {ids[2][:8]}" in refused.err
    left = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)
    assert [s["id"] for s in left] == ids


def test_an_old_physical_snapshot_restores_as_a_full_base_and_the_next_night_is_full(scenario: Scenario) -> None:
    """Written as drtool wrote physical snapshots before incremental nights (no LSNs, identity or chain
    in its meta): it restores as it always did, and never becomes an incremental's parent."""
    from drtool import api
    from drtool.backup.streams import binary_streams, run_dump
    from drtool.sources import mariabackup
    from drtool.sources.mariadb import MariaSource, client_options

    def old_finish(tap: Any, meta: dict[str, Any]) -> None:
        info = mariabackup.stream_files(bytes(tap.tail), (mariabackup.INFO_FILE,))[mariabackup.INFO_FILE]
        meta.update(mariabackup.parse_backup_info(info.decode()))
    src = MariaSource.from_config(OLD, scenario.server.source(method="physical"))
    old_meta = {"source": OLD, "source_type": "mariadb", "method": "physical", "pitr": True, "replica": False,
                "server_id": 1}
    with api.open_repository(str(scenario.dr.repo), PASSWORD.encode(), catalog=str(scenario.dr.catalog)) as session, \
            client_options(src) as opts, tempfile.TemporaryDirectory() as work, binary_streams(session):
        command = mariabackup.backup_command(src, opts, scenario.server.datadir, work)
        old = run_dump(session, command, dict(os.environ), OLD, "backup.mbstream", "mariadb-physical", old_meta,
                       [], old_finish).snapshot
    assert "to_lsn" not in old.meta and "incremental_parent" not in old.meta
    expected = checksums(scenario.server)
    night = scenario.dr.run("backup", "--source", OLD, "--json")
    assert night.code == 0, night.err
    (new,) = json.loads(night.out)["sources"][OLD]
    assert new["meta"]["backup_type"] == "full"
    assert "predates incremental backups" in new["meta"]["chain_reason"]
    target = Path(scenario.server.root) / "old"
    try:
        result = scenario.dr.run("restore", old.id[:12], "--source", OLD, "--target", str(target), "--start",
                                 "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["plan"]["chain"] is None and report["plan"]["base"]["snapshot"] == old.id
        assert restored_checksums(report["socket"], scenario.server.password) == expected
    finally:
        stop_restored_mariadb(target)


def test_chain_policy_full_every_and_the_full_flag(scenario: Scenario) -> None:
    """Runs last: night 4 reaches full_every = 3 (full), night 5 is incremental to it, --full forces one."""
    def night(*extra: str) -> dict[str, Any]:
        touch_pages(scenario.server, 3)
        result = scenario.dr.run("backup", "--source", SOURCE, *extra, "--json")
        assert result.code == 0, result.err
        (made,) = json.loads(result.out)["sources"][SOURCE]
        return made["meta"]
    fourth = night()
    assert fourth["backup_type"] == "full" and "(full_every = 3)" in fourth["chain_reason"]
    fifth = night()
    assert fifth["backup_type"] == "incremental" and fifth["chain_length"] == 2
    forced = night("--full")
    assert forced["backup_type"] == "full" and forced["chain_reason"] == "full: --full given"
    refused = scenario.dr.run("backup", "--name", "x", "--from-command", "true", "--full")
    assert refused.code == 2 and "--full is for configured sources" in refused.err


def test_a_damaged_chain_member_is_named_and_nothing_is_left(scenario: Scenario, tmp_path: Path) -> None:
    """A pack only the last incremental uses is damaged: the restore names that member and leaves no
    half-extracted copy behind."""
    from drtool import api
    from drtool.repository.objects import pack_name
    from drtool.snapshot.store import stream_ids
    copy = tmp_path / "repo"
    shutil.copytree(scenario.dr.repo, copy)
    with api.open_repository(str(copy), PASSWORD.encode(), catalog=str(tmp_path / "c1.sqlite")) as session:
        session.repo.load_index()
        by_id = {s.id: s for s in session.snapshots(SOURCE)}
        packs = [{session.repo.locate(b).pack_id for b in stream_ids(session.repo, by_id[s["id"]])}
                 for s in scenario.snaps]
    only_last = sorted(packs[2] - packs[0] - packs[1])
    assert only_last, "the last incremental has packs of its own"
    damaged = copy / pack_name(only_last[0])
    body = bytearray(damaged.read_bytes())
    middle = len(body) // 2
    body[middle:middle + 64] = bytes(64)
    damaged.write_bytes(bytes(body))
    target = tmp_path / "restored"
    env = {"DRTOOL_REPOSITORY": str(copy), "DRTOOL_CATALOG": str(tmp_path / "c2.sqlite")}
    result = scenario.dr.run("restore", scenario.snaps[2]["id"][:12], "--source", SOURCE, "--target", str(target),
                             env=env)
    assert result.code == 1, result.err
    assert f"snapshot {scenario.snaps[2]['id'][:8]} of the restore chain cannot be read" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert not target.exists() or not any(target.iterdir())


def test_a_copied_chain_restores_from_the_copy(scenario: Scenario, tmp_path: Path) -> None:
    """``drtool copy`` gives every snapshot a new id: the copy of night 3 still finds its chain."""
    second = {"DRTOOL_REPOSITORY": str(tmp_path / "second"), "DRTOOL_CATALOG": str(tmp_path / "second.sqlite")}
    copied = scenario.dr.run("copy", "--to", str(tmp_path / "second"), "--name", SOURCE)
    assert copied.code == 0, copied.err
    snaps = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json", env=second).out)
    by_source_id = {s["meta"]["copied_from"]["snapshot"]: s["id"] for s in snaps}
    chain = [by_source_id[s["id"]] for s in scenario.snaps]
    assert chain != [s["id"] for s in scenario.snaps]  # new ids in the copy
    target = Path(scenario.server.root) / "fromcopy"
    try:
        result = scenario.dr.run("restore", chain[2][:12], "--source", SOURCE, "--target", str(target), "--start",
                                 "--json", env=second)
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["plan"]["chain"] == chain
        conn = pymysql.connect(unix_socket=report["socket"], user="root", password=scenario.server.password)
        with conn.cursor() as cur:
            cur.execute("SELECT tag, count(*) FROM wiki.events GROUP BY tag ORDER BY tag")
            assert list(cur.fetchall()) == [("t0", 5), ("t1", 10), ("t1b", 7), ("t2", 20)]
        conn.close()
    finally:
        stop_restored_mariadb(target)
