"""``drtool find``: which versions of which files exist in which snapshots.

Answered from the per-file index (``catalog/files.py``): SQL narrows the
candidates (basename equality or LIKE, path prefix, sizes, times, hash), the
globs are then matched exactly in Python (``fnmatchcase``: SQL ``LIKE`` is
case-insensitive in SQLite and knows no character classes).  Each match is
one *version* with the first and last snapshot it is in.

When the session's catalog is not open yet and is an SQLite file whose index
already holds every snapshot the repository lists, that needs no full
integrity check and no migration, and whose memory of committed snapshots
finds nothing missing, ``find`` reads it through the standard library
(``catalog.peek``): no SQLAlchemy import (~0.3 s), nothing written.  Any of
those conditions unmet, it opens the catalog, syncs and indexes as before.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator

from drtool.backends.base import Backend
from drtool.browse.trees import normal_path
from drtool.catalog import integrity
from drtool.catalog.location import catalogs_of_repository, sqlite_path
from drtool.catalog.peek import (PeekDamaged, PeekFailed, VersionFilter, index_state, peek_seen, repo_ids,
                                 versions)
from drtool.core.rollback import FORGOTTEN, PRESENT, SNAPSHOT, VANISHED
from drtool.core.session import Session
from drtool.errors import UsageError
from drtool.repository.objects import SNAPSHOTS
from drtool.snapshot.names import display, like_literal
from drtool.snapshot.store import list_snapshot_ids
from drtool.sources.shards import shard_series_like

# an object's ETag may end in "-N" (a multipart upload: N parts)
_HASH_TEXT = re.compile(r"^(?:(sha1|sha256):([0-9a-fA-F]{4,64})|etag:([0-9a-fA-F]{4,64}(?:-[0-9]+)?)"
                        r"|([0-9a-fA-F]{4,64}))$")


@dataclass
class FindQuery:
    patterns: list[str] = field(default_factory=list)  # globs: the base name, or the path if one has '/'
    path: str | None = None   # this path or anything under it (as restore --include means it)
    names: list[str] = field(default_factory=list)     # snapshot series
    host: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_size: int | None = None
    max_size: int | None = None
    newer: datetime | None = None   # file mtime
    older: datetime | None = None
    hash: str | None = None         # sha256:/sha1: prefix, or a bare hex prefix


@dataclass
class SeenIn:
    id: str
    time: datetime
    host: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "short_id": self.id[:8], "time": self.time.astimezone().isoformat(),
                "host": self.host}


@dataclass
class Version:
    series: str
    path: str
    type: str
    size: int
    mtime: datetime
    mode: int
    content: str
    hash: str | None
    first: SeenIn
    last: SeenIn
    snapshots: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.series, "path": self.path, "type": self.type, "size": self.size,
                "mtime": self.mtime.astimezone().isoformat(), "mode": f"{self.mode:04o}",
                "content_id": self.content, "hash": self.hash, "snapshots": self.snapshots,
                "first": self.first.as_dict(), "last": self.last.as_dict()}


    def text(self) -> str:
        """Two lines for people: the version, then where it is."""
        when = self.mtime.astimezone().strftime("%Y-%m-%d %H:%M")
        digest = f"  {self.hash}" if self.hash else ""
        span = (f"in {self.snapshots} snapshot(s) of {display(self.series)}: first {self.first.id[:8]} "
                f"({_shown(self.first.time)}, {display(self.first.host)})")
        if self.snapshots > 1:
            span += f", last {self.last.id[:8]} ({_shown(self.last.time)}, {display(self.last.host)})"
        return f"{self.path}  {self.size} bytes  mtime {when}{digest}\n    {span}"


def _shown(when: datetime) -> str:
    return when.astimezone().isoformat(timespec="seconds")


def like_pattern(glob: str) -> str | None:
    """A SQL LIKE pattern at least as wide as the glob; None when the glob has no wildcard."""
    if not any(c in glob for c in "*?["):
        return None
    out = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char == "[":
            end = glob.find("]", i + 2)
            if end < 0:
                out.append("[")
            else:
                out.append("_")
                i = end
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _shown_path(path: str) -> str:
    """Paths and globs as the index stores paths (``names.display``: escaped, one-to-one)."""
    return display(normal_path(path))


def _filter(query: FindQuery) -> VersionFilter:
    wanted = VersionFilter(series=[display(n) for n in query.names] or None,
                           series_like=[shard_series_like(display(n)) for n in query.names] or None, host=query.host,
                           since=query.since, until=query.until, min_size=query.min_size,
                           max_size=query.max_size)
    basenames = [p for p in query.patterns if "/" not in p]
    if basenames and len(basenames) == len(query.patterns):
        wanted.basename_equal = [p for p in basenames if like_pattern(p) is None] or None
        wanted.basename_like = [like for p in basenames if (like := like_pattern(p)) is not None] or None
    if query.path is not None:
        prefix = _shown_path(query.path)
        if prefix:
            wanted.path_like = like_literal(prefix) + "%"
    if query.newer is not None:
        wanted.mtime_after_ns = int(query.newer.timestamp() * 1e9)
    if query.older is not None:
        wanted.mtime_before_ns = int(query.older.timestamp() * 1e9)
    if query.hash is not None:
        wanted.hash_prefixes = _hash_prefixes(query.hash)
    return wanted


def _hash_prefixes(text: str) -> list[str]:
    """What the hash and content columns may start with: one kind if named, else every kind
    (an object-store source records its objects' ETags when it records no content hash)."""
    match = _HASH_TEXT.match(text.strip())
    if match is None:
        raise UsageError(f"--hash {text!r} is not a hex digest",
                         hint="give sha256:HEX, sha1:HEX, etag:HEX or a hex prefix of at least 4 digits")
    algorithm, named, etag, bare = match.groups()
    if algorithm:
        return [f"{algorithm}:{named.lower()}"]
    if etag:
        return [f"etag:{etag.lower()}"]
    digits = bare.lower()
    return [f"sha256:{digits}", f"sha1:{digits}", f"etag:{digits}", digits]


def _matches(query: FindQuery, path: str) -> bool:
    if query.path is not None:
        prefix = _shown_path(query.path)
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return False
    if not query.patterns:
        return True
    base = path.rsplit("/", 1)[-1]
    return any(fnmatchcase(path, p.lstrip("/")) if "/" in p else fnmatchcase(base, p)
               for p in query.patterns)


def find(session: Session, query: FindQuery,
         lock: Callable[[], ContextManager[Any]] | None = None) -> list[Version]:
    """Every matching file version, with the snapshots it is in (first and last by time).
    ``lock``: the repository lock, taken only if snapshots must be indexed first."""
    query = _checked(query)
    wanted = _filter(query)
    rows = None
    if session.catalog_deferred:
        repo_id = session.repo.config.repo_id
        rows = _current_rows(sqlite_path(session.options.catalog, repo_id), repo_id,
                             set(list_snapshot_ids(session.repo)), wanted)
    if rows is None:
        from drtool.browse.index import catch_up  # the catalog layer, SQLAlchemy and all
        from drtool.catalog.files import FileIndex
        catch_up(session, lock=lock)
        rows = FileIndex(session.catalog).versions(wanted)
    return _collect(query, rows)


def find_without_key(backend: Backend, repository: str, catalog: str | None,
                     query: FindQuery) -> list[Version] | None:
    """The answer from an SQLite catalog that is current, before any key is derived; None: not so.

    The catalog is named by the repository id, which is inside the encrypted
    config; without the key it is found by its contents instead: the one
    whose snapshot list of some repository id is exactly what the repository
    LISTs (snapshot ids are unique to their repository).  Candidates: the
    ``catalog`` file given, or the default-location catalogs whose marker
    names ``repository``.  What such a catalog answers is what its owner can
    read in it with any SQLite tool: the passphrase protects the repository,
    not this file (mode 0600), so it is not asked for here.
    """
    query = _checked(query)
    listed = {info.name.split("/", 1)[1] for info in backend.list(f"{SNAPSHOTS}/")}
    for repo_id, path in _candidates(repository, catalog):
        rows = _current_rows(path, repo_id, listed, _filter(query))
        if rows is not None:
            return _collect(query, rows)
    return None


def _candidates(repository: str, catalog: str | None) -> list[tuple[str, Path]]:
    if catalog and "://" in catalog:
        return []  # a server catalog is opened with SQLAlchemy, as ever
    if not catalog:
        return catalogs_of_repository(repository)
    path = Path(catalog).absolute()
    try:
        return [(repo_id, path) for repo_id in repo_ids(path)] if path.is_file() else []
    except PeekDamaged:
        raise
    except PeekFailed:
        return []


def _checked(query: FindQuery) -> FindQuery:
    if not query.patterns and query.path is None and query.hash is None:
        raise UsageError("find needs a PATTERN, --path or --hash",
                         hint="e.g. drtool find '*.jpg' --name media, or --path media/photos")
    return replace(query, patterns=[display(p) for p in query.patterns])


def _collect(query: FindQuery, rows: Iterable[Any]) -> list[Version]:
    found: dict[int, Version] = {}
    for row in rows:
        if row.id in found:
            version = found[row.id]
            version.last = SeenIn(row.snapshot_id, _utc(row.time), row.host)
            version.snapshots += 1
            continue
        if not _matches(query, row.path):
            continue
        seen = SeenIn(row.snapshot_id, _utc(row.time), row.host)
        found[row.id] = Version(row.series, row.path, row.type, row.size,
                                datetime.fromtimestamp(row.mtime_ns / 1e9, timezone.utc), row.mode,
                                row.content, row.hash, seen, seen)
    return sorted(found.values(), key=lambda v: (v.series, v.path, v.first.time))


def _current_rows(path: Path | None, repo_id: str, listed: set[str],
                  wanted: VersionFilter) -> Iterator[Any] | None:
    """The rows read straight from an SQLite catalog that is current; None: open it and catch up.

    Current: no full integrity check due, no migration, exactly the listed
    snapshots (none added or forgotten elsewhere), all indexed, and a memory
    of committed snapshots with nothing to report or update (``rollback.detect``
    would do nothing).
    """
    if not listed or path is None or not path.is_file() or integrity.reason_to_check(path) is not None:
        return None
    try:
        state = index_state(path, repo_id)
        if state is None or not state.at_head or state.snapshots != listed or not listed <= state.indexed:
            return None
        if any(_to_report(row.state, object_id in listed) for object_id, row in
               peek_seen(path, repo_id, SNAPSHOT).items()):
            return None
    except PeekDamaged:
        raise  # the one-line error with the rebuild hint (a CatalogError)
    except PeekFailed:
        return None  # busy or unreadable for now: the ordinary path waits, or says what is wrong
    return versions(path, repo_id, wanted)  # streamed; damage met on the way is PeekDamaged too


def _to_report(state: str, is_listed: bool) -> bool:
    """Whether ``rollback.detect`` would report or record something about this remembered snapshot."""
    return (state in (PRESENT, VANISHED) and not is_listed) or (state in (VANISHED, FORGOTTEN) and is_listed)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
