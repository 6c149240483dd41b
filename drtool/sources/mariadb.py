"""MariaDB / MySQL as a backup source: configuration, dump and binlog commands, parsing.

A dump is ``mariadb-dump --single-transaction --master-data=2 --gtid``: one
consistent snapshot whose binlog coordinates (file, position, GTID) are
written as comments near the top of the dump; drtool reads them from the
stream into the snapshot's ``meta`` so a restore knows where binlog replay
starts.  A dump without the final ``-- Dump completed`` line was cut short
and never becomes a snapshot.

Credentials come from option files only: ``defaults_file`` (an option file
of the user's) or ``password_file`` (the bare password, turned into a private
short-lived option file).  Option files are the only way to give the MariaDB
tools a password without putting it in argv.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from drtool.childenv import child_environment
from drtool.errors import ConfigError, RestoreTargetError, SourceError
from drtool.sources.common import check_one_database_choice, check_table, make_private_dir

KEYS = {"type", "host", "port", "socket", "user", "dbname", "databases", "all", "password_file",
        "defaults_file", "bindir", "binlog_dir", "options", "pitr", "log_timeout", "method", "threads",
        "full_every", "subpage"}
METHODS = ("dump", "physical", "mydumper")
DUMP_END_MARKER = b"-- Dump completed"
_COORD_RE = re.compile(rb"CHANGE MASTER TO MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=(\d+)")
_GTID_RE = re.compile(rb"SET GLOBAL gtid_slave_pos='([^']*)'")
_EVENT_RE = re.compile(r"^#(\d{6})\s+(\d{1,2}):(\d\d):(\d\d) server id (\d+)\s+end_log_pos (\d+)(.*)$")
_GTID_EVENT_RE = re.compile(r"\sGTID (\d+-\d+-\d+)")
_GTID_LIST_RE = re.compile(r"\sGtid list \[([^\]]*)\]")
BINLOG_SEQ_RE = re.compile(r"\.(\d+)$")
# The client's errors that mean the server was not reached, or refused the account: no query of the
# backup can succeed (2002/2003 nothing listening, 2005 unknown host, 2006/2013 connection lost,
# 1045/1698 access denied).
_UNREACHABLE_RE = re.compile(r"^ERROR (1045|1698|2002|2003|2005|2006|2013) \(\w+\)(?: at line \d+)?: (.*)$", re.M)


@dataclass
class MariaSource:
    """One ``[sources.NAME]`` table of ``type = "mariadb"`` (or ``"mysql"``)."""

    name: str
    host: str | None = None
    port: int | None = None
    socket: str | None = None
    user: str | None = None
    dbname: str | None = None
    databases: list[str] = field(default_factory=list)
    all: bool = False
    password_file: str | None = None
    defaults_file: str | None = None
    bindir: str | None = None
    binlog_dir: str | None = None
    options: list[str] = field(default_factory=list)
    pitr: bool = True
    method: str = "dump"       # or "physical": mariabackup of the whole server; "mydumper": per table
    threads: int = 4           # mydumper / myloader threads
    full_every: int = 7        # physical: a full backup at least every N nights (N-1 incrementals between)
    subpage: bool = True       # physical: incrementals store changed 512-byte blocks (databases/subpage_*)
    no_defaults: bool = False  # a throwaway instance of drtool's own: ignore the host's option files

    @classmethod
    def from_config(cls, name: str, table: dict[str, Any]) -> "MariaSource":
        check_table(name, table, KEYS)
        src = cls(name=name, host=table.get("host"), port=table.get("port"), socket=table.get("socket"),
                  user=table.get("user"), dbname=table.get("dbname"),
                  databases=list(table.get("databases", [])), all=bool(table.get("all", False)),
                  password_file=table.get("password_file"), defaults_file=table.get("defaults_file"),
                  bindir=table.get("bindir"), binlog_dir=table.get("binlog_dir"),
                  options=list(table.get("options", [])), pitr=bool(table.get("pitr", True)),
                  method=table.get("method", "dump"), threads=table.get("threads", 4),
                  full_every=table.get("full_every", 7), subpage=table.get("subpage", True))
        if src.method not in METHODS:
            raise ConfigError(f"[sources.{name}]: method must be one of {', '.join(METHODS)}")
        if not isinstance(src.threads, int) or isinstance(src.threads, bool) or not 1 <= src.threads <= 256:
            raise ConfigError(f"[sources.{name}]: threads must be a whole number from 1 to 256")
        if "full_every" in table and src.method != "physical":
            raise ConfigError(f"[sources.{name}]: full_every is for method = \"physical\" (incremental nights)")
        if "subpage" in table and (src.method != "physical" or not isinstance(src.subpage, bool)):
            raise ConfigError(f"[sources.{name}]: subpage is true or false, for method = \"physical\"")
        if not isinstance(src.full_every, int) or isinstance(src.full_every, bool) or src.full_every < 1:
            raise ConfigError(f"[sources.{name}]: full_every must be a whole number of nights, 1 or more "
                              f"(1: every physical backup is full)")
        if src.method == "physical":
            if src.dbname or src.databases or src.all:
                raise ConfigError(f"[sources.{name}]: a physical backup copies the whole server: "
                                  f"drop dbname / databases / all")
        else:
            check_one_database_choice(name, src.dbname, src.databases, src.all)
        return src

    @property
    def single_database(self) -> str | None:
        """The database of a one-database dump (no CREATE DATABASE / USE in it)."""
        return self.dbname if self.dbname and not self.databases and not self.all else None


def find_binary(name: str, bindir: str | None = None) -> str:
    """A MariaDB program from bindir, PATH, /usr/sbin or /usr/local/{bin,sbin}."""
    if bindir:
        path = os.path.join(bindir, name)
        if os.access(path, os.X_OK):
            return path
        raise SourceError(f"{name} not found in bindir {bindir}", hint="fix 'bindir' in the source")
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    raise SourceError(f"MariaDB program {name} not found",
                      hint="install the MariaDB client/server packages or set 'bindir'")


def _option_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def client_options(src: MariaSource) -> Iterator[list[str]]:
    """Leading options for every MariaDB tool: the credentials as an option file.

    ``--defaults-extra-file`` must be the first argument; the user's own
    ``defaults_file`` is pulled in with ``!include`` so both can be combined.
    A throwaway instance (``no_defaults``) gets ``--no-defaults`` (or
    ``--defaults-file``: only that file) instead: the operator's ``~/.my.cnf``
    or ``$MYSQL_HOME/my.cnf`` holds production's password or socket, which
    would make drtool's own probe and load fail against the passwordless
    instance (or reach the wrong server).
    """
    flag = "--defaults-file" if src.no_defaults else "--defaults-extra-file"
    if not src.password_file:
        if src.defaults_file:
            yield [f"{flag}={src.defaults_file}"]
        else:
            yield ["--no-defaults"] if src.no_defaults else []
        return
    try:
        with open(src.password_file, encoding="utf-8") as handle:
            password = handle.read().rstrip("\r\n")
    except OSError as exc:
        raise SourceError(f"cannot read password_file {src.password_file}: {exc.strerror}") from None
    fd, path = tempfile.mkstemp(prefix="drtool-my-", suffix=".cnf")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if src.defaults_file:
                handle.write(f"!include {src.defaults_file}\n")
            handle.write(f"[client]\npassword={_option_value(password)}\n")
        yield [f"{flag}={path}"]
    finally:
        os.unlink(path)


def conn_args(src: MariaSource) -> list[str]:
    args = []
    if src.socket:
        args.append(f"--socket={src.socket}")
    if src.host:
        args.append(f"--host={src.host}")
    if src.port:
        args.append(f"--port={src.port}")
    if src.user:
        args.append(f"--user={src.user}")
    return args


def dump_command(src: MariaSource, opts: list[str]) -> list[str]:
    cmd = [find_binary("mariadb-dump", src.bindir), *opts, *conn_args(src), "--single-transaction",
           "--routines", "--triggers", "--events", "--hex-blob"]
    if src.pitr:
        cmd += ["--master-data=2", "--gtid"]
    cmd += src.options
    if src.all:
        return cmd + ["--all-databases"]
    if src.databases:
        return cmd + ["--databases", *src.databases]
    return cmd + [src.dbname or ""]


def client_command(src: MariaSource, opts: list[str], database: str | None = None,
                   extra: list[str] | None = None) -> list[str]:
    cmd = [find_binary("mariadb", src.bindir), *opts, *conn_args(src), *(extra or [])]
    return cmd + ([database] if database else [])


def parse_dump_coordinates(head: bytes) -> dict[str, Any]:
    """Binlog file/position and GTID position written by ``--master-data=2 --gtid``."""
    meta: dict[str, Any] = {}
    match = _COORD_RE.search(head)
    if match:
        meta["binlog_file"] = match.group(1).decode()
        meta["binlog_pos"] = int(match.group(2))
    gtid = _GTID_RE.search(head)
    if gtid:
        meta["gtid_pos"] = gtid.group(1).decode()
    return meta


def dump_is_complete(tail: bytes) -> bool:
    return DUMP_END_MARKER in tail[-4096:]


def binlog_seq(name: str) -> int | None:
    match = BINLOG_SEQ_RE.search(name)
    return int(match.group(1)) if match else None


# ----- binlogs on the server -----------------------------------------------------------------
def run_sql(src: MariaSource, sql: str) -> list[list[str]]:
    """Run SQL with the ``mariadb`` client in batch mode; rows as lists of strings."""
    with client_options(src) as opts:
        cmd = client_command(src, opts, extra=["--batch", "--skip-column-names", "-e", sql])
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=300, check=False, env=child_environment())
    if proc.returncode != 0:
        unreachable = _UNREACHABLE_RE.search(proc.stderr)
        if unreachable:
            raise ServerUnreachable(f"cannot connect to the MariaDB server at {server_address(src)}: "
                                    f"{unreachable.group(2).strip()}",
                                    hint=f"start the server, or fix host, port, socket, user or password_file in "
                                         f"[sources.{src.name}]; nothing was written")
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise SourceError(f"mariadb client failed for source {src.name}: {tail or proc.returncode}")
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


class ServerUnreachable(SourceError):
    """The server did not answer, or refused the account: every later step would fail the same way,
    so the backup stops here with this one line rather than a warning and the dump tool's error."""


def server_address(src: MariaSource) -> str:
    """Where the client connects, for messages: the socket, else host:port."""
    if src.socket:
        return f"socket {src.socket}"
    return f"{src.host or 'localhost'}:{src.port or 3306}"


def binary_logs(src: MariaSource) -> tuple[list[tuple[str, int]], str]:
    """(name, size) of every binlog the server still has, and ``@@log_bin_basename``."""
    rows = run_sql(src, "SHOW BINARY LOGS; SELECT @@log_bin_basename;")
    logs = [(r[0], int(r[1])) for r in rows if len(r) >= 2 and r[1].isdigit()]
    basename = next((r[0] for r in rows if len(r) == 1), "")
    if not logs:
        raise SourceError(f"source {src.name}: the server has no binary logs",
                          hint="start mariadbd with log_bin (and binlog_format=ROW) for point-in-time restore")
    return logs, basename


def server_id(src: MariaSource) -> int:
    """``@@server_id``: the server part of the GTIDs it writes, and of its archived binlog names."""
    rows = run_sql(src, "SELECT @@server_id")
    return int(rows[0][0])


def binlog_path(src: MariaSource, name: str, basename: str, workdir: str) -> str:
    """A readable copy of one binlog: the local file if we can read it, else a remote raw copy."""
    folder = src.binlog_dir or (os.path.dirname(basename) if basename and basename != "NULL" else "")
    local = os.path.join(folder, name) if folder else ""
    if local and os.access(local, os.R_OK):
        return local
    with client_options(src) as opts:
        cmd = [find_binary("mariadb-binlog", src.bindir), *opts, *conn_args(src),
               "--read-from-remote-server", "--raw", f"--result-file={workdir}/", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=3600, check=False, env=child_environment())
    copy = os.path.join(workdir, name)
    if proc.returncode != 0 or not os.path.exists(copy):
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise SourceError(f"cannot read binlog {name} of source {src.name}: {tail or proc.returncode}")
    return copy


@dataclass
class BinlogInfo:
    first_time: datetime | None = None
    last_time: datetime | None = None
    first_gtid: str | None = None
    last_gtid: str | None = None
    gtid_list: str | None = None
    end_pos: int = 0
    events: int = 0
    server_id: int | None = None  # the server that wrote the file (its format description event)
    first_by_domain: dict[int, str] = field(default_factory=dict)  # first GTID per domain in the file
    last_by_domain: dict[int, str] = field(default_factory=dict)   # last GTID per domain in the file


def _event_time(match: re.Match[str]) -> datetime | None:
    day = match.group(1)
    if day == "700101":
        return None  # fake events (rotate of a remote read) carry timestamp 0
    return datetime(2000 + int(day[:2]), int(day[2:4]), int(day[4:]), int(match.group(2)),
                    int(match.group(3)), int(match.group(4)), tzinfo=timezone.utc)


def scan_binlog(path: str, bindir: str | None = None) -> BinlogInfo:
    """Event times, positions and GTIDs of one binlog file (``mariadb-binlog`` headers, UTC)."""
    cmd = [find_binary("mariadb-binlog", bindir), "--no-defaults", "--base64-output=decode-rows",
           "--skip-gtid-strict-mode", path]  # a replica's own early GTIDs may sort before the primary's
    info = BinlogInfo()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=child_environment({"TZ": "UTC"}))
    assert proc.stdout is not None and proc.stderr is not None
    listing: list[str] | None = None  # a Gtid list printed over several lines ("# 0-1-6]")
    for raw in proc.stdout:
        if not raw.startswith(b"#"):
            continue
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if listing is not None:
            listing.append(line[1:].strip())
            if "]" in line:
                info.gtid_list, listing = "".join(listing).split("]")[0], None
            continue
        match = _EVENT_RE.match(line)
        if match:
            _note_event(info, match)
            if info.gtid_list is None and "\tGtid list [" in line and "]" not in line:
                listing = [line.split("Gtid list [", 1)[1]]
    err = proc.stderr.read().decode("utf-8", "replace")
    if proc.wait() != 0:
        raise SourceError(f"mariadb-binlog cannot read {os.path.basename(path)}: "
                          f"{' | '.join(err.strip().splitlines()[-3:])}")
    return info


def _note_event(info: BinlogInfo, match: re.Match[str]) -> None:
    info.events += 1
    stamp = _event_time(match)
    if stamp is not None:
        info.first_time = info.first_time or stamp
        info.last_time = max(info.last_time or stamp, stamp)
    info.end_pos = max(info.end_pos, int(match.group(6)))
    if info.server_id is None:
        info.server_id = int(match.group(5))
    rest = match.group(7)
    gtid = _GTID_EVENT_RE.search(rest)
    if gtid:
        info.first_gtid = info.first_gtid or gtid.group(1)
        info.last_gtid = gtid.group(1)
        domain = int(gtid.group(1).split("-", 1)[0])
        info.first_by_domain.setdefault(domain, gtid.group(1))
        info.last_by_domain[domain] = gtid.group(1)
    glist = _GTID_LIST_RE.search(rest)
    if glist and info.gtid_list is None:
        info.gtid_list = glist.group(1)


def replay_command(files: list[str], start_pos: int | str | None, stop: datetime | None,
                   database: str | None, rewrite_to: str | None, bindir: str | None,
                   table: str | None = None) -> list[str]:
    """``mariadb-binlog`` turning binlogs into SQL; run it with TZ=UTC (times are local to it).

    ``start_pos``: a byte position in the first file, or a GTID list (events
    after it in each domain; the replica's copy of an old primary's events is
    skipped).  A GTID start turns off strict mode, which would refuse a
    replica's own earlier transactions that sort before the primary's.
    """
    cmd = [find_binary("mariadb-binlog", bindir), "--no-defaults"]
    if isinstance(start_pos, str):
        cmd += [f"--start-position={start_pos}", "--skip-gtid-strict-mode"]
    elif start_pos is not None:
        cmd.append(f"--start-position={start_pos}")
    if stop is not None:
        cmd.append(f"--stop-datetime={stop.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}")
    if database:
        cmd.append(f"--database={database}")
        if rewrite_to and rewrite_to != database:
            cmd.append(f"--rewrite-db={database}->{rewrite_to}")
    if table:
        cmd.append(f"--table={table}")  # row events of that table only (a one-table restore)
    return cmd + files


_HEADER_RE = re.compile(rb"^#(\d{6})\s+(\d{1,2}):(\d\d):(\d\d) server id \d+\s+end_log_pos (\d+)([^\n]*)",
                        re.MULTILINE)
_MAX_CARRY = 4096


class ReplayProgress:
    """What a ``mariadb-binlog`` replay stream contained, read as it passes to the client.

    Per binlog file (a format description event, "Start: binlog", opens
    each): the last end position seen; plus the newest event time.  Event
    headers are printed even for events that ``--database`` filters out, so
    a fully read file ends at its last event's end position (its Rotate).
    """

    def __init__(self) -> None:
        self.file_end_pos: list[int] = []
        self.last_time: datetime | None = None
        self._carry = b""
        self._carry_cut = False

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        start = 0
        if self._carry_cut:  # the carry began mid-line: skip to the next line start
            start = data.find(b"\n") + 1
        for match in _HEADER_RE.finditer(data, start, cut):
            self._note(match)
        rest = data[cut:]
        self._carry_cut = len(rest) > _MAX_CARRY
        self._carry = rest[-_MAX_CARRY:]

    def _note(self, match: re.Match[bytes]) -> None:
        if b"\tStart: binlog" in match.group(6) or not self.file_end_pos:
            self.file_end_pos.append(0)
        self.file_end_pos[-1] = int(match.group(5))
        day = match.group(1).decode()
        if day != "700101":
            self.last_time = datetime(2000 + int(day[:2]), int(day[2:4]), int(day[4:]), int(match.group(2)),
                                      int(match.group(3)), int(match.group(4)), tzinfo=timezone.utc)


# ----- a fresh throwaway instance (restore target) ---------------------------------------------
def _user_args() -> list[str]:
    if os.geteuid() == 0:
        return ["--user=root"]  # mariadbd refuses root unless told to; files stay root's
    return []


def install_command(datadir: str, bindir: str | None = None, tmpdir: str | None = None) -> list[str]:
    """A private ``tmpdir``: bootstrap temp-table names can collide with other servers' in /tmp."""
    tmp = [f"--tmpdir={tmpdir}"] if tmpdir else []
    return [find_binary("mariadb-install-db", bindir), "--no-defaults", f"--datadir={datadir}",
            "--auth-root-authentication-method=normal", "--skip-test-db", *tmp, *_user_args()]


def server_command(datadir: str, socket: str, port: int | None, bindir: str | None = None,
                   tmpdir: str | None = None, extra: list[str] | None = None) -> list[str]:
    cmd = [find_binary("mariadbd", bindir), "--no-defaults", f"--datadir={datadir}", f"--socket={socket}",
           f"--pid-file={os.path.join(datadir, 'mariadbd.pid')}",
           f"--log-error={os.path.join(datadir, 'mariadbd.err')}", *_user_args(), *(extra or [])]
    if tmpdir:
        cmd.append(f"--tmpdir={tmpdir}")
    if port:
        return cmd + [f"--port={port}", "--bind-address=127.0.0.1"]
    return cmd + ["--skip-networking"]


def make_target_dir(path: str) -> None:
    """A restored server's directory (:func:`~drtool.sources.common.make_private_dir`)."""
    make_private_dir(path, hint="choose a writable --target for the restored MariaDB server")


class Instance:
    """A throwaway mariadbd on a fresh data directory (restore target ``--target DIR``)."""

    def __init__(self, root: str, port: int | None = None, bindir: str | None = None) -> None:
        self.root = os.path.abspath(root)
        self.datadir = os.path.join(self.root, "data")
        self.tmpdir = os.path.join(self.root, "tmp")
        self.socket = os.path.join(self.root, "mysqld.sock")
        self.port = port
        self.bindir = bindir
        if len(self.socket) > 100:
            raise RestoreTargetError(f"--target {root} is too long for a unix socket path",
                                     hint="use a shorter directory")

    def source(self, name: str) -> MariaSource:
        return MariaSource(name=name, socket=self.socket, user="root", all=True, bindir=self.bindir,
                           no_defaults=True)

    def install(self) -> None:
        if os.path.exists(self.root) and os.listdir(self.root):
            raise RestoreTargetError(f"restore target {self.root} is not empty",
                                     hint="choose a new --target for the fresh MariaDB instance")
        make_target_dir(self.tmpdir)
        _check_run(install_command(self.datadir, self.bindir, self.tmpdir), "mariadb-install-db")

    def start(self, timeout: float = 60.0, extra: list[str] | None = None, own_users: bool = False) -> None:
        """Start mariadbd and wait until it answers.

        ``own_users``: the data directory is a restored server's, whose accounts
        and passwords are production's; readiness is then read from the error
        log ("ready for connections") instead of a passwordless probe.
        """
        make_target_dir(self.tmpdir)
        log_file = os.path.join(self.datadir, "mariadbd.err")
        log_start = os.path.getsize(log_file) if os.path.exists(log_file) else 0
        cmd = server_command(self.datadir, self.socket, self.port, self.bindir, self.tmpdir, extra)
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, env=child_environment())
        deadline = time.monotonic() + timeout
        probe = self.source("probe")
        while True:
            try:
                if own_users:
                    if not _logged_ready(log_file, log_start):
                        raise SourceError("not ready")
                else:
                    run_sql(probe, "SELECT 1")
                return
            except SourceError:
                if time.monotonic() > deadline:
                    self.stop()  # it may be up yet unreachable: never leave a stray server behind
                    raise RestoreTargetError(f"the MariaDB instance in {self.root} did not start",
                                             hint=f"see {self.datadir}/mariadbd.err") from None
                time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> None:
        pid_file = os.path.join(self.datadir, "mariadbd.pid")
        try:
            with open(pid_file, encoding="ascii") as handle:
                pid = int(handle.read().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while os.path.exists(pid_file) and time.monotonic() < deadline:
            time.sleep(0.1)


def _logged_ready(log_file: str, offset: int) -> bool:
    try:
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            return b"ready for connections" in handle.read()
    except OSError:
        return False


def _check_run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
                          env=child_environment())
    if proc.returncode != 0:
        raise RestoreTargetError(f"{what} failed: {' | '.join(proc.stderr.strip().splitlines()[-3:])}")


def database_exists(src: MariaSource, database: str) -> bool:
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    rows = run_sql(src, f"SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='{escaped}'")
    return bool(rows)


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
