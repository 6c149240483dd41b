"""MariaDB physical backups (mariabackup) against a real throwaway server.

A ``method = "physical"`` backup streamed into the repository, then rows at
t1, t2, t3 with ``FLUSH BINARY LOGS`` between and binlogs shipped by
``binlog-push``.  Restoring to a time between t2 and t3 extracts, prepares,
replays binlogs from the backup's coordinates and starts the server with
the backed-up accounts: it must hold exactly the t0 + t1 + t2 rows.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pymysql
import pytest

from conftest import DrEnv, make_env
from dbservers import (MariaServer, bindir_with_mariabackup, insert_events, mariadb_server, stop_restored_mariadb,
                       wiki_history_t0_to_t3, write_config)
from pagecache import unwritten_pages

SOURCE = "wikiphys"


@dataclass
class Scenario:
    dr: DrEnv
    server: MariaServer
    between: datetime


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("myphys"))
    dr.init()
    with mariadb_server() as server:
        config = write_config(dr.tmp / "drtool.toml", str(dr.repo), {SOURCE: server.source(method="physical")})
        dr.env["DRTOOL_CONFIG"] = str(config)
        def backup() -> None:
            result = dr.run("backup", "--source", SOURCE)
            assert result.code == 0, result.err
        between = wiki_history_t0_to_t3(server, backup)
        pushed = dr.run("mariadb", "binlog-push", "--source", SOURCE)
        assert pushed.code == 0, pushed.err
        yield Scenario(dr, server, between)


def test_physical_snapshot_records_version_and_binlog_coordinates(scenario: Scenario) -> None:
    (snap,) = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)
    assert snap["kind"] == "mariadb-physical"
    meta = snap["meta"]
    assert meta["binlog_file"].startswith("binlog.") and meta["binlog_pos"] > 4
    assert meta["gtid_pos"].startswith("0-1-") and meta["replica"] is False
    version = scenario.server.sql("SELECT VERSION()")[0][0]
    assert meta["server_version"] == version
    assert meta["dump_bytes"] > 1_000_000  # the whole server's files, streamed


def test_point_in_time_restore_from_a_physical_base(scenario: Scenario) -> None:
    target = Path(scenario.server.root) / "phys"
    try:
        result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                                 "--target", str(target), "--start", "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["plan"]["base"]["kind"] == "mariadb-physical" and report["plan"]["segments"]
        assert report["reached"].startswith("binlog events before")
        # the restored server has the backed-up accounts: production's root password works, none does not
        conn = pymysql.connect(unix_socket=report["socket"], user="root", password=scenario.server.password)
        with conn.cursor() as cur:
            cur.execute("SELECT tag, count(*) FROM wiki.events GROUP BY tag ORDER BY tag")
            assert list(cur.fetchall()) == [("t0", 5), ("t1", 10), ("t2", 20)]
        conn.close()
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(unix_socket=report["socket"], user="root", password="")
    finally:
        stop_restored_mariadb(target)


def test_prepare_tool_of_another_series_is_refused_before_anything_is_written(scenario: Scenario,
                                                                                tmp_path: Path) -> None:
    """A mariabackup of another server series cannot prepare this backup: one clear line, no target."""
    bindir = bindir_with_mariabackup(tmp_path / "bin", "#!/bin/sh\necho 'mariabackup based on MariaDB server "
                                                       "11.4.2-MariaDB debian-linux-gnu' >&2\n")
    config = write_config(tmp_path / "drtool.toml", str(scenario.dr.repo),
                          {SOURCE: scenario.server.source(method="physical", bindir=str(bindir))})
    target = tmp_path / "never"
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", str(target),
                             env={"DRTOOL_CONFIG": str(config)})
    version = scenario.server.sql("SELECT VERSION()")[0][0]
    assert result.code == 1, result.err
    assert f"taken from MariaDB {version}" in result.err and "is 11.4.2-MariaDB" in result.err
    assert f"same series ({'.'.join(version.split('.')[:2])})" in result.err
    assert not target.exists()


def test_physical_restore_refuses_target_db(scenario: Scenario) -> None:
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target-db", "wiki_x")
    assert result.code == 2 and "restores a whole server" in result.err


def test_tablespace_map_is_refused_for_a_mariadb_source(scenario: Scenario, tmp_path: Path) -> None:
    """An option that cannot apply is refused, not silently ignored (PostgreSQL tablespaces only)."""
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", str(tmp_path / "t"),
                             "--tablespace-map", f"/srv/fast={tmp_path / 'fast'}")
    assert result.code == 2 and "--tablespace-map is for PostgreSQL" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_physical_backup_of_a_replica_records_the_primary_coordinates(tmp_path: Path) -> None:
    """Backed up on a replica (--slave-info): the primary's GTID position is recorded beside the
    replica's own binlog coordinates, and the copy restores."""
    from dbservers import replicate
    dr = make_env(tmp_path / "dr")
    dr.init()
    with mariadb_server() as primary, mariadb_server(server_id=2, extra=["--log-slave-updates"]) as replica:
        replicate(replica, primary)
        primary.sql("CREATE DATABASE wiki")
        primary.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        insert_events(primary, "p1", 7)
        from dbservers import wait_caught_up
        wait_caught_up(replica, primary)
        dr.env["DRTOOL_CONFIG"] = str(write_config(dr.tmp / "drtool.toml", str(dr.repo),
                                                   {SOURCE: replica.source(method="physical")}))
        result = dr.run("backup", "--source", SOURCE)
        assert result.code == 0, result.err
        (snap,) = json.loads(dr.run("snapshots", "--name", SOURCE, "--json").out)
        meta = snap["meta"]
        assert meta["replica"] is True
        # replicating by GTID, the GTID is the primary's coordinate (file/position only by position)
        assert meta["primary_gtid_pos"] == primary.sql("SELECT @@gtid_binlog_pos")[0][0]
        assert "primary_binlog_file" not in meta
        assert meta["binlog_file"] == replica.sql("SHOW MASTER STATUS")[0][0]  # the replica's own
        target = Path(replica.root) / "restored"
        try:
            restored = dr.run("restore", snap["id"][:8], "--source", SOURCE, "--target", str(target), "--start",
                              "--json")
            assert restored.code == 0, restored.err
            conn = pymysql.connect(unix_socket=json.loads(restored.out)["socket"], user="root",
                                   password=replica.password)
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM wiki.events WHERE tag = 'p1'")
                assert cur.fetchone() == (7,)
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SHOW ALL SLAVES STATUS")  # a copy of a replica does not replicate on its own
                states = [(row["Slave_IO_Running"], row["Slave_SQL_Running"]) for row in cur.fetchall()]
                assert all(state == ("No", "No") for state in states), states
            conn.close()
        finally:
            stop_restored_mariadb(target)


@pytest.mark.slow
def test_rehearsal_restores_the_physical_backup_to_the_point(scenario: Scenario, tmp_path: Path) -> None:
    """A mariadb sandbox for a physical snapshot: extract, prepare, replay, validate, remove."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    runbook = tmp_path / "physical.toml"
    runbook.write_text(f'''source = "{SOURCE}"
point_in_time = "{scenario.between.isoformat()}"
sandbox = {{ type = "mariadb", database = "wiki", path = "{root}" }}
[[validations]]
type = "sql"
query = "SELECT COUNT(*) FROM events"
expect = 35
[[validations]]
type = "sql"
query = "SELECT COUNT(*) FROM events WHERE tag = 't3'"
expect = 0
''')
    result = scenario.dr.run("rehearse", str(runbook), "--json")
    assert result.code == 0, result.out + result.err
    (doc,) = json.loads(result.out)
    assert doc["status"] == "passed"
    assert doc["steps"][0]["recovered_to"] == scenario.between.isoformat()
    # restored once, by the physical restore: not first as a plain copy of the mariabackup stream
    assert "is restored by the mariadb restore below (no plain copy of its files first" in result.err
    assert list(root.iterdir()) == []
    # where the step's RTO went, in its record and its log: extraction (all the stream), prepare, sync, replay
    (snap,) = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)
    stages = doc["steps"][0]["stages"]
    assert [s["stage"] for s in stages] == [f"extracting the full {snap['short_id']}",
                                            f"preparing the full {snap['short_id']} (mariabackup --prepare)",
                                            "syncing the restored files to disk",
                                            stages[3]["stage"]] and stages[3]["stage"].startswith("replaying ")
    assert stages[0]["bytes"] == snap["meta"]["dump_bytes"] and all(s["ok"] and s["seconds"] >= 0 for s in stages)
    assert "events up to " in stages[3]["detail"]
    assert f"done: extracting the full {snap['short_id']} (" in result.err


def run_on_terminal(dr: DrEnv, *args: str, timeout: float = 300) -> tuple[int, str, str]:
    """``drtool ARGS`` as an on-call engineer runs it: stderr a terminal (a pty), stdout a pipe."""
    import pty
    import subprocess
    import sys
    import time
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "drtool", *args], env={**dr.env, "COLUMNS": "160"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=dr.tmp)
    os.close(slave)
    seen, deadline = bytearray(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every holder of the terminal's other end has closed it
            break
        if not data:
            break
        seen += data
    os.close(master)
    out = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    return proc.returncode, out.decode(), seen.decode(errors="replace")


def test_a_restore_on_a_terminal_tells_each_stage_as_it_ends(scenario: Scenario) -> None:
    """At 3 a.m. a long physical restore shows what it is doing, then leaves one line per stage
    (what it moved, how long it took); the result still goes to stdout."""
    target = Path(scenario.server.root) / "on-terminal"
    try:
        code, out, err = run_on_terminal(scenario.dr, "restore", "--source", SOURCE, "--point-in-time",
                                         scenario.between.isoformat(), "--target", str(target))
        assert code == 0, err
        (snap,) = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err).replace("\r", "\n")  # the terminal's escapes
        lines = [line.strip() for line in plain.splitlines() if line.strip().startswith("done:")]
        assert len(lines) == 4, plain[-2000:]
        mib = snap["meta"]["dump_bytes"] / 2**20
        assert lines[0].startswith(f"done: extracting the full {snap['short_id']} (") \
            and lines[0].endswith(f", {mib:,.1f} MiB)"), lines
        assert lines[1].startswith(f"done: preparing the full {snap['short_id']} (mariabackup --prepare) ("), lines
        assert lines[2].startswith("done: syncing the restored files to disk (") \
            and "files and directories synced)" in lines[2], lines
        assert lines[3].startswith("done: replaying ") and "binlog file(s)" in lines[3] \
            and "events up to " in lines[3], lines
        assert "Traceback" not in err
        assert "prepared data directory" in out  # the report itself is unchanged, on stdout
    finally:
        stop_restored_mariadb(target)


def test_a_full_disk_while_extracting_is_one_line_and_leaves_no_target(scenario: Scenario, tiny_fs: Path) -> None:
    """The stream is extracted in process (not by mbstream -x): a target file system that fills up
    stops the restore with one line naming the file, and nothing that looks restored is left."""
    target = tiny_fs / "restored"
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", str(target))
    assert result.code == 1, result.err
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"drtool: error: cannot write {target}/data/") and \
        "No space left on device; nothing was restored" in line, line
    assert not target.exists() and os.listdir(tiny_fs) == []


@pytest.mark.parametrize("under", ["a-file", "/proc"])
def test_a_target_that_cannot_be_made_is_one_line_before_anything_is_read(scenario: Scenario, tmp_path: Path,
                                                                        under: str) -> None:
    """A --target under a file, or on a file system that refuses directories: the restore says
    which directory it could not create, exit 1, no internal error (it was one before)."""
    if under == "a-file":
        (tmp_path / "a-file").write_text("not a directory\n")
        parent = tmp_path / "a-file"
    else:
        parent = Path(under)
    target = parent / "restored"
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", str(target))
    assert result.code == 1, result.err
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"drtool: error: cannot create {target}/data: ") and "internal error" not in line, line
    assert "choose a writable --target" in line
    assert not target.exists()


def test_a_full_restored_alone_is_written_around_the_page_cache_and_synced(scenario: Scenario,
                                                                         tmp_path: Path) -> None:
    """Its files are written with O_DIRECT (the server reads them so; a terabyte would only churn the
    cache), and they are whole: the server starts on them (the PITR test) and they match the stream.
    When the restore returns nothing of them is left in the page cache to write (the buffered heads
    and tails, the prepare's writes): InnoDB would not sync them."""
    (snap,) = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)
    target = tmp_path / "alone"
    result = scenario.dr.run("restore", snap["id"][:12], "--source", SOURCE, "--target", str(target))
    assert result.code == 0, result.err
    files = [str(p) for p in (target / "data").rglob("*") if p.is_file()]
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *files],
                         capture_output=True, text=True, check=True).stdout.split()
    resident, size = sum(map(int, out[0::2])), sum(map(int, out[1::2]))
    assert size > 10 * 1024 * 1024 and resident < size // 4, (resident, size)
    assert unwritten_pages([Path(f) for f in files]) == {}
