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

import subprocess
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from drtool.config import Settings
from drtool.errors import ConfigError, DrtoolError, SourceError
from drtool.ops.backup import BackupResult, backup_command, backup_paths, backup_stream
from drtool.ops.session import Session
from drtool.sources import mariadb, postgres
from drtool.sources.common import StderrTail

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
    from drtool.databases.engine import engine_named
    return engine_named(kind).source_from_config(name, table)


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
    from drtool.databases.engine import engine_of_source
    engine = engine_of_source(src)
    if engine is not None:
        return engine.name
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


def run_dump(session: Session, command: list[str], env: dict[str, str], name: str, filename: str,
             kind: str, meta: dict[str, Any], tags: list[str],
             finish: Callable[[StreamTap, dict[str, Any]], None] | None = None) -> BackupResult:
    """Stream a dump command into a snapshot; exit status and ``finish`` may veto the commit."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env)
    except OSError as exc:
        raise SourceError(f"cannot start {command[0]}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    tap, errors = StreamTap(proc.stdout), StderrTail(proc.stderr)
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


def backup_source(session: Session, src: Source, tags: list[str]) -> list[BackupResult]:
    if isinstance(src, FilesSource):
        return [backup_paths(session, src.paths, src.name, tags)]
    if isinstance(src, CommandSource):
        return [backup_command(session, src.command, src.name, src.filename, tags,
                               meta={"source": src.name, "source_type": "command"})]
    from drtool.databases.engine import engine_of_source
    engine = engine_of_source(src)
    assert engine is not None, src
    return engine.backup(session, src, tags)


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
