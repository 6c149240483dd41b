"""PostgreSQL recovery targets beyond time, against a real throwaway server.

One server per module, WAL archived by ``drtool pg wal-push``: a base backup,
rows t1, a restore point made by ``drtool pg restore-point``, rows t2 in one
transaction whose id and end LSN are noted, rows t3.  Restoring to the
restore point gives t1 only; to t2's transaction id or LSN gives t1 + t2;
each restore is verified from the server's own log.  Then the restored copy
is promoted to a new timeline and archives into the same source (a
failover): ``--timeline 1`` still recovers the old history.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import PASSWORD, DrEnv, make_env
from dbservers import PgServer, archived_postgres, run_as_server_user, stop_postgres

SOURCE = "pg"


@dataclass
class Scenario:
    dr: DrEnv
    server: PgServer
    env: dict[str, str]
    t2_xid: int
    t2_lsn: str


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("pgtargets"))
    dr.init()
    with archived_postgres(dr, PASSWORD, SOURCE) as (server, env):
        assert dr.run("backup", "--source", SOURCE).code == 0
        server.sql("CREATE TABLE events (tag text, n int)")
        server.sql("INSERT INTO events SELECT 't1', g FROM generate_series(1, 10) g")
        point = dr.run("pg", "restore-point", "--source", SOURCE, "before t2 'quoted'", "--json")
        assert point.code == 0, point.err
        server.wait_archived(json.loads(point.out)["wal_file"])
        with server.connect() as conn:
            conn.autocommit = False
            conn.execute("INSERT INTO events SELECT 't2', g FROM generate_series(1, 20) g")
            xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
            conn.commit()
        lsn = server.sql("SELECT pg_current_wal_lsn()")[0][0]
        server.sql("INSERT INTO events SELECT 't3', g FROM generate_series(1, 30) g")
        server.switch_wal_and_wait()
        yield Scenario(dr, server, env, xid, str(lsn))


def _restore(scenario: Scenario, name: str, *target: str) -> tuple[dict[str, Any], list[tuple[Any, ...]], Path]:
    """Restore with --start as the server user; the report and the restored rows per tag."""
    path = Path(scenario.server.root) / name
    proc = run_as_server_user(["restore", "--source", SOURCE, *target, "--target", str(path), "--start",
                               "--json"], scenario.env)
    assert proc.returncode == 0, proc.stderr + scenario.server.log_tail()
    report = json.loads(proc.stdout)
    rows = scenario.server.sql("SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag",
                               port=report["port"], host=report["socket_dir"])
    return report, rows, path


def _drop(scenario: Scenario, path: Path) -> None:
    stop_postgres(scenario.server.bindir, str(path))
    shutil.rmtree(path, ignore_errors=True)


def test_restore_point_is_recorded_and_planned(scenario: Scenario) -> None:
    plan = scenario.dr.run("restore", "--source", SOURCE, "--target-name", "before t2 'quoted'",
                           "--target", "/nonexistent", "--dry-run", "--json")
    assert plan.code == 0, plan.err
    data = json.loads(plan.out)
    assert data["target"] == {"kind": "name", "value": "before t2 'quoted'"}
    assert data["target_time"] == "restore point \"before t2 'quoted'\""
    again = scenario.dr.run("pg", "restore-point", "--source", SOURCE, "before t2 'quoted'")
    assert again.code == 2 and "already recorded" in again.err


def test_restore_to_restore_point_gives_t1_only(scenario: Scenario) -> None:
    report, rows, path = _restore(scenario, "by-name", "--target-name", "before t2 'quoted'")
    try:
        assert rows == [("t1", 10)]
        assert "restore point \"before t2 'quoted'\"" in report["reached"]
        assert "recovery_target_name = 'before t2 ''quoted'''" in (path / "postgresql.auto.conf").read_text()
    finally:
        _drop(scenario, path)


@pytest.mark.slow
def test_restore_to_transaction_and_lsn_gives_t1_and_t2(scenario: Scenario) -> None:
    report, rows, path = _restore(scenario, "by-xid", "--target-xid", str(scenario.t2_xid))
    _drop(scenario, path)
    assert rows == [("t1", 10), ("t2", 20)]
    assert f"after commit of transaction {scenario.t2_xid}," in report["reached"]
    report, rows, path = _restore(scenario, "by-lsn", "--target-lsn", scenario.t2_lsn)
    _drop(scenario, path)
    assert rows == [("t1", 10), ("t2", 20)]
    assert "WAL location" in report["reached"]


@pytest.mark.parametrize("args, code, message", [
    (["--target-name", "never made"], 1, "restore point 'never made' is not recorded"),
    (["--target-xid", "987654"], 1, "no archived WAL file records a commit of transaction 987654"),
    (["--target-lsn", "7F/0"], 1, "is not in the archive"),
    (["--target-lsn", "nonsense"], 2, "is not an LSN"),
    (["--target-lsn", "0/1", "--target-xid", "5"], 2, "at most one of"),
    (["--target-xid", "5", "--latest"], 2, "take no --point-in-time or --latest"),
])
def test_unusable_targets_are_refused_before_anything_is_written(scenario: Scenario, tmp_path: Path,
                                                                 args: list[str], code: int, message: str) -> None:
    result = scenario.dr.run("restore", "--source", SOURCE, *args, "--target", str(tmp_path / "never"), "--start")
    assert result.code == code, result.err
    assert message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_timeline_after_a_failover(scenario: Scenario, tmp_path: Path) -> None:
    """A restored copy promoted to timeline 2 archives into the same source (a failover), in a
    copy of the repository: --latest follows timeline 2, --timeline 1 recovers the old history."""
    copy = make_env(tmp_path / "copy")
    shutil.copytree(scenario.dr.repo, copy.repo)
    copy.env["DRTOOL_CONFIG"] = scenario.env["DRTOOL_CONFIG"]
    env = {**scenario.env, "DRTOOL_REPOSITORY": str(copy.repo), "DRTOOL_CATALOG": str(copy.catalog)}
    failover = Scenario(copy, scenario.server, env, scenario.t2_xid, scenario.t2_lsn)
    report, rows, promoted = _restore(failover, "promoted", "--latest")
    try:
        assert rows == [("t1", 10), ("t2", 20), ("t3", 30)]
        _archive_on_new_timeline(failover, promoted, report)
    finally:
        _drop(failover, promoted)
    plans = {tl: json.loads(copy.run("restore", "--source", SOURCE, "--latest", *tl, "--target", "/nonexistent",
                                     "--dry-run", "--json").out) for tl in ((), ("--timeline", "1"))}
    assert plans[()]["segments"][-1].startswith("00000002")
    assert all(name.startswith("00000001") for name in plans[("--timeline", "1")]["segments"])
    report, rows, path = _restore(failover, "timeline-1", "--latest", "--timeline", "1")
    auto = (path / "postgresql.auto.conf").read_text()
    _drop(failover, path)
    assert rows == [("t1", 10), ("t2", 20), ("t3", 30)]
    assert "recovery_target_timeline = '1'" in auto
    report, rows, path = _restore(failover, "timeline-2", "--latest")
    _drop(failover, path)
    assert rows == [("t1", 10), ("t2", 20), ("t3", 30), ("t4", 40)]


def _archive_on_new_timeline(scenario: Scenario, datadir: Path, report: dict[str, Any]) -> None:
    """Turn archiving on in the promoted copy (into the scenario's repository), write t4, archive it."""
    import sys
    from dbservers import pg_ctl
    port, host = report["port"], report["socket_dir"]
    scenario.server.sql("ALTER SYSTEM SET archive_mode = on", port=port, host=host)
    scenario.server.sql(f"ALTER SYSTEM SET archive_command = '{sys.executable} -m drtool pg wal-push "
                        f"--source {SOURCE} %p'", port=port, host=host)
    restarted = pg_ctl(scenario.server.bindir, str(datadir), "restart", scenario.env, str(datadir / "restart.log"))
    assert restarted.returncode == 0, restarted.stderr
    scenario.server.sql("INSERT INTO events SELECT 't4', g FROM generate_series(1, 40) g", port=port, host=host)
    wal_file = scenario.server.sql("SELECT pg_walfile_name(pg_switch_wal())", port=port, host=host)[0][0]
    assert wal_file.startswith("00000002")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        last = scenario.server.sql("SELECT last_archived_wal FROM pg_stat_archiver", port=port, host=host)[0][0]
        if last and last >= wal_file:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{wal_file} was not archived from the promoted copy")
    # archiving was off when the copy was promoted: its history file is not archived, and planning says so
    plan = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", "/nonexistent", "--dry-run")
    assert plan.code == 1 and "history file 00000002.history is not" in plan.err, plan.err
    # pushed by hand (docs/databases.md), recovery can follow timeline 2
    pushed = run_as_server_user(["pg", "wal-push", "--source", SOURCE, str(datadir / "pg_wal" / "00000002.history")],
                                scenario.env)
    assert pushed.returncode == 0, pushed.stderr

