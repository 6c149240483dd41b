"""Read small files on a few threads, hand them to the walk in walk order.

A first backup of a million tiny files with a cold page cache waits on the
disk, not on the CPU: one file at a time on the walking thread, ~69 % of
the samples were in ``read``.  Cold reads of small files are several times
faster with many in flight, so the walking thread queues small files into
*read batches* (up to ``FILES_PER_TASK`` files or ``TASK_BYTES``), and a
few ``readers`` threads each take a whole batch: open every file of it and
ask the kernel to start reading it (``fs.prefetch``), then read, ``fstat``
and close them one after the other.  The disk gets a batch's reads at once
from one thread.  Until 4 December each batch of 16 files was read by one
of 8 threads, one file after the other; every system call drops the GIL,
and with 8 readers, 4 scanners, the walk and the chunk workers all wanting
it back, that cost ~38 ``futex`` calls per file and more system time than
user time on the cold 1,000,000-file tree (docs/performance.md, "Many
files, cold cache").  The walk takes the results back strictly in the
order it queued them, so the chunk pipeline sees the same bytes in the
same order whatever the number of readers: tree and snapshot ids never
depend on it.

Bounds: at most ``readers * FILES_PER_TASK`` small files are open at once
(a batch per thread), and at most ``2 * readers`` batches are queued or
done but not yet taken back, each in a recycled buffer of ``TASK_BUFFER``
bytes: ~5 MiB with 2 readers, whatever the number of files.  Large files
(``SMALL_FILE`` or more at ``lstat``) are not read here: the walking thread
streams them through the chunker in 8 MiB segments as before; so are
hard-linked files (their later links reuse the first one's chunk
references).

A file that grew past its ``lstat`` size before it was read comes back as
``GREW`` and is read again on the walking thread, which follows growth.
Errors (permission denied, vanished, EIO) come back per file, so one bad
file never costs its neighbours.
"""
from __future__ import annotations

import mmap
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from drtool.digests import new_hash
from drtool.sources import files as fs
from drtool.sources import fsbatch

DEFAULT_READERS = 2
DEFAULT_SCANNERS = 2
FILES_PER_TASK = 64
TASK_BYTES = 512 * 1024
SMALL_FILE = 256 * 1024
TASK_BUFFER = TASK_BYTES + SMALL_FILE + 1  # a task closes past 256 KiB; one file is at most SMALL_FILE + 1

T = TypeVar("T")


class FileOps:
    """The calls that list directories and open, read and close source files, as one object
    the walk is given.

    ``compiled``: list directories and read batches of small files through the compiled
    helper (``sources.fsbatch``: one GIL release per directory and per batch) when it is
    built (None), always (True: an error where it is not) or never (False: Python's own
    calls, one GIL release per system call; the fallback, tested beside it).  A subclass
    that overrides ``open`` or ``close`` is called for every file unless it asks for the
    helper (which opens and closes a batch's files itself).
    Production uses this class as it is; tests hand the walk a subclass
    (drtool.testing.files) that counts files open at once or makes a
    chosen file vanish, grow or fail just before it is opened, without
    patching drtool's own modules.
    """

    def __init__(self, compiled: bool | None = None) -> None:
        if compiled is None and (type(self).open is not FileOps.open or type(self).close is not FileOps.close):
            compiled = False
        self.native = fsbatch.load() if compiled is not False else None
        if compiled and self.native is None:
            raise RuntimeError("the compiled helper drtool.sources._fsbatch is not built")

    def scan(self, path: bytes) -> tuple[list[fs.Entry], list[fs.Unreadable]]:
        """One directory's entries sorted by name, with lstat results (``fs.scan_dir``)."""
        if self.native is None:
            return fs.scan_dir(path)
        return fsbatch.scan_dir(self.native, path)

    def read_batch(self, paths: list[bytes], wants: list[int], buf: mmap.mmap | bytearray) -> list[tuple[int, ...]]:
        """Through the compiled helper only: each file opened, prefetched, read once (up to its
        ``want``, packed into ``buf``), fstat'ed and closed; one outcome tuple per file."""
        assert self.native is not None
        return self.native.read_batch(paths, wants, buf)  # type: ignore[no-any-return]

    def open(self, path: bytes, check_regular: bool) -> int:
        return fs.open_for_backup(path, check_regular=check_regular)

    def close(self, fd: int) -> None:
        os.close(fd)


@dataclass(frozen=True)
class Reading:
    """How a file-tree backup reads: ``readers`` threads reading batches of small
    files and ``scanners`` threads listing directories ahead (``readers=1``: one
    file at a time, in walk order, on the walking thread, and no scanners),
    through ``ops``."""

    readers: int = DEFAULT_READERS
    scanners: int = DEFAULT_SCANNERS
    ops: FileOps = field(default_factory=FileOps)

    def __post_init__(self) -> None:
        if self.readers < 1 or self.scanners < 1:
            raise ValueError("readers and scanners must be at least 1")


GREW = "grew"  # the file grew past what lstat said: the walking thread reads it again


@dataclass
class FileRead:
    """One file's outcome: its bytes are ``task.buf[start:end]`` unless ``error``/``grew``."""

    start: int = 0
    end: int = 0
    changed: bool = False
    hash: str | None = None
    error: fs.Unreadable | None = None
    grew: bool = False


class ReadTask(Generic[T]):
    """Up to FILES_PER_TASK small files read one after the other into one buffer."""

    __slots__ = ("items", "paths", "sizes", "stats", "reserved", "buf", "future")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.paths: list[bytes] = []
        self.sizes: list[int] = []
        self.stats: list[os.stat_result] = []
        self.reserved = 0
        self.buf: mmap.mmap | None = None
        self.future: Future[list[FileRead]] | None = None


class ReadAhead(Generic[T]):
    """Small-file reads in flight, handed back in the order they were queued.

    ``item`` is the caller's token for a file (the walk's directory and
    node); ``handle(item, read, data)`` gets it back with the file's
    :class:`FileRead` and a view of its bytes, valid only during the call
    (the buffer is reused).  Called from one thread (the walk's), and
    ``handle`` runs on it.
    """

    def __init__(self, reading: Reading, handle: Callable[[T, FileRead, memoryview], None],
                 content_hash: str | None = None) -> None:
        self.reading = reading
        self.content_hash = content_hash
        self._handle = handle
        self._pool = ThreadPoolExecutor(max_workers=reading.readers, thread_name_prefix="read")
        self._window = 2 * reading.readers
        self._queued: deque[ReadTask[T]] = deque()
        self._open: ReadTask[T] = ReadTask()
        self._buffers: list[mmap.mmap] = []
        self._buffers_lock = threading.Lock()

    def add(self, item: T, path: bytes, st: os.stat_result) -> None:
        """Queue one small file (may first hand back the oldest batch to make room)."""
        want = st.st_size + 1  # +1: a read that fills it shows the file grew
        task = self._open
        task.items.append(item)
        task.paths.append(path)
        task.sizes.append(want)
        task.stats.append(st)
        task.reserved += want
        if len(task.items) >= FILES_PER_TASK or task.reserved >= TASK_BYTES:
            self.submit()

    def submit(self) -> None:
        """Start the open batch (handing back the oldest first if the window is full)."""
        task = self._open
        if not task.items:
            return
        if len(self._queued) >= self._window:
            self.take(block=True)
        self._open = ReadTask()
        task.buf = self._take_buffer(task.reserved)
        task.future = self._pool.submit(self._read_task, task)
        self._queued.append(task)

    def take(self, block: bool) -> bool:
        """Hand back the oldest batch if it is done (or ``block``); whether one was."""
        if not self._queued or not (block or self._queued[0].future.done()):  # type: ignore[union-attr]
            return False
        task = self._queued.popleft()
        results = task.future.result()  # type: ignore[union-attr]
        buf = task.buf
        assert buf is not None
        with memoryview(buf) as view:
            for item, read in zip(task.items, results):
                with view[read.start:read.end] as data:
                    self._handle(item, read, data)
        if len(buf) == TASK_BUFFER:
            with self._buffers_lock:
                if len(self._buffers) <= self._window:
                    self._buffers.append(buf)
        return True

    def take_done(self) -> None:
        """Hand back every batch that is done, in order, without waiting."""
        while self.take(block=False):
            pass

    def take_all(self) -> None:
        """Submit what is open and wait for everything (before a walk's end)."""
        self.submit()
        while self.take(block=True):
            pass

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _take_buffer(self, at_least: int) -> mmap.mmap:
        """A recycled task buffer: an anonymous mapping (only what reads reach is resident, and
        one freed leaves no hole in the heap between longer-lived allocations)."""
        with self._buffers_lock:
            if self._buffers and at_least <= TASK_BUFFER:
                return self._buffers.pop()
        return mmap.mmap(-1, max(at_least, TASK_BUFFER), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def _read_task(self, task: ReadTask[T]) -> list[FileRead]:
        """On a reader thread: open and prefetch the whole batch, then read each file into
        its place in the buffer.  Every descriptor is closed whatever happens."""
        ops, buf = self.reading.ops, task.buf
        assert buf is not None
        if ops.native is not None:
            return self._read_compiled(task, buf)
        opened: list[int | fs.Unreadable | None] = []
        try:
            for path in task.paths:
                try:
                    fd = ops.open(path, False)
                except fs.Unreadable as exc:
                    opened.append(exc)
                    continue
                opened.append(fd)
                fs.prefetch(fd)
            return self._read_opened(task, buf, opened)
        finally:
            for fd in opened:
                if isinstance(fd, int):
                    ops.close(fd)

    def _read_compiled(self, task: ReadTask[T], buf: mmap.mmap) -> list[FileRead]:
        """The batch in one call of the compiled helper, its outcomes read by the rules of
        :func:`read_open_file` (the pure-Python path)."""
        outcomes = self.reading.ops.read_batch(task.paths, task.sizes, buf)
        out: list[FileRead] = []
        offset = 0
        with memoryview(buf) as view:
            for path, st, outcome in zip(task.paths, task.stats, outcomes):
                read = outcome_read(path, st, outcome)
                read.start, read.end = offset, offset + read.end
                offset = read.end
                if read.error is None and not read.grew and self.content_hash is not None:
                    read.hash = content_digest(self.content_hash, view[read.start:read.end])
                out.append(read)
        return out

    def _read_opened(self, task: ReadTask[T], buf: mmap.mmap,
                     opened: list[int | fs.Unreadable | None]) -> list[FileRead]:
        """Read the batch's open files in order; each descriptor is closed (and set to None)
        as soon as its file is read."""
        ops = self.reading.ops
        out: list[FileRead] = []
        offset = 0
        with memoryview(buf) as view:
            for i, (path, want, st) in enumerate(zip(task.paths, task.sizes, task.stats)):
                fd = opened[i]
                if isinstance(fd, fs.Unreadable):
                    read = FileRead(error=fd)
                else:
                    assert fd is not None
                    opened[i] = None
                    try:
                        with view[offset:offset + want] as room:
                            read = read_open_file(fd, path, st, room, self.content_hash)
                    finally:
                        ops.close(fd)
                read.start, read.end = offset, offset + read.end
                offset = read.end
                out.append(read)
        return out


def read_open_file(fd: int, path: bytes, st: os.stat_result, view: memoryview,
                   content_hash: str | None) -> FileRead:
    """Read one open small file into ``view`` (its lstat size + 1); ``end`` is the byte count.

    The one ``fstat`` after reading (``changed_since``) also shows whether
    the name still is a regular file: a FIFO or directory that took it is
    "vanished", as on the walking thread.  The caller closes ``fd``.
    """
    try:
        try:
            got = fs.read_some(fd, path, view)
        except fs.Unreadable as exc:
            fs.ensure_regular(fd, path)  # reading a FIFO, device or directory fails: vanished
            raise exc
        if got == len(view):
            return FileRead(grew=True)
        changed = fs.changed_since(fd, path, st)
    except fs.Unreadable as exc:
        return FileRead(error=exc)
    return FileRead(end=got, changed=changed or got != st.st_size,
                    hash=content_digest(content_hash, view[:got]) if content_hash is not None else None)


def content_digest(content_hash: str, data: memoryview) -> str:
    return f"{content_hash}:{new_hash(content_hash, data).hexdigest()}"


def outcome_read(path: bytes, st: os.stat_result, outcome: tuple[int, ...]) -> FileRead:
    """One file's outcome from the compiled helper (kind, bytes read or errno, then its
    fstat's size, mtime, ctime and mode) as :func:`read_open_file` makes it; ``end`` is
    the byte count, no hash yet."""
    kind, got, size, mtime_ns, ctime_ns, mode = outcome
    if kind == fsbatch.READ_OK:
        if not stat.S_ISREG(mode):
            return FileRead(error=fs.Vanished(path, fs.REPLACED))
        changed = size != st.st_size or mtime_ns != st.st_mtime_ns or ctime_ns != st.st_ctime_ns
        return FileRead(end=got, changed=changed or got != st.st_size)
    if kind == fsbatch.GREW:
        return FileRead(grew=True)
    if kind == fsbatch.OPEN_FAILED:
        return FileRead(error=fs._error(path, fsbatch.os_error(got)))
    if kind == fsbatch.READ_FAILED:
        if not stat.S_ISREG(mode):  # reading a FIFO, device or directory fails: vanished
            return FileRead(error=fs.Vanished(path, fs.REPLACED))
        return FileRead(error=fs._error(path, fsbatch.os_error(got), fs._GONE))
    return FileRead(error=fs.Unreadable(path, os.strerror(got)))  # FSTAT_FAILED


Listing = tuple[list[fs.Entry], list[fs.Unreadable], list[Any]]


class ScanAhead:
    """Directory listings (``scandir`` and an ``lstat`` per entry) made ahead on threads,
    each with the directory's tree in the parent snapshot (``load_old``, given the listing), decoded.

    With the page cache cold, listing a directory waits on its blocks and on
    every entry's inode: with reads on 8 threads, ~half of the walking
    thread's samples were in ``scan_dir`` on the 200,000-file tree; on the
    unchanged re-run, reading the parent's trees was as much again.  The walk
    asks for a directory's first ``AHEAD`` subdirectories as soon as it has
    listed it, and for one more each time it enters one, so listings run
    ahead in walk order and at most ``AHEAD`` per open directory are held.
    A listing made ahead is the one the walk uses: an entry that vanishes
    after it was listed is found missing when it is read, as before.
    """

    AHEAD = 4

    def __init__(self, threads: int, load_old: Callable[[str | None, list[fs.Entry]], list[Any]],
                 ops: FileOps) -> None:
        self._ops = ops
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scan")
        self._load_old = load_old
        self._futures: dict[bytes, Future[Listing]] = {}

    def ahead(self, path: bytes, old_tree: str | None) -> None:
        if path not in self._futures:
            self._futures[path] = self._pool.submit(self._list, path, old_tree)

    def scan(self, path: bytes, old_tree: str | None) -> Listing:
        """The listing made ahead, or one made now; raises Unreadable as ``fs.scan_dir`` does."""
        future = self._futures.pop(path, None)
        return self._list(path, old_tree) if future is None else future.result()

    def _list(self, path: bytes, old_tree: str | None) -> Listing:
        entries, problems = self._ops.scan(path)
        return entries, problems, self._load_old(old_tree, entries)

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True)
