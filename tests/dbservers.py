"""Throwaway PostgreSQL and MariaDB servers for the database tests.

Every server lives in its own temporary directory, listens on a free port on
127.0.0.1 and a private socket, and is torn down (and its directory removed)
on every path out.  The machine's own database servers are never touched:
no default port, no default socket, ``--no-defaults`` for MariaDB.

PostgreSQL refuses to run as root.  When the tests run as root, server
processes (and drtool commands that start one) run in a user namespace
(``unshare --user --map-user=1000``): uid 1000 inside, still root outside,
so the server can read the repository and the interpreter like the tests do.

Missing server binaries make the tests FAIL with a clear message, not skip:
``scripts/test`` installs the Debian packages.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_UID = 1000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def short_tmpdir(prefix: str) -> str:
    """Unix socket paths are limited to ~107 bytes: pytest's tmp_path can be too long."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def server_prefix() -> list[str]:
    """Command prefix that runs a server (or drtool starting one) as a non-root user."""
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("tests run as root and 'unshare' (util-linux) is missing: PostgreSQL refuses root")
    probe = subprocess.run([unshare, "--user", f"--map-user={SERVER_UID}", f"--map-group={SERVER_UID}",
                            "id", "-u"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or probe.stdout.strip() != str(SERVER_UID):
        pytest.fail(f"tests run as root but user namespaces are unavailable ({probe.stderr.strip()}); "
                    f"run the tests as an unprivileged user")
    return [unshare, "--user", f"--map-user={SERVER_UID}", f"--map-group={SERVER_UID}"]


def pg_bindir() -> str:
    """Where initdb / pg_ctl live: ``pg_config --bindir``, else the Debian layout."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and os.access(os.path.join(folder, "initdb"), os.X_OK):
            return folder
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found via pg_config --bindir or "
                "/usr/lib/postgresql/*/bin: install postgresql (scripts/test does)")


def maria_binary(name: str) -> str:
    for folder in (os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/bin", "/usr/local/sbin"]):
        path = os.path.join(folder, name)
        if folder and os.access(path, os.X_OK):
            return path
    pytest.fail(f"MariaDB program {name} not found on PATH or in /usr/sbin: install mariadb-server "
                f"and mariadb-client (scripts/test does)")


def bindir_with_mariabackup(bindir: Path, script: str) -> Path:
    """A ``bindir`` of the real MariaDB programs but a stand-in ``mariabackup`` (``script``)."""
    bindir.mkdir()
    for program in ("mbstream", "mariadbd", "mariadb", "mariadb-binlog", "mariadb-install-db"):
        os.symlink(maria_binary(program), bindir / program)
    fake = bindir / "mariabackup"
    fake.write_text(script)
    fake.chmod(0o755)
    return bindir


def drtool_env(dr_env: dict[str, str], password_file: str) -> dict[str, str]:
    """The environment a server's archive_command gets: passphrase by file only."""
    env = {k: v for k, v in dr_env.items() if k != "DRTOOL_PASSWORD"}
    env["DRTOOL_PASSWORD_FILE"] = password_file
    return env


def archive_env(dr_tmp: Path, dr_env: dict[str, str], passphrase: str) -> dict[str, str]:
    """``drtool_env`` with the passphrase written to a file under ``dr_tmp``."""
    password_file = dr_tmp / "drtool-password"
    password_file.write_text(passphrase + "\n")
    return drtool_env(dr_env, str(password_file))


def stop_restored_mariadb(target: Path) -> None:
    """Stop a server that ``restore --start`` left running in ``target`` and remove it."""
    pid = target / "data" / "mariadbd.pid"
    if pid.exists():
        os.kill(int(pid.read_text()), signal.SIGTERM)
        for _ in range(300):
            if not pid.exists():
                break
            time.sleep(0.1)
    shutil.rmtree(target, ignore_errors=True)


def run_as_server_user(args: list[str], env: dict[str, str], timeout: float = 300,
                       cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m drtool ARGS`` the way an operator would as the database OS user."""
    return subprocess.run([*server_prefix(), sys.executable, "-m", "drtool", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


# ----- PostgreSQL --------------------------------------------------------------------------------
@dataclass
class PgServer:
    root: str
    datadir: str
    port: int
    bindir: str
    password: str
    password_file: str
    env: dict[str, str] = field(default_factory=dict)

    def connect(self, dbname: str = "postgres", port: int | None = None, host: str | None = None) -> Any:
        import psycopg
        return psycopg.connect(host=host or self.root, port=port or self.port, user="postgres",
                               password=self.password, dbname=dbname, autocommit=True)

    def sql(self, query: str, dbname: str = "postgres", port: int | None = None,
            host: str | None = None) -> list[tuple[Any, ...]]:
        with self.connect(dbname, port, host) as conn:
            cur = conn.execute(query)
            return list(cur.fetchall()) if cur.description else []

    def source(self, **extra: Any) -> dict[str, Any]:
        """A [sources.NAME] table for this server (TCP + password file)."""
        return {"type": "postgresql", "host": "127.0.0.1", "port": self.port, "user": "postgres",
                "password_file": self.password_file, "bindir": self.bindir, **extra}

    def switch_wal_and_wait(self, timeout: float = 30.0) -> str:
        """Close the current segment and wait until archive_command stored it."""
        name = str(self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        self.wait_archived(name, timeout)
        return name

    def wait_archived(self, name: str, timeout: float = 30.0) -> None:
        """Wait until archive_command stored WAL file ``name`` (or a later one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
            if row[0] and row[0] >= name:
                return
            time.sleep(0.1)
        raise AssertionError(f"WAL {name} was not archived in {timeout}s; last failed: {row[1]}; "
                             f"log: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return Path(self.root, "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def user_prefix(os_user: str | None) -> list[str]:
    """``runuser -u USER --`` for a real OS user (as the docs say), else :func:`server_prefix`."""
    if os_user is None:
        return server_prefix()
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", os_user, "--"]


def pg_ctl(bindir: str, datadir: str, action: str, env: dict[str, str] | None = None,
           log: str | None = None, os_user: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*user_prefix(os_user), os.path.join(bindir, "pg_ctl"), "-D", datadir, "-w", "-t", "60"]
    cmd += (["-l", log] if log else []) + (["-m", "immediate"] if action == "stop" else []) + [action]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=120)


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition()`` until it is true (replication catching up, a file archived)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s")


def stop_postgres(bindir: str, datadir: str, os_user: str | None = None) -> None:
    """pg_ctl stop, then SIGKILL the postmaster if it is still there."""
    if not os.path.exists(os.path.join(datadir, "postmaster.pid")):
        return
    pg_ctl(bindir, datadir, "stop", os_user=os_user)
    try:
        pid = int(Path(datadir, "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


@contextmanager
def postgres_server(archive_env: dict[str, str] | None = None, source: str = "pg", os_user: str | None = None,
                    drtool: str | None = None) -> Iterator[PgServer]:
    """initdb + pg_ctl start; with ``archive_env``, WAL goes to ``drtool pg wal-push``.

    ``os_user``: run the server as that real OS user (``runuser``), with ``drtool``
    (an installed drtool that user can execute) in its archive_command."""
    bindir = pg_bindir()
    root = short_tmpdir("drpg-")
    if os_user is not None:
        os.chmod(root, 0o755)
        shutil.chown(root, os_user)
    password = "pg secret: with 'quotes'"
    password_file = os.path.join(root, "pgpassword")
    Path(password_file).write_text(password + "\n")
    if os_user is not None:
        shutil.chown(password_file, os_user)
        os.chmod(password_file, 0o600)
    server = PgServer(root, os.path.join(root, "data"), free_port(), bindir, password, password_file)
    try:
        init = subprocess.run([*user_prefix(os_user), os.path.join(bindir, "initdb"), "-D", server.datadir,
                               "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
                               f"--pwfile={password_file}", "--no-sync"],
                              capture_output=True, text=True, check=False, timeout=120)
        assert init.returncode == 0, f"initdb failed: {init.stderr}"
        _configure_postgres(server, archive_env is not None, source, drtool)
        env = dict(archive_env or os.environ)
        started = pg_ctl(bindir, server.datadir, "start", env, os.path.join(root, "server.log"), os_user)
        assert started.returncode == 0, f"PostgreSQL did not start: {started.stderr} {server.log_tail()}"
        yield server
    finally:
        stop_postgres(bindir, server.datadir, os_user)
        shutil.rmtree(root, ignore_errors=True)


def _configure_postgres(server: PgServer, archive: bool, source: str, drtool: str | None) -> None:
    lines = [f"port = {server.port}", "listen_addresses = '127.0.0.1'",
             f"unix_socket_directories = '{server.root}'", "wal_level = replica", "fsync = off",
             "max_wal_senders = 4", "shared_buffers = 16MB", "log_min_messages = warning"]
    if archive:
        lines += ["archive_mode = on",
                  f"archive_command = '{drtool or sys.executable + ' -m drtool'} pg wal-push --source {source} %p'"]
    with open(os.path.join(server.datadir, "postgresql.conf"), "a", encoding="utf-8") as handle:
        handle.write("\n" + "\n".join(lines) + "\n")


# ----- MariaDB ---------------------------------------------------------------------------------------
@dataclass
class MariaServer:
    root: str
    datadir: str
    socket: str
    port: int
    password: str
    password_file: str
    pid_file: str

    def connect(self, database: str | None = None) -> Any:
        import pymysql
        return pymysql.connect(unix_socket=self.socket, user="root", password=self.password,
                               database=database, autocommit=True)

    def sql(self, query: str, database: str | None = None) -> list[tuple[Any, ...]]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(query)
                return list(cur.fetchall())
        finally:
            conn.close()

    def source(self, **extra: Any) -> dict[str, Any]:
        return {"type": "mariadb", "socket": self.socket, "user": "root",
                "password_file": self.password_file, **extra}


def _wait_for_socket(server: MariaServer, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import pymysql
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mariadbd exited: {Path(server.datadir, 'err.log').read_text()[-2000:]}")
        try:
            pymysql.connect(unix_socket=server.socket, user="root", password="").close()
            return
        except pymysql.err.MySQLError:
            time.sleep(0.1)
    raise AssertionError("mariadbd did not accept connections in time")


@contextmanager
def mariadb_server(server_id: int = 1, extra: list[str] | None = None) -> Iterator[MariaServer]:
    """mariadb-install-db + mariadbd with binlogs (ROW format) on a private socket and port.

    ``server_id`` and ``extra`` server options make replicas (see :func:`replicate`)."""
    root = short_tmpdir("drmy-")
    password = "my secret \"quoted\""
    server = MariaServer(root, os.path.join(root, "data"), os.path.join(root, "mysqld.sock"), free_port(),
                         password, os.path.join(root, "mypassword"), os.path.join(root, "mysqld.pid"))
    Path(server.password_file).write_text(password + "\n")
    user = ["--user=root"] if os.geteuid() == 0 else []
    tmpdir = os.path.join(root, "tmp")  # private: bootstraps elsewhere on the host share /tmp names
    os.mkdir(tmpdir)
    proc: subprocess.Popen[bytes] | None = None
    try:
        install = subprocess.run([maria_binary("mariadb-install-db"), "--no-defaults", f"--datadir={server.datadir}",
                                  "--auth-root-authentication-method=normal", "--skip-test-db",
                                  f"--tmpdir={tmpdir}", *user],
                                 capture_output=True, text=True, check=False, timeout=120)
        assert install.returncode == 0, f"mariadb-install-db failed: {install.stderr}"
        proc = subprocess.Popen([maria_binary("mariadbd"), "--no-defaults", f"--datadir={server.datadir}",
                                 f"--socket={server.socket}", f"--port={server.port}", "--bind-address=127.0.0.1",
                                 f"--pid-file={server.pid_file}", f"--log-error={server.datadir}/err.log",
                                 f"--log-bin={server.datadir}/binlog", f"--server-id={server_id}", "--binlog-format=ROW",
                                 "--innodb-buffer-pool-size=32M", f"--tmpdir={tmpdir}", *user, *(extra or [])],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_socket(server, proc)
        import pymysql
        conn = pymysql.connect(unix_socket=server.socket, user="root", password="", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("ALTER USER root@localhost IDENTIFIED BY %s", (password,))
        conn.close()
        yield server
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def replicate(replica: MariaServer, primary: MariaServer) -> None:
    """Make ``replica`` replicate ``primary`` by GTID (a replication user on the primary)."""
    primary.sql("CREATE USER IF NOT EXISTS repl@'127.0.0.1' IDENTIFIED BY 'repl-pw'")
    primary.sql("GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1'")
    replica.sql(f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='repl', "
                f"MASTER_PASSWORD='repl-pw', MASTER_USE_GTID=slave_pos")
    replica.sql("START SLAVE")
    wait_caught_up(replica, primary)


def wait_caught_up(replica: MariaServer, primary: MariaServer, timeout: float = 60.0) -> None:
    """Until the replica has applied everything the primary has logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        want = primary.sql("SELECT @@gtid_binlog_pos")[0][0]
        have = replica.sql("SELECT @@gtid_slave_pos")[0][0]
        if want == have:
            return
        time.sleep(0.1)
    status = replica.sql("SHOW SLAVE STATUS")
    raise AssertionError(f"replica did not catch up ({want} vs {have}): {status}")


def write_config(path: Path, repository: str, sources: dict[str, dict[str, Any]]) -> Path:
    """A TOML config with [sources.NAME] tables (values: str, int, bool, list of str)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = [f"repository = {value(repository)}"]
    for name, table in sources.items():
        lines.append(f"\n[sources.{name}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def archived_postgres(dr: Any, passphrase: str, source: str = "pg") -> Iterator[tuple[PgServer, dict[str, str]]]:
    """A throwaway PostgreSQL archiving into ``dr``'s repository with the documented
    archive_command, and a config naming it as a base-backup source (``dr.env`` and the
    yielded archive environment both point at it): the set-up every PITR scenario shares."""
    env = archive_env(dr.tmp, dr.env, passphrase)
    with postgres_server(archive_env=env, source=source) as server:
        config = write_config(dr.tmp / "drtool.toml", str(dr.repo), {source: server.source(method="basebackup")})
        env["DRTOOL_CONFIG"] = dr.env["DRTOOL_CONFIG"] = str(config)
        yield server, env


def insert_events(server: MariaServer, tag: str, count: int, database: str = "wiki") -> None:
    """Rows (tag, 0..count-1) in ``events``: the PITR scenarios' marker for "written at tN"."""
    conn = server.connect(database)
    try:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO events (tag, n) VALUES (%s, %s)", [(tag, i) for i in range(count)])
    finally:
        conn.close()


def wiki_history_t0_to_t3(server: MariaServer, backup: Callable[[], None]) -> datetime:
    """The MariaDB PITR scenario: t0 rows, ``backup()``, then t1, t2, a moment, t3, each in binlogs.

    Returns the moment between t2 and t3 (UTC): a restore to it must hold t0..t2 only.
    """
    server.sql("CREATE DATABASE wiki")
    server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
    insert_events(server, "t0", 5)
    backup()
    insert_events(server, "t1", 10)
    server.sql("FLUSH BINARY LOGS")
    time.sleep(1.1)
    insert_events(server, "t2", 20)
    server.sql("FLUSH BINARY LOGS")
    time.sleep(1.1)
    between = datetime.now(timezone.utc)
    time.sleep(1.1)
    insert_events(server, "t3", 30)
    server.sql("FLUSH BINARY LOGS")
    return between
