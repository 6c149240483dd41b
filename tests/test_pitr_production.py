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
import re
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

from dbservers import MariaServer, free_port, pg_bindir
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
            # The whole group: runuser does not pass signals on.  SIGTERM, not SIGINT: a suite run
            # from a non-interactive shell's background job (CI) inherits SIGINT ignored, and a
            # pgbench that ignored it went on writing through every "quiet" point (CI, 6 December)
            os.killpg(self.pgbench.pid, signal.SIGTERM)
            try:
                self.pgbench.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pgbench.pid, signal.SIGKILL)
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
    """Stop the workload, take a moment in between commits, fingerprint, resume.

    The moment is taken only once pgbench's backends are gone (checked by their name): a point
    taken while the workload still wrote, as when pgbench ignored the signal meant to stop it,
    is a fingerprint that no restore to the point's time can match."""
    def pgbench_backends() -> int:
        return int(cluster.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")[0][0])
    assert pgbench_backends() > 0, "the workload's backends are not found by their application_name"
    cluster.stop_load()
    deadline = time.monotonic() + 60
    while pgbench_backends():
        assert time.monotonic() < deadline, "pgbench's backends did not end within 60 s"
        time.sleep(0.1)
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


def test_documented_restore_command_form() -> None:
    """The test below restores with the command form docs/databases.md prints."""
    line = doc_command("databases.md", r"^runuser -u postgres -- drtool restore --source pg-main "
                                       r"--point-in-time \S+ --target \S+ --start")
    assert line.split()[4:8] == ["drtool", "restore", "--source", SOURCE]


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
    differing = sorted(table for table in expected if tables[table] != expected[table])
    assert not differing, f"at point {which} these tables differ: {differing}"  # all: a commit across
    # the point; some pages of one table: restored data


def _restore_then_start(cluster: PgCluster, target: Path, port: int) -> Any:
    """Restore without --start, then start the server with the command the restore printed (as an
    operator or a systemd unit would); the server's fingerprint once it is out of recovery."""
    restored = cluster.drtool("restore", "--source", SOURCE, "--latest", "--target", str(target),
                              "--port", str(port))
    assert restored.returncode == 0, restored.stderr
    start = re.search(r"start it with: (pg_ctl -D \S+ -l \S+ start)", restored.stdout)
    assert start and "wal-prefetch" in restored.stdout, restored.stdout
    run_as("postgres", start.group(1).split(), cluster.env, timeout=120)  # waits 60 s at most, by default
    deadline = time.monotonic() + 600
    while True:
        try:
            with cluster.connect(host=str(target), port=port) as conn:
                if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                    return pg_fingerprint(conn)
        except Exception:  # still replaying: "the database system is starting up"
            pass
        assert time.monotonic() < deadline, (target / "drtool-recovery.log").read_text()[-3000:]
        time.sleep(0.5)


def test_postgres_restore_started_by_the_operator_fetches_wal_ahead(pg_cluster: PgCluster,
                                                                     pg_history: tuple[list[Point], Point]) -> None:
    """Without --start the server's first wal-fetch starts 'drtool pg wal-prefetch' (as postgres,
    detached): it serves the restore's plan, the replay is exact, and once the server is promoted
    the process is gone with its spool."""
    _points, latest = pg_history
    for _ in range(12):  # a plan long enough that the server's own first fetches cannot take it all
        pg_cluster.sql("SELECT pg_logical_emit_message(false, 'drtool-test', 'a WAL record, no table')")
        pg_cluster.switch_and_wait_archived()
    target = pg_cluster.root / "restore-operator"
    try:
        tables = _restore_then_start(pg_cluster, target, free_port())
        assert sorted(tables) == sorted(latest.tables) and tables == latest.tables
        spool, log = target / "drtool-wal-prefetch", target / "drtool-wal-prefetch.log"

        def last_words() -> list[str]:  # the process's last line, logged once it removed the spool
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            return [line["message"] for line in lines if line.get("message", "").startswith("WAL prefetch for")]
        deadline = time.monotonic() + 30
        while (spool.exists() or not last_words()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not spool.exists(), sorted(p.name for p in spool.iterdir())
        done = last_words()
        assert len(done) == 1, log.read_text()
        taken, fetched, planned = (int(n) for n in re.findall(r"(\d+)", done[0].split("took", 1)[1])[:3])
        print(f"\noperator-started restore: {done[0]}")
        assert planned >= 12 and fetched >= taken >= planned // 2, done[0]
    finally:
        run_as("postgres", ["pg_ctl", "-D", str(target), "-m", "fast", "-w", "stop"], pg_cluster.env)
        shutil.rmtree(target, ignore_errors=True)


# ----- MariaDB --------------------------------------------------------------------------------------
MARIA_SOURCE = "wiki"  # the name docs/databases.md uses
MARIA_TABLES = ("page", "revision", "user_account")


@dataclass
class MariaCluster:
    root: Path
    socket: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    pushes: list[int] = field(default_factory=list)
    push_errors: list[str] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)  # set by the workload once idle
    stop: threading.Event = field(default_factory=threading.Event)
    ops: int = 0

    def connect(self, database: str | None = "wiki") -> Any:
        import pymysql
        return pymysql.connect(unix_socket=self.socket, user="root", password=MARIA_PASSWORD, database=database,
                               autocommit=True)

    sql = MariaServer.sql  # same query helper as the other MariaDB tests, over this connection

    def drtool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_as("mysql", ["drtool", *args], self.env, timeout=900)

    def workload(self) -> None:
        """Mixed writes on several tables, one transaction at a time, DDL now and then."""
        import random
        rng = random.Random(5)
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    if not self.running.is_set():
                        self.paused.set()  # no statement of ours is in flight
                        self.running.wait(0.1)
                        continue
                    self._one_operation(cur, rng)
                    self.ops += 1
        finally:
            conn.close()

    def _one_operation(self, cur: Any, rng: Any) -> None:
        roll = rng.random()
        if roll < 0.35:
            cur.execute("INSERT INTO page (title, body) VALUES (%s, %s)", (f"Page_{rng.random()}", "x" * rng.randint(10, 900)))
        elif roll < 0.6:
            cur.execute("INSERT INTO revision (page_id, comment) SELECT id, %s FROM page ORDER BY RAND(%s) LIMIT 3",
                        (f"edit {rng.random()}", rng.randint(0, 10**6)))
        elif roll < 0.8:
            cur.execute("UPDATE page SET body = CONCAT(body, 'y'), touched = touched + 1 WHERE id %% 17 = %s",
                        (rng.randint(0, 16),))
        elif roll < 0.95:
            cur.execute("DELETE FROM revision WHERE id %% 23 = %s ORDER BY id LIMIT 2", (rng.randint(0, 22),))
        elif roll < 0.98:
            cur.execute("UPDATE user_account SET edits = edits + 1 WHERE id = %s", (rng.randint(1, 50),))
        else:
            cur.execute("CREATE TABLE IF NOT EXISTS scratch (id INT PRIMARY KEY, v INT)")
            cur.execute("REPLACE INTO scratch VALUES (%s, %s)", (rng.randint(1, 20), rng.randint(0, 99)))
            cur.execute("FLUSH BINARY LOGS")

    def push_timer(self) -> None:
        """binlog-push every 2 s, as the systemd timer does, while the workload runs."""
        while not self.stop.wait(2.0):
            proc = self.drtool("mariadb", "binlog-push", "--source", MARIA_SOURCE)
            self.pushes.append(proc.returncode)
            if proc.returncode:
                self.push_errors.append(proc.stderr)


MARIA_PASSWORD = "maria: production 'password'"


def maria_fingerprint(cluster: MariaCluster, database: str) -> dict[str, tuple[int, str]]:
    import hashlib
    out = {}
    for (table,) in cluster.sql("SHOW TABLES", database):
        rows = cluster.sql(f"SELECT * FROM `{table}` ORDER BY 1", database)
        out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return out


@pytest.fixture(scope="module")
def maria_cluster(drtool_bin: Path) -> Iterator[MariaCluster]:
    from dbservers import maria_binary
    mysql = os_user("mysql")
    root = shared_dir("drprod-my-", "mysql")
    cluster = MariaCluster(root, str(root / "mysqld.sock"), {})
    cluster.env = {"PATH": f"{drtool_bin}:/usr/bin:/bin:/usr/sbin", "LANG": "C.UTF-8",
                   "DRTOOL_CONFIG": str(root / "drtool.toml")}
    (root / "passphrase").write_text(secrets.token_urlsafe(24) + "\n")
    (root / "mypassword").write_text(MARIA_PASSWORD + "\n")
    (root / "drtool.toml").write_text(
        f'repository = "{root}/repo"\npassword_file = "{root}/passphrase"\ncatalog = "{root}/catalog.sqlite"\n\n'
        f'[sources.{MARIA_SOURCE}]\ntype = "mariadb"\nsocket = "{cluster.socket}"\nuser = "root"\n'
        f'password_file = "{root}/mypassword"\ndbname = "wiki"\n')
    for name in ("passphrase", "mypassword", "drtool.toml"):
        os.chown(root / name, mysql.pw_uid, mysql.pw_gid)
        os.chmod(root / name, 0o600)
    datadir, tmpdir = root / "data", root / "tmp"
    tmpdir.mkdir()
    os.chown(tmpdir, mysql.pw_uid, mysql.pw_gid)
    try:
        install = subprocess.run([maria_binary("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}",
                                  "--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db",
                                  f"--tmpdir={tmpdir}"], capture_output=True, text=True, timeout=300, check=False)
        assert install.returncode == 0, install.stderr
        cluster.proc = subprocess.Popen(
            [maria_binary("mariadbd"), "--no-defaults", "--user=mysql", f"--datadir={datadir}",
             f"--socket={cluster.socket}", "--skip-networking", f"--pid-file={root}/mysqld.pid",
             f"--log-error={root}/err.log", f"--log-bin={datadir}/binlog", "--server-id=1", "--binlog-format=ROW",
             "--max-binlog-size=1M", "--innodb-buffer-pool-size=64M", f"--tmpdir={tmpdir}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_maria(cluster)
        import pymysql
        conn = pymysql.connect(unix_socket=cluster.socket, user="root", password="", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("ALTER USER root@localhost IDENTIFIED BY %s", (MARIA_PASSWORD,))
        conn.close()
        run_as("mysql", ["drtool", "init"], cluster.env, check=True)  # default Argon2id parameters
        yield cluster
    finally:
        cluster.stop.set()
        if cluster.proc is not None:
            cluster.proc.terminate()
            try:
                cluster.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                cluster.proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_maria(cluster: MariaCluster) -> None:
    import pymysql
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert cluster.proc is not None and cluster.proc.poll() is None, \
            (cluster.root / "err.log").read_text()[-2000:]
        try:
            pymysql.connect(unix_socket=cluster.socket, user="root", password="").close()
            return
        except pymysql.err.MySQLError:
            time.sleep(0.2)
    raise AssertionError("mariadbd did not come up")


def _maria_quiet_point(cluster: MariaCluster) -> Point:
    """Pause the workload; binlog times have one-second resolution, so leave a clear second
    after its last statement has returned (a commit waiting on a busy disk included)."""
    cluster.paused.clear()
    cluster.running.clear()
    assert cluster.paused.wait(60), "the workload did not pause within 60 s"
    time.sleep(1.3)
    when = datetime.now(timezone.utc)
    tables = maria_fingerprint(cluster, "wiki")
    time.sleep(1.3)
    cluster.running.set()
    return Point(when, tables)


@pytest.fixture(scope="module")
def maria_history(maria_cluster: MariaCluster) -> Iterator[tuple[list[Point], Point]]:
    c = maria_cluster
    c.sql("CREATE DATABASE wiki", None)
    c.sql("CREATE TABLE page (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(255), body TEXT, "
          "touched INT DEFAULT 0)", "wiki")
    c.sql("CREATE TABLE revision (id INT AUTO_INCREMENT PRIMARY KEY, page_id INT, comment VARCHAR(255))", "wiki")
    c.sql("CREATE TABLE user_account (id INT PRIMARY KEY, name VARCHAR(64), edits INT)", "wiki")
    c.sql("INSERT INTO user_account VALUES " + ", ".join(f"({i}, 'user{i}', 0)" for i in range(1, 51)), "wiki")
    c.sql("INSERT INTO page (title, body) VALUES " + ", ".join(f"('Seed_{i}', 'seed')" for i in range(300)), "wiki")
    threads = [threading.Thread(target=c.workload, daemon=True), threading.Thread(target=c.push_timer, daemon=True)]
    c.running.set()
    for thread in threads:
        thread.start()
    time.sleep(2)
    backup = c.drtool("backup", "--source", MARIA_SOURCE)  # the nightly dump, under load
    assert backup.returncode == 0, backup.stderr
    points = []
    for _ in range(3):
        time.sleep(4)
        points.append(_maria_quiet_point(c))
    time.sleep(3)
    c.running.clear()
    time.sleep(0.5)
    c.sql("DROP TABLE user_account", "wiki")  # the operator's mistakes
    c.sql("DELETE FROM revision WHERE id % 3 = 0", "wiki")
    latest = Point(datetime.now(timezone.utc), maria_fingerprint(c, "wiki"))
    c.stop.set()
    for thread in threads:
        thread.join(timeout=120)
    c.sql("FLUSH BINARY LOGS", None)
    final = c.drtool("mariadb", "binlog-push", "--source", MARIA_SOURCE)
    assert final.returncode == 0, final.stderr
    print(f"\nMariaDB: {c.ops} operations, {len(c.pushes)} binlog-push runs during the load, "
          f"{sum(1 for p in c.pushes if p)} failed")
    assert not c.push_errors, c.push_errors[:3]
    assert c.pushes, "the binlog-push timer never ran"
    yield points, latest


@pytest.mark.parametrize("which", [0, 1, 2, "latest"])
def test_mariadb_restore_to_each_point_is_exact(maria_cluster: MariaCluster,
                                                maria_history: tuple[list[Point], Point], which: int | str) -> None:
    points, latest = maria_history
    database = f"wiki_restored_{which}"
    when = ["--latest"] if which == "latest" else ["--point-in-time", points[int(which)].when.isoformat()]
    proc = maria_cluster.drtool("restore", "--source", MARIA_SOURCE, *when, "--target-db", database, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    expected = latest.tables if which == "latest" else points[int(which)].tables
    tables = maria_fingerprint(maria_cluster, database)
    assert "replayed" in report["reached"]
    assert sorted(tables) == sorted(expected)
    differing = sorted(table for table in expected if tables[table] != expected[table])
    assert not differing, f"at point {which} these tables differ: {differing}"
