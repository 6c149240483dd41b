"""The restore target, walked with directory file descriptors: nothing outside it is touched.

Every directory of the restore is opened relative to its parent's
descriptor with ``O_NOFOLLOW | O_DIRECTORY``, and every file, link and
special file is created, inspected, renamed or removed relative to its
directory's descriptor (``openat``, ``mkdirat``, ``renameat``, ``unlinkat``,
``fstatat`` without following links).  A symbolic link already in the
target -- planted, or left by an earlier restore -- is therefore never
followed: where the snapshot has a directory, the link is replaced by a
real directory (or, with ``--overwrite never``, left alone and reported);
where it has a file, the link itself is replaced.  Only ``--target`` itself
is resolved as a path (it is the operator's choice).

The overwrite policy decides what happens to entries that already exist
and differ from the snapshot (restic's ``--overwrite``):

* ``never`` (default): keep them, report them, exit 3 -- a restore into a
  live directory never silently replaces a locally modified file;
* ``if-newer``: replace only when the snapshot's mtime is newer;
* ``if-changed``: replace unless size and mtime match (trusted as unchanged);
* ``always``: replace whatever differs.

A file whose content already matches is kept under every policy (a re-run
of an interrupted restore does not download it again).  A directory is
never replaced by a file, and a non-empty directory never removed.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import Callable

from drtool.errors import RestoreTargetError, UsageError
from drtool.snapshot.model import BLOCKDEV, CHARDEV, FIFO, SYMLINK, Node

POLICIES = ("never", "if-newer", "if-changed", "always")
DEFAULT_POLICY = "never"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC
CREATE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW | _CLOEXEC

# Decisions about one entry of the snapshot
NEW, KEEP, REPLACE, CONFLICT = "new", "keep", "replace", "conflict"


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise UsageError(f"unknown --overwrite policy {policy!r}", hint=f"use one of {', '.join(POLICIES)}")
    return policy


class DirHandle:
    """An open directory of the target, shared by the walk and the files restored into it.

    Reference-counted: the walk holds it while inside the directory, each
    file job until its temporary is renamed; the descriptor is closed when
    the last user lets go.  ``fd`` is None for a directory a dry run would
    create (nothing below it exists).  ``fresh``: created by this run, so
    nothing in it can already exist.
    """

    __slots__ = ("fd", "rel", "fresh", "_refs", "_lock")

    def __init__(self, fd: int | None, rel: str, fresh: bool) -> None:
        self.fd, self.rel, self.fresh = fd, rel, fresh
        self._refs = 1
        self._lock = threading.Lock()

    def acquire(self) -> "DirHandle":
        with self._lock:
            self._refs += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last and self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class Existing:
    """What is in the target under a name, and what the policy makes of it."""

    decision: str
    st: os.stat_result | None = None
    reason: str = ""


def open_root(target: str, create: bool) -> DirHandle:
    """The target directory (created unless ``create`` is False), checked writable with a probe."""
    try:
        if create:
            os.makedirs(target, exist_ok=True)
        elif not os.path.isdir(target):
            return DirHandle(None, "", True)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise _unusable(target, exc) from None
    if create:
        probe = ".drtool-part-probe"
        try:
            os.close(os.open(probe, CREATE_FLAGS & ~os.O_EXCL, 0o600, dir_fd=fd))
            os.unlink(probe, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            raise _unusable(target, exc) from None
    return DirHandle(fd, "", False)


def _unusable(target: str, exc: OSError) -> RestoreTargetError:
    """Why ``target`` cannot be restored into: a file where a directory must be (mkdir's "File
    exists" for ``--target /dev/full`` named the wrong problem), or no right to write."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return RestoreTargetError(f"restore target {target} is not a directory (it, or a folder on its path, "
                                  f"is a file)", hint="choose a directory for --target")
    return RestoreTargetError(f"restore target {target} is not writable: {exc.strerror}",
                              hint="choose a writable --target")


def lstat_at(parent: DirHandle, name: str) -> os.stat_result | None:
    if parent.fresh or parent.fd is None:
        return None
    try:
        return os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def enter_dir(parent: DirHandle, name: str, rel: str, policy: str, dry_run: bool
              ) -> tuple[DirHandle | None, Existing]:
    """Open (or make) the directory ``name``; None when something in the way must stay.

    A symbolic link, file or special file where the snapshot has a
    directory is removed first (not under ``never``), never followed.
    """
    st = lstat_at(parent, name)
    if st is not None and stat.S_ISDIR(st.st_mode):
        fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
        return DirHandle(fd, rel, False), Existing(KEEP, st)
    existing = Existing(NEW)
    if st is not None:
        if policy == "never":
            return None, Existing(CONFLICT, st, f"a {_kind(st)} is in the way of a directory")
        existing = Existing(REPLACE, st, f"replaced a {_kind(st)} with a directory")
    if dry_run:
        return DirHandle(None, rel, True), existing
    if st is not None:
        os.unlink(name, dir_fd=parent.fd)
    os.mkdir(name, 0o700, dir_fd=parent.fd)
    fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
    return DirHandle(fd, rel, True), existing


def judge_file(parent: DirHandle, name: str, node: Node, policy: str,
               content_matches: Callable[[DirHandle, str, Node], bool]) -> Existing:
    """NEW, KEEP (same content), REPLACE or CONFLICT for a regular file of the snapshot."""
    st = lstat_at(parent, name)
    if st is None:
        return Existing(NEW)
    if stat.S_ISDIR(st.st_mode):
        return Existing(CONFLICT, st, "a directory is in the way of a file (never removed)")
    regular = stat.S_ISREG(st.st_mode)
    if regular and st.st_size == node.size:
        if policy == "if-changed" and st.st_mtime_ns == node.mtime_ns:
            return Existing(KEEP, st)
        if content_matches(parent, name, node):
            return Existing(KEEP, st)
    what = "file with other content" if regular else _kind(st)
    return _by_policy(policy, st, node, what)


def judge_other(parent: DirHandle, name: str, node: Node, policy: str) -> Existing:
    """The same for a symbolic link, FIFO or device node of the snapshot."""
    st = lstat_at(parent, name)
    if st is None:
        return Existing(NEW)
    if stat.S_ISDIR(st.st_mode):
        return Existing(CONFLICT, st, f"a directory is in the way of a {node.type} (never removed)")
    if node.type == SYMLINK and stat.S_ISLNK(st.st_mode) and parent.fd is not None:
        try:
            if os.readlink(name, dir_fd=parent.fd) == (node.target or ""):
                return Existing(KEEP, st)
        except OSError:
            pass
    if node.type == FIFO and stat.S_ISFIFO(st.st_mode):
        return Existing(KEEP, st)
    if (node.type == CHARDEV and stat.S_ISCHR(st.st_mode) or node.type == BLOCKDEV and stat.S_ISBLK(st.st_mode)) \
            and st.st_rdev == node.rdev:
        return Existing(KEEP, st)
    return _by_policy(policy, st, node, _kind(st))


def _by_policy(policy: str, st: os.stat_result, node: Node, what: str) -> Existing:
    if policy in ("always", "if-changed"):
        return Existing(REPLACE, st, f"replaced a {what}")
    if policy == "if-newer" and node.mtime_ns > st.st_mtime_ns:
        return Existing(REPLACE, st, f"replaced an older {what}")
    reason = (f"kept a {what} (newer than or as new as the snapshot's)" if policy == "if-newer"
              else f"kept a {what}")
    return Existing(CONFLICT, st, reason)


def remove_for_replacement(parent: DirHandle, name: str, existing: Existing) -> None:
    """Make room for a link, FIFO or device (files are renamed over what is there)."""
    if existing.decision == REPLACE and existing.st is not None and not stat.S_ISDIR(existing.st.st_mode):
        try:
            os.unlink(name, dir_fd=parent.fd)
        except FileNotFoundError:
            pass


def open_rel(root: DirHandle, rel: str, cache: dict[str, int]) -> int:
    """A descriptor of the target's directory ``rel``, opened component by component without
    following links (``cache`` holds descriptors by path, including every ancestor opened on
    the way; the caller closes them)."""
    if not rel:
        assert root.fd is not None
        return root.fd
    parts = rel.split("/")
    depth, fd = len(parts), cache.get(rel)
    while fd is None and depth > 1:  # the deepest ancestor already open
        depth -= 1
        fd = cache.get("/".join(parts[:depth]))
    if fd is None:
        depth, fd = 0, root.fd
    for end in range(depth + 1, len(parts) + 1):
        fd = cache["/".join(parts[:end])] = os.open(parts[end - 1], DIR_FLAGS, dir_fd=fd)
    assert fd is not None
    return fd


def raise_open_file_limit(wanted: int = 65536) -> None:
    """Let the walk hold one descriptor per directory level (paths allow ~2,000 levels).

    The soft limit is often 1,024 while the hard limit is far higher; raising
    the soft limit up to the hard one is what Go programs such as restic do
    at start.  Best effort: without it, very deep trees fail with EMFILE.
    """
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, OSError, ValueError):
        pass


def open_existing_for_reading(parent: DirHandle, name: str) -> int | None:
    """The existing regular file ``name``, opened without following links or blocking on FIFOs."""
    if parent.fd is None:
        return None
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=parent.fd)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "special file"
