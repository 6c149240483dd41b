"""Databases: archiving logs, recoverable windows, point-in-time restores and restore points."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drtool.core.stages import Stage, StageWatcher, watching
from drtool.databases.engine import RestoreRequest as DatabaseRestoreRequest
from drtool.databases.engine import engine_named, source_engines
from drtool.databases.logarchive import FetchFailed, SegmentNotArchived, binlog_push, wal_fetch, wal_push
from drtool.databases.planner import plan_from_config, recoverable_window, restore_pitr
from drtool.databases.targets import RecoveryTarget, target_from_options
from drtool.errors import UsageError

if TYPE_CHECKING:
    from drtool.config import Settings
    from drtool.repository.repo import Repository

__all__ = ["DatabaseRestoreRequest", "FetchFailed", "RecoveryTarget", "SegmentNotArchived", "Stage",
           "StageWatcher", "binlog_push", "create_restore_point", "engine_named", "plan_from_config", "recoverable_window", "recovery_target",
           "restore_pitr", "source_engines", "tablespace_map", "wal_fetch", "wal_prefetch", "wal_prefetch_log", "wal_prefetch_wanted", "wal_push",
           "watching"]


def create_restore_point(repo: Repository, settings: Settings, source: str, name: str) -> dict[str, Any]:
    """Create a named restore point on a PostgreSQL source and record it for planning.

    ``drtool restore --source SOURCE --target-name NAME`` then starts from the
    newest base backup taken before it.
    """
    from drtool.backup.configured import get_source
    from drtool.databases.postgresql import POSTGRESQL
    from drtool.databases.postgresql import create_restore_point as create
    src = get_source(settings, source, source_engines())
    if not POSTGRESQL.owns(src) or src.method != "basebackup":  # type: ignore[union-attr]
        raise UsageError(f"source {source} is not a PostgreSQL source with method = \"basebackup\"",
                         hint="restore points are for point-in-time recovery from base backups and WAL")
    return create(repo, src, name)  # type: ignore[arg-type]


def recovery_target(lsn: str | None, xid: str | None, name: str | None) -> RecoveryTarget | None:
    """``--target-lsn`` / ``--target-xid`` / ``--target-name`` (at most one) as a recovery target."""
    return target_from_options(lsn, xid, name)


def tablespace_map(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--tablespace-map OLD=NEW`` options (OLD: a tablespace's location, name or oid) as a mapping."""
    from drtool.databases.pg_tablespaces import parse_mapping
    return parse_mapping(items)


def wal_prefetch(repo: Repository, source: str, spool: str) -> str:
    """Serve a restore's WAL plan ahead of the server (``drtool pg wal-prefetch``, started detached
    by the server's first ``wal-fetch``); a line saying what it did."""
    from drtool.databases import wal_prefetch as prefetching
    from drtool.databases.logarchive import WAL, fetch_segment
    prefetch = prefetching.serve(lambda name: fetch_segment(repo, WAL, source, name), spool)
    if prefetch is None:
        return "another process serves this plan"
    return (f"the server took {prefetch.taken} of {prefetch.fetched} WAL file(s) fetched ahead "
            f"({len(prefetch.files)} planned)" + (f"; stopped at {prefetch.failure}" if prefetch.failure else ""))


def wal_prefetch_wanted(spool: str, server_dir: str | None = None) -> bool:
    """A restore without ``--start`` left a plan in ``spool`` and no process serves it yet (for
    the server whose data directory is ``server_dir``, when given)."""
    from drtool.databases import wal_prefetch as prefetching
    return prefetching.should_start(spool, server_dir)


def wal_prefetch_log(spool: str) -> str:
    """Where the prefetch process of ``spool`` logs (in the data directory, beside the spool)."""
    from drtool.databases import wal_prefetch as prefetching
    return prefetching.log_path(spool)
