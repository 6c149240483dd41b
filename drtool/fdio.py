"""Whole writes to a file descriptor: ``os.write``/``os.pwrite`` may write less than asked
(a signal, a full pipe, some file systems near full), and a short write left unnoticed is a
file with a hole where data should be.  Shared by the staged local backend and the restores
that write files themselves (mbstream extraction, the sub-page rebuild).  Also the ``flock``
probe that tells whether a detached worker (the archive worker, the WAL prefetch) runs."""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


def write_all(fd: int, view: memoryview) -> None:
    """Write all of ``view`` at the descriptor's position."""
    while view:
        view = view[os.write(fd, view):]


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """Write all of ``view`` at ``offset``."""
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# ----- writing a restore's big files around the page cache ----------------------------------------
DIRECT_ALIGN = 4096          # offsets, lengths and memory of O_DIRECT writes (every block size up to 4 KiB)
DIRECT_MIN = 64 * 1024       # a shorter write goes through the page cache: not worth the copy
DIRECT_SCRATCH = 8 * 1024 * 1024  # each writing thread's aligned buffer (a window's piece: TreeWriter._cuts)


def open_direct(path: str) -> int:
    """A second, O_DIRECT descriptor on the existing file ``path``; -1 where the file system
    refuses O_DIRECT (the caller then writes through the page cache only)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return -1
        raise


class DirectWrites:
    """``pwrite`` of a restore's data, its whole aligned blocks with O_DIRECT.

    Why: a physical restore writes gigabytes to terabytes that the page
    cache cannot keep and the database reads with O_DIRECT anyway (InnoDB),
    and every page-cache page it allocates is system time.  On the bench VM
    (free-page reporting hands freed memory back to the host, so each new
    page is a host fault) writing a 2.5 GiB mariabackup stream cost 5-6 s of
    system time buffered and 0.8 s with O_DIRECT; ``cp -a`` of the same
    copy costs 1.7-3.9 s.  The unaligned head and tail of a write go through
    ``fd`` (the page cache), the middle through ``direct_fd`` from a
    page-aligned buffer per thread (O_DIRECT needs aligned memory).  A file
    system that accepts O_DIRECT at open and then refuses the write (EINVAL)
    turns it off for the rest of the restore.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._local = threading.local()

    def pwrite(self, fd: int, direct_fd: int, view: memoryview, offset: int, prefix: bytes = b"") -> None:
        """Write all of ``prefix + view`` at ``offset`` of the file open as ``fd`` (and ``direct_fd``,
        or -1).  ``prefix``: the start of an aligned block that an earlier piece held (the tree
        writer's carry), gathered with ``view`` into the aligned buffer rather than joined first."""
        if prefix and offset % DIRECT_ALIGN:
            pwrite_all(fd, memoryview(prefix), offset)
            offset, prefix = offset + len(prefix), b""
        total = len(prefix) + len(view)
        start = -(-offset // DIRECT_ALIGN) * DIRECT_ALIGN
        end = (offset + total) // DIRECT_ALIGN * DIRECT_ALIGN
        if not self.enabled or direct_fd < 0 or total < DIRECT_MIN or end - start < DIRECT_ALIGN:
            if prefix:
                pwrite_all(fd, memoryview(prefix), offset)
            pwrite_all(fd, view, offset + len(prefix))
            return
        head = start - offset  # 0 when there is a prefix (its offset is aligned)
        pwrite_all(fd, view[:head], offset)
        done = self._direct(direct_fd, [memoryview(prefix), view[head:end - offset - len(prefix)]], start)
        if done < len(prefix):  # O_DIRECT refused at once: the rest through the page cache
            pwrite_all(fd, memoryview(prefix)[done:], offset + done)
            done = len(prefix)
        pwrite_all(fd, view[head + done - len(prefix):], start + done)

    def _direct(self, direct_fd: int, parts: list[memoryview], offset: int) -> int:
        """Write ``parts``, one aligned run, at ``offset`` through ``direct_fd``, gathered into this
        thread's aligned buffer; the bytes written (all of them, unless the file system refused
        O_DIRECT: then the caller writes the rest)."""
        scratch = self._scratch()
        total = sum(len(part) for part in parts)
        done = 0
        pending = [part for part in parts if len(part)]
        while done < total:
            size = 0
            while pending and size < len(scratch):
                part = pending[0]
                take = min(len(part), len(scratch) - size)
                copy_into(scratch, part[:take], size)
                size += take
                pending[0] = part[take:]
                if not len(pending[0]):
                    pending.pop(0)
            try:
                pwrite_all(direct_fd, memoryview(scratch)[:size], offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.enabled = False
                return done
            done += size
        return done

    def _scratch(self) -> mmap.mmap:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:  # anonymous mappings are page-aligned
            scratch = self._local.scratch = mmap.mmap(-1, DIRECT_SCRATCH, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return scratch


def copy_into(target: mmap.mmap | bytearray | memoryview, source: memoryview, at: int = 0) -> None:
    """``target[at:at + len(source)] = source``, without holding the GIL during the copy where
    ``source`` is writable memory (ctypes' memmove releases it): a slice assignment
    holds it, and a restore's workers copying megabytes each stopped the thread that parses
    the stream (py-spy --gil: the copies were a quarter of the GIL's time)."""
    size = len(source)
    if size < _UNLOCKED_COPY_MIN or source.readonly or not source.contiguous:
        target[at:at + size] = source
        return
    import ctypes  # here: a backup never needs it (start-up time)
    dst = (ctypes.c_char * size).from_buffer(target, at)
    src = (ctypes.c_char * size).from_buffer(source)
    ctypes.memmove(dst, src, size)


_UNLOCKED_COPY_MIN = 256 * 1024


# ----- making a restored tree durable ----------------------------------------------------------------
SYNC_THREADS = 8  # fsyncs in flight: each waits on the device, and a queue of them is what a disk serves best


def sync_tree(root: str, fsync: Callable[[int], None] = os.fsync, threads: int = SYNC_THREADS) -> int:
    """``fsync`` every regular file under ``root``, then every directory (deepest first) and the
    directory holding ``root``; the number of files and directories synced.

    Why: a restore is done when its bytes survive a power cut, not when they are in the page
    cache.  A physical MariaDB restore is started on afterwards and InnoDB does not sync files it
    did not write; PostgreSQL syncs its data directory when it starts, but a restore not started
    yet must not depend on that; pgBackRest syncs every restored file and path for the same reason.  The files written with
    O_DIRECT are on the device already, so their ``fsync`` is the file system's metadata (sizes,
    extents) and the device's cache.  An error raises ``OSError`` naming the path.
    """
    files: list[str] = []
    dirs: list[str] = []
    _collect(root, files, dirs)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sync") as pool:
        list(pool.map(lambda path: _sync_path(path, os.O_RDONLY, fsync), files))
    for path in [*reversed(dirs), os.path.dirname(os.path.abspath(root))]:
        _sync_path(path, os.O_RDONLY | os.O_DIRECTORY, fsync)
    return len(files) + len(dirs)


def _collect(directory: str, files: list[str], dirs: list[str]) -> None:
    dirs.append(directory)
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _collect(entry.path, files, dirs)
            elif entry.is_file(follow_symlinks=False):
                files.append(entry.path)


def _sync_path(path: str, flags: int, fsync: Callable[[int], None]) -> None:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        fsync(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(fd)


def lock_held(path: str) -> bool:
    """True while some process holds an exclusive ``flock`` on ``path`` (made if absent): a probe
    that takes the lock and lets go at once, for "is the worker running?"."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)
    return False
