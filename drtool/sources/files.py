"""File-system side of a file-tree backup: scanning, stat → node, safe reads.

Kept apart from the pipeline so the rules about what a file *is* (links,
devices, sparse files, names that are not UTF-8) live in one place.
"""
from __future__ import annotations

import errno
import operator
import os
import stat
import sys
from dataclasses import dataclass
from typing import Iterator

from drtool.snapshot.model import (BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node)


@dataclass(slots=True)
class Entry:
    """One listed entry (slots: one per file of every run, ~200,000 a second listed)."""
    path: bytes
    name: str
    st: os.stat_result


class Unreadable(Exception):
    """A source entry could not be read; the backup goes on and exits 3."""

    def __init__(self, path: bytes, reason: str) -> None:
        super().__init__(f"{os.fsdecode(path)}: {reason}")
        self.path = path
        self.reason = reason


class Vanished(Unreadable):
    """The entry was deleted (or replaced by another kind of file) between listing
    and reading it.  A live file system changes under a backup: the snapshot
    shows the tree as found, the entry is left out with a warning, no exit 3."""


# ENOENT/ENOTDIR: deleted (or a parent was); ELOOP (O_NOFOLLOW), ENXIO (a socket),
# EINVAL (readlink): the name now points at another kind of file.
_VANISHED = {errno.ENOENT: "vanished during the backup", errno.ENOTDIR: "vanished during the backup",
             errno.ELOOP: "replaced by a symbolic link during the backup",
             errno.ENXIO: "replaced by a special file during the backup",
             errno.EINVAL: "replaced by another kind of file during the backup"}


def _error(path: bytes, exc: OSError, vanished: frozenset[int] = frozenset(_VANISHED)) -> Unreadable:
    if exc.errno in vanished:
        return Vanished(path, _VANISHED[exc.errno])
    return Unreadable(path, exc.strerror or str(exc))


_GONE = frozenset({errno.ENOENT, errno.ENOTDIR})
# os.fsdecode is exactly this decode, behind two Python-level calls per name
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_BY_NAME = operator.attrgetter("name")


def scan_dir(path: bytes) -> tuple[list[Entry], list[Unreadable]]:
    """List a directory sorted by name, with lstat results.

    Raises Unreadable (Vanished) when the directory itself cannot be listed.
    An entry that cannot be stat'ed -- typically deleted between readdir and
    lstat -- is returned among the problems; it never hides its siblings.
    """
    entries: list[Entry] = []
    problems: list[Unreadable] = []
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError as exc:
                    problems.append(_error(e.path, exc, _GONE))
                    continue
                entries.append(Entry(e.path, e.name.decode(_FS_ENCODING, _FS_ERRORS), st))
    except OSError as exc:
        raise _error(path, exc, _GONE) from None
    entries.sort(key=_BY_NAME)
    return entries, problems


def node_type(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISSOCK(mode):
        return SOCKET
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    return None


def node_from_stat(name: str, path: bytes, st: os.stat_result) -> Node:
    kind = node_type(st.st_mode)
    if kind is None:
        raise Unreadable(path, "unsupported file type")
    node = Node(name=name, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, inode=st.st_ino,
                size=st.st_size if kind == FILE else 0, links=st.st_nlink)
    if kind == SYMLINK:
        try:
            node.target = os.fsdecode(os.readlink(path))
        except OSError as exc:
            raise _error(path, exc) from None
    elif kind in (CHARDEV, BLOCKDEV):
        node.rdev = st.st_rdev
    if kind == FILE and st.st_nlink > 1:
        node.link_key = f"{st.st_dev}:{st.st_ino}"
    return node


def unchanged(node: Node, old: Node | None) -> bool:
    """The parent-snapshot skip rule: same type, size, mtime, ctime and inode."""
    return (old is not None and old.type == FILE and old.size == node.size
            and old.mtime_ns == node.mtime_ns and old.ctime_ns == node.ctime_ns
            and old.inode == node.inode)


def unchanged_as_is(old: Node, st: os.stat_result) -> bool:
    """The parent's node *is* what this walk would record: a regular file, one link, and
    every field ``node_from_stat`` fills equal to ``st`` (so :func:`unchanged` holds too).

    The walk then keeps the parent's ``Node`` itself instead of building an equal one
    and comparing the two (the unchanged re-run of a million tiny files did that for
    every file); nothing else is stored on such a node, so the tree encodes the same.
    """
    return (old.type == FILE and st.st_nlink == 1 == old.links
            and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns
            and old.ctime_ns == st.st_ctime_ns and old.inode == st.st_ino
            and old.uid == st.st_uid and old.gid == st.st_gid and stat.S_ISREG(st.st_mode)
            and old.mode == stat.S_IMODE(st.st_mode) and old.link_key is None
            and not old.changed and old.subtree is None and old.target is None
            and not old.rdev and old.xmeta is None)


def open_for_backup(path: bytes, check_regular: bool = True) -> int:
    """Open a file found as regular for reading.

    O_NONBLOCK: if the name was replaced by a FIFO since the scan, opening
    it must not wait forever for a writer (no effect on regular files).
    Anything but a regular file behind the descriptor counts as vanished.
    Callers that read only a bounded amount may skip the check here and
    make it after reading (:func:`changed_since`): one ``fstat`` per
    small file instead of two.
    """
    base = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    flags = base | getattr(os, "O_NOATIME", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        if flags == base:
            raise Unreadable(path, "permission denied") from None
        try:  # O_NOATIME needs ownership
            fd = os.open(path, base)
        except OSError as exc:
            raise _error(path, exc) from None
    except OSError as exc:
        raise _error(path, exc) from None
    if check_regular:
        try:
            ensure_regular(fd, path)
        except Vanished:
            os.close(fd)
            raise
    return fd


def prefetch(fd: int) -> None:
    """Ask the kernel to start reading the file's data now, without waiting for it.

    ``POSIX_FADV_WILLNEED`` queues the reads and returns: one thread that
    opens a batch of tiny files and prefetches each before reading the
    first has the whole batch's cold reads in flight at once, the disk
    concurrency that otherwise took a thread per read (and a GIL hand-off
    per system call between them).  Only a hint: where it cannot be given
    (a FIFO that took the name, a file system without it) the read that
    follows simply waits.
    """
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):
        pass


REPLACED = "replaced by another kind of file during the backup"


def ensure_regular(fd: int, path: bytes) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise Vanished(path, REPLACED)
    return st


def whole_holes(fd: int, offset: int, block: int) -> int:
    """How many whole ``block``-sized pieces from ``offset`` lie in a hole.

    Uses SEEK_DATA (a file system without it reports everything as data).
    Leaves the file position after the holes, so a 5 GiB sparse image is not
    read, cut and hashed as 5 GiB of zeros.
    """
    size = os.fstat(fd).st_size
    if offset + block > size:
        return 0
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        data = size if exc.errno == errno.ENXIO else offset  # ENXIO: a hole up to the end
    count = max(0, min(data, size) - offset) // block
    os.lseek(fd, offset + count * block, os.SEEK_SET)
    return count


def read_into(fd: int, path: bytes, view: memoryview) -> int:
    """Fill ``view`` from ``fd`` (short only at end of file); return the byte count."""
    filled = 0
    while filled < len(view):
        try:
            got = os.readv(fd, [view[filled:]])
        except OSError as exc:
            raise _error(path, exc, _GONE) from None
        if got == 0:
            break
        filled += got
    return filled


def read_some(fd: int, path: bytes, view: memoryview) -> int:
    """One read into ``view`` (a regular file reads short only at its end); the byte count."""
    try:
        return os.readv(fd, [view])
    except OSError as exc:
        raise _error(path, exc, _GONE) from None


def changed_since(fd: int, path: bytes, before: os.stat_result) -> bool:
    """True when the file was modified while we read it (torn read); Vanished if it is
    no longer a regular file (the check :func:`open_for_backup` may have left to us)."""
    after = ensure_regular(fd, path)
    return (after.st_size != before.st_size or after.st_mtime_ns != before.st_mtime_ns
            or after.st_ctime_ns != before.st_ctime_ns)


def iter_paths(roots: list[str]) -> Iterator[tuple[str, bytes]]:
    for root in roots:
        path = os.fsencode(os.path.abspath(root))
        yield os.path.basename(os.fsdecode(path.rstrip(b"/"))) or "root", path
