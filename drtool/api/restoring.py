"""Restoring files: one request object, and the snapshot picked once.

The CLI picks the snapshot (to name it before the work starts) and hands the
same ``Snapshot`` on; nothing below looks it up, or decrypts its manifest,
a second time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from drtool.core.session import Session
from drtool.errors import UsageError
from drtool.restore import run as _restore
from drtool.restore.run import LIST_LIMIT, RestoreResult
from drtool.restore.target import DEFAULT_POLICY, POLICIES
from drtool.snapshot.model import Snapshot

__all__ = ["DEFAULT_POLICY", "LIST_LIMIT", "POLICIES", "RestoreRequest", "RestoreResult", "pick_snapshot", "restore",
           "restore_plan", "restore_snapshot"]


@dataclass
class RestoreRequest:
    """What to restore where, and how to treat what is already there."""

    target: str
    includes: list[str] = field(default_factory=list)
    overwrite: str = DEFAULT_POLICY   # never | if-newer | if-changed | always
    allow_partial: bool = False
    dry_run: bool = False
    progress: Callable[[int], None] | None = None


def pick_snapshot(session: Session, snapshot: str | None, name: str | None,
                  point_in_time: datetime | None) -> Snapshot:
    """The snapshot a restore means: by id or 'latest', or the newest at or before a time."""
    if point_in_time is not None:
        return session.snapshot_at(point_in_time, name)
    if snapshot is not None and not snapshot.strip():
        raise UsageError("an empty snapshot id was given", hint="give a snapshot id or 'latest'")
    return session.find_snapshot(snapshot or "latest", name)


def restore_snapshot(session: Session, snap: Snapshot, request: RestoreRequest) -> RestoreResult:
    """Restore (or with ``dry_run`` plan) an already picked snapshot."""
    if request.dry_run:
        return _restore.plan(session, snap, request.target, request.includes, overwrite=request.overwrite)
    return _restore.restore(session, snap, request.target, includes=request.includes,
                            allow_partial=request.allow_partial, progress=request.progress,
                            overwrite=request.overwrite)


def restore_plan(session: Session, snapshot: str | Snapshot | None, target: str, *, name: str | None = None,
                 point_in_time: datetime | None = None, includes: list[str] | None = None,
                 overwrite: str = DEFAULT_POLICY) -> RestoreResult:
    """What ``restore`` would do: files and directories to create, replace, and leave as they are."""
    snap = snapshot if isinstance(snapshot, Snapshot) else pick_snapshot(session, snapshot, name, point_in_time)
    return restore_snapshot(session, snap, RestoreRequest(target, includes or [], overwrite, dry_run=True))


def restore(session: Session, snapshot: str | Snapshot | None, target: str, *, name: str | None = None,
            point_in_time: datetime | None = None, includes: list[str] | None = None,
            allow_partial: bool = False, progress: Callable[[int], None] | None = None,
            overwrite: str = DEFAULT_POLICY) -> RestoreResult:
    """Restore into ``target``; ``overwrite``: never (default) | if-newer | if-changed | always."""
    snap = snapshot if isinstance(snapshot, Snapshot) else pick_snapshot(session, snapshot, name, point_in_time)
    return restore_snapshot(session, snap, RestoreRequest(target, includes or [], overwrite,
                                                          allow_partial=allow_partial, progress=progress))
