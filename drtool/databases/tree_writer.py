"""Writing a restored tree from a stored stream's windows, in process, on a few threads.

Why: a physical restore's archive format (mariabackup's mbstream, the tar
of a PostgreSQL base backup) was once piped into the program that reads it
(``mbstream -x``, GNU ``tar -x``), which writes each file's bytes on one
thread through the page cache.  That cost a restore most of its time: the
pipe copies every byte twice, and on a VM whose freed memory goes back to
the host each new page-cache page is a host fault (bench, a 2 GiB pgbench
base backup: tar spent 2.8-5.2 s of system time, the whole read 0.5 s).
Here the windows :func:`~drtool.snapshot.streamread.read_stream` yields
are parsed where they lie (the format's own part: :meth:`TreeWriter._parse`)
and each file's bytes are written with ``pwrite`` from the window on a pool
of threads (``pwrite`` releases the GIL), the next windows being read
meanwhile.  With ``direct``, each piece's whole blocks go around the page
cache (``fdio.DirectWrites``).  A window's writes may still run while the
next ``lag`` windows are parsed (``read_stream(hold=lag)`` keeps their
buffers): waiting for each window's last write left the writers idle half
the time.

What is refused, for every format: a name that climbs out of the target
(``..``), a file named twice, a write the file system refuses (one line
naming the file; a full disk says what to do).  The caller removes what
was written when an error comes out: a half-extracted tree must not pass
for a restored one.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

from drtool.errors import RestoreChainError, RestoreTargetError
from drtool.fdio import DIRECT_ALIGN, DIRECT_SCRATCH, DirectWrites, open_direct, pwrite_all, sync_tree

SPLIT_BYTES = 1 << 20          # a piece of a window at least twice this long is split between writers
ALIGN = 64 * 1024              # where it is split
WRITERS = max(2, min(4, os.cpu_count() or 2))
LAG = 2  # windows whose writes may still run while the next is parsed (read_stream(hold=LAG))
MAX_OPEN_FILES = 128  # files (two descriptors each) open or waiting for their window's writes, at most
INLINE_BYTES = 64 * 1024  # a small file's bytes, whole in one window, are written by the parser itself


class StreamDamaged(RestoreChainError):
    """The stored stream does not parse as its format: nothing of it is trusted."""


@dataclass
class OpenFile:
    """One file being written: where its next byte goes, and its descriptors."""

    path: str     # as the stream names it (messages about the stream)
    full: str     # where it is written (messages about the target)
    fd: int
    direct_fd: int = -1  # the same file opened with O_DIRECT (fdio.DirectWrites), or -1
    end: int = 0
    mtime: float | None = None  # set once its writes are over, where the stream records one
    queued: bool = False  # some of its bytes went to the writers (else it can be closed at once)
    carry: bytes = b""    # its last bytes, short of a whole block: written with the next piece (submit)
    carry_at: int = 0     # where they go (a block boundary)

    def close(self) -> None:
        """Close both descriptors (once: a later call does nothing)."""
        fd, direct_fd, self.fd, self.direct_fd = self.fd, self.direct_fd, -1, -1
        if fd >= 0:
            os.close(fd)
        if direct_fd >= 0:
            os.close(direct_fd)


class TreeWriter:
    """Writes a stream fed window by window (:meth:`write`) into ``target`` (an empty directory).

    A format subclasses it with :meth:`_parse` (and :meth:`_window_done`,
    :meth:`_at_end`).  Use as a context manager: every descriptor is closed
    and the threads stopped on the way out, also after an error.
    """

    stream_name = "the stream"  # "the mariabackup stream": how messages name what is being read

    def __init__(self, target: str, what: str, writers: int = WRITERS, direct: bool = True,
                 lag: int = 0, inline_bytes: int = INLINE_BYTES) -> None:
        """``direct``: write whole blocks with O_DIRECT where the file system allows it
        (:class:`~drtool.fdio.DirectWrites`); off, everything goes through the page cache.
        ``lag``: how many windows :meth:`write` may return with writes still running — the
        windows must stay valid that long (``read_stream(hold=lag)``); :meth:`finish` waits for all.
        ``inline_bytes``: a file (payload) up to this size, whole in one window, is written by
        the parsing thread and closed at once (:meth:`write_now`)."""
        self.target, self.what, self.lag, self.inline_bytes = target, what, lag, inline_bytes
        self._direct = DirectWrites(direct)
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="restore-write")
        self._writers = writers
        self._files: dict[bytes, OpenFile] = {}
        self._seen: set[str] = set()
        self._dirs: set[str] = set()
        self._ending: list[Any] = []  # what this window finishes: files to close once its writes are over
        self._in_flight: deque[tuple[list[Future[Any]], list[Any]]] = deque()  # per window, oldest first

    def __enter__(self) -> TreeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # no write still reads a window
        endings = [self._ending, *(ending for _jobs, ending in self._in_flight)]
        ended = [item for ending in endings for item in ending if isinstance(item, OpenFile)]
        for file in [*self._files.values(), *ended]:
            file.close()
        self._files.clear()
        self._ending.clear()
        self._in_flight.clear()

    def write(self, window: memoryview) -> None:
        """Extract what ``window`` holds; its writes run on, those of windows more than ``lag`` back
        are over (and checked) when this returns."""
        jobs: list[Future[Any]] = []
        try:
            self._parse(window, jobs)
        finally:  # even a damaged window's writes are waited for, by __exit__ at the latest
            self._in_flight.append((jobs, self._ending))
            self._ending = []
        while len(self._in_flight) > self.lag:
            self._complete()

    def write_stream(self, windows: Iterable[memoryview]) -> None:
        """Every window of a stored stream (:meth:`write`), then :meth:`finish`: the one loop both
        restores run.  The windows must stay valid ``self.lag`` windows longer than the reader's
        default (``read_stream(hold=writer.lag)``)."""
        for window in windows:
            self.write(window)
        self.finish()

    def finish(self) -> None:
        """The stream ended: every write is over and checked, then :meth:`_at_end`."""
        self._check_ends_whole()
        jobs: list[Future[Any]] = []
        for file in self._files.values():  # a stream may not say where a file ends (mbstream)
            self._write_carry(file, jobs)
        self._in_flight.append((jobs, []))
        while self._in_flight:
            self._complete()
        self._at_end()

    # ----- what a format provides ------------------------------------------------------------------
    def _parse(self, window: memoryview, jobs: list[Future[Any]]) -> None:
        raise NotImplementedError

    def _check_ends_whole(self) -> None:
        """Raise StreamDamaged if the stream ended inside a header or a file's bytes."""

    def _window_done(self, ending: list[Any]) -> None:
        """A window's writes are over: close the files it finished (a format checks more first)."""
        for item in ending:
            if isinstance(item, OpenFile):
                item.close()

    def _at_end(self) -> None:
        """After the last write (links, directory modes)."""

    def _complete(self) -> None:
        """The oldest window in flight: its writes over (the first error raised), then
        :meth:`_window_done`."""
        jobs, ending = self._in_flight[0]
        for job in jobs:
            job.result()
        self._window_done(ending)
        ending.clear()  # closed: not again by __exit__
        self._in_flight.popleft()  # after: a window that failed its check is closed by __exit__

    # ----- files and writes ------------------------------------------------------------------------
    def damaged(self, text: str) -> StreamDamaged:
        return StreamDamaged(f"{self.stream_name} of {self.what} {text}; nothing was restored")

    def relative(self, path: bytes, lenient: bool = False) -> str:
        """The stream's name for a file as a path inside the target; one that climbs out is refused
        (``lenient``: a leading ``/`` and ``.`` parts are dropped, as GNU tar does, not refused)."""
        name = os.fsdecode(path)
        parts = [part for part in name.split("/") if part and (part != "." or not lenient)]
        absolute = name.startswith("/") and not lenient
        if absolute or not parts or any(part in (".", "..") for part in parts) or "\0" in name:
            raise self.damaged(f"names a file outside its directory ({name!r})")
        return "/".join(parts)

    def claim(self, name: str) -> None:
        """``name`` is written once: a stream naming it twice is refused."""
        if name in self._seen:
            raise self.damaged(f"has {name} twice")
        self._seen.add(name)

    def create(self, key: bytes, name: str, jobs: list[Future[Any]], mode: int = 0o660,
               direct: bool = True) -> OpenFile:
        """Create ``name`` (new: O_EXCL, never through a link) and its parent directories; ``jobs``:
        the current window's writes so far (waited for when too many files are open); ``direct``
        False: no O_DIRECT descriptor (a file known to be too small for one)."""
        self._make_room(jobs)
        full = os.path.join(self.target, name)
        try:
            self.make_parents(os.path.dirname(name))
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise write_error(full, exc) from None
        file = self._files[key] = OpenFile(name, full, fd)
        if direct and self._direct.enabled:
            try:
                file.direct_fd = open_direct(full)
            except OSError as exc:
                raise write_error(full, exc) from None
        return file

    def _make_room(self, jobs: list[Future[Any]]) -> None:
        """Close the files that are done once ``MAX_OPEN_FILES`` are open or waiting to be closed.

        A finished file is closed when its window's writes are over, up to ``lag`` windows later;
        a window of small files (a database's catalog, thousands of 8 KiB tables) held thousands
        of descriptors by then ("Too many open files" at the usual limit of 1,024).  Here every
        write handed out so far is waited for, the files finished are checked and closed, and the
        pipeline starts again.
        """
        waiting = len(self._files) + len(self._ending) + sum(len(ending) for _jobs, ending in self._in_flight)
        if waiting < MAX_OPEN_FILES:
            return
        while self._in_flight:
            self._complete()
        for job in jobs:
            job.result()
        self._window_done(self._ending)
        self._ending.clear()

    def make_parents(self, directory: str) -> None:
        if not directory or directory in self._dirs:
            return
        self.make_parents(os.path.dirname(directory))
        try:
            os.mkdir(os.path.join(self.target, directory), 0o700)
        except FileExistsError:
            pass
        self._dirs.add(directory)

    def write_now(self, file: OpenFile, data: memoryview, offset: int) -> None:
        """Write a small piece through the page cache where this is called: on the parsing thread,
        so that its file can be closed at once (a catalog's thousands of 8 KiB files each held
        descriptors until their window's writes were over, and the parser waited for the writers
        whenever 128 were held); on a writer, a file's carried last partial block."""
        try:
            pwrite_all(file.fd, data, offset)
        except OSError as exc:
            raise write_error(file.full, exc) from None

    def finish_file(self, key: bytes, jobs: list[Future[Any]]) -> None:
        """``key``'s file has all its bytes: closed now if they were all written here, else once
        its window's writes are over (``jobs``: the window's, which take its carried last bytes)."""
        file = self._files.pop(key)
        self._write_carry(file, jobs)
        if file.queued:
            self._ending.append(file)
            return
        self._window_done([file])

    def submit(self, file: OpenFile, data: memoryview, offset: int,
               jobs: list[Future[Any]]) -> list[tuple[Future[Any], int]]:
        """Hand ``data`` (to be written at ``offset`` of ``file``) to the writers, split when long;
        each piece's job and size, in order (also added to ``jobs``, the window's).  A job's result
        is :meth:`_digest` of its piece of ``data``.

        Only whole blocks are written with O_DIRECT: a window ends anywhere in a file, and the
        part of a block before or after a window's edge went through the page cache, where it
        waited for the O_DIRECT write beside it to release the file (bench, a 2 GiB base backup:
        1,100 such writes of 0.8 ms each, a third of the writers' time).  So a piece's last
        partial block is kept (``carry``) and written with the start of the next piece.
        """
        file.queued = True
        if file.carry and file.carry_at + len(file.carry) != offset:
            self._write_carry(file, jobs)  # not followed by the next bytes: written as it is
        prefix = b""
        if file.carry:
            if len(data) < -offset % DIRECT_ALIGN:  # still short of the block's end
                file.carry += data
                return [(_done(self._digest(data)), len(data))]
            prefix, offset, file.carry = file.carry, file.carry_at, b""
        keep = (offset + len(prefix) + len(data)) % DIRECT_ALIGN if self._carries(file) else 0
        tail: list[tuple[Future[Any], int]] = []
        if 0 < keep <= len(data):
            kept = data[len(data) - keep:]
            file.carry, file.carry_at = bytes(kept), offset + len(prefix) + len(data) - keep
            data, tail = data[:len(data) - keep], [(_done(self._digest(kept)), keep)]
        pieces: list[tuple[Future[Any], int]] = []
        for start, end in self._cuts(offset, len(prefix) + len(data)):  # the prefix begins the first
            if end > start:
                first = max(start - len(prefix), 0)
                pieces.append((self._pool.submit(self._pwrite, file, data[first:end - len(prefix)], offset + start,
                                                 b"" if start else prefix), end - len(prefix) - first))
        jobs.extend(job for job, _size in pieces)
        return pieces + tail

    def _carries(self, file: OpenFile) -> bool:
        """Whether ``file``'s partial blocks are carried: only where its whole blocks go O_DIRECT."""
        return file.direct_fd >= 0 and self._direct.enabled

    def _cuts(self, offset: int, size: int) -> list[tuple[int, int]]:
        """(start, end) of the pieces of ``size`` bytes written at ``offset``: one per writer when
        long, split where the file's offset is a multiple of ALIGN (whole blocks for O_DIRECT), none
        longer than a writer's aligned buffer (a window of 9 MiB in two pieces was four writes)."""
        if size < 2 * SPLIT_BYTES:
            return [(0, size)]
        step = min(-(-size // self._writers // ALIGN) * ALIGN, DIRECT_SCRATCH)  # one O_DIRECT write each
        bounds = [0] + [at - offset for at in range(-(-offset // ALIGN) * ALIGN + step, offset + size, step)]
        return list(zip(bounds, bounds[1:] + [size]))

    def _write_carry(self, file: OpenFile, jobs: list[Future[Any]]) -> None:
        """The carried bytes written as they are (a file's last partial block)."""
        if file.carry:
            carry, at, file.carry = file.carry, file.carry_at, b""
            file.queued = True
            jobs.append(self._pool.submit(self.write_now, file, memoryview(carry), at))

    def _digest(self, data: memoryview) -> Any:
        """What a write job returns for its piece (a format checks it when the window is done)."""
        return None

    def _pwrite(self, file: OpenFile, data: memoryview, offset: int, prefix: bytes = b"") -> Any:
        """Write ``prefix + data`` at ``offset`` of ``file`` (on a writer thread); ``data``'s digest."""
        try:
            self._direct.pwrite(file.fd, file.direct_fd, data, offset, prefix)
        except OSError as exc:
            raise write_error(file.full, exc) from None
        return self._digest(data)


def _done(result: Any) -> Future[Any]:
    """A job already done: a piece's digest computed where it was cut."""
    future: Future[Any] = Future()
    future.set_result(result)
    return future


def write_error(path: str, exc: OSError) -> RestoreTargetError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RestoreTargetError(f"cannot write {path}: {reason}; nothing was restored",
                                  hint="free space on the --target file system or restore to another --target")
    return RestoreTargetError(f"cannot write {path}: {reason}; nothing was restored",
                              hint="fix what refused the write (permissions, the file system) and restore "
                                   "again: what was written is removed, nothing resumes")


def sync_restored(root: str) -> int:
    """The restored tree made durable (``fdio.sync_tree``: a database does not sync files it did
    not write before it needs them); a failure is the restore's, with the path."""
    try:
        return sync_tree(root)
    except OSError as exc:
        raise RestoreTargetError(f"cannot sync {exc.filename} to disk: {exc.strerror}; nothing was restored",
                                 hint="check the --target file system (dmesg) and restore again") from None


def empty_directory(root: str) -> None:
    """Remove what a restore wrote into ``root`` (it was empty or new: checked before writing)."""
    if not os.path.isdir(root):
        return
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
