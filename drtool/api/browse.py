"""Browse and recover single files: ls, find, diff, dump (``drtool.browse``).

    from drtool import api
    with api.open_repository("/srv/backup", b"...") as session:
        for version in api.find_files(session, ["report.pdf"], names=["media"]):
            print(version.path, version.first.id, version.last.id)
        api.dump(session, "latest", "media/report.pdf", sys.stdout.buffer, name="media")
"""
from __future__ import annotations

import importlib
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

from drtool.backends.registry import open_backend
from drtool.core.session import Session
from drtool.errors import UsageError
from drtool.snapshot.timeparse import parse_point_in_time
from drtool.units import parse_size

if TYPE_CHECKING:
    from drtool.browse import find as _find
    from drtool.browse import index as _index
    from drtool.browse import listing as _listing
    from drtool.browse import rewrite as _rewrite


def _feature(name: str) -> Any:
    """The browse module, imported on first use: its catalog queries pull in SQLAlchemy (~0.3 s),
    which ``drtool.api`` must not cost commands that never browse (``pg wal-push``)."""
    return importlib.import_module(f"drtool.browse.{name}")

__all__ = ["diff", "dump", "find_files", "find_files_without_key", "index_files", "ls", "ls_lines", "mount", "parse_size", "rewrite",
           "rewrite_history"]

def _time(text: str | None) -> datetime | None:
    return parse_point_in_time(text) if text else None


def ls(session: Session, snapshot: str, path: str = "", *, name: str | None = None,
       recursive: bool = False) -> list[_listing.Entry]:
    """The entries of a directory in a snapshot (all below it with ``recursive``)."""
    snap = session.find_snapshot(_snapshot_ref(snapshot), name)
    with session.lock("ls", read_only_ok=True):
        session.repo.load_index(trees_only=True)  # a listing reads trees only
        return list(_feature("listing").ls(session.repo, snap, path, recursive))


def ls_lines(session: Session, snapshot: str, path: str = "", *, name: str | None = None,
             recursive: bool = False, long_format: bool = False) -> Iterator[str]:
    """What ``drtool ls`` prints, streamed (``ls -R`` of a million entries is never a list)."""
    snap = session.find_snapshot(_snapshot_ref(snapshot), name)
    with session.lock("ls", read_only_ok=True):
        session.repo.load_index(trees_only=True)  # a listing reads trees only
        yield from _feature("listing").ls_lines(session.repo, snap, path, recursive, long_format)


def find_files(session: Session, patterns: list[str], *, path: str | None = None,
               names: list[str] | None = None, host: str | None = None, since: str | None = None,
               until: str | None = None, min_size: str | None = None, max_size: str | None = None,
               newer: str | None = None, older: str | None = None,
               hash: str | None = None) -> list[_find.Version]:
    """File versions matching every condition given (globs, sizes like '10M', times like
    '2026-11-20' or '-7d'), each with the first and last snapshot holding it."""
    query = _find_query(patterns, path=path, names=names, host=host, since=since, until=until,
                        min_size=min_size, max_size=max_size, newer=newer, older=older, hash=hash)
    return _feature("find").find(session, query,  # type: ignore[no-any-return]
                                 lock=lambda: session.lock("find", read_only_ok=True))


def find_files_without_key(repository: str, patterns: list[str], *, catalog: str | None = None,
                           backend_options: dict[str, Any] | None = None,
                           **conditions: Any) -> list[_find.Version] | None:
    """:func:`find_files` answered from an SQLite catalog that is already current, without
    deriving the key (one LIST of the repository's snapshots); None when the repository
    must be opened (``browse.find.find_without_key`` says when and why this is safe)."""
    query = _find_query(patterns, **conditions)
    backend = open_backend(repository, backend_options or {})
    try:
        return _feature("find").find_without_key(  # type: ignore[no-any-return]
            backend, repository, catalog, query)
    finally:
        backend.close()


def _find_query(patterns: list[str], *, path: str | None = None, names: list[str] | None = None,
                host: str | None = None, since: str | None = None, until: str | None = None,
                min_size: str | None = None, max_size: str | None = None, newer: str | None = None,
                older: str | None = None, hash: str | None = None) -> _find.FindQuery:
    return _feature("find").FindQuery(  # type: ignore[no-any-return]
        patterns=list(patterns), path=path, names=list(names or []), host=host, since=_time(since),
        until=_time(until), min_size=parse_size(min_size, "--min-size") if min_size else None,
        max_size=parse_size(max_size, "--max-size") if max_size else None, newer=_time(newer),
        older=_time(older), hash=hash)


def diff(session: Session, first: str, second: str, *, name: str | None = None) -> _listing.DiffResult:
    old = session.find_snapshot(_snapshot_ref(first), name)
    new = session.find_snapshot(_snapshot_ref(second), name)
    with session.lock("diff", read_only_ok=True):
        session.repo.load_index(trees_only=True)
        return _feature("listing").diff(session.repo, old, new)  # type: ignore[no-any-return]


def dump(session: Session, snapshot: str, path: str | None, out: BinaryIO, *,
         name: str | None = None) -> int:
    """Write a file (as is), a directory (tar) or a dump snapshot's dump to ``out``; bytes of data."""
    snap = session.find_snapshot(_snapshot_ref(snapshot), name)
    with session.lock("dump", read_only_ok=True):
        session.repo.load_index()
        return _feature("dump").dump(session.repo, snap, path, out)  # type: ignore[no-any-return]


def index_files(session: Session) -> _index.IndexResult:
    """Bring the per-file index up to date (``find`` does this itself)."""
    return _feature("index").catch_up(  # type: ignore[no-any-return]
        session, lock=lambda: session.lock("index", read_only_ok=True))


def _snapshot_ref(ref: str) -> str:
    if not ref.strip():
        raise UsageError("an empty snapshot id was given", hint="give a snapshot id or 'latest'")
    return ref


def mount(session: Session, mountpoint: str) -> None:
    """Serve the repository read-only at ``mountpoint`` until it is unmounted (blocks)."""
    snaps = session.snapshots()
    with session.lock("mount", read_only_ok=True):
        session.repo.load_index()
        _feature("mount").mount(session.repo, snaps, mountpoint)


def rewrite(session: Session, excludes: list[str], snapshots: list[str] | None = None, *,
            name: str | None = None, reason: str, dry_run: bool = False,
            command: str = "") -> "_rewrite.RewriteResult":
    """Replace the snapshots holding ``excludes`` by ones without them (takedowns); see
    ``drtool.browse.rewrite``.  ``command`` is recorded in the audit trail."""
    return _feature("rewrite").rewrite(session, excludes, list(snapshots or []), name=name, reason=reason,
                            dry_run=dry_run, command=command)


def rewrite_history(session: Session) -> list[dict[str, object]]:
    """The audit trail of rewrites, oldest first."""
    rewrites = importlib.import_module("drtool.catalog.files").rewrites
    return [{"time": r.time.isoformat(), "host": r.host, "command": r.command, "reason": r.reason,
             "excluded": r.excluded, "original_id": r.original_id, "new_id": r.new_id, "outcome": r.outcome}
            for r in rewrites(session.catalog)]
