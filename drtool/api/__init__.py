"""A small, stable Python API over drtool's use cases; the CLI is built on it.

    from drtool import api
    with api.open_repository("/srv/backup", passphrase=b"...") as repo:
        result = api.backup(repo, ["/srv/media"], name="media")
        api.restore(repo, "latest", "/tmp/r", name="media")

Every failure is a :class:`drtool.errors.DrtoolError` with an ``exit_code``.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from drtool.api import databases
from drtool.crypto.keys import KdfParams
from drtool.errors import UsageError
from drtool.backup import run as _backup
from drtool.maintain import check as _check
from drtool.maintain import rebuild as _rebuild
from drtool.restore import run as _restore
from drtool.core.session import OpenOptions, Session
from drtool.snapshot.model import Snapshot

__all__ = ["KdfParams", "databases", "Session", "backup", "backup_command", "check", "init", "open_repository",
           "pick_snapshot", "rebuild_catalog", "restore", "restore_plan", "snapshots"]


def init(repository: str, passphrase: bytes, *, catalog: str | None = None,
         kdf: KdfParams | None = None, backend_options: dict[str, Any] | None = None) -> str:
    """Create a repository; return its id."""
    options = OpenOptions(repository, passphrase, catalog, backend_options=backend_options or {})
    repo = Session.init(options, kdf=kdf)
    repo.close()
    return repo.config.repo_id


def open_repository(repository: str, passphrase: bytes, *, catalog: str | None = None,
                    host: str | None = None, backend_options: dict[str, Any] | None = None,
                    lock_wait: float = 0.0) -> Session:
    options = OpenOptions(repository, passphrase, catalog, backend_options=backend_options or {},
                          lock_wait=lock_wait)
    if host:
        options.host = host
    return Session.open(options)


def backup(session: Session, paths: list[str], name: str, tags: list[str] | None = None,
           progress: Callable[..., None] | None = None) -> _backup.BackupResult:
    return _backup.backup_paths(session, paths, name, tags, progress)


def backup_command(session: Session, command: str | list[str], name: str, filename: str | None = None,
                   tags: list[str] | None = None) -> _backup.BackupResult:
    return _backup.backup_command(session, command, name, filename or name.rsplit("/", 1)[-1], tags)


def snapshots(session: Session, name: str | None = None) -> list[Snapshot]:
    return session.snapshots(name)


def pick_snapshot(session: Session, snapshot: str | None, name: str | None,
          point_in_time: datetime | None) -> Snapshot:
    """The snapshot a restore means: by id or 'latest', or the newest at or before a time."""
    if point_in_time is not None:
        return session.snapshot_at(point_in_time, name)
    if snapshot is not None and not snapshot.strip():
        raise UsageError("an empty snapshot id was given", hint="give a snapshot id or 'latest'")
    return session.find_snapshot(snapshot or "latest", name)


def restore_plan(session: Session, snapshot: str | None, target: str, *, name: str | None = None,
                 point_in_time: datetime | None = None, includes: list[str] | None = None,
                 overwrite: str = _restore.DEFAULT_POLICY) -> _restore.RestoreResult:
    """What ``restore`` would do: files and directories to create, replace, and leave as they are."""
    snap = pick_snapshot(session, snapshot, name, point_in_time)
    return _restore.plan(session, snap, target, includes or [], overwrite=overwrite)


def restore(session: Session, snapshot: str | None, target: str, *, name: str | None = None,
            point_in_time: datetime | None = None, includes: list[str] | None = None,
            allow_partial: bool = False, progress: Callable[[int], None] | None = None,
            overwrite: str = _restore.DEFAULT_POLICY) -> _restore.RestoreResult:
    """Restore into ``target``; ``overwrite``: never (default) | if-newer | if-changed | always."""
    snap = pick_snapshot(session, snapshot, name, point_in_time)
    return _restore.restore(session, snap, target, includes=includes, allow_partial=allow_partial,
                            progress=progress, overwrite=overwrite)


def check(session: Session, read_fraction: float = 0.0, seed: int | None = None) -> _check.CheckReport:
    return _check.check(session, read_fraction, seed)


def rebuild_catalog(session: Session) -> _rebuild.RebuildResult:
    return _rebuild.rebuild_catalog(session)
