"""Database sandboxes: a throwaway MariaDB or PostgreSQL server per rehearsal step.

The snapshot's files are already restored into ``data_dir`` (and checked)
when :meth:`bring_up` runs.  Then:

* a base for point-in-time recovery (``mariadb-dump`` with binlog
  coordinates, ``pg-base`` with archived WAL) goes through
  ``drtool.databases``: the same code path as ``drtool restore`` for
  databases, so a rehearsal tests exactly what on-call will run, including
  log replay up to the recovery point;
* any other snapshot (a plain SQL dump, a ``pg_dump -Fc`` file) is loaded into
  a fresh server: ``mariadb < file`` / ``pg_restore`` or ``psql -f``.

Servers listen only on a private Unix socket inside the sandbox (no TCP
port to collide with production) and are stopped before the sandbox
directory is removed.  PostgreSQL refuses to run as root; as root, the
server runs in a user namespace (``unshare --user``), as the database tests do.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from drtool.backends import capabilities
from drtool.childenv import child_environment
from drtool.errors import DrtoolError, RestoreTargetError, SourceError
from drtool.databases import planner
from drtool.databases.engine import RestoreRequest
from drtool.databases.mariadb import MARIADB, restore_dump
from drtool.databases.mariadb_mydumper import MARIADB_MYDUMPER, restore_mydumper
from drtool.databases.mariadb_physical import MARIADB_PHYSICAL, restore_physical
from drtool.databases.postgresql import POSTGRESQL, fetch_environment, restore_datadir, verify_recovery
from drtool.rehearse.sandbox import Sandbox, remove_tree
from drtool.core.session import Session
from drtool.snapshot.model import Snapshot
from drtool.sources import mariadb, postgres

SOCKET_DIR_MAX = 80
LOG_TAIL_BYTES = 8192  # of a failed server's log, kept in the rehearsal record
QUERY_TIMEOUT = 300
LOAD_TIMEOUT = 6 * 3600
PG_DUMP_MAGIC = b"PGDMP"
NAMESPACE_UID = 1000
CLIENT_ENV = ("MYSQL_HOME", "MYSQL_UNIX_PORT", "MYSQL_PWD")


class DatabaseSandbox(Sandbox):
    """Common life cycle: a short server directory, env, teardown that stops first."""

    kind = "database"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server_dir = ""
        self._outside = False  # server_dir lives outside the sandbox (short socket path)
        self.database = self.spec.database
        self.running = False

    def make_server_dir(self, outside: bool = False) -> str:
        """A directory for the server whose socket path fits the 107-byte limit (or one
        outside the sandbox, e.g. for a server user that cannot enter the sandbox)."""
        inside = os.path.join(self.path, "srv")
        if len(inside) <= SOCKET_DIR_MAX and not outside:
            os.makedirs(inside, mode=0o700)
            self.server_dir = inside
        else:
            self.server_dir = tempfile.mkdtemp(prefix="drdb-", dir="/tmp")
            self._outside = True
        return self.server_dir

    def restored_files(self) -> list[str]:
        found = []
        for dirpath, _dirs, names in os.walk(self.data_dir):
            found += [os.path.join(dirpath, n) for n in names if os.path.isfile(os.path.join(dirpath, n))]
        if not found:
            raise RestoreTargetError(f"snapshot {self.snapshot.short_id if self.snapshot else ''} "
                                     f"holds no dump file to load")
        return sorted(found)

    def source_conf(self) -> dict[str, Any]:
        conf = dict(self.context.source_conf or {})
        return conf if conf.get("type") in ("mariadb", "mysql", "postgresql") else {}

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.database:
            env["DRTOOL_SANDBOX_DATABASE"] = self.database
        return env

    def describe(self) -> str:
        """What --keep leaves: says the server runs only when its process is alive."""
        text = super().describe()
        if self.is_running():
            text += f"; {self.kind} server running in {self.server_dir} ({self.stop_hint()})"
        elif self.server_dir:
            text += f"; the {self.kind} server is not running (its log: {self.log_path()})"
        return text

    def stop_hint(self) -> str:
        return ""

    def pid_file(self) -> str:
        return ""

    def log_path(self) -> str:
        return ""

    def is_running(self) -> bool:
        """The server's process exists (its pid file names a live process)."""
        try:
            with open(self.pid_file(), encoding="ascii") as handle:
                os.kill(int(handle.readline().strip()), 0)
            return True
        except PermissionError:
            return True  # alive, owned by another user
        except (OSError, ValueError):
            return False

    def server_log(self) -> str | None:
        """The end of the server's log, for the rehearsal record: the sandbox (and the log
        with it) is removed when the rehearsal ends."""
        path = self.log_path()
        if not path:
            return None
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - LOG_TAIL_BYTES))
                return handle.read().decode(errors="replace")
        except OSError:
            return None

    def note_plan(self, plan: planner.PitrPlan) -> planner.PitrPlan:
        """A newer base passed over (its chain broken, or a member lacking a pack) is a warning in the
        rehearsal's record: the step may pass, but from an older chain than on-call would expect."""
        self.warnings += plan.fallback()  # one line per cause, as the restore warns
        return plan

    def stop(self) -> None:
        """Stop the server (idempotent)."""

    def teardown(self) -> None:
        try:
            self.stop()
        finally:
            if self._outside and os.path.lexists(self.server_dir):
                remove_tree(self.server_dir)
            super().teardown()


def _run(cmd: list[str], what: str, *, stdin: Any = subprocess.DEVNULL, timeout: float = LOAD_TIMEOUT,
         prefix: list[str] | None = None, error: type[DrtoolError] = RestoreTargetError) -> str:
    cmd = [*(prefix or []), *cmd]
    try:
        proc = subprocess.run(cmd, stdin=stdin, capture_output=True, timeout=timeout, check=False,
                              env=child_environment())
    except subprocess.TimeoutExpired:
        raise error(f"{what} did not finish within {timeout:.0f}s", hint="") from None
    except OSError as exc:
        raise error(f"{what} could not run: {exc.strerror or exc}", hint="") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.decode(errors="replace").strip().splitlines()[-3:])
        raise error(f"{what} failed (exit {proc.returncode}): {tail or '(no message)'}", hint="")
    return proc.stdout.decode(errors="replace")


# ----- MariaDB ---------------------------------------------------------------------------------
class MariadbSandbox(DatabaseSandbox):
    kind = "mariadb"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance: mariadb.Instance | None = None

    def _source(self) -> mariadb.MariaSource:
        conf = self.source_conf()
        if conf:
            return mariadb.MariaSource.from_config(self.context.source, conf)
        return mariadb.MariaSource(name=self.context.source or "sandbox", all=True)

    def restores_from_repository(self, snap: Snapshot) -> bool:
        if snap.kind in (MARIADB_PHYSICAL, MARIADB_MYDUMPER):
            return True
        if snap.kind != MARIADB.base_kind or not snap.meta.get("binlog_file"):
            return False
        try:
            return self._source().pitr
        except DrtoolError:
            return False  # bring_up reports the configuration problem

    def bring_up(self, session: Session, snap: Snapshot, target: datetime, latest: bool) -> datetime:
        src = self._source()
        self.instance = mariadb.Instance(os.path.join(self.make_server_dir(), "db"), None, src.bindir)
        self.running = True  # from here on teardown must try to stop a server
        with self._client_env():
            if snap.kind == MARIADB_PHYSICAL:
                return self._bring_up_physical(session, snap, src, target, latest)
            if snap.kind == MARIADB_MYDUMPER:
                return self._bring_up_mydumper(session, snap, src, target, latest)
            if snap.kind == MARIADB.base_kind and snap.meta.get("binlog_file") and src.pitr:
                plan = self.note_plan(planner.plan_pitr(session, snap.name, MARIADB, None if latest else target))
                result = restore_dump(session, plan, src, target_db=None, target_dir=self.instance.root,
                                      start=True)
                self.database = self.database or result.target_db
                return plan.recoverable_until if latest else min(target, plan.recoverable_until)
            self.instance.install()
            self.instance.start()
            self._load_dumps(self.instance.source(src.name))
        return snap.time

    def _bring_up_physical(self, session: Session, snap: Snapshot, src: mariadb.MariaSource, target: datetime,
                           latest: bool) -> datetime:
        """mariabackup copy: extract, prepare, replay binlogs as 'drtool restore' does, then start.

        The copy holds production's accounts and passwords: the sandbox server
        runs with --skip-grant-tables, reachable only on its private socket.
        """
        assert self.instance is not None
        if src.pitr and snap.meta.get("binlog_file"):
            plan = self.note_plan(planner.plan_pitr(session, snap.name, MARIADB, None if latest else target))
        else:
            plan = self.note_plan(planner.plan_pitr(session, snap.name, MARIADB, None, snapshot=snap.id))
        restore_physical(session, plan, src, RestoreRequest(target=self.instance.root))
        self.instance.start(extra=["--skip-grant-tables", "--skip-slave-start"])
        if plan.immediate:
            return plan.base.consistent_at
        return plan.recoverable_until if latest else min(target, plan.recoverable_until)

    def _bring_up_mydumper(self, session: Session, snap: Snapshot, src: mariadb.MariaSource, target: datetime,
                           latest: bool) -> datetime:
        """Per-table files loaded by myloader into the fresh instance, binlogs replayed to the point."""
        assert self.instance is not None
        if src.pitr and snap.meta.get("binlog_file"):
            plan = self.note_plan(planner.plan_pitr(session, snap.name, MARIADB, None if latest else target))
        else:
            plan = self.note_plan(planner.plan_pitr(session, snap.name, MARIADB, None, snapshot=snap.id))
        result = restore_mydumper(session, plan, src, RestoreRequest(target=self.instance.root, start=True))
        self.database = self.database or result.target_db
        if plan.immediate:
            return plan.base.consistent_at
        return plan.recoverable_until if latest else min(target, plan.recoverable_until)

    def _load_dumps(self, server: mariadb.MariaSource) -> None:
        if self.database:
            mariadb.run_sql(server, f"CREATE DATABASE IF NOT EXISTS {mariadb.quote_ident(self.database)}")
        for path in self.restored_files():
            with mariadb.client_options(server) as opts, open(path, "rb") as dump:
                _run(mariadb.client_command(server, opts, self.database, extra=["--binary-mode"]),
                     f"loading {os.path.basename(path)} into MariaDB", stdin=dump)

    @contextmanager
    def _client_env(self) -> Iterator[None]:
        """Client tools read $MYSQL_HOME/my.cnf: point it at the sandbox's own, so an
        operator's settings for production (socket, password) never reach the
        throwaway server.  (~/.my.cnf is read too; keep production passwords in
        the sources' password_file instead.)"""
        saved = {k: os.environ.get(k) for k in CLIENT_ENV}
        os.environ.update(self._client_settings())
        os.environ.pop("MYSQL_PWD", None)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _client_settings(self) -> dict[str, str]:
        assert self.instance is not None
        home = os.path.join(self.server_dir, "client")
        if not os.path.exists(home):
            os.makedirs(home, mode=0o700)
            with open(os.path.join(home, "my.cnf"), "w", encoding="utf-8") as handle:
                handle.write(f"[client]\nsocket={self.instance.socket}\nuser=root\npassword=\n")
        return {"MYSQL_HOME": home, "MYSQL_UNIX_PORT": self.instance.socket}

    def query(self, sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
        if self.instance is None:
            raise DrtoolError("the sandbox MariaDB server is not running")
        server = self.instance.source("sandbox")
        with self._client_env(), mariadb.client_options(server) as opts:
            cmd = mariadb.client_command(server, opts, database or self.database,
                                         extra=["--batch", "--skip-column-names", "-e", sql])
            out = _run(cmd, "the SQL probe", timeout=QUERY_TIMEOUT, error=DrtoolError)
        return [tuple(line.split("\t")) for line in out.splitlines() if line]

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.instance is not None:
            env.update(self._client_settings(), DRTOOL_SANDBOX_SOCKET=self.instance.socket)
        return env

    def stop_hint(self) -> str:
        return f"stop with: kill $(cat '{self.pid_file() or '?'}')"

    def pid_file(self) -> str:
        return os.path.join(self.instance.datadir, "mariadbd.pid") if self.instance else ""

    def log_path(self) -> str:
        return os.path.join(self.instance.datadir, "mariadbd.err") if self.instance else ""

    def stop(self) -> None:
        if self.instance is not None and self.running:
            self.instance.stop()
            self.running = False


# ----- PostgreSQL -------------------------------------------------------------------------------
def _server_prefix(shared_group: int | None = None) -> list[str]:
    """PostgreSQL will not run as root: as root, run it in a user namespace instead.

    Inside, the server is an ordinary uid; outside, its files stay root's, so
    nothing needs chowning and its restore_command can read the repository's
    root-owned files.  It has none of root's power over other users' files,
    though: in a repository shared with a group (``init --group``: WAL written by
    ``postgres``, mode 0640) it reads them as a member of that group, which
    ``setpriv --groups`` gives it before the namespace is entered.
    """
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RestoreTargetError("PostgreSQL refuses to run as root and 'unshare' (util-linux) is missing",
                                 hint="run the rehearsal as the PostgreSQL OS user")
    uid = str(NAMESPACE_UID)
    prefix = [unshare, "--user", f"--map-user={uid}", f"--map-group={uid}"]
    setpriv = shutil.which("setpriv")
    if shared_group is not None and setpriv is not None:
        prefix = [setpriv, f"--groups={shared_group}", *prefix]
    return prefix


class PostgresSandbox(DatabaseSandbox):
    kind = "postgresql"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pgdata = ""
        self.prefix: list[str] = []
        self.bindir: str | None = None

    def _source(self) -> postgres.PgSource | None:
        conf = self.source_conf()
        return postgres.PgSource.from_config(self.context.source, conf) if conf else None

    def restores_from_repository(self, snap: Snapshot) -> bool:
        return snap.kind == POSTGRESQL.base_kind

    def bring_up(self, session: Session, snap: Snapshot, target: datetime, latest: bool) -> datetime:
        self.prefix = _server_prefix(capabilities.shared_group(session.repo.backend))
        src = self._source()
        self.bindir = src.bindir if src else None
        self.pgdata = os.path.join(self.make_server_dir(), "pgdata")
        if snap.kind == POSTGRESQL.base_kind:
            return self._recover(session, snap, target, latest, src)
        self._initdb()
        self._start()
        self.database = self.database or "restored"
        self._psql("postgres", f'CREATE DATABASE "{self.database}"')
        for path in self.restored_files():
            self._load(path)
        return snap.time

    def _recover(self, session: Session, snap: Snapshot, target: datetime, latest: bool,
                 src: postgres.PgSource | None) -> datetime:
        """Base backup + WAL replay through drtool.databases, as 'drtool restore' does."""
        plan = self.note_plan(planner.plan_pitr(session, snap.name, POSTGRESQL, None if latest else target))
        fetch_env = fetch_environment(self.context.settings) if self.context.settings else {}
        if not fetch_env:
            raise RestoreTargetError("a postgresql sandbox for a base backup needs the drtool settings")
        src = src or postgres.PgSource(name=snap.name, method="basebackup")
        spaces = plan.base.snapshot.meta.get("tablespaces") or []  # never production's locations
        places = {space["oid"]: os.path.join(self.server_dir, "tablespaces", space["oid"]) for space in spaces}
        restore_datadir(session, plan, src, self.pgdata, fetch_env=fetch_env, start=False, tablespace_map=places)
        self._write_conf(recovery=True)
        self._start(wait_recovery=True)
        log_text = postgres.read_log(os.path.join(self.server_dir, "postgres.log"))
        verify_recovery(plan, postgres.recovery_outcome(log_text))  # a drill never passes short
        self.database = self.database or "postgres"
        return plan.recoverable_until if latest else min(target, plan.recoverable_until)

    def _bin(self, name: str) -> str:
        return postgres.find_binary(name, self.bindir)

    def _initdb(self) -> None:
        _run([self._bin("initdb"), "-D", self.pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--no-sync"], "initdb of the sandbox cluster", prefix=self.prefix)
        self._write_conf(recovery=False)

    def _write_conf(self, recovery: bool) -> None:
        with open(os.path.join(self.pgdata, "postgresql.auto.conf"), "a", encoding="utf-8") as handle:
            handle.write("\n# drtool rehearsal sandbox: private socket only, no archiving\n"
                         f"listen_addresses = ''\nunix_socket_directories = '{self.server_dir}'\n"
                         "port = 5432\narchive_mode = off\nfsync = off\n")

    def _start(self, wait_recovery: bool = False) -> None:
        log_file = os.path.join(self.server_dir, "postgres.log")
        self.running = True
        _run(postgres.pg_ctl_command(self.pgdata, "start", self.bindir, log_file), "starting PostgreSQL",
             prefix=self.prefix)
        if wait_recovery:
            _wait_for_promotion(self.pgdata, log_file)
            self._wait_until_writable()

    def _wait_until_writable(self) -> None:
        """recovery.signal goes before the end-of-recovery checkpoint: until that is done the
        server still answers ``pg_is_in_recovery() = t`` and refuses writes, and a drill's
        first validation raced it."""
        deadline = time.monotonic() + LOAD_TIMEOUT
        while self._psql("postgres", "SELECT pg_is_in_recovery()").strip() != "f":
            if time.monotonic() > deadline:
                raise RestoreTargetError(f"PostgreSQL did not leave recovery within {LOAD_TIMEOUT}s")
            time.sleep(0.1)

    def _psql(self, database: str, sql: str) -> str:
        return _run([self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t",
                     "-h", self.server_dir, "-U", "postgres", "-d", database, "-c", sql],
                    "the SQL probe", timeout=QUERY_TIMEOUT, prefix=self.prefix, error=DrtoolError)

    def _load(self, path: str) -> None:
        """Feed the dump on stdin: the server user need not be able to read the sandbox."""
        with open(path, "rb") as probe:
            custom = probe.read(len(PG_DUMP_MAGIC)) == PG_DUMP_MAGIC
        with open(path, "rb", buffering=0) as handle:
            conn = ["-h", self.server_dir, "-U", "postgres", "-d", str(self.database)]
            if custom:
                cmd = [self._bin("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", *conn]
            else:
                cmd = [self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *conn, "-f", "-"]
            _run(cmd, f"loading {os.path.basename(path)} into PostgreSQL", stdin=handle, prefix=self.prefix)

    def query(self, sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
        if not self.running:
            raise DrtoolError("the sandbox PostgreSQL server is not running")
        out = self._psql(database or self.database or "postgres", sql)
        return [tuple(line.split("\t")) for line in out.splitlines() if line]

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.running:
            env.update(PGHOST=self.server_dir, PGPORT="5432", PGUSER="postgres",
                       PGDATABASE=self.database or "postgres", DRTOOL_SANDBOX_SOCKET=self.server_dir)
        return env

    def stop_hint(self) -> str:
        return f"stop with: {self._bin('pg_ctl')} -D '{self.pgdata}' stop -m fast"

    def pid_file(self) -> str:
        return os.path.join(self.pgdata, "postmaster.pid") if self.pgdata else ""

    def log_path(self) -> str:
        return os.path.join(self.server_dir, "postgres.log") if self.server_dir else ""

    def stop(self) -> None:
        pid_file = os.path.join(self.pgdata, "postmaster.pid") if self.pgdata else ""
        if self.running and os.path.exists(pid_file):
            try:
                _run(postgres.pg_ctl_command(self.pgdata, "stop", self.bindir, None, 60),
                     "stopping PostgreSQL", prefix=self.prefix, timeout=90)
            except (RestoreTargetError, SourceError):
                _kill_postmaster(pid_file)
        self.running = False


def _wait_for_promotion(pgdata: str, log_file: str) -> None:
    """WAL replay is over when the server removed recovery.signal and is still up."""
    deadline = time.monotonic() + LOAD_TIMEOUT
    while os.path.exists(os.path.join(pgdata, "recovery.signal")):
        if not os.path.exists(os.path.join(pgdata, "postmaster.pid")):
            raise RestoreTargetError("PostgreSQL recovery failed: the server exited",
                                     hint="its log is in the step's record (drtool rehearsals --json)")
        if time.monotonic() > deadline:
            raise RestoreTargetError(f"PostgreSQL recovery did not finish within {LOAD_TIMEOUT}s")
        time.sleep(0.2)


def _kill_postmaster(pid_file: str) -> None:
    """Last resort when a fast shutdown failed: the sandbox must not leak a server."""
    try:
        with open(pid_file, encoding="ascii") as handle:
            os.kill(int(handle.readline().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


SANDBOX_TYPES: dict[str, type[Sandbox]] = {"mariadb": MariadbSandbox, "postgresql": PostgresSandbox}
