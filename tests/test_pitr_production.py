"""Point-in-time restore as deployed: the production profile, end to end.

Everything here is what an operator does from the docs, with nothing tuned:

* drtool installed by ``scripts/install`` and run as the OS user the docs name
  (``postgres`` for archive_command / restore_command and the restore itself);
* ``drtool init`` with its default Argon2id parameters;
* the ``archive_command`` copied from docs/databases.md, the restore commands
  in the form that page prints;
* a concurrent workload while the base backup runs and WAL / binlogs are
  archived (pgbench -c 4 for PostgreSQL; mixed INSERT/UPDATE/DELETE/DDL on
  several tables for MariaDB);
* three points in time, each with a fingerprint of every table, then operator
  mistakes (DROP TABLE, a mass DELETE); every point and --latest are restored
  and compared table by table, exactly.

Every archive run must succeed (pg_stat_archiver.failed_count stays 0).  The
archive lag seen under load is printed for the record; speed is measured by
``scripts/bench --archive``, not asserted here.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from dbservers import free_port, pg_bindir
from deployed import doc_command, doc_setting, install_drtool, os_user, popen_as, run_as, shared_dir

pytestmark = pytest.mark.slow
SOURCE = "pg-main"  # the name docs/databases.md uses
SCALE = 3  # pgbench -s: 300,000 accounts


@pytest.fixture(scope="module")
def drtool_bin() -> Iterator[Path]:
    yield from install_drtool()


# ----- PostgreSQL ---------------------------------------------------------------------------------
@dataclass
class PgCluster:
    root: Path
    port: int
    bindir: str
    env: dict[str, str]
    pgbench: subprocess.Popen[str] | None = None
    max_lag: int = 0
    lag_samples: int = 0
    _sampling: threading.Event = field(default_factory=threading.Event)

    @property
    def datadir(self) -> str:
        return str(self.root / "data")

    def connect(self, host: str | None = None, port: int | None = None, dbname: str = "postgres") -> Any:
        import psycopg
        return psycopg.connect(host=host or str(self.root), port=port or self.port, user="postgres",
                               dbname=dbname, autocommit=True)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query)
            return list(cur.fetchall()) if cur.description else []

    def drtool(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run_as("postgres", ["drtool", *args], self.env, timeout=timeout)

    def start_load(self) -> None:
        self.pgbench = popen_as("postgres", ["pgbench", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                                             "-c", "4", "-j", "2", "-T", "3600", "-n", "postgres"],
                                self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def stop_load(self) -> None:
        if self.pgbench is not None:
            os.killpg(self.pgbench.pid, signal.SIGINT)  # runuser does not pass signals on: the whole group
            try:
                self.pgbench.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.pgbench.kill()
                self.pgbench.wait()
            self.pgbench = None

    def sample_lag(self) -> None:
        """Completed WAL segments not yet archived, every 0.25 s, while the workload runs."""
        while not self._sampling.wait(0.25):
            try:
                (current, archived), = self.sql(
                    "SELECT pg_walfile_name(pg_current_wal_lsn()), last_archived_wal FROM pg_stat_archiver")
            except Exception:  # the sampler must never fail the test; a gap in samples is fine
                continue
            if archived and len(archived) == 24:
                self.max_lag = max(self.max_lag, int(current[8:], 16) - int(archived[8:], 16) - 1)
                self.lag_samples += 1

    def switch_and_wait_archived(self, timeout: float = 300) -> None:
        name = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            archived = self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            if archived and archived[:24] >= name:
                return
            time.sleep(0.2)
        raise AssertionError(f"WAL {name} not archived within {timeout}s: {self.archiver()}")

    def archiver(self) -> dict[str, Any]:
        row = self.sql("SELECT archived_count, failed_count, last_failed_wal, last_archived_wal "
                       "FROM pg_stat_archiver")[0]
        return dict(zip(("archived", "failed", "last_failed", "last_archived"), row))


def pg_fingerprint(conn: Any) -> dict[str, tuple[int, str]]:
    """Row count and md5 of the sorted rows of every table in schema public."""
    tables = [r[0] for r in conn.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON "
                                         "n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r' "
                                         "ORDER BY 1").fetchall()]
    out = {}
    for table in tables:
        count, digest = conn.execute(f'SELECT count(*), md5(coalesce(string_agg(t::text, E\'\\n\' ORDER BY '
                                     f't::text), \'\')) FROM public."{table}" t').fetchone()
        out[table] = (count, digest)
    return out


def _archive_command(root: Path) -> str:
    """archive_command exactly as docs/databases.md prints it, with this test's paths."""
    command = doc_setting("databases.md", "archive_command")
    assert "/etc/drtool/drtool.toml" in command and "/etc/drtool/passphrase" in command
    return (command.replace("/etc/drtool/drtool.toml", str(root / "drtool.toml"))
            .replace("/etc/drtool/passphrase", str(root / "passphrase")))


@pytest.fixture(scope="module")
def pg_cluster(drtool_bin: Path) -> Iterator[PgCluster]:
    os_user("postgres")
    root = shared_dir("drprod-pg-", "postgres")
    bindir = pg_bindir()
    cluster = PgCluster(root, free_port(), bindir, {})
    cluster.env = {"PATH": f"{drtool_bin}:{bindir}:/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC",
                   "DRTOOL_CONFIG": str(root / "drtool.toml")}
    (root / "passphrase").write_text(secrets.token_urlsafe(24) + "\n")
    (root / "drtool.toml").write_text(
        f'repository = "{root}/repo"\npassword_file = "{root}/passphrase"\ncatalog = "{root}/catalog.sqlite"\n\n'
        f'[sources.{SOURCE}]\ntype = "postgresql"\nmethod = "basebackup"\nhost = "{root}"\n'
        f'port = {cluster.port}\nuser = "postgres"\nbindir = "{bindir}"\n'
        f'archive_async = true\nspool_dir = "{root}/spool"\n')  # as docs/databases.md recommends
    pg = os_user("postgres")
    for name in ("passphrase", "drtool.toml"):
        os.chown(root / name, pg.pw_uid, pg.pw_gid)
    os.chmod(root / "passphrase", 0o600)
    try:
        run_as("postgres", ["drtool", "init"], cluster.env, check=True)  # default Argon2id parameters
        run_as("postgres", ["initdb", "-D", cluster.datadir, "-U", "postgres", "--auth=trust", "--no-sync"],
               cluster.env, check=True)
        with open(Path(cluster.datadir) / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\nport = {cluster.port}\nlisten_addresses = ''\nunix_socket_directories = '{root}'\n"
                       f"wal_level = replica\narchive_mode = on\narchive_command = '{_archive_command(root)}'\n"
                       "archive_timeout = 300\nmax_wal_senders = 4\nfsync = off\n")
        run_as("postgres", ["pg_ctl", "-D", cluster.datadir, "-l", str(root / "server.log"), "-w", "start"],
               cluster.env, check=True)
        yield cluster
    finally:
        cluster.stop_load()
        run_as("postgres", ["pg_ctl", "-D", cluster.datadir, "-m", "immediate", "-w", "stop"], cluster.env)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Point:
    when: datetime
    tables: dict[str, tuple[int, str]]


def _quiet_point(cluster: PgCluster) -> Point:
    """Stop the workload, take a moment in between commits, fingerprint, resume."""
    cluster.stop_load()
    time.sleep(1.2)
    when = datetime.now(timezone.utc)
    with cluster.connect() as conn:
        tables = pg_fingerprint(conn)
    time.sleep(1.2)
    cluster.start_load()
    return Point(when, tables)


@pytest.fixture(scope="module")
def pg_history(pg_cluster: PgCluster) -> Iterator[tuple[list[Point], Point]]:
    """Base backup and three points under pgbench; then mistakes; returns (points, latest)."""
    c = pg_cluster
    run_as("postgres", ["pgbench", "-h", str(c.root), "-p", str(c.port), "-U", "postgres", "-i", "-s", str(SCALE),
                        "-q", "postgres"], c.env, check=True)
    sampler = threading.Thread(target=c.sample_lag, daemon=True)
    sampler.start()
    c.start_load()
    time.sleep(3)
    backup = c.drtool("backup", "--source", SOURCE, "--json")  # a base backup under load
    assert backup.returncode == 0, backup.stderr
    time.sleep(4)
    points = [_quiet_point(c)]
    c.sql("CREATE TABLE audit (id serial PRIMARY KEY, note text, at timestamptz DEFAULT now())")
    c.sql("INSERT INTO audit (note) SELECT 'before point 2: ' || g FROM generate_series(1, 5000) g")
    time.sleep(5)
    points.append(_quiet_point(c))
    c.sql("ALTER TABLE audit ADD COLUMN severity int DEFAULT 3")
    c.sql("UPDATE audit SET severity = id % 5 WHERE id % 2 = 0")
    time.sleep(5)
    points.append(_quiet_point(c))
    time.sleep(4)
    c.stop_load()
    c.sql("DROP TABLE pgbench_history")  # the operator's mistakes
    c.sql("DELETE FROM pgbench_accounts WHERE aid % 7 = 0")
    with c.connect() as conn:
        latest = Point(datetime.now(timezone.utc), pg_fingerprint(conn))
    c.switch_and_wait_archived()
    c._sampling.set()
    archiver = c.archiver()
    print(f"\nPostgreSQL archiving under pgbench -c 4: {archiver['archived']} files archived, "
          f"{archiver['failed']} failed, max lag {c.max_lag} segment(s) over {c.lag_samples} samples")
    assert archiver["failed"] == 0, f"archive_command failed under load: {archiver}\n" \
                                    f"{(c.root / 'server.log').read_text()[-3000:]}"
    assert points[0].tables != points[1].tables != points[2].tables != latest.tables
    yield points, latest


def _restore_and_fingerprint(cluster: PgCluster, when: str | None, target: Path) -> tuple[dict[str, Any], Any]:
    args = ["restore", "--source", SOURCE, *(["--point-in-time", when] if when else ["--latest"]),
            "--target", str(target), "--start", "--json"]
    proc = cluster.drtool(*args)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    report = json.loads(proc.stdout)
    try:
        with cluster.connect(host=report["socket_dir"], port=report["port"]) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            return report, pg_fingerprint(conn)
    finally:
        run_as("postgres", ["pg_ctl", "-D", str(target), "-m", "fast", "-w", "stop"], cluster.env)


def test_documented_restore_command_form(pg_cluster: PgCluster) -> None:
    """The test below restores with the command form docs/databases.md prints."""
    line = doc_command("databases.md", r"^drtool restore --source pg-main --point-in-time \S+ --target \S+ --start")
    assert line.split()[:4] == ["drtool", "restore", "--source", SOURCE]


@pytest.mark.parametrize("which", [0, 1, 2, "latest"])
def test_postgres_restore_to_each_point_is_exact(pg_cluster: PgCluster, pg_history: tuple[list[Point], Point],
                                                 which: int | str) -> None:
    points, latest = pg_history
    target = pg_cluster.root / f"restore-{which}"
    if which == "latest":
        report, tables = _restore_and_fingerprint(pg_cluster, None, target)
        assert report["reached"].startswith("all archived WAL replayed")
        expected = latest.tables
    else:
        point = points[int(which)]
        report, tables = _restore_and_fingerprint(pg_cluster, point.when.isoformat(), target)
        assert "recovery stopping" in report["reached"]
        expected = point.tables
    shutil.rmtree(target, ignore_errors=True)
    assert sorted(tables) == sorted(expected), "tables differ (a dropped table came back, or one is missing)"
    for table in expected:
        assert tables[table] == expected[table], f"table {table} differs at point {which}"
