"""Packs streamed into a local repository, bypassing the page cache where possible.

A pack is written once and read again only by a restore or ``check``, often
weeks later.  Written through the page cache it evicts what the machine is
actually using (the database a nightly backup runs beside) and costs a
kernel copy into freshly allocated cache pages: on the benchmark VM 768 MiB
took 2.0 s of system time buffered and 0.06 s with ``O_DIRECT`` (dd), and
night 1 of the bench spent ~1 s of its CPU in that copy.  So groups are
gathered in one page-aligned 1 MiB buffer and written with ``O_DIRECT``;
the last block is padded and the file truncated to its real length before
fsync and rename.  File systems that refuse ``O_DIRECT`` (open or write
fails with EINVAL) get ordinary buffered writes.

A direct write waits for the device.  Done on the worker that sealed the
group, that wait left a core idle (py-spy: ~8 % of the night-1 workers'
time in the write), so full buffers go to one write-behind thread and the
worker goes back to compressing; a few buffers in flight bound the memory
and slow the workers down only when the disk cannot keep up.  ``commit``
and ``abort`` wait for the object's writes first, and a failed write
(ENOSPC, EIO) is raised by the next ``write`` or by ``commit`` -- of that
pack and of every other pack of the same repository staged before the
failure: a backup that hit a full disk must not commit a tree pack that
merely finished first.
"""
from __future__ import annotations

import errno
import mmap
import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from drtool.backends.base import StagedObject
from drtool.errors import BackendError
from drtool.fdio import pwrite_all, write_all

BLOCK = 4096                    # O_DIRECT alignment that every Linux block device accepts
BUFFER_SIZE = 1024 * 1024       # one aligned write per MiB (one buffer per open pack)
# Full buffers queued for the write-behind thread at most.  The disk takes a 1 MiB direct write in
# ~0.5 ms; the queue fills when the writer waits for a core, not for the disk, and with 6 all
# 8 pooled buffers were resident at the nightly bench's peak (9 MiB of shared memory; 2: 3-5 MiB,
# same CPU: docs/performance.md, "Sealed as written").
WRITES_IN_FLIGHT = 2
DIRECT_IO_DEFAULT = os.environ.get("DRTOOL_DIRECT_IO", "1") != "0"

_free_buffers: list[mmap.mmap] = []
_free_lock = threading.Lock()


def _take_buffer() -> mmap.mmap:
    with _free_lock:
        if _free_buffers:
            return _free_buffers.pop()
    return mmap.mmap(-1, BUFFER_SIZE)  # anonymous mappings are page-aligned


def _give_buffer(buf: mmap.mmap) -> None:
    with _free_lock:
        if len(_free_buffers) < WRITES_IN_FLIGHT + 2:
            _free_buffers.append(buf)
            return
    buf.close()


class WriteFailures:
    """Background write failures of one repository directory (shared by its staged packs)."""

    def __init__(self) -> None:
        self.count = 0
        self.last: OSError | None = None

    def record(self, exc: OSError) -> None:
        self.last = exc
        self.count += 1


class _WriteBehind:
    """The thread that writes full aligned buffers of every open pack, in the order queued."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, Any, int, int]] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(WRITES_IN_FLIGHT)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, staged: "LocalStagedObject", buf: mmap.mmap, length: int, offset: int) -> None:
        self._slots.acquire()  # backpressure: the disk is slower than the workers
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pack-writer", daemon=True)
                self._thread.start()
        self._queue.put((staged, buf, length, offset))

    def drain(self) -> None:
        """Wait until every write queued so far (for any pack) is done."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
        if running:
            done = threading.Event()
            self._queue.put((None, done, 0, 0))
            done.wait()

    def _run(self) -> None:
        while True:
            staged, buf, length, offset = self._queue.get()
            if staged is None:
                buf.set()  # a drain() marker
                continue
            try:
                staged._write_at(buf, length, offset)
            except OSError as exc:
                staged._failed = staged._failed or exc
                staged._failures.record(exc)
            finally:
                _give_buffer(buf)
                self._slots.release()
                staged._written()


_write_behind = _WriteBehind()


class LocalStagedObject(StagedObject):
    """A pack streamed into ``.tmp-*`` in its prefix folder, then fsync'ed and renamed."""

    retains_data = False  # ``write`` copies into its aligned buffer, or writes before it returns

    def __init__(self, folder: Path, final_path: Callable[[str], Path],
                 on_commit: Callable[[int], None], error: Callable[[OSError, str], BackendError],
                 direct_io: bool = True, failures: WriteFailures | None = None,
                 make_dirs: Callable[[Path], None] | None = None, file_mode: int | None = None) -> None:
        """``make_dirs`` creates the final folder (group-shared repositories set its mode);
        ``file_mode``: the pack's mode when not private (``0640`` when group-shared)."""
        self._final_path, self._on_commit, self._error = final_path, on_commit, error
        self._make_dirs = make_dirs or (lambda folder: folder.mkdir(parents=True, exist_ok=True))
        self._failures = failures or WriteFailures()
        self._failures_before = self._failures.count
        fd, self._tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        self._fd = fd
        if file_mode is not None:
            os.fchmod(fd, file_mode)
        self._direct = direct_io and _enable_direct(fd)
        self._buf: mmap.mmap | None = _take_buffer() if self._direct else None
        self._filled = 0
        self._size = 0
        self._flushed = 0  # file offset of the next aligned buffer
        self._pending = 0  # buffers queued for the write-behind thread
        self._idle = threading.Condition()
        self._failed: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._size += len(view)
        try:
            self._raise_background_failure()
            if self._buf is None:
                write_all(self._fd, view)
            else:
                while view:
                    take = min(len(view), BUFFER_SIZE - self._filled)
                    self._buf[self._filled:self._filled + take] = view[:take]
                    self._filled += take
                    view = view[take:]
                    if self._filled == BUFFER_SIZE:
                        self._hand_off_buffer()
        except OSError as exc:
            self.abort()
            raise self._error(exc, "a pack") from None

    def _hand_off_buffer(self) -> None:
        """Queue the full buffer for the write-behind thread and carry on in a fresh one."""
        assert self._buf is not None
        with self._idle:
            self._pending += 1
        _write_behind.submit(self, self._buf, BUFFER_SIZE, self._flushed)
        self._flushed += BUFFER_SIZE
        self._buf, self._filled = _take_buffer(), 0

    def _write_at(self, buf: mmap.mmap, length: int, offset: int) -> None:
        """Write ``length`` bytes (whole blocks, unless direct I/O was refused) at ``offset``."""
        if self._failed is not None:
            return
        try:
            pwrite_all(self._fd, memoryview(buf)[:length], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self._direct:
                raise
            self._direct = False  # refused at write time: carry on buffered
            _disable_direct(self._fd)
            pwrite_all(self._fd, memoryview(buf)[:length], offset)

    def _written(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _raise_background_failure(self) -> None:
        """This pack's own failed write, or one of a sibling pack since this one was staged."""
        if self._failed is not None:
            raise self._failed
        if self._failures.count != self._failures_before and self._failures.last is not None:
            raise self._failures.last

    def _wait_for_writes(self) -> None:
        with self._idle:
            while self._pending:
                self._idle.wait()

    def commit(self, name: str) -> None:
        path = self._final_path(name)
        try:
            _write_behind.drain()  # this pack's writes, and a sibling's that may still fail
            self._raise_background_failure()
            if self._buf is not None and self._filled:
                padded = -(-self._filled // BLOCK) * BLOCK
                self._buf[self._filled:padded] = bytes(padded - self._filled)
                self._write_at(self._buf, padded, self._flushed)
                os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._make_dirs(path.parent)
            os.replace(self._tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            self.abort()
            raise self._error(exc, name) from None
        self._release_buffer()
        self._on_commit(self._size)

    def abort(self) -> None:
        self._wait_for_writes()  # the write-behind thread must be done with the descriptor
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        self._release_buffer()
        try:
            os.unlink(self._tmp)
        except OSError:
            pass

    def _release_buffer(self) -> None:
        if self._buf is not None:
            _give_buffer(self._buf)
            self._buf = None


def _enable_direct(fd: int) -> bool:
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | flag)
        return True
    except OSError:
        return False  # e.g. a file system without direct I/O


def _disable_direct(fd: int) -> None:
    import fcntl
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
