"""``drtool mount``: the repository as a read-only file system (FUSE, libfuse3 through mfusepy).

Layout (fixed when mounted; remount to see newer snapshots)::

    by-name/<name>/<time>/...        every snapshot of each series (a name with '/' nests)
    by-host/<host>/<name>/<time>/...
    by-time/<time>/<name>/...
    latest/<name>/...                the newest snapshot of each series
    ids/<short id>/...

``<time>`` is the snapshot time in UTC (``2026-11-20T14:05:00Z``).  File data
is read on demand, blob by blob, through the repository's group cache (the
one restore reads trees through), and every blob is authenticated before a
byte of it is returned; a damaged blob is EIO for that read, logged.  The
loop is single-threaded: the repository's readers are not shared between
threads.  Ctrl-C, SIGTERM or ``umount`` end it cleanly (libfuse unmounts).
"""
from __future__ import annotations

import bisect
import errno
import logging
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

from drtool.browse.listing import _TYPE_BITS
from drtool.errors import DrtoolError, UsageError
from drtool.repository.repo import Repository
from drtool.snapshot.model import DIR, FILE, SYMLINK, Node, Snapshot
from drtool.snapshot.store import load_tree_checked

log = logging.getLogger("drtool")
TREE_CACHE = 4096   # directories kept decoded
# fuse_main's status when its loop ended with an error, which is how libfuse 3 reports the
# SIGINT/SIGTERM/SIGHUP its own handlers caught (session error = the signal); it has
# unmounted by then.  A failed mount returns 1-7.
LOOP_ENDED_BY_SIGNAL = 8
READ_ONLY_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class FuseUnavailable(DrtoolError):
    """No FUSE here (no /dev/fuse, no libfuse3, or the kernel refused the mount): exit 1."""


@dataclass
class VirtualDir:
    children: dict[str, "VirtualDir | Snapshot"] = field(default_factory=dict)
    mtime_ns: int = 0

    def add(self, parts: list[str], leaf: Snapshot) -> None:
        here = self
        for part in parts[:-1]:
            child = here.children.setdefault(part, VirtualDir())
            if not isinstance(child, VirtualDir):
                return  # a series named like another series' time directory: not shown twice
            child.mtime_ns = max(child.mtime_ns, _ns(leaf))
            here = child
        here.children.setdefault(parts[-1], leaf)
        self.mtime_ns = max(self.mtime_ns, _ns(leaf))


def _ns(snap: Snapshot) -> int:
    return int(snap.time.timestamp() * 1e9)


def _stamp(snap: Snapshot) -> str:
    return snap.time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def layout(snaps: list[Snapshot]) -> VirtualDir:
    """The virtual directories above the snapshots' own trees (``snaps`` oldest first)."""
    root = VirtualDir()
    seen: dict[tuple[str, ...], int] = {}

    def place(parts: list[str], snap: Snapshot) -> None:
        key = tuple(parts)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:  # two snapshots of one series in the same second
            parts = parts[:-1] + [f"{parts[-1]}-{snap.short_id}"]
        root.add(parts, snap)

    latest: dict[str, Snapshot] = {}
    for snap in snaps:
        name = [p for p in snap.name.split("/") if p] or ["(unnamed)"]
        place(["by-name", *name, _stamp(snap)], snap)
        place(["by-host", snap.host or "(unknown)", *name, _stamp(snap)], snap)
        place(["by-time", _stamp(snap), *name], snap)
        place(["ids", snap.short_id], snap)
        latest[snap.name] = snap
    for name, snap in latest.items():
        root.add(["latest", *([p for p in name.split("/") if p] or ["(unnamed)"])], snap)
    for top in ("by-name", "by-host", "by-time", "latest", "ids"):
        root.children.setdefault(top, VirtualDir())
    return root


@dataclass
class OpenFile:
    node: Node
    ends: list[int]                    # cumulative end offset of each blob
    last: tuple[int, bytes] | None = None  # the blob read last (reads come in 128 KiB pieces)


class SnapshotFS:
    """mfusepy ``Operations``: path-based, read-only."""

    use_ns = True

    def __init__(self, repo: Repository, snaps: list[Snapshot]) -> None:
        self.repo = repo
        self.root = layout(snaps)
        self._trees: OrderedDict[str, dict[str, Node]] = OrderedDict()
        self._open: dict[int, OpenFile] = {}
        self._next_fh = 1
        self._uid, self._gid = os.getuid(), os.getgid()

    # ----- looking paths up ---------------------------------------------------------
    def _tree(self, tree_id: str) -> dict[str, Node]:
        nodes = self._trees.get(tree_id)
        if nodes is None:
            nodes = self._trees[tree_id] = {n.name: n for n in load_tree_checked(self.repo, tree_id)}
            if len(self._trees) > TREE_CACHE:
                self._trees.popitem(last=False)
        else:
            self._trees.move_to_end(tree_id)
        return nodes

    def _lookup(self, path: str) -> VirtualDir | Node:
        here: VirtualDir | Snapshot | Node = self.root
        for part in (p for p in path.split("/") if p):
            if isinstance(here, VirtualDir):
                child = here.children.get(part)
            elif isinstance(here, Snapshot):
                child = self._tree(here.tree).get(part)
            else:
                child = self._tree(here.subtree).get(part) if here.type == DIR and here.subtree else None
            if child is None:
                raise _os_error(errno.ENOENT)
            here = child
        if isinstance(here, Snapshot):
            return Node(name="", type=DIR, mode=0o755, mtime_ns=_ns(here), subtree=here.tree)
        return here

    def _guarded(self, path: str) -> VirtualDir | Node:
        try:
            return self._lookup(path)
        except DrtoolError as exc:
            log.error("%s: %s", path, exc)
            raise _os_error(errno.EIO) from None

    # ----- FUSE operations ---------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        found = self._guarded(path)
        if isinstance(found, VirtualDir):
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_uid": self._uid, "st_gid": self._gid,
                    "st_mtime": found.mtime_ns, "st_ctime": found.mtime_ns, "st_atime": found.mtime_ns}
        node = found
        return {"st_mode": _TYPE_BITS.get(node.type, stat.S_IFREG) | node.mode, "st_nlink": max(node.links, 1),
                "st_uid": node.uid, "st_gid": node.gid, "st_size": node.size if node.type == FILE else
                len(os.fsencode(node.target or "")) if node.type == SYMLINK else 0,
                "st_rdev": node.rdev, "st_mtime": node.mtime_ns, "st_ctime": node.mtime_ns,
                "st_atime": node.mtime_ns, "st_blocks": (node.size + 511) // 512}

    def readdir(self, path: str, fh: int) -> list[str]:
        found = self._guarded(path)
        if isinstance(found, VirtualDir):
            names = list(found.children)
        elif found.type == DIR:
            try:
                names = list(self._tree(found.subtree)) if found.subtree else []
            except DrtoolError as exc:
                log.error("%s: %s", path, exc)
                raise _os_error(errno.EIO) from None
        else:
            raise _os_error(errno.ENOTDIR)
        return [".", "..", *names]

    def readlink(self, path: str) -> str:
        found = self._guarded(path)
        if isinstance(found, VirtualDir) or found.type != SYMLINK:
            raise _os_error(errno.EINVAL)
        return found.target or ""

    def open(self, path: str, flags: int) -> int:
        if flags & READ_ONLY_FLAGS:
            raise _os_error(errno.EROFS)
        found = self._guarded(path)
        if isinstance(found, VirtualDir) or found.type != FILE:
            raise _os_error(errno.EISDIR if isinstance(found, VirtualDir) or found.type == DIR else errno.EACCES)
        ends, total = [], 0
        try:
            for blob in found.content:
                total += self.repo.locate(bytes.fromhex(blob)).raw_length
                ends.append(total)
        except DrtoolError as exc:
            log.error("%s: %s", path, exc)
            raise _os_error(errno.EIO) from None
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self._open[fh] = OpenFile(found, ends)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._open.get(fh)
        if handle is None:
            raise _os_error(errno.EBADF)
        pieces, end = [], min(offset + size, handle.ends[-1] if handle.ends else 0)
        position = offset
        while position < end:
            index = bisect.bisect_right(handle.ends, position)
            start = handle.ends[index - 1] if index else 0
            data = self._blob(handle, index, path)
            take = data[position - start:min(end, handle.ends[index]) - start]
            pieces.append(take)
            position += len(take)
        return b"".join(pieces)

    def _blob(self, handle: OpenFile, index: int, path: str) -> bytes:
        if handle.last is not None and handle.last[0] == index:
            return handle.last[1]
        try:
            data = self.repo.read_blob(bytes.fromhex(handle.node.content[index]))
        except DrtoolError as exc:
            log.error("%s: %s", path, exc)
            raise _os_error(errno.EIO) from None
        handle.last = (index, data)
        return data

    def release(self, path: str, fh: int) -> int:
        self._open.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def load_fuse() -> Any:
    """mfusepy over libfuse3, or FuseUnavailable saying what is missing."""
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("FUSE is not available here: /dev/fuse does not exist",
                              hint="load the fuse module or give the container /dev/fuse; or use "
                                   "'drtool dump' / 'drtool restore --include'")
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except (ImportError, OSError) as exc:
        raise FuseUnavailable(f"FUSE is not available here: {exc}",
                              hint="install libfuse3 (apt-get install fuse3) and mfusepy; or use "
                                   "'drtool dump' / 'drtool restore --include'") from None
    return mfusepy


def mount(repo: Repository, snaps: list[Snapshot], mountpoint: str) -> None:
    """Serve until unmounted (``umount``, ``fusermount3 -u``, Ctrl-C or SIGTERM)."""
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not a directory", hint="create it first: mkdir -p DIR")
    fuse = load_fuse()
    operations = type("DrtoolFS", (SnapshotFS, fuse.Operations), {})(repo, snaps)
    try:
        fuse.FUSE(operations, mountpoint, foreground=True, nothreads=True, ro=True, fsname="drtool",
                  subtype="drtool", default_permissions=True)
    except RuntimeError as exc:
        if exc.args == (LOOP_ENDED_BY_SIGNAL,):
            return  # Ctrl-C / SIGTERM: libfuse left its loop and unmounted; that is how a mount ends
        raise FuseUnavailable(f"could not mount at {mountpoint} (libfuse returned {exc})",
                              hint="is it already a mount point, or is FUSE refused here? see the "
                                   "libfuse message above") from None
