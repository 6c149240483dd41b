"""``drtool backup --source NAME`` / ``--all``: named sources from the config file.

A source is a ``[sources.NAME]`` table with a ``type``:

* ``files``      — ``paths = [...]``: a file-tree snapshot named NAME;
* ``command``    — ``command = "..."`` (+ ``filename``): its stdout as one file;
* ``postgresql`` — ``method = "dump"`` (pg_dump -Fc per database, globals with
  ``all = true``) or ``method = "basebackup"`` (a ``pg-base`` snapshot for PITR);
* ``mariadb``    — a consistent ``mariadb-dump`` with binlog coordinates.

Dumps stream straight into the repository (no temporary file).  The stream
is tapped on its way: the head and tail are kept so the snapshot ``meta`` can
record binlog coordinates / the base backup's WAL range, and so a truncated
mariadb dump (no ``-- Dump completed``) is refused before the commit point.
"""
from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Callable

from drtool.childenv import child_environment
from drtool.config import Settings
from drtool.errors import ConfigError, DrtoolError, SourceError
from drtool.ops.backup import BackupResult, backup_command, backup_paths, backup_stream
from drtool.ops.session import Session
from drtool.sources import mariadb, postgres

TYPES = ("files", "command", "postgresql", "mariadb", "mysql")
HEAD_BYTES = 1024 * 1024
TAIL_BYTES = 64 * 1024


@dataclass
class FilesSource:
    name: str
    paths: list[str]


@dataclass
class CommandSource:
    name: str
    command: str | list[str]
    filename: str


Source = FilesSource | CommandSource | postgres.PgSource | mariadb.MariaSource


def parse_source(name: str, table: Any) -> Source:
    if not isinstance(table, dict):
        raise ConfigError(f"[sources.{name}] must be a table")
    kind = table.get("type")
    if kind not in TYPES:
        raise ConfigError(f"[sources.{name}]: type must be one of {', '.join(TYPES)}")
    if kind == "files":
        paths = table.get("paths")
        if not isinstance(paths, list) or not paths:
            raise ConfigError(f"[sources.{name}]: a files source needs paths = [\"/dir\", ...]")
        return FilesSource(name, [str(p) for p in paths])
    if kind == "command":
        if not table.get("command"):
            raise ConfigError(f"[sources.{name}]: a command source needs command = \"...\"")
        return CommandSource(name, table["command"], table.get("filename") or name.rsplit("/", 1)[-1])
    if kind == "postgresql":
        return postgres.PgSource.from_config(name, table)
    return mariadb.MariaSource.from_config(name, table)


def load_sources(settings: Settings) -> dict[str, Source]:
    return {name: parse_source(name, table) for name, table in settings.section("sources").items()}


def get_source(settings: Settings, name: str) -> Source:
    table = settings.section("sources").get(name)
    if table is None:
        known = ", ".join(sorted(settings.section("sources"))) or "none"
        raise ConfigError(f"no source named {name!r} in the config (configured: {known})",
                          hint="add a [sources.NAME] table to the config file (see docs/databases.md)")
    return parse_source(name, table)


def source_type(src: Source) -> str:
    if isinstance(src, postgres.PgSource):
        return "postgresql"
    if isinstance(src, mariadb.MariaSource):
        return "mariadb"
    return "files" if isinstance(src, FilesSource) else "command"


# ----- running dumps --------------------------------------------------------------------------
class StreamTap:
    """A pass-through reader that keeps the first and last bytes of a stream."""

    def __init__(self, stream: IO[bytes], head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self.stream = stream
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self._head_limit, self._tail_limit = head, tail
        self._read = getattr(stream, "read1", stream.read)

    def read1(self, size: int = -1) -> bytes:
        data = self._read(size)
        if data:
            self.total += len(data)
            if len(self.head) < self._head_limit:
                self.head += data[:self._head_limit - len(self.head)]
            self.tail += data
            if len(self.tail) > 2 * self._tail_limit:
                del self.tail[:-self._tail_limit]
        return data

    read = read1


class _Stderr(threading.Thread):
    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream, self.buf = stream, b""
        self.start()

    def run(self) -> None:
        for piece in iter(lambda: self.stream.read(4096), b""):
            self.buf = (self.buf + piece)[-4000:]

    def text(self) -> str:
        self.join(timeout=5)
        return " | ".join(self.buf.decode(errors="replace").strip().splitlines()[-5:])


def run_dump(session: Session, command: list[str], env: dict[str, str], name: str, filename: str,
             kind: str, meta: dict[str, Any], tags: list[str],
             finish: Callable[[StreamTap, dict[str, Any]], None] | None = None) -> BackupResult:
    """Stream a dump command into a snapshot; exit status and ``finish`` may veto the commit."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=child_environment(base=env))
    except OSError as exc:
        raise SourceError(f"cannot start {command[0]}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    tap, errors = StreamTap(proc.stdout), _Stderr(proc.stderr)
    program = command[0].rsplit("/", 1)[-1]

    def verify() -> None:
        code = proc.wait()
        if code != 0:
            raise SourceError(f"{program} for {name} exited with status {code}; no snapshot was written. "
                              f"stderr: {errors.text() or '(empty)'}", hint="the repository is unchanged")
        if finish is not None:
            finish(tap, meta)
        meta["dump_bytes"] = tap.total
    try:
        return backup_stream(session, tap, name, filename, tags, kind, meta, verify=verify)  # type: ignore[arg-type]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _mariadb_finish(tap: StreamTap, meta: dict[str, Any]) -> None:
    if not mariadb.dump_is_complete(bytes(tap.tail)):
        raise SourceError(f"the mariadb dump of {meta['source']} has no '-- Dump completed' line: it "
                          f"was cut short; no snapshot was written")
    coords = mariadb.parse_dump_coordinates(bytes(tap.head))
    if meta.get("pitr") and "binlog_file" not in coords:
        raise SourceError(f"the mariadb dump of {meta['source']} carries no binlog coordinates",
                          hint="enable log_bin on the server, or set pitr = false for this source")
    meta.update(coords)


def _basebackup_finish(tap: StreamTap, meta: dict[str, Any]) -> None:
    label = postgres.backup_label_from_tar_head(bytes(tap.head))
    if label is None:
        raise SourceError(f"the base backup of {meta['source']} does not start with backup_label; "
                          f"no snapshot was written")
    meta.update(postgres.parse_backup_label(label))
    meta.update(postgres.wal_range_from_tail(bytes(tap.tail)))
    meta["end_time"] = datetime.now(timezone.utc).isoformat()


# ----- per type ----------------------------------------------------------------------------------
def backup_postgres(session: Session, src: postgres.PgSource, tags: list[str]) -> list[BackupResult]:
    base_meta = {"source": src.name, "source_type": "postgresql"}
    with postgres.credentials_env(src) as env:
        if src.method == "basebackup":
            label = f"drtool {src.name} {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
            return [run_dump(session, postgres.basebackup_command(src, label), env, src.name, "base.tar",
                             "pg-base", dict(base_meta, method="basebackup"), tags, _basebackup_finish)]
        databases = [src.dbname] if src.dbname and not src.all and not src.databases else src.databases
        results = []
        if src.all:
            results.append(run_dump(session, postgres.globals_command(src), env, f"{src.name}/globals",
                                    "globals.sql", "pg-globals", dict(base_meta), tags))
            databases = _list_databases(src, env)
        for database, snap_name in src.snapshot_names(databases).items():
            meta = dict(base_meta, database=database, format="custom")
            results.append(run_dump(session, postgres.dump_command(src, database), env, snap_name,
                                    f"{database}.dump", "pg-dump", meta, tags))
        return results


def _list_databases(src: postgres.PgSource, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(postgres.list_databases_command(src), capture_output=True, text=True,
                          env=child_environment(base=env),
                          stdin=subprocess.DEVNULL, timeout=300, check=False)
    if proc.returncode != 0:
        raise SourceError(f"cannot list the databases of {src.name}: "
                          f"{' | '.join(proc.stderr.strip().splitlines()[-3:])}")
    return [line for line in proc.stdout.splitlines() if line]


def backup_mariadb(session: Session, src: mariadb.MariaSource, tags: list[str]) -> list[BackupResult]:
    meta = {"source": src.name, "source_type": "mariadb", "pitr": src.pitr,
            "database": src.single_database, "databases": src.databases, "all": src.all}
    with mariadb.client_options(src) as opts:
        return [run_dump(session, mariadb.dump_command(src, opts), dict(os.environ), src.name,
                         "dump.sql", "mariadb-dump", meta, tags, _mariadb_finish)]


def backup_source(session: Session, src: Source, tags: list[str]) -> list[BackupResult]:
    if isinstance(src, FilesSource):
        return [backup_paths(session, src.paths, src.name, tags)]
    if isinstance(src, CommandSource):
        return [backup_command(session, src.command, src.name, src.filename, tags,
                               meta={"source": src.name, "source_type": "command"})]
    if isinstance(src, postgres.PgSource):
        return backup_postgres(session, src, tags)
    return backup_mariadb(session, src, tags)


@dataclass
class SourcesRun:
    """Outcome of backing up several sources: one failure does not stop the others."""

    results: dict[str, list[BackupResult]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sources": {n: [r.as_dict() for r in rs] for n, rs in self.results.items()},
                "failures": self.failures}


def backup_sources(session: Session, settings: Settings, names: list[str] | None,
                   tags: list[str]) -> SourcesRun:
    """Back up the named sources (all configured ones when ``names`` is None)."""
    sources = load_sources(settings) if names is None else {n: get_source(settings, n) for n in names}
    if not sources:
        raise ConfigError("the config defines no [sources.NAME] tables",
                          hint="see docs/databases.md for examples")
    run = SourcesRun()
    for name, src in sources.items():
        try:
            run.results[name] = backup_source(session, src, tags)
        except DrtoolError as exc:
            run.failures[name] = exc.one_line()
    return run
