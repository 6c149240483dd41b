"""``drtool find``: which versions of which files exist in which snapshots.

Answered from the per-file index (``catalog/files.py``): SQL narrows the
candidates (basename equality or LIKE, path prefix, sizes, times, hash), the
globs are then matched exactly in Python (``fnmatchcase``: SQL ``LIKE`` is
case-insensitive in SQLite and knows no character classes).  Each match is
one *version* with the first and last snapshot it is in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import Any, Callable, ContextManager

from drtool.browse.index import catch_up
from drtool.browse.trees import normal_path
from drtool.catalog.files import FileIndex, VersionFilter
from drtool.core.session import Session
from drtool.errors import UsageError
from drtool.snapshot.names import display, like_literal
from drtool.sources.shards import shard_series_like

_HASH_TEXT = re.compile(r"^(?:(sha1|sha256):)?([0-9a-fA-F]{4,64})$")


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
    match = _HASH_TEXT.match(text.strip())
    if match is None:
        raise UsageError(f"--hash {text!r} is not a hex digest",
                         hint="give sha256:HEX, sha1:HEX or a hex prefix of at least 4 digits")
    algorithm, digits = match.group(1), match.group(2).lower()
    if algorithm:
        return [f"{algorithm}:{digits}"]
    return [f"sha256:{digits}", f"sha1:{digits}", digits]


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
    if not query.patterns and query.path is None and query.hash is None:
        raise UsageError("find needs a PATTERN, --path or --hash",
                         hint="e.g. drtool find '*.jpg' --name media, or --path media/photos")
    catch_up(session, lock=lock)
    query = replace(query, patterns=[display(p) for p in query.patterns])
    found: dict[int, Version] = {}
    for row in FileIndex(session.catalog).versions(_filter(query)):
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


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
