"""Database use cases the CLI calls beyond backup and restore: PostgreSQL restore points."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drtool.errors import UsageError

if TYPE_CHECKING:
    from drtool.config import Settings
    from drtool.databases.targets import RecoveryTarget
    from drtool.repository.repo import Repository


def create_restore_point(repo: Repository, settings: Settings, source: str, name: str) -> dict[str, Any]:
    """Create a named restore point on a PostgreSQL source and record it for planning.

    ``drtool restore --source SOURCE --target-name NAME`` then starts from the
    newest base backup taken before it.
    """
    from drtool.backup.configured import get_source
    from drtool.databases.engine import source_engines
    from drtool.databases.postgresql import create_restore_point as create
    from drtool.sources.postgres import PgSource
    src = get_source(settings, source, source_engines())
    if not isinstance(src, PgSource) or src.method != "basebackup":
        raise UsageError(f"source {source} is not a PostgreSQL source with method = \"basebackup\"",
                         hint="restore points are for point-in-time recovery from base backups and WAL")
    return create(repo, src, name)


def recovery_target(lsn: str | None, xid: str | None, name: str | None) -> RecoveryTarget | None:
    """``--target-lsn`` / ``--target-xid`` / ``--target-name`` (at most one) as a recovery target."""
    from drtool.databases.targets import target_from_options
    return target_from_options(lsn, xid, name)
