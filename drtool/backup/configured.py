"""``drtool backup --source NAME`` / ``--all``: named sources from the config file.

A source is a ``[sources.NAME]`` table with a ``type``:

* ``files``      — ``paths = [...]``: a file-tree snapshot named NAME;
* ``command``    — ``command = "..."`` (+ ``filename``): its stdout as one file;
* ``s3``         — ``bucket``, ``prefix``, ``endpoint``: the objects as files
  (``drtool.sources.objectstore``, ``drtool.backup.objectstore``);
* any database engine's type (``postgresql``, ``mariadb``/``mysql``): the
  engine parses its table and makes its backups (``drtool.databases``).

The engines are handed in by the caller (``drtool.api``) as a mapping from
type to engine, so backups do not depend on the databases package (which
depends on them: engines stream their dumps through ``backup.streams``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from drtool.backup.run import BackupResult, backup_command, backup_paths
from drtool.digests import CONTENT_HASHES
from drtool.config import Settings
from drtool.core.session import Session
from drtool.errors import ConfigError, DrtoolError, SourceError
from drtool.sources.objectstore import OBJECT_STORE_TYPES, ObjectStoreSource, source_from_table
from drtool.sources.shards import Sharding, sharding_from_table


class SourceEngine(Protocol):
    """What backups need of a database engine (``drtool.databases.engine.DatabaseEngine``)."""

    name: str

    def owns(self, src: Any) -> bool: ...

    def source_from_config(self, name: str, table: dict[str, Any]) -> Any: ...

    def backup(self, session: Session, src: Any, tags: list[str], full: bool = False) -> list[BackupResult]: ...


Engines = Mapping[str, SourceEngine]


@dataclass
class FilesSource:
    name: str
    paths: list[str]
    content_hash: str | None = None  # "sha256" / "sha1": per-file hashes for drtool find --hash
    sharding: Sharding | None = None  # shards = N: a snapshot set made by many workers (docs/scale.md)


@dataclass
class CommandSource:
    name: str
    command: str | list[str]
    filename: str


Source = Any  # FilesSource, CommandSource, or an engine's source (PgSource, MariaSource, ...)


def parse_source(name: str, table: Any, engines: Engines) -> Source:
    if not isinstance(table, dict):
        raise ConfigError(f"[sources.{name}] must be a table")
    kind = table.get("type")
    types = ("files", "command", *OBJECT_STORE_TYPES, *engines)
    if kind not in types:
        raise ConfigError(f"[sources.{name}]: type must be one of {', '.join(types)}")
    if kind == "files":
        paths = table.get("paths")
        if not isinstance(paths, list) or not paths:
            raise ConfigError(f"[sources.{name}]: a files source needs paths = [\"/dir\", ...]")
        content_hash = table.get("content_hash")
        if content_hash is not None and content_hash not in CONTENT_HASHES:
            raise ConfigError(f"[sources.{name}]: content_hash must be one of {', '.join(CONTENT_HASHES)}")
        return FilesSource(name, [str(p) for p in paths], content_hash, sharding_from_table(name, table))
    if kind == "command":
        if not table.get("command"):
            raise ConfigError(f"[sources.{name}]: a command source needs command = \"...\"")
        return CommandSource(name, table["command"], table.get("filename") or name.rsplit("/", 1)[-1])
    if kind in OBJECT_STORE_TYPES:
        return source_from_table(name, table)
    return engines[kind].source_from_config(name, table)


def load_sources(settings: Settings, engines: Engines) -> dict[str, Source]:
    return {name: parse_source(name, table, engines) for name, table in settings.section("sources").items()}


def get_source(settings: Settings, name: str, engines: Engines) -> Source:
    table = settings.section("sources").get(name)
    if table is None:
        known = ", ".join(sorted(settings.section("sources"))) or "none"
        raise ConfigError(f"no source named {name!r} in the config (configured: {known})",
                          hint="add a [sources.NAME] table to the config file (see docs/databases.md)")
    return parse_source(name, table, engines)


def engine_of(src: Source, engines: Engines) -> SourceEngine | None:
    return next((e for e in engines.values() if e.owns(src)), None)


def source_type(src: Source, engines: Engines) -> str:
    engine = engine_of(src, engines)
    if engine is not None:
        return engine.name
    if isinstance(src, ObjectStoreSource):
        return src.type
    return "files" if isinstance(src, FilesSource) else "command"


def backup_source(session: Session, src: Source, tags: list[str], engines: Engines,
                  full: bool = False) -> list[BackupResult]:
    """``full``: a database engine's full backup where it would take an incremental one (``--full``)."""
    if isinstance(src, (FilesSource, ObjectStoreSource)) and src.sharding is not None:
        from drtool.backup.shards import WorkerOptions, process_started_at, run_worker  # a worker of its set
        worker = run_worker(session, src, tags, WorkerOptions(since=process_started_at()))
        if worker.state == "failed" or (worker.failures and worker.state != "committed"):
            raise SourceError(f"snapshot set {worker.set_id}: {'; '.join(worker.failures) or worker.state}")
        return worker.results
    if isinstance(src, FilesSource):
        return [backup_paths(session, src.paths, src.name, tags, content_hash=src.content_hash)]
    if isinstance(src, ObjectStoreSource):
        from drtool.backup.objectstore import backup_object_store  # boto3 only when a bucket is backed up
        return [backup_object_store(session, src, tags)]
    if isinstance(src, CommandSource):
        return [backup_command(session, src.command, src.name, src.filename, tags,
                               meta={"source": src.name, "source_type": "command"})]
    engine = engine_of(src, engines)
    assert engine is not None, src
    return engine.backup(session, src, tags, full=full)


@dataclass
class SourcesRun:
    """Outcome of backing up several sources: one failure does not stop the others."""

    results: dict[str, list[BackupResult]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sources": {n: [r.as_dict() for r in rs] for n, rs in self.results.items()},
                "failures": self.failures}


def backup_sources(session: Session, settings: Settings, names: list[str] | None, tags: list[str],
                   engines: Engines, full: bool = False) -> SourcesRun:
    """Back up the named sources (all configured ones when ``names`` is None); ``full``: ``--full``."""
    sources = (load_sources(settings, engines) if names is None
               else {n: get_source(settings, n, engines) for n in names})
    if not sources:
        raise ConfigError("the config defines no [sources.NAME] tables",
                          hint="see docs/databases.md for examples")
    run = SourcesRun()
    for name, src in sources.items():
        try:
            run.results[name] = backup_source(session, src, tags, engines, full)
        except DrtoolError as exc:
            run.failures[name] = exc.one_line()
    return run
