"""The database engine protocol, and the registry of engines by name and log kind.

Everything that differs between PostgreSQL and MariaDB lives behind
:class:`DatabaseEngine`: which snapshots are bases and where their logs
start, how the server names log files, when a point is reachable, which log
files a replay needs, how a source is backed up and how a plan is restored.
Callers hold an engine, never an engine name to branch on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from drtool.errors import ConfigError, SnapshotNotFound
from drtool.snapshot.logwindow import Gap, RecoveryBase, Segment
from drtool.snapshot.model import Snapshot

if TYPE_CHECKING:
    from drtool.config import Settings
    from drtool.databases.planner import PitrPlan, PitrResult
    from drtool.backup.run import BackupResult
    from drtool.core.session import Session
    from drtool.databases.targets import RecoveryTarget, TargetPosition


@dataclass
class RestoreRequest:
    """Where and how a planned recovery is restored (``drtool restore --source …``)."""

    target: str | None = None
    target_db: str | None = None
    start: bool = False
    port: int | None = None
    command_line: str | None = None  # this invocation, for "run it as … instead" messages
    tablespace_map: dict[str, str] = field(default_factory=dict)  # PostgreSQL: OLD (location/name/oid) → NEW
    table: str | None = None         # DB.TABLE: one table of a mydumper snapshot (MariaDB)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Labels:
    """How messages name an engine's things."""

    base: str           # "base backup", "backup with binlog coordinates" (a dump, mydumper or mariabackup)
    log_file: str       # "WAL segment", "binlog"
    event: str          # "transaction", "binlog event"
    archive_more: str   # how to archive the newest log now


class DatabaseEngine(Protocol):
    name: str            # the [sources.NAME] type
    log_kind: str        # repository prefix and envelope kind of the archived logs
    base_kind: str       # snapshot kind of a recovery base (the engine's first)
    base_kinds: tuple[str, ...]  # every snapshot kind that can be a recovery base
    labels: Labels

    # ----- configuration and backup
    def owns(self, src: Any) -> bool: ...

    def source_from_config(self, name: str, table: dict[str, Any]) -> Any: ...

    def check_pitr_source(self, src: Any) -> None:
        """Raise UsageError when the source's backups cannot start a point-in-time recovery."""

    def backup(self, session: Session, src: Any, tags: list[str], full: bool = False) -> list[BackupResult]:
        """``full``: take a full backup even where the engine would take an incremental one."""

    # ----- the log archive (pure rules; ``drtool.snapshot.logwindow.LogRules``)
    def base_of(self, snap: Snapshot, segment_size: int) -> RecoveryBase | None: ...

    def first_missing_name(self, gap: Gap, timeline: int, segment_size: int) -> str: ...

    def chain_from(self, base: RecoveryBase, segments: list[Segment]) -> list[Segment]:
        """The log files a replay from ``base`` reads, in order (WAL: by number; binlogs: by GTID)."""

    def gaps_from(self, base: RecoveryBase | None, segments: list[Segment]) -> list[Gap]:
        """The holes in the archive after ``base`` (None: anywhere)."""

    def reachable(self, when: datetime, reach: datetime, inclusive: bool) -> bool:
        """Can replay stop at ``when`` when the archive's newest event is at ``reach``?"""

    def needed(self, chain: list[Segment], when: datetime | None) -> list[Segment]:
        """The prefix of ``chain`` that a replay to ``when`` (None: everything) reads."""

    def immediate(self, chain: list[Segment], base: RecoveryBase) -> list[Segment]:
        """The log files a base needs to be restored as it became consistent."""

    def keep_from(self, base: RecoveryBase, segment_size: int) -> str:
        """The first log file retention must keep for ``base``."""

    def expiry_position(self, seg: Segment, base: RecoveryBase, segment_size: int) -> int | None:
        """Where ``seg`` sits in ``base``'s chain (comparable with base.start_seq); None: never expires."""

    # ----- recovery targets other than a time (drtool.databases.targets)
    def resolve_target(self, target: RecoveryTarget | None, timeline: int | None, segments: list[Segment],
                       segment_size: int) -> TargetPosition | None:
        """Where ``target`` lies in the archive; UsageError when the engine has no such targets."""

    def base_precedes(self, base: RecoveryBase, position: TargetPosition) -> bool:
        """Was ``base`` consistent at or before ``position``?"""

    def check_chain(self, source: str, chain: list[Segment], segments: list[Segment]) -> None:
        """Raise when the archive holds the planned files but recovery could still not follow them."""

    def base_chain(self, base: Snapshot, snapshots: list[Snapshot]) -> list[Snapshot]:
        """The snapshots a restore of ``base`` reads, oldest first: ``[base]``, or a full and its
        incrementals (MariaDB physical); raises SnapshotNotFound naming a missing one."""

    def checks_chain_data(self, base: Snapshot) -> bool:
        """Should a restore of ``base`` first make sure every pack its chain reads is in the repository
        (``snapshot.presence``)?  True where a restore does long work before it reaches the last member."""

    # ----- restore
    def restore(self, session: Session, settings: Settings, plan: PitrPlan, src: Any,
                request: RestoreRequest) -> PitrResult: ...


def _registry() -> dict[str, DatabaseEngine]:
    from drtool.databases.mariadb import MARIADB
    from drtool.databases.postgresql import POSTGRESQL
    return {"postgresql": POSTGRESQL, "mariadb": MARIADB, "mysql": MARIADB}


def source_engines() -> dict[str, DatabaseEngine]:
    """Engines by ``[sources.NAME]`` type, for the configured-source backups (``backup.configured``)."""
    return _registry()


def engine_named(name: str) -> DatabaseEngine:
    """The engine of a ``[sources.NAME]`` type."""
    engines = _registry()
    if name not in engines:
        raise ConfigError(f"unknown database type {name!r}", hint=f"use one of {', '.join(sorted(engines))}")
    return engines[name]


def engines() -> list[DatabaseEngine]:
    return list(dict.fromkeys(_registry().values()))


def engine_of_source(src: Any) -> DatabaseEngine | None:
    """The engine a parsed source belongs to (None: a files or command source)."""
    return next((e for e in engines() if e.owns(src)), None)


def engine_of_log_kind(kind: str) -> DatabaseEngine:
    return next(e for e in engines() if e.log_kind == kind)


def detect_engine(snapshots: Iterable[Snapshot], segments: Iterable[Segment]) -> DatabaseEngine | None:
    """The engine of a source known only by its repository contents (bases first, then logs)."""
    snaps = list(snapshots)
    kinds = {s.kind for s in snaps}
    for engine in engines():
        if kinds & set(engine.base_kinds) and any(engine.base_of(s, 16 * 2**20) for s in snaps
                                                  if s.kind in engine.base_kinds):
            return engine
    log_kinds = {s.kind for s in segments}
    return next((e for e in engines() if e.log_kind in log_kinds), None)


def require_engine(snapshots: Iterable[Snapshot], segments: Iterable[Segment], source: str) -> DatabaseEngine:
    engine = detect_engine(snapshots, segments)
    if engine is None:
        raise SnapshotNotFound(f"source {source!r} has no base backup, dump or archived log in the repository")
    return engine


def stream_bytes(snap: Snapshot) -> int | None:
    """A stream snapshot's stored length (the dump as written, after any rewrite), for a restore's
    progress bar; None where the snapshot does not say (made before drtool recorded it)."""
    value = snap.meta.get("dump_bytes")
    return value if isinstance(value, int) and value > 0 else None
