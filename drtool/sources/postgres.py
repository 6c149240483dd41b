"""PostgreSQL as a backup source: configuration, commands, WAL and label parsing.

Nothing here writes to the repository; the ops layer streams the commands'
output into it.  Credentials come from files only (``password_file`` — turned
into a private, short-lived pgpass file — or ``passfile``/PGPASSFILE), never
from argv, where every local user could read them in ``ps``.

Base backups are ``pg_basebackup -D - -Ft -X none``: one tar on stdout, WAL
left to the archive (``drtool pg wal-push``).  PostgreSQL only returns from
such a backup once the WAL it needs is archived ("all required WAL segments
have been archived"), so a committed ``pg-base`` snapshot is restorable as
long as the archive is.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Iterator, Sequence

from drtool.childenv import child_environment
from drtool.errors import ConfigError, ProgramFailed, RestoreTargetError, SourceError
from drtool.sources.common import check_one_database_choice, check_table, make_private_dir

METHODS = ("dump", "basebackup")
KEYS = {"type", "host", "port", "socket", "user", "dbname", "databases", "all", "password_file",
        "passfile", "bindir", "method", "options", "archive_async", "spool_dir", "archive_parallel",
        "log_timeout"}
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
BACKUP_RE = re.compile(r"^([0-9A-F]{24})\.([0-9A-F]{8})\.backup$")
PARTIAL_RE = re.compile(r"^([0-9A-F]{24})\.partial$")
LSN_RE = re.compile(r"^([0-9A-F]{1,8})/([0-9A-F]{1,8})$", re.IGNORECASE)
_XACT_RE = re.compile(r"tx:\s*(\d+),.*?desc: (COMMIT|ABORT)(?: PREPARED)? "
                      r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
RESTORE_POINT_MAX = 63  # PostgreSQL's MAXFNAMELEN - 1
_MANIFEST_WAL_RE = re.compile(rb'"Timeline":\s*(\d+),\s*"Start-LSN":\s*"([0-9A-F]+/[0-9A-F]+)",\s*'
                              rb'"End-LSN":\s*"([0-9A-F]+/[0-9A-F]+)"')


@dataclass
class PgSource:
    """One ``[sources.NAME]`` table of ``type = "postgresql"``."""

    name: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    dbname: str | None = None
    databases: list[str] = field(default_factory=list)
    all: bool = False
    password_file: str | None = None
    passfile: str | None = None
    bindir: str | None = None
    method: str = "dump"
    options: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, name: str, table: dict[str, Any]) -> "PgSource":
        check_table(name, table, KEYS)
        src = cls(name=name, host=table.get("socket") or table.get("host"), port=table.get("port"),
                  user=table.get("user"), dbname=table.get("dbname"),
                  databases=list(table.get("databases", [])), all=bool(table.get("all", False)),
                  password_file=table.get("password_file"), passfile=table.get("passfile"),
                  bindir=table.get("bindir"), method=table.get("method", "dump"),
                  options=list(table.get("options", [])))
        if src.method not in METHODS:
            raise ConfigError(f"[sources.{name}]: method must be one of {', '.join(METHODS)}")
        if src.method == "dump":
            check_one_database_choice(name, src.dbname, src.databases, src.all)
        return src

    def snapshot_names(self, databases: list[str]) -> dict[str, str]:
        """database → snapshot name: the source name for one dbname, NAME/db for several."""
        if self.dbname and not self.all and not self.databases:
            return {self.dbname: self.name}
        return {db: f"{self.name}/{db}" for db in databases}


# ----- binaries and connections --------------------------------------------------------
def find_binary(name: str, bindir: str | None = None) -> str:
    """A PostgreSQL program: configured bindir, PATH, ``pg_config --bindir``, Debian layout."""
    if bindir:
        path = os.path.join(bindir, name)
        if os.access(path, os.X_OK):
            return path
        raise SourceError(f"{name} not found in bindir {bindir}", hint="fix 'bindir' in the source")
    found = shutil.which(name)
    if found:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        proc = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False,
                              env=child_environment())
        path = os.path.join(proc.stdout.strip(), name)
        if proc.returncode == 0 and os.access(path, os.X_OK):
            return path
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0))
    if candidates:
        return candidates[-1]
    raise SourceError(f"PostgreSQL program {name} not found",
                      hint="install the PostgreSQL client/server packages or set 'bindir'")


# libpq's "connection to server on socket "…" failed: REASON" / "… at "host" (addr), port N failed: REASON"
_CONNECT_FAILED_RE = re.compile(r'connection to server (?:on socket|at) .*? failed: (.*)')
_NO_DATABASE_RE = re.compile(r'database ".*" does not exist')


def client_failure(src: PgSource, what: str, stderr: str, stored: Sequence[str] = ()) -> SourceError:
    """The error for a client program (psql) that failed doing ``what``: where libpq did not get a
    connection (server down, wrong host or port, the account refused), that is the one line, not
    the step that happened to be first; else ``what`` and the program's last lines.  ``stored``: the
    snapshots this run wrote before the failure (the hint names them instead of "nothing")."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    failed = next((m for m in map(_CONNECT_FAILED_RE.search, lines) if m), None)
    if failed:
        reason = " ".join(failed.group(1).split())
        where = f"socket directory {src.host}" if (src.host or "").startswith("/") else (src.host or "localhost")
        fix = (f"create it, or fix dbname or databases in [sources.{src.name}]"
               if _NO_DATABASE_RE.search(reason) else
               f"start the server, or fix host, port, user, password_file or passfile in [sources.{src.name}]")
        return SourceError(f"cannot connect to the PostgreSQL server at {where}, port {src.port or 5432}: {reason}",
                           hint=f"{fix}; " + (f"stored before it: {', '.join(stored)}" if stored
                                              else "nothing was written"))
    return SourceError(f"{what}: {' | '.join(lines[-3:])}")


def dump_failure(src: PgSource, exc: ProgramFailed, stored: list[str]) -> SourceError:
    """A dump program's failure (pg_dump, pg_dumpall) as the same "cannot connect" line as every
    other PostgreSQL path when libpq got no connection; else as it is.  ``stored``: snapshots this
    run wrote before it (the server went away part way)."""
    if not any(map(_CONNECT_FAILED_RE.search, exc.stderr.splitlines())):
        return exc
    return client_failure(src, "", exc.stderr, stored)


def conn_args(src: PgSource) -> list[str]:
    args = ["--no-password"]
    if src.host:
        args += ["-h", src.host]
    if src.port:
        args += ["-p", str(src.port)]
    if src.user:
        args += ["-U", src.user]
    return args


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def credentials_env(src: PgSource, base: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The environment for libpq programs: a private pgpass file, never a password in argv."""
    env = child_environment(base=base)
    env.pop("PGPASSWORD", None)
    if src.passfile:
        env["PGPASSFILE"] = src.passfile
    if not src.password_file:
        yield env
        return
    try:
        with open(src.password_file, encoding="utf-8") as handle:
            password = handle.read().rstrip("\r\n")
    except OSError as exc:
        raise SourceError(f"cannot read password_file {src.password_file}: {exc.strerror}") from None
    fd, path = tempfile.mkstemp(prefix="drtool-pgpass-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"*:*:*:*:{_pgpass_escape(password)}\n")
        env["PGPASSFILE"] = path
        yield env
    finally:
        os.unlink(path)


def dump_command(src: PgSource, database: str) -> list[str]:
    """Custom format, uncompressed: drtool compresses after deduplication, and zlib output
    would change completely after every small edit (no dedup night to night)."""
    return [find_binary("pg_dump", src.bindir), *conn_args(src), "-Fc", "-Z0", *src.options,
            "-d", database]


def globals_command(src: PgSource) -> list[str]:
    return [find_binary("pg_dumpall", src.bindir), *conn_args(src), "--globals-only"]


def list_databases_command(src: PgSource) -> list[str]:
    return [find_binary("psql", src.bindir), *conn_args(src), "-d", src.dbname or "postgres",
            "-At", "-c", "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                         "ORDER BY datname"]


def basebackup_command(src: PgSource, label: str) -> list[str]:
    return [find_binary("pg_basebackup", src.bindir), *conn_args(src), "-D", "-", "-Ft", "-X", "none",
            "-c", "fast", "-l", label, *src.options]


# ----- WAL file names and LSNs --------------------------------------------------------------
def parse_lsn(text: str) -> int:
    match = LSN_RE.match(text.strip())
    if not match:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segments_per_xlogid(segment_size: int) -> int:
    return 0x100000000 // segment_size


def parse_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int] | None:
    """(timeline, absolute segment number) of a WAL segment file name, else None."""
    match = SEGMENT_RE.match(name)
    if not match:
        return None
    tli, log, seg = (int(g, 16) for g in match.groups())
    return tli, log * segments_per_xlogid(segment_size) + seg


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per = segments_per_xlogid(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segment_of_lsn(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // segment_size


def wal_file_kind(name: str) -> str | None:
    """segment, history, backup (history of a base backup), partial — or None if unknown."""
    for kind, regex in (("segment", SEGMENT_RE), ("history", HISTORY_RE), ("backup", BACKUP_RE),
                        ("partial", PARTIAL_RE)):
        if regex.match(name):
            return kind
    return None


@dataclass
class WalTransactions:
    """Commit/abort times and committed transaction ids found in one WAL file."""

    times: list[datetime] = field(default_factory=list)
    committed: list[int] = field(default_factory=list)


def wal_transactions(path: str, bindir: str | None = None) -> WalTransactions:
    """Commits and aborts in one WAL file, via ``pg_waldump`` (best effort: empty if absent).

    The times bound what a ``recovery_target_time`` can reach: PostgreSQL stops
    *before* the first commit later than the target, so a target needs a later
    commit archived.  The committed ids say which file a ``recovery_target_xid``
    stops in, so planning can pick a base taken before it.
    """
    found = WalTransactions()
    try:
        waldump = find_binary("pg_waldump", bindir)
    except SourceError:
        return found
    env = child_environment({"TZ": "UTC", "LC_ALL": "C"})
    try:
        proc = subprocess.run([waldump, "--rmgr=Transaction", path], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return found
    for match in _XACT_RE.finditer(proc.stdout):
        found.times.append(datetime.fromisoformat(match.group(3)).replace(tzinfo=timezone.utc))
        if match.group(2) == "COMMIT":
            found.committed.append(int(match.group(1)))
    return found


def parse_restore_point_output(text: str) -> dict[str, Any]:
    """``lsn|time|walfile`` (first line of :func:`restore_point_command`'s output)."""
    lines = [line for line in text.splitlines() if "|" in line]
    if not lines:
        raise SourceError(f"unexpected output from pg_create_restore_point: {text.strip()[:200]!r}")
    lsn, when, walfile = lines[0].split("|")[:3]
    stamp = datetime.fromisoformat(re.sub(r"([+-]\d\d)$", r"\1:00", when.strip()))
    return {"lsn": format_lsn(parse_lsn(lsn)), "time": stamp.astimezone(timezone.utc).isoformat(),
            "timeline": int(walfile.strip()[:8], 16), "wal_file": walfile.strip()}


def check_restore_point_name(name: str) -> str:
    """A name ``pg_create_restore_point`` accepts and a config line can carry."""
    if not name or len(name.encode()) > RESTORE_POINT_MAX or not name.isprintable():
        raise ConfigError(f"restore point name {name!r} is not usable",
                          hint=f"use 1 to {RESTORE_POINT_MAX} printable characters")
    return name


def restore_point_command(src: PgSource, name: str) -> list[str]:
    """psql creating a named restore point, then closing the WAL file so it gets archived.

    Prints the restore point's LSN, the server time and the WAL file it is in
    (whose name carries the timeline).  The name is an SQL literal
    (standard_conforming_strings).
    """
    literal = "'" + check_restore_point_name(name).replace("'", "''") + "'"
    sql = (f"SELECT lsn, now(), pg_walfile_name(lsn) FROM pg_create_restore_point({literal}) lsn; "
           f"SELECT pg_switch_wal()")
    return [find_binary("psql", src.bindir), *conn_args(src), "-d", src.dbname or "postgres", "-X", "-At",
            "-v", "ON_ERROR_STOP=1", "-F", "|", "-c", sql]


# ----- base backup metadata -----------------------------------------------------------------------
def parse_backup_label(text: str) -> dict[str, Any]:
    """START WAL LOCATION / CHECKPOINT / START TIME / START TIMELINE of a backup_label."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            values[key.strip()] = value.strip()
    meta: dict[str, Any] = {}
    start = values.get("START WAL LOCATION", "")
    match = re.match(r"([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", start)
    if match:
        meta["start_lsn"], meta["start_wal"] = match.group(1), match.group(2)
    if "CHECKPOINT LOCATION" in values:
        meta["checkpoint_lsn"] = values["CHECKPOINT LOCATION"]
    if "START TIMELINE" in values:
        meta["timeline"] = int(values["START TIMELINE"])
    if "START TIME" in values:
        meta["label_time"] = values["START TIME"]
    if "LABEL" in values:
        meta["label"] = values["LABEL"]
    if "BACKUP FROM" in values:  # "standby" for a base backup taken from a streaming replica
        meta["backup_from"] = values["BACKUP FROM"]
    return meta


def backup_label_from_tar_head(head: bytes) -> str | None:
    """pg_basebackup puts backup_label first in the main tar: read it from the stream's head."""
    if len(head) < 512:
        return None
    try:
        info = tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")
    except tarfile.TarError:
        return None
    if info.name.rstrip("/") != "backup_label" or len(head) < 512 + info.size:
        return None
    return head[512:512 + info.size].decode("utf-8", "replace")


def wal_range_from_tail(tail: bytes) -> dict[str, Any]:
    """The backup manifest (last member of the tar) names the WAL range the backup needs."""
    matches = list(_MANIFEST_WAL_RE.finditer(tail))
    if not matches:
        return {}
    last = matches[-1]
    return {"end_timeline": int(last.group(1)), "end_lsn": last.group(3).decode()}


# ----- recovery configuration ------------------------------------------------------------------
def quote_conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def recovery_settings(restore_command: str, target_time: datetime | None, inclusive: bool,
                      port: int | None, socket_dir: str | None = None, immediate: bool = False,
                      target: tuple[str, str] | None = None, timeline: int | None = None) -> dict[str, str]:
    """Lines appended to postgresql.auto.conf for a point-in-time (or latest) recovery.

    Archiving is switched off in the restored cluster: a drill or a side-by-side
    restore must not push a second history into the production archive.  The
    server logs to the file drtool reads (no logging collector, UTC times) so
    that the recovery's outcome can be verified from its own words; its socket
    goes to ``socket_dir`` so it never shares the production socket directory.
    ``target`` is another recovery target (``("lsn", "0/3000148")``, ``("xid", "745")``,
    ``("name", "before-upgrade")``); ``timeline`` replaces the default ``latest``.
    """
    settings = {"restore_command": quote_conf(restore_command),
                "recovery_target_timeline": quote_conf(str(timeline) if timeline else "latest"),
                "archive_mode": "off",
                "logging_collector": "off", "log_destination": quote_conf("stderr"),
                "log_min_messages": quote_conf("warning"), "log_timezone": quote_conf("UTC")}
    if immediate:
        settings["recovery_target"] = quote_conf("immediate")
        settings["recovery_target_action"] = quote_conf("promote")
    elif target is not None:
        settings[f"recovery_target_{target[0]}"] = quote_conf(target[1])
        if target[0] != "name":
            settings["recovery_target_inclusive"] = "on" if inclusive else "off"
        settings["recovery_target_action"] = quote_conf("promote")
    elif target_time is not None:
        settings["recovery_target_time"] = quote_conf(
            target_time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00"))
        settings["recovery_target_inclusive"] = "on" if inclusive else "off"
        settings["recovery_target_action"] = quote_conf("promote")
    if port is not None:
        settings["port"] = str(port)
    if socket_dir is not None:
        settings["unix_socket_directories"] = quote_conf(socket_dir)
    return settings


def write_recovery_files(datadir: str, settings: dict[str, str]) -> None:
    auto = os.path.join(datadir, "postgresql.auto.conf")
    with open(auto, "a", encoding="utf-8") as handle:
        handle.write("\n# added by drtool restore (point-in-time recovery)\n")
        for key, value in settings.items():
            handle.write(f"{key} = {value}\n")
    conf = os.path.join(datadir, "postgresql.conf")
    if not os.path.exists(conf):  # Debian keeps it in /etc/postgresql: give the copy a minimal one
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write("# minimal configuration written by drtool restore\n"
                         "listen_addresses = 'localhost'\n")
    open(os.path.join(datadir, "recovery.signal"), "w").close()


def pg_ctl_command(datadir: str, action: str, bindir: str | None, log_file: str | None = None,
                   timeout: int = 600) -> list[str]:
    cmd = [find_binary("pg_ctl", bindir), "-D", datadir, "-w", "-t", str(timeout)]
    if log_file:
        cmd += ["-l", log_file]
    if action == "stop":
        cmd += ["-m", "fast"]
    return cmd + [action]


_LOG_TIME = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d(?::?\d\d)?)"
_LAST_XACT_RE = re.compile(r"last completed transaction was at log time " + _LOG_TIME)
_REDO_DONE_RE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")


def recovery_outcome(log_text: str) -> dict[str, str]:
    """What the server log says about where recovery stopped (for the restore report)."""
    found: dict[str, str] = {}
    for line in log_text.splitlines():
        for key, marker in (("stopped", "recovery stopping"), ("last_transaction", "last completed transaction"),
                            ("fatal", "FATAL:"), ("redo_done", "redo done at"),
                            ("consistent", "consistent recovery state reached")):
            if marker in line:
                found[key] = line[line.index(marker):].removeprefix("FATAL:").strip()
    return found


def last_transaction_time(outcome: dict[str, str]) -> datetime | None:
    """The commit time of the last transaction recovery replayed ("last completed transaction ...")."""
    match = _LAST_XACT_RE.search(outcome.get("last_transaction", ""))
    if not match:
        return None
    text = match.group(1)
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def redo_end_lsn(outcome: dict[str, str]) -> int | None:
    """The LSN of the last WAL record recovery replayed ("redo done at X/Y")."""
    match = _REDO_DONE_RE.search(outcome.get("redo_done", ""))
    return parse_lsn(match.group(1)) if match else None


# ----- restore side ----------------------------------------------------------------------------------
def prepare_datadir(target: str) -> None:
    """An absent or empty directory, mode 0700 (PostgreSQL refuses a group/world-readable one)."""
    if os.path.exists(target) and os.listdir(target):
        raise RestoreTargetError(f"restore target {target} is not empty",
                                 hint="PostgreSQL needs a fresh data directory: choose a new --target")
    make_private_dir(target)


FETCH_ABSENT = 99


def write_fetch_script(target: str, source: str, env: dict[str, str], python: str, spool: str = "") -> str:
    """restore_command wrapper: repository settings in the environment, no secret in the file.
    ``spool``: where files fetched ahead are put (``databases.wal_prefetch``: by the restore that
    started the server, or by the process the first ``wal-fetch`` starts from the restore's plan):
    one found there is moved into place without starting drtool."""
    path = os.path.join(target, "drtool-wal-fetch.sh")
    lines = ["#!/bin/sh",
             f"# Written by 'drtool restore': PostgreSQL restore_command for source {source}.",
             "# No secret here: the passphrase comes from DRTOOL_PASSWORD_FILE / _COMMAND.",
             "unset DRTOOL_PASSWORD"]
    if spool:
        lines += ["# Fetched ahead by 'drtool restore --start' or 'drtool pg wal-prefetch' (verified, own name):",
                  f'spool={shlex.quote(spool)}',
                  '[ -d "$spool" ] && printf \'%s\\n\' "$1" > "$spool/.asked"  # how far the server is',
                  'if [ -f "$spool/$1" ] && mv -f "$spool/$1" "$2" 2>/dev/null; then exit 0; fi']
    lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    # Only a definite "not archived" may reach PostgreSQL as 1 (end of recovery);
    # anything else (a broken interpreter or install exits 1 too) becomes 126, fatal.
    spool_option = ' --spool "$spool"' if spool else ""
    lines.append(f"{shlex.quote(python)} -m drtool pg wal-fetch --source {shlex.quote(source)} "
                 f"--absent-exit-code {FETCH_ABSENT}{spool_option} \"$1\" \"$2\"")
    lines += ["rc=$?", f'case $rc in 0) exit 0 ;; {FETCH_ABSENT}) exit 1 ;; *) exit 126 ;; esac']
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(path, 0o700)
    return path


def start_and_wait(target: str, bindir: str | None, timeout: float) -> dict[str, str]:
    """Start the restored cluster and wait until recovery ended and it was promoted.

    On every failure the server is stopped (a half-recovered server left
    running would look like a restore) and the message names the log, which
    stays in the data directory.
    """
    log_file = recovery_log(target)
    proc = subprocess.run(pg_ctl_command(target, "start", bindir, log_file, int(timeout)),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
                          env=child_environment())
    if proc.returncode != 0:
        stop_server(target, bindir)
        raise RestoreTargetError(f"PostgreSQL did not start from {target}: "
                                 f"{_why(log_file) or ' '.join(proc.stderr.strip().splitlines()[-1:])}",
                                 hint=f"server stopped; its log is {log_file}")
    deadline = time.monotonic() + timeout
    while cluster_state(target, bindir) != "in production":
        if not os.path.exists(os.path.join(target, "postmaster.pid")):
            raise RestoreTargetError(f"recovery failed: {_why(log_file) or 'the server exited'}",
                                     hint=f"the server is not running; its log is {log_file}")
        if time.monotonic() > deadline:
            stop_server(target, bindir)
            raise RestoreTargetError(f"recovery did not finish within {timeout:.0f}s",
                                     hint=f"server stopped; its log is {log_file}")
        time.sleep(0.2)
    return recovery_outcome(read_log(log_file))


def recovery_log(target: str) -> str:
    return os.path.join(target, "drtool-recovery.log")


def stop_server(target: str, bindir: str | None) -> None:
    """Stop a server drtool started in ``target`` (immediate: its state is being discarded)."""
    if not os.path.exists(os.path.join(target, "postmaster.pid")):
        return
    subprocess.run([find_binary("pg_ctl", bindir), "-D", target, "-w", "-t", "60", "-m", "immediate", "stop"],
                   capture_output=True, text=True, stdin=subprocess.DEVNULL, env=child_environment(), check=False)


def cluster_state(datadir: str, bindir: str | None) -> str:
    """'in archive recovery' until promotion has finished, then 'in production' (pg_control)."""
    proc = subprocess.run([find_binary("pg_controldata", bindir), "-D", datadir], capture_output=True,
                          text=True, env=child_environment({"LC_ALL": "C"}), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("Database cluster state:"):
            return line.split(":", 1)[1].strip()
    return ""


def read_log(path: str) -> str:
    """A server log as text ("" when it is not there)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _why(log_file: str) -> str:
    return recovery_outcome(read_log(log_file)).get("fatal", "")
