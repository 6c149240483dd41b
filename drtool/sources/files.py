"""File-system side of a file-tree backup: scanning, stat → node, safe reads.

Kept apart from the pipeline so the rules about what a file *is* (links,
devices, sparse files, names that are not UTF-8) live in one place.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterator

from drtool.snapshot.model import (BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node)


@dataclass
class Entry:
    path: bytes
    name: str
    st: os.stat_result


class Unreadable(Exception):
    """A source entry could not be read; the backup goes on and exits 3."""

    def __init__(self, path: bytes, reason: str) -> None:
        super().__init__(f"{os.fsdecode(path)}: {reason}")
        self.path = path
        self.reason = reason


def scan_dir(path: bytes) -> list[Entry]:
    """List a directory sorted by name, with lstat results; raise Unreadable."""
    try:
        with os.scandir(path) as it:
            entries = [Entry(e.path, os.fsdecode(e.name), e.stat(follow_symlinks=False)) for e in it]
    except OSError as exc:
        raise Unreadable(path, exc.strerror or str(exc)) from None
    entries.sort(key=lambda e: e.name)
    return entries


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
            raise Unreadable(path, exc.strerror or str(exc)) from None
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


def open_for_backup(path: bytes) -> int:
    flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags)
    except PermissionError:
        if flags & getattr(os, "O_NOATIME", 0):  # O_NOATIME needs ownership
            try:
                return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError as exc:
                raise Unreadable(path, exc.strerror or str(exc)) from None
        raise Unreadable(path, "permission denied") from None
    except OSError as exc:
        raise Unreadable(path, exc.strerror or str(exc)) from None


def reader(fd: int, path: bytes) -> Callable[[int], bytes]:
    def read(size: int) -> bytes:
        try:
            return os.read(fd, size)
        except OSError as exc:
            raise Unreadable(path, exc.strerror or str(exc)) from None
    return read


def changed_since(fd: int, before: os.stat_result) -> bool:
    """True when the file was modified while we read it (torn read)."""
    after = os.fstat(fd)
    return (after.st_size != before.st_size or after.st_mtime_ns != before.st_mtime_ns
            or after.st_ctime_ns != before.st_ctime_ns)


def iter_paths(roots: list[str]) -> Iterator[tuple[str, bytes]]:
    for root in roots:
        path = os.fsencode(os.path.abspath(root))
        yield os.path.basename(os.fsdecode(path.rstrip(b"/"))) or "root", path
