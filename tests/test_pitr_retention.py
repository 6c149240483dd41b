"""PITR-aware retention: forget keeps the base a keep_within window starts from and
expires the WAL / binlogs no kept base can replay.

Pure tests of the pin and expiry selection (synthetic snapshots, injected now);
a server-free repository test (synthetic WAL files and base-backup manifests)
for dry run, Object Lock, the opt-out and a crash between the two deletes;
then real throwaway PostgreSQL and MariaDB servers, where a point-in-time
restore into the kept window must still work after the forget.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import PASSWORD, DrEnv, make_env
from dbservers import (MariaServer, PgServer, archived_postgres, free_port, insert_events, mariadb_server,
                       run_as_server_user, stop_postgres, stop_restored_mariadb, write_config)
from drtool.backends.local import LocalBackend
from drtool.catalog.logs import LogCatalog
from drtool.databases.mariadb import MARIADB
from drtool.databases.postgresql import POSTGRESQL
from drtool.snapshot.logwindow import BINLOG, WAL, RecoveryBase, Segment
from drtool.errors import BackendError
from drtool.maintain import forget as forget_ops
from drtool.databases import logarchive
from drtool.databases import retention as pitr_retention
from drtool.backup.run import backup_stream
from drtool.core.session import OpenOptions, Session
from drtool.snapshot.model import Snapshot
from drtool.snapshot.retention import RetentionPolicy
from drtool.sources import postgres

UTC = dt.timezone.utc
T = dt.datetime(2024, 3, 1, 0, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)
MIB = 1 << 20


# ----- pure: pins ----------------------------------------------------------------------------------------
def _lsn(seq: int, seg_size: int = 16 * MIB) -> str:
    value = seq * seg_size + 0x28
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def pg_base(snap_id: str, when: dt.datetime, seq: int, name: str = "pg", seg_size: int = 16 * MIB,
            took: dt.timedelta = dt.timedelta(minutes=10)) -> Snapshot:
    meta = {"start_lsn": _lsn(seq, seg_size), "end_lsn": _lsn(seq + 1, seg_size), "timeline": 1,
            "end_time": (when + took).isoformat()}
    return Snapshot(name, "h", when, "tree", kind="pg-base", meta=meta, id=snap_id)


def maria_dump(snap_id: str, when: dt.datetime, binlog: int | None, name: str = "wiki") -> Snapshot:
    meta = {"binlog_file": f"binlog.{binlog:06d}", "binlog_pos": 345} if binlog is not None else {}
    return Snapshot(name, "h", when, "tree", kind="mariadb-dump", meta=meta, id=snap_id)


def pins(snaps: list[Snapshot], policy: RetentionPolicy, now: dt.datetime) -> dict[str, str]:
    return pitr_retention.base_pins(snaps, policy, now, UTC)


def test_pin_is_the_newest_base_consistent_at_the_window_start() -> None:
    snaps = [pg_base(f"b{i}", T + i * DAY, seq=10 * i) for i in range(7)]
    now = T + 6 * DAY + dt.timedelta(hours=5)
    # Window from T+3.5d: b3 (T+3d) is outside it and is the base for its first moment.
    assert pins(snaps, RetentionPolicy(keep_within=dt.timedelta(days=2, hours=12)), now) == {
        "b3": "pitr base for window starting 2024-03-04T12:00:00Z"}
    # Window from exactly T+3d: b3 started then but was consistent only 10 minutes later,
    # so recovering to T+3d needs b2 — even though keep_within keeps b3.
    assert pins(snaps, RetentionPolicy(keep_within=3 * DAY), now) == {
        "b2": "pitr base for window starting 2024-03-04T00:00:00Z"}
    # Anchored like keep_within: at the newest snapshot, capped at now.
    early = T + 5 * DAY + dt.timedelta(hours=1)
    assert pins(snaps, RetentionPolicy(keep_within=2 * DAY), early) == {
        "b3": "pitr base for window starting 2024-03-04T01:00:00Z"}


def test_no_pin_when_the_base_is_kept_anyway_or_no_window() -> None:
    snaps = [pg_base(f"b{i}", T + i * DAY, seq=10 * i) for i in range(7)]
    now = T + 7 * DAY
    within = dt.timedelta(days=2, hours=12)
    assert pins(snaps, RetentionPolicy(keep_within=within, keep_daily=7), now) == {}  # daily keeps b3
    assert pins(snaps, RetentionPolicy(keep_daily=3), now) == {}  # buckets keep bases themselves
    assert pins(snaps, RetentionPolicy(keep_within=30 * DAY), now) == {}  # before the first base
    files = [Snapshot("files", "h", T + i * DAY, "tree", id=f"f{i}") for i in range(7)]
    assert pins(files, RetentionPolicy(keep_within=within), now) == {}


def test_mariadb_pins_need_binlog_coordinates() -> None:
    dumps = [maria_dump(f"d{i}", T + i * DAY, binlog=i + 1) for i in range(4)]
    now = T + 3 * DAY
    assert pins(dumps, RetentionPolicy(keep_within=dt.timedelta(hours=36)), now) == {
        "d1": "pitr base for window starting 2024-03-02T12:00:00Z"}
    # A dump is consistent when it starts: a window starting exactly there needs no older one.
    assert pins(dumps, RetentionPolicy(keep_within=2 * DAY), now) == {}
    no_pitr = [maria_dump(f"d{i}", T + i * DAY, binlog=None) for i in range(4)]
    assert pins(no_pitr, RetentionPolicy(keep_within=dt.timedelta(hours=36)), now) == {}


def test_pitr_pins_cover_each_series_with_its_own_policy() -> None:
    pg = [pg_base(f"p{i}", T + i * DAY, seq=10 * i) for i in range(4)]
    wiki = [maria_dump(f"w{i}", T + i * DAY, binlog=i + 1) for i in range(4)]
    policies = {"pg": RetentionPolicy(keep_within=dt.timedelta(hours=36)),
                "wiki": None}  # no policy: forget leaves the series alone
    fn = pitr_retention.pitr_pins({"pg": pg, "wiki": wiki}, policies, T + 3 * DAY)
    assert [fn(s) for s in pg] == [None, "pitr base for window starting 2024-03-02T12:00:00Z", None, None]
    assert [fn(s) for s in wiki] == [None] * 4


# ----- pure: which log files expire -----------------------------------------------------------------
def _wal(name: str, size: int = 16 * MIB) -> Segment:
    kind = postgres.wal_file_kind(name)
    parsed = postgres.parse_segment(name, size) if kind == "segment" else None
    return Segment("pg", WAL, name, f"id-{name}", size, T, timeline=parsed[0] if parsed else None,
                   seq=parsed[1] if parsed else None, extra={"file": kind})


ENGINE_OF = {WAL: POSTGRESQL, BINLOG: MARIADB}


def _base(snap: Snapshot, kind: str) -> RecoveryBase:
    return pitr_retention.usable_bases([snap], ENGINE_OF[kind], [])[0]


def test_expiry_keeps_everything_from_the_oldest_kept_base() -> None:
    names = [postgres.segment_name(1, n) for n in range(1, 9)]
    segments = [_wal(n) for n in names] + [_wal("00000002.history"),
                                           _wal(f"{names[1]}.00000028.backup", 300),
                                           _wal(f"{names[4]}.00000028.backup", 300)]
    bases = [_base(pg_base("b5", T, seq=5), WAL), _base(pg_base("b7", T + DAY, seq=7), WAL)]
    plan = pitr_retention.plan_expiry("pg", POSTGRESQL, segments, bases)
    assert plan.keep_from == names[4] and plan.base == "b5"
    assert [s.name for s in plan.expire] == names[:2] + [f"{names[1]}.00000028.backup"] + names[2:4]
    assert plan.expire[0].reason == f"before {names[4]}, where the oldest kept base b5 starts"
    nothing = pitr_retention.plan_expiry("pg", POSTGRESQL, segments, [])
    assert nothing.expire == [] and nothing.note == "no base kept; log files left alone"
    # The newest archived file is never expired, even if a (broken) base claims to start later.
    late = pitr_retention.plan_expiry("pg", POSTGRESQL, segments[:3], [_base(pg_base("b9", T, seq=9), WAL)])
    assert [s.name for s in late.expire] == names[:2]


def test_binlog_expiry_compares_only_the_same_basename() -> None:
    def binlog(name: str) -> Segment:
        return Segment("wiki", BINLOG, name, f"id-{name}", 100, T, seq=int(name.rsplit(".", 1)[1]))
    segments = [binlog(f"binlog.{n:06d}") for n in range(1, 6)] + [binlog("mysql-bin.000001")]
    plan = pitr_retention.plan_expiry("wiki", MARIADB, segments, [_base(maria_dump("d", T, 3), BINLOG)])
    assert plan.keep_from == "binlog.000003"
    assert [s.name for s in plan.expire] == ["binlog.000001", "binlog.000002"]


# ----- a repository with synthetic WAL and base backups (no server) ----------------------------------------
def _push_wal(dr: DrEnv, tmp: Path, names: list[str]) -> None:
    tmp.mkdir(exist_ok=True)
    with dr.session() as session:
        for name in names:
            path = tmp / name
            path.write_bytes(os.urandom(MIB) if postgres.wal_file_kind(name) == "segment" else b"x\n")
            logarchive.wal_push(session.repo, "pg", str(path))


def _fake_base(dr: DrEnv, when: dt.datetime, seq: int) -> str:
    snap = pg_base("", when, seq, seg_size=MIB)
    with dr.session() as session:
        return backup_stream(session, io.BytesIO(os.urandom(1000)), "pg", "base.tar", None, "pg-base",
                             dict(snap.meta, source="pg"), clock=lambda: when).snapshot.id


def _wal_names(dr: DrEnv) -> dict[str, set[str]]:
    """WAL file name → which objects exist ("data", "info") in the repository."""
    with dr.session() as session:
        rows = {s.object_id: s.name for s in logarchive.sync_log_segments(session).segments("pg")}
    found: dict[str, set[str]] = {}
    for path in (dr.repo / "wal").rglob("*"):
        if path.is_file():
            object_id, _, info = path.name.partition(".")
            found.setdefault(rows.get(object_id, object_id), set()).add("info" if info else "data")
    return found


@pytest.fixture
def synthetic(repo_env: DrEnv, tmp_path: Path) -> tuple[DrEnv, list[str], list[str]]:
    """Bases at WAL 2, 5, 8 (1 MiB segments) on T, T+1d, T+2d; WAL 1..10 archived."""
    names = [postgres.segment_name(1, n, MIB) for n in range(1, 11)]
    _push_wal(repo_env, tmp_path / "wal", names + ["00000002.history", f"{names[1]}.00000028.backup"])
    ids = [_fake_base(repo_env, T + i * DAY, seq) for i, seq in enumerate((2, 5, 8))]
    return repo_env, ids, names


def test_dry_run_lists_expiry_and_opt_out_keeps_logs(synthetic: tuple[DrEnv, list[str], list[str]]) -> None:
    dr, ids, names = synthetic
    before = _wal_names(dr)
    dry = dr.run("forget", "--keep-within", "12h", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    report = json.loads(dry.out)
    keep = {k["id"]: k["reasons"] for k in report["series"][0]["keep"]}
    assert keep == {ids[2]: ["within 12h"], ids[1]: ["pinned: pitr base for window starting 2024-03-02T12:00:00Z"]}
    assert [r["id"] for r in report["series"][0]["remove"]] == [ids[0]]
    [logs] = report["log_segments"]
    assert logs["keep_from"] == names[4] and logs["base"] == ids[1] and logs["expired"] == []
    assert [e["name"] for e in logs["expire"]] == [names[0], names[1], f"{names[1]}.00000028.backup",
                                                     names[2], names[3]]
    assert all(e["reason"].startswith(f"before {names[4]}, where the oldest kept base") for e in logs["expire"])
    assert report["expired_segments"] == 0 and _wal_names(dr) == before
    with dr.session() as session:
        kept = forget_ops.forget(session, lambda _s: RetentionPolicy(keep_within=dt.timedelta(hours=12)),
                                 keep_log_segments=True)
    assert kept.removed == [ids[0]] and kept.logs == [] and _wal_names(dr) == before


class LockedWal(LocalBackend):
    """Object Lock on chosen objects: deleting them fails, as on S3."""

    def __init__(self, root: Path, locked: set[str]) -> None:
        super().__init__(root)
        self.locked = locked

    def is_locked(self, name: str) -> bool:
        return name in self.locked

    def retention_until(self, name: str) -> dt.datetime | None:
        """The rest of the ObjectLock capability (drtool.backends.capabilities): a day ahead."""
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1) if name in self.locked else None

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        self.locked.add(name)

    def delete(self, name: str) -> None:
        if name in self.locked:
            raise BackendError(f"object {name} is locked")
        super().delete(name)


def test_forget_expires_logs_and_skips_object_lock(synthetic: tuple[DrEnv, list[str], list[str]]) -> None:
    dr, ids, names = synthetic
    options = OpenOptions(str(dr.repo), PASSWORD.encode(), str(dr.catalog))
    with dr.session() as session:
        prefix = logarchive.source_prefix(session.repo, WAL, "pg")
        locked_id = logarchive.segment_object_id(session.repo, WAL, "pg", names[2])
    backend = LockedWal(dr.repo, {f"{prefix}/{locked_id}"})
    with Session.open(options, backend=backend) as session:
        result = forget_ops.forget(session, lambda _s: RetentionPolicy(keep_within=dt.timedelta(hours=12)))
        rows = {s.name for s in LogCatalog(session.catalog).segments("pg")}
    [logs] = result.logs
    assert logs.expired == [names[0], names[1], f"{names[1]}.00000028.backup", names[3]]
    assert logs.not_expired == [f"{names[2]}: under Object Lock retention"]
    assert result.expired_segments == logs.expired and "expired 4 log file(s)" in result.log_lines()
    remaining = _wal_names(dr)
    assert set(remaining) == {names[2], *names[4:], "00000002.history"}
    assert all(kinds == {"data", "info"} for kinds in remaining.values())
    assert rows == set(remaining)
    window = json.loads(dr.run("pg", "window", "--source", "pg", "--json").out)
    assert window["gaps"] == [] and window["bases"] == 2


def test_crash_between_info_and_data_delete_is_finished_next_time(
        synthetic: tuple[DrEnv, list[str], list[str]]) -> None:
    dr, ids, names = synthetic
    _wal_names(dr)  # the catalog knows every row, as after any earlier command
    crashed = dr.spawn("forget", "--keep-within", "12h",
                       env={"DRTOOL_CRASH_AT": pitr_retention.CRASH_AFTER_INFO})
    assert crashed.returncode == -9
    assert _count_kinds(dr) == {"data": 10 + 2, "info": 10 + 2 - 1}
    again = dr.run("forget", "--keep-within", "12h", "--json")
    assert again.code == 0, again.err
    [logs] = json.loads(again.out)["log_segments"]
    assert logs["expired"][0] == names[0]
    assert "interrupted forget" in logs["expire"][0]["reason"]
    assert set(_wal_names(dr)) == {*names[4:], "00000002.history"}
    assert _count_kinds(dr) == {"data": 7, "info": 7}
    assert sorted(json.loads(dr.run("snapshots", "--json").out), key=lambda s: s["time"])[0]["id"] == ids[1]


def _count_kinds(dr: DrEnv) -> dict[str, int]:
    files = [p for p in (dr.repo / "wal").rglob("*") if p.is_file()]
    return {"data": sum(not p.name.endswith(".info") for p in files),
            "info": sum(p.name.endswith(".info") for p in files)}


# ----- real servers ---------------------------------------------------------------------------------------
def _snapshots(dr: DrEnv, name: str) -> list[dict[str, Any]]:
    result = dr.run("snapshots", "--name", name, "--json")
    assert result.code == 0, result.err
    return sorted(json.loads(result.out), key=lambda s: s["time"])


def _within_seconds(newest: dict[str, Any], inside: dt.datetime) -> str:
    """A keep_within whose window starts at most one second before ``inside``."""
    span = dt.datetime.fromisoformat(newest["time"]) - inside
    return f"{math.ceil(span.total_seconds())}s"


def _log_objects(dr: DrEnv, kind: str) -> set[str]:
    return {str(p.relative_to(dr.repo)) for p in (dr.repo / kind).rglob("*") if p.is_file()}


def _check_forget(dr: DrEnv, source: str, within: str, kind: str, keep_from: str) -> dict[str, Any]:
    """Dry run changes nothing and gives reasons; the real run then removes the oldest base
    and the logs before the pinned one.  Returns the real run's log report."""
    snaps = _snapshots(dr, source)
    objects = _log_objects(dr, kind)
    dry = dr.run("forget", "--name", source, "--keep-within", within, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    report = json.loads(dry.out)
    keep = {k["id"]: k["reasons"] for k in report["series"][0]["keep"]}
    assert keep[snaps[2]["id"]] == [f"within {within}"]
    assert keep[snaps[1]["id"]][0].startswith("pinned: pitr base for window starting")
    assert [r["id"] for r in report["series"][0]["remove"]] == [snaps[0]["id"]]
    [logs] = report["log_segments"]
    assert logs["keep_from"] == keep_from and logs["expire"]
    assert all(e["name"] < keep_from for e in logs["expire"])
    assert _snapshots(dr, source) == snaps and _log_objects(dr, kind) == objects
    done = dr.run("forget", "--name", source, "--keep-within", within, "--json")
    assert done.code == 0, done.err
    [real] = json.loads(done.out)["log_segments"]
    assert real["expired"] == [e["name"] for e in logs["expire"]] and not real["not_expired"]
    assert [s["id"] for s in _snapshots(dr, source)] == [snaps[1]["id"], snaps[2]["id"]]
    assert len(_log_objects(dr, kind)) == len(objects) - 2 * len(real["expired"])
    return real


@dataclass
class PgScenario:
    dr: DrEnv
    server: PgServer
    env: dict[str, str]
    inside: dt.datetime


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgScenario]:
    """Bases B0, B1, B2 with WAL between and after; ``inside`` lies between t1 and t2."""
    dr = make_env(tmp_path_factory.mktemp("pgret"))
    dr.init()
    with archived_postgres(dr, PASSWORD, "pg") as (server, env):

        def backup() -> None:
            result = dr.run("backup", "--source", "pg")
            assert result.code == 0, result.err
        backup()
        server.sql("CREATE TABLE events (tag text, n int)")
        server.sql("INSERT INTO events SELECT 't0', g FROM generate_series(1, 10) g")
        server.switch_wal_and_wait()
        backup()
        server.sql("INSERT INTO events SELECT 't1', g FROM generate_series(1, 20) g")
        server.switch_wal_and_wait()
        time.sleep(1.1)
        inside = dt.datetime.now(UTC)
        time.sleep(1.1)
        server.sql("INSERT INTO events SELECT 't2', g FROM generate_series(1, 30) g")
        server.switch_wal_and_wait()
        backup()
        server.sql("INSERT INTO events SELECT 't3', g FROM generate_series(1, 40) g")
        server.switch_wal_and_wait()
        yield PgScenario(dr, server, env, inside)


def test_postgres_forget_keeps_window_base_and_wal_then_pitr_works(pg: PgScenario) -> None:
    snaps = _snapshots(pg.dr, "pg")
    assert [s["kind"] for s in snaps] == ["pg-base"] * 3
    start_wal = snaps[1]["meta"]["start_wal"]
    _check_forget(pg.dr, "pg", _within_seconds(snaps[2], pg.inside), "wal", start_wal)
    window = json.loads(pg.dr.run("pg", "window", "--source", "pg", "--json").out)
    assert window["gaps"] == [] and dt.datetime.fromisoformat(window["start"]) < pg.inside
    target = Path(pg.server.root) / "restored"
    port = free_port()
    proc = run_as_server_user(["restore", "--source", "pg", "--point-in-time", pg.inside.isoformat(),
                               "--target", str(target), "--start", "--port", str(port), "--json"], pg.env)
    try:
        assert proc.returncode == 0, proc.stderr + pg.server.log_tail()
        assert json.loads(proc.stdout)["plan"]["base"]["snapshot"] == snaps[1]["id"]
        rows = pg.server.sql("SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag", port=port,
                             host=json.loads(proc.stdout)["socket_dir"])
        assert rows == [("t0", 10), ("t1", 20)]
    finally:
        stop_postgres(pg.server.bindir, str(target))
        shutil.rmtree(target, ignore_errors=True)


@dataclass
class MariaScenario:
    dr: DrEnv
    server: MariaServer
    inside: dt.datetime



@pytest.fixture(scope="module")
def maria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaScenario]:
    """Dumps D0, D1, D2 with binlogs between and after; ``inside`` lies between t2 and t3."""
    dr = make_env(tmp_path_factory.mktemp("myret"))
    dr.init()
    with mariadb_server() as server:
        config = write_config(dr.tmp / "drtool.toml", str(dr.repo), {"wiki": server.source(dbname="wiki")})
        dr.env["DRTOOL_CONFIG"] = str(config)
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")

        def step(tag: str, count: int, backup: bool) -> None:
            insert_events(server, tag, count)
            if backup:
                result = dr.run("backup", "--source", "wiki")
                assert result.code == 0, result.err
            server.sql("FLUSH BINARY LOGS")
            time.sleep(1.1)
        step("t0", 5, backup=True)
        step("t1", 10, backup=True)
        step("t2", 20, backup=False)
        inside = dt.datetime.now(UTC)
        time.sleep(1.1)
        step("t3", 30, backup=True)
        step("t4", 40, backup=False)
        pushed = dr.run("mariadb", "binlog-push", "--source", "wiki")
        assert pushed.code == 0, pushed.err
        yield MariaScenario(dr, server, inside)


def test_mariadb_forget_keeps_window_dump_and_binlogs_then_pitr_works(maria: MariaScenario,
                                                                     tmp_path: Path) -> None:
    snaps = _snapshots(maria.dr, "wiki")
    meta = snaps[1]["meta"]  # binlogs are archived under the writing server's id (s1-binlog.000002)
    _check_forget(maria.dr, "wiki", _within_seconds(snaps[2], maria.inside), "binlog",
                  f"s{meta['server_id']}-{meta['binlog_file']}")
    # The operator's ~/.my.cnf must not reach drtool's own throwaway instance.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text("[client]\nuser=nobody\npassword=production-secret\n")
    target = Path(maria.server.root) / "fresh"
    result = maria.dr.run("restore", "--source", "wiki", "--point-in-time", maria.inside.isoformat(),
                          "--target", str(target), "--start", "--json", env={"HOME": str(home)})
    try:
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["plan"]["base"]["snapshot"] == snaps[1]["id"]
        import pymysql
        conn = pymysql.connect(unix_socket=report["socket"], user="root", password="", database="wiki")
        with conn.cursor() as cur:
            cur.execute("SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag")
            assert list(cur.fetchall()) == [("t0", 5), ("t1", 10), ("t2", 20)]
        conn.close()
    finally:
        stop_restored_mariadb(Path(target))
