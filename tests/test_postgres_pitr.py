"""PostgreSQL point-in-time restore against a real throwaway server.

One server per module: WAL archived by ``drtool pg wal-push`` (archive_command),
a ``pg-base`` snapshot, rows inserted at t1, t2, t3 with WAL switches between.
Restoring to a time between t2 and t3 must give exactly the t1 + t2 rows; a
missing segment is a reported gap and a restore past it fails clearly.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PASSWORD, DrEnv, make_env
from dbservers import PgServer, archived_postgres, free_port, run_as_server_user, stop_postgres

SOURCE = "pg"


@dataclass
class Scenario:
    dr: DrEnv
    server: PgServer
    env: dict[str, str]
    config: Path
    between: datetime  # after t2's commit, before t3's
    t3_segment: str


def _insert(server: PgServer, tag: str, count: int) -> None:
    server.sql(f"INSERT INTO events (tag, n) SELECT '{tag}', g FROM generate_series(1, {count}) g")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("pgpitr"))
    dr.init()
    with archived_postgres(dr, PASSWORD, SOURCE) as (server, env):
        result = dr.run("backup", "--source", SOURCE, "--json")
        assert result.code == 0, result.err
        server.sql("CREATE TABLE events (tag text, n int, at timestamptz DEFAULT clock_timestamp())")
        _insert(server, "t1", 10)
        server.switch_wal_and_wait()
        time.sleep(1.1)
        _insert(server, "t2", 20)
        server.switch_wal_and_wait()
        time.sleep(1.1)
        between = datetime.now(timezone.utc)
        time.sleep(1.1)
        _insert(server, "t3", 30)
        t3_segment = server.switch_wal_and_wait()
        yield Scenario(dr, server, env, Path(env["DRTOOL_CONFIG"]), between, t3_segment)


def test_base_backup_snapshot_records_wal_coordinates(scenario: Scenario) -> None:
    result = scenario.dr.run("snapshots", "--name", SOURCE, "--json")
    snaps = json.loads(result.out)
    assert [s["kind"] for s in snaps] == ["pg-base"]
    meta = snaps[0]["meta"]
    assert meta["start_wal"] and meta["start_lsn"] and meta["end_lsn"] and meta["timeline"] == 1
    assert "drtool" in meta["label"]


def test_window_covers_t3_without_gaps(scenario: Scenario) -> None:
    result = scenario.dr.run("pg", "window", "--source", SOURCE, "--json")
    assert result.code == 0, result.err
    window = json.loads(result.out)
    assert window["gaps"] == []
    assert window["bases"] == 1 and window["segments"] >= 4
    assert datetime.fromisoformat(window["end"]) > scenario.between


def test_restore_between_t2_and_t3_gives_exactly_t1_and_t2(scenario: Scenario) -> None:
    target = Path(scenario.server.root) / "restored"
    port = free_port()
    plan = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                           "--target", str(target), "--dry-run", env={"TZ": "America/New_York"})
    assert plan.code == 0, plan.err
    assert "plan (dry run" in plan.out and "base: snapshot" in plan.out and not target.exists()
    # the resolved instant in UTC and in the host's zone (issue 16)
    assert re.search(r"recover to \S+Z \(UTC\) = \S+-0[45]:00 \(America/New_York\) \(inclusive\)", plan.out)
    proc = run_as_server_user(["-v", "restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                               "--target", str(target), "--start", "--port", str(port), "--json"],
                              scenario.env)
    try:
        assert proc.returncode == 0, proc.stderr + scenario.server.log_tail()
        # -v: each stage's start and duration (a terminal would show them live; docs/databases.md)
        assert re.search(r"extracting the base backup \w{8}: done in \d+\.\ds", proc.stderr), proc.stderr
        assert re.search(r"recovery: PostgreSQL replays up to \d+ WAL file\(s\) and promotes: done in", proc.stderr)
        report = json.loads(proc.stdout)
        assert report["started"] and "stopping before commit" in report["outcome"]["stopped"]
        assert report["reached"] == report["outcome"]["stopped"]  # verified from the server's own log
        # the restored server has its own socket directory, printed, never the original's
        assert report["port"] == port and report["socket_dir"] == str(target)
        rows = scenario.server.sql("SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag", port=port,
                                   host=report["socket_dir"])
        assert rows == [("t1", 10), ("t2", 20)]
        assert scenario.server.sql("SELECT pg_is_in_recovery()", port=port, host=str(target)) == [(False,)]
        auto = (target / "postgresql.auto.conf").read_text()
        script = Path(report["restore_command"]).read_text()
        assert "recovery_target_time" in auto and "recovery_target_inclusive = on" in auto
        assert PASSWORD not in auto and PASSWORD not in script
        assert "DRTOOL_PASSWORD_FILE" in script
        assert oct(target.stat().st_mode & 0o777) == "0o700"
    finally:
        stop_postgres(scenario.server.bindir, str(target))
        shutil.rmtree(target, ignore_errors=True)


def test_named_base_backup_plans_recovery_to_its_end_only(scenario: Scenario) -> None:
    (snap,) = json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)
    named = scenario.dr.run("restore", snap["id"][:10], "--source", SOURCE, "--target", "/nonexistent",
                            "--dry-run", "--json")
    latest = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", "/nonexistent",
                             "--dry-run", "--json")
    assert named.code == 0 and latest.code == 0, named.err + latest.err
    named_plan, latest_plan = json.loads(named.out), json.loads(latest.out)
    assert snap["id"].startswith(named_plan["base"]["snapshot"][:8])
    assert 0 < len(named_plan["segments"]) < len(latest_plan["segments"])


def test_latest_dry_run_lists_every_archived_segment(scenario: Scenario) -> None:
    result = scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", "/nonexistent",
                             "--dry-run", "--json")
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    assert plan["target_time"] == "latest" and plan["segments"][-1] == scenario.t3_segment


def test_point_after_last_archived_commit_is_refused(scenario: Scenario) -> None:
    result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", "now", "--target",
                             "/nonexistent", "--dry-run")
    assert result.code == 1
    assert "after the last archived transaction" in result.err and "--latest" in result.err


def test_missing_segment_is_a_gap_and_restore_past_it_fails(scenario: Scenario, tmp_path: Path) -> None:
    copy = make_env(tmp_path / "copy")
    shutil.copytree(scenario.dr.repo, copy.repo)
    copy.env["DRTOOL_CONFIG"] = str(scenario.config)
    copy.env["DRTOOL_REPOSITORY"] = str(copy.repo)
    session = copy.session()
    try:
        from drtool.databases import logarchive
        t2_segment = _segment_with(session, "t2", scenario)
        prefix = logarchive.source_prefix(session.repo, "wal", SOURCE)
        object_id = logarchive.segment_object_id(session.repo, "wal", SOURCE, t2_segment)
    finally:
        session.close()
    for suffix in ("", ".info"):
        os.unlink(copy.repo / prefix / f"{object_id}{suffix}")
    window = json.loads(copy.run("pg", "window", "--source", SOURCE, "--json").out)
    assert [g["first_missing"] for g in window["gaps"]] == [t2_segment]
    assert datetime.fromisoformat(window["end"]) < scenario.between
    result = copy.run("restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
                      "--target", str(tmp_path / "never"), "--start")
    assert result.code == 1
    assert f"WAL segment {t2_segment} of source {SOURCE} is missing" in result.err
    assert not (tmp_path / "never").exists()


def test_latest_restore_replays_every_archived_transaction(scenario: Scenario) -> None:
    target = Path(scenario.server.root) / "latest"
    proc = run_as_server_user(["restore", "--source", SOURCE, "--latest", "--target", str(target), "--start",
                               "--json"], scenario.env)
    try:
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["reached"].startswith("all archived WAL replayed")
        # every planned file came from this restore's prefetch (no wal-fetch process), and the spool is gone
        planned = len(report["plan"]["segments"])
        assert report["prefetch"] == {"planned": planned, "fetched": planned, "taken": planned, "stopped": None}
        assert planned >= 3 and not (target / "drtool-wal-prefetch").exists()
        rows = scenario.server.sql("SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag",
                                   port=report["port"], host=report["socket_dir"])
        assert rows == [("t1", 10), ("t2", 20), ("t3", 30)]
    finally:
        stop_postgres(scenario.server.bindir, str(target))
        shutil.rmtree(target, ignore_errors=True)


def test_latest_restore_short_of_the_archive_fails_and_stops_the_server(scenario: Scenario,
                                                                        tmp_path: Path) -> None:
    """A WAL file the plan counts on reads as "not archived" (its data object is gone, its .info
    kept): PostgreSQL ends recovery early and promotes; drtool must notice and fail, not report
    a successful --latest restore with the t3 rows missing."""
    copy = make_env(tmp_path / "copy")
    shutil.copytree(scenario.dr.repo, copy.repo)
    os.chmod(tmp_path, 0o777)
    env = {**scenario.env, "DRTOOL_REPOSITORY": str(copy.repo), "DRTOOL_CATALOG": str(copy.catalog)}
    session = copy.session()
    try:
        from drtool.databases import logarchive
        prefix = logarchive.source_prefix(session.repo, "wal", SOURCE)
        object_id = logarchive.segment_object_id(session.repo, "wal", SOURCE, scenario.t3_segment)
    finally:
        session.close()
    os.unlink(copy.repo / prefix / object_id)  # the .info stays: the plan still lists the segment
    target = tmp_path / "short"
    proc = run_as_server_user(["restore", "--source", SOURCE, "--latest", "--target", str(target),
                               "--start"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "short of --latest" in proc.stderr and "server stopped" in proc.stderr
    assert str(target / "drtool-recovery.log") in proc.stderr and (target / "drtool-recovery.log").exists()
    assert not (target / "postmaster.pid").exists()  # nothing left running that looks like a restore
    assert proc.stderr.count("\n") == 1  # one line, no traceback


def _segment_with(session: object, tag: str, scenario: Scenario) -> str:
    """The archived segment holding the commit of the ``tag`` rows: the first one whose
    newest commit is at or after the rows' insert time."""
    at = scenario.server.sql(f"SELECT max(at) FROM events WHERE tag = '{tag}'")[0][0]
    from drtool.databases.logarchive import sync_log_segments
    for seg in sync_log_segments(session).segments(SOURCE, "wal"):  # type: ignore[arg-type]
        if seg.last_time and seg.last_time >= at:
            return seg.name
    raise AssertionError(f"no segment holds the {tag} commit")


def test_wal_push_is_idempotent_and_refuses_different_content(repo_env: DrEnv, tmp_path: Path) -> None:
    segment = tmp_path / "000000010000000000000007"
    segment.write_bytes(os.urandom(1024) * 16384)
    crashed = repo_env.spawn("pg", "wal-push", "--source", "db1", str(segment),
                             env={"DRTOOL_CRASH_AT": "wal-push-after-put"})
    assert crashed.returncode == -9
    assert len(_wal_objects(repo_env)) == 1  # data stored, no .info yet
    again = repo_env.spawn("pg", "wal-push", "--source", "db1", str(segment))
    assert again.returncode == 0, again.stderr
    objects = _wal_objects(repo_env)
    assert len(objects) == 2 and sum(n.endswith(".info") for n in objects) == 1
    assert repo_env.spawn("pg", "wal-push", "--source", "db1", str(segment)).returncode == 0
    assert _wal_objects(repo_env) == objects
    segment.write_bytes(os.urandom(16 * 1024 * 1024))
    conflict = repo_env.spawn("pg", "wal-push", "--source", "db1", str(segment))
    assert conflict.returncode == 1 and "different content" in conflict.stderr
    fetched = tmp_path / "fetched"
    ok = repo_env.spawn("pg", "wal-fetch", "--source", "db1", segment.name, str(fetched))
    assert ok.returncode == 0 and fetched.stat().st_size == 16 * 1024 * 1024
    missing = repo_env.spawn("pg", "wal-fetch", "--source", "db1", "000000010000000000000008", str(fetched))
    assert missing.returncode == 1 and "not in the archive" in missing.stderr
    bad = repo_env.spawn("pg", "wal-fetch", "--source", "db1", segment.name, str(fetched),
                         env={"DRTOOL_PASSWORD": "wrong"})
    assert bad.returncode == 126  # PostgreSQL must abort recovery, not treat it as end of WAL
    # Names are keyed ids only (a keyed series id / a keyed segment id): neither the source nor the segment name shows in the repository
    # ("db1" is itself hex, so a substring test of the names would fail one run in ~30).
    names = _wal_objects(repo_env)
    assert all(re.fullmatch(r"[0-9a-f]{32}/[0-9a-f]{64}(\.info)?", name) for name in names), names
    assert segment.name not in "".join(names)


def _wal_objects(dr: DrEnv) -> list[str]:
    root = dr.repo / "wal"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_exclusive_restore_without_start_writes_recovery_settings(scenario: Scenario, tmp_path: Path) -> None:
    target = tmp_path / "excl"
    args = ["restore", "--source", SOURCE, "--point-in-time", scenario.between.isoformat(),
            "--target", str(target), "--exclusive"]
    if os.geteuid() == 0:  # as root: refused before anything is unpacked, with the command that works
        as_root = scenario.dr.run(*args, env={"DRTOOL_PASSWORD_FILE": scenario.env["DRTOOL_PASSWORD_FILE"]})
        assert as_root.code == 2 and not target.exists()
        assert "runuser -u postgres -- drtool restore --source pg" in as_root.err
    os.chmod(tmp_path, 0o777)
    result = run_as_server_user(args, scenario.env)
    assert result.returncode == 0, result.stderr
    auto = (target / "postgresql.auto.conf").read_text()
    assert "recovery_target_inclusive = off" in auto and "archive_mode = off" in auto
    assert f"unix_socket_directories = '{target}'" in auto
    assert (target / "recovery.signal").exists() and (target / "PG_VERSION").exists()
    assert f"pg_ctl -D {target}" in result.stdout and f"socket directory {target}" in result.stdout
    again = run_as_server_user(["restore", "--source", SOURCE, "--latest", "--target", str(target)], scenario.env)
    assert again.returncode == 1 and "not empty" in again.stderr
    no_file = run_as_server_user(["restore", "--source", SOURCE, "--latest", "--target", str(tmp_path / "nf")],
                                 {k: v for k, v in scenario.env.items() if k != "DRTOOL_PASSWORD_FILE"}
                                 | {"DRTOOL_PASSWORD": PASSWORD})
    assert no_file.returncode == 2 and "DRTOOL_PASSWORD_FILE" in no_file.stderr


# ----- pure planning helpers ------------------------------------------------------------------
def _seg(name: str, seq: int, tli: int = 1, last: int | None = None) -> "object":
    from drtool.snapshot.logwindow import Segment
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    from datetime import timedelta
    return Segment("s", "wal", name, name, 16, when, timeline=tli, seq=seq,
                   last_time=when + timedelta(seconds=last) if last is not None else None)


def test_gaps_and_runs_follow_the_highest_timeline() -> None:
    from drtool.snapshot.logwindow import contiguous_run, find_gaps
    segs = [_seg("a", 2), _seg("b", 3), _seg("c", 5), _seg("d", 6), _seg("e", 4, tli=2), _seg("f", 8)]
    assert [s.name for s in contiguous_run(segs, 2)] == ["a", "b", "e", "c", "d"]  # type: ignore[attr-defined]
    assert [s.name for s in contiguous_run(segs, 2, min_timeline=2)] == []  # type: ignore[attr-defined]
    gaps = find_gaps([_seg("a", 2), _seg("b", 3), _seg("f", 8)], start=1)  # type: ignore[list-item]
    assert [(g.first, g.last, g.before, g.after) for g in gaps] == [(1, 1, "(backup start)", "a"),
                                                                    (4, 7, "b", "f")]


def test_wal_names_and_binlog_stop_times() -> None:
    from drtool.databases.mariadb import binlog_stop_time
    from drtool.sources import postgres
    assert postgres.parse_segment("0000000200000001000000FF") == (2, 0x1FF)
    assert postgres.segment_name(2, 0x1FF) == "0000000200000001000000FF"
    assert postgres.segment_name(1, 5, 64 * 2**20) == "000000010000000000000005"
    assert postgres.wal_file_kind("00000002.history") == "history"
    assert postgres.wal_file_kind("000000010000000000000002.00000028.backup") == "backup"
    assert postgres.wal_file_kind("RECOVERYXLOG") is None
    t = datetime(2026, 1, 1, 12, 0, 5, 500000, tzinfo=timezone.utc)
    assert binlog_stop_time(t, inclusive=True) == t.replace(second=6, microsecond=0)
    assert binlog_stop_time(t.replace(microsecond=0), inclusive=False) == t.replace(microsecond=0)
    assert binlog_stop_time(t.replace(microsecond=0), inclusive=True) == t.replace(second=6, microsecond=0)
