"""Extracting a stored mbstream in process: what ``mbstream -x`` writes, from the verified windows.

Why not pipe it to ``mbstream -x`` (as before): that program reads the pipe
and writes each chunk (mariabackup's are 10 MiB) on one thread, one after
the other, so the restore's pace was one core's page-cache writes while
drtool's readers waited on the pipe (600,000-row bench: extraction 3.8–4.4 s
of which ``mbstream -x`` 1.7 s of system time in ``write``, drtool's
reading alone 1.0 s).  Here the windows :func:`~drtool.snapshot.streamread.read_stream`
yields are parsed where they lie and each window's payload bytes are
written with ``pwrite`` from the window on a few threads (``pwrite`` and
zlib-ng's ``crc32`` release the GIL), the next windows being read meanwhile:
no pipe.  With ``direct`` (a full restored alone), each piece's whole blocks
go through ``fdio.DirectWrites`` (copied into an aligned buffer, written with
O_DIRECT: no page-cache pages, which were most of the restore's system
time).  A window's writes may still run while the next ``lag`` windows are
parsed and handed out (``read_stream(hold=lag)`` keeps their buffers): waiting
for each window's last write before parsing the next left the writers idle
half the time and the disk's queue empty (py-spy of a 2.5 GiB restore: the
main thread waited on writes 2.4 s of 3.7); memory is the reader's plus the
held windows.

The result is ``mbstream -x``'s: the same files with the same bytes (mode
0660 less the umask; directories 0700), every payload's CRC-32 and offset
checked.  Where ``mbstream -x`` printed a message and still exited 0 (a path
with ``..`` or absolute, a file named twice, a directory it could not make)
this refuses the stream: a stored backup never has them.
"""
from __future__ import annotations

import errno
import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from zlib_ng import zlib_ng  # CRC-32 at ~30 GiB/s (CPython's zlib: 3 GiB/s), and crc32_combine

from drtool.errors import RestoreTargetError
from drtool.fdio import DirectWrites, open_direct
from drtool.sources import mbstream

_HEAD = len(mbstream.MAGIC) + struct.calcsize("<BBI")
_PAYLOAD = struct.Struct("<QQI")
SPLIT_BYTES = 1 << 20          # a piece of a window at least twice this long is split between writers
ALIGN = 64 * 1024              # where it is split
WRITERS = max(2, min(4, os.cpu_count() or 2))
LAG = 2  # windows whose writes may still run while the next is parsed (read_stream(hold=LAG))


class StreamDamaged(RestoreTargetError):
    """The stream's bytes (authenticated as stored) are not a whole, valid mbstream."""


@dataclass
class _File:
    """One file being written: where its next payload starts, and its descriptor."""

    path: str     # as the stream names it (messages about the stream)
    full: str     # where it is written (messages about the target)
    fd: int
    direct_fd: int = -1  # the same file opened with O_DIRECT (fdio.DirectWrites), or -1
    end: int = 0

    def close(self) -> None:
        os.close(self.fd)
        if self.direct_fd >= 0:
            os.close(self.direct_fd)


@dataclass
class _Payload:
    """A payload being written: its file, where its next byte goes, what is left, the CRC-32 it must
    have, and its pieces handed to the writers (each returns its piece's CRC-32); an E chunk is one
    with ``offset`` -1 (its file closed once the window's writes are over)."""

    file: _File
    offset: int
    left: int
    expected_crc: int
    pieces: list[tuple[Future[int], int]] = field(default_factory=list)


class MbstreamWriter:
    """Writes an mbstream fed window by window (:meth:`write`) into ``target`` (an empty directory).

    Use as a context manager: every descriptor is closed and the threads
    stopped on the way out, also after an error (the caller then removes
    what was written: a half-extracted copy must not pass for a restored one).
    """

    def __init__(self, target: str, what: str, writers: int = WRITERS, direct: bool = True,
                 lag: int = 0) -> None:
        """``direct``: write whole blocks with O_DIRECT where the file system allows it
        (:class:`~drtool.fdio.DirectWrites`); off, everything goes through the page cache.
        ``lag``: how many windows :meth:`write` may return with writes still running — the
        windows must stay valid that long (``read_stream(hold=lag)``); :meth:`finish` waits for all."""
        self.target, self.what, self.lag = target, what, lag
        self._direct = DirectWrites(direct)
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="mbstream-write")
        self._writers = writers
        self._files: dict[bytes, _File] = {}
        self._seen: set[bytes] = set()
        self._dirs: set[str] = set()
        self._head = bytearray()          # a chunk header cut by the end of a window
        self._payload: _Payload | None = None
        self._ending: list[_Payload] = []  # payloads whose last piece is in this window
        self._in_flight: deque[tuple[list[Future[int]], list[_Payload]]] = deque()  # per window, oldest first

    def __enter__(self) -> MbstreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # no write still reads a window
        endings = [self._ending, *(ending for _jobs, ending in self._in_flight)]
        ended = [payload.file for ending in endings for payload in ending if payload.offset < 0]  # E chunks
        for file in [*self._files.values(), *ended]:
            file.close()
        self._files.clear()
        self._ending.clear()
        self._in_flight.clear()

    def write(self, window: memoryview) -> None:
        """Extract what ``window`` holds; its writes run on, those of windows more than ``lag`` back
        are over (and checked) when this returns."""
        jobs: list[Future[int]] = []
        pos = 0
        try:
            while pos < len(window):
                if self._payload is not None:
                    pos = self._payload_piece(window, pos, jobs)
                else:
                    pos = self._header(window, pos)
        finally:  # even a damaged window's writes are waited for, by __exit__ at the latest
            self._in_flight.append((jobs, self._ending))
            self._ending = []
        while len(self._in_flight) > self.lag:
            self._complete()

    def finish(self) -> None:
        """The stream ended: it must not end inside a chunk; every write is over and checked."""
        if self._head or self._payload is not None:
            raise StreamDamaged(f"the mariabackup stream of {self.what} ends in the middle of a chunk: it was "
                                f"cut short; nothing was restored")
        while self._in_flight:
            self._complete()

    def _complete(self) -> None:
        """The oldest window in flight: its writes over (the first error raised: StreamDamaged or
        RestoreTargetError), the payloads ending in it checked, the files ending in it closed."""
        jobs, ending = self._in_flight[0]
        for job in jobs:
            job.result()
        self._check_ended(ending)
        self._in_flight.popleft()  # after: a window that failed its check is closed by __exit__

    # ----- parsing -------------------------------------------------------------------------------
    def _header(self, window: memoryview, pos: int) -> int:
        """Read (the rest of) a chunk header at ``pos``; the position after what was taken."""
        head = self._head
        need = _HEAD
        if len(head) >= _HEAD:
            path_len = struct.unpack_from("<I", head, _HEAD - 4)[0]
            need = _HEAD + path_len + (_PAYLOAD.size if head[len(mbstream.MAGIC) + 1] == mbstream.PAYLOAD else 0)
        take = min(need - len(head), len(window) - pos)
        head += window[pos:pos + take]
        pos += take
        if len(head) < need:
            return pos
        if need == _HEAD:
            self._check_head(head)
            return pos  # the path (and payload header) come next
        self._head = bytearray()
        self._chunk(bytes(head))
        return pos

    def _check_head(self, head: bytearray) -> None:
        if head[:len(mbstream.MAGIC)] != mbstream.MAGIC:
            raise StreamDamaged(f"the mariabackup stream of {self.what} is damaged: a chunk does not start "
                                f"with XBSTCK01; nothing was restored")
        kind = head[len(mbstream.MAGIC) + 1]
        path_len = struct.unpack_from("<I", head, _HEAD - 4)[0]
        if kind not in (mbstream.PAYLOAD, mbstream.EOF):
            raise StreamDamaged(f"the mariabackup stream of {self.what} has a chunk of unknown type {kind:#x}; "
                                f"nothing was restored")
        if path_len == 0 or path_len > mbstream.MAX_PATH:
            raise StreamDamaged(f"the mariabackup stream of {self.what} is damaged: a chunk names a path of "
                                f"{path_len} bytes; nothing was restored")

    def _chunk(self, head: bytes) -> None:
        """A whole chunk header: open its file; a payload's bytes come next."""
        kind = head[len(mbstream.MAGIC) + 1]
        path = head[_HEAD:len(head) - (_PAYLOAD.size if kind == mbstream.PAYLOAD else 0)]
        file = self._open(path)
        if kind == mbstream.EOF:
            self._ending.append(_Payload(file, -1, 0, 0))  # closed once this window's writes are done
            del self._files[path]
            return
        length, offset, crc = _PAYLOAD.unpack_from(head, len(head) - _PAYLOAD.size)
        if length > mbstream.MAX_PAYLOAD:
            raise StreamDamaged(f"the mariabackup stream of {self.what} is damaged: a chunk of {file.path} "
                                f"claims {length} bytes; nothing was restored")
        if offset != file.end:
            raise StreamDamaged(f"the mariabackup stream of {self.what} is damaged: a chunk of {file.path} is "
                                f"out of order (offset {offset}, expected {file.end}); nothing was restored")
        file.end += length
        payload = _Payload(file, offset, length, crc)
        if length:
            self._payload = payload
        else:
            self._ending.append(payload)

    def _payload_piece(self, window: memoryview, pos: int, jobs: list[Future[int]]) -> int:
        """Hand the payload's bytes in ``window`` from ``pos`` to the writers, split when long."""
        payload = self._payload
        assert payload is not None
        size = min(payload.left, len(window) - pos)
        cuts = [0]
        if size >= 2 * SPLIT_BYTES:
            step = -(-size // self._writers // ALIGN) * ALIGN
            cuts = list(range(0, size, step))
        for start, end in zip(cuts, cuts[1:] + [size]):
            job = self._pool.submit(self._pwrite, payload.file, window[pos + start:pos + end], payload.offset + start)
            jobs.append(job)
            payload.pieces.append((job, end - start))
        payload.offset += size
        payload.left -= size
        if not payload.left:
            self._ending.append(payload)
            self._payload = None
        return pos + size

    def _check_ended(self, ending: list[_Payload]) -> None:
        """Payloads ended in a window: their CRC-32 (pieces combined in order); files ended: closed."""
        for payload in ending:
            if payload.offset < 0:
                continue  # closed below, once every payload of this window is checked
            crc = 0
            for job, size in payload.pieces:
                crc = zlib_ng.crc32_combine(crc, job.result(), size)
            if crc != payload.expected_crc:
                raise StreamDamaged(f"the mariabackup stream of {self.what} is damaged: a chunk of "
                                    f"{payload.file.path} ending at offset {payload.offset} does not match its "
                                    f"CRC-32; nothing was restored")
        for payload in ending:
            if payload.offset < 0:
                payload.file.close()
        ending.clear()  # closed: not again by __exit__

    # ----- files -----------------------------------------------------------------------------------
    def _open(self, path: bytes) -> _File:
        file = self._files.get(path)
        if file is not None:
            return file
        name = self._relative(path)
        if path in self._seen:
            raise StreamDamaged(f"the mariabackup stream of {self.what} has {name} twice; nothing was restored")
        self._seen.add(path)
        full = os.path.join(self.target, name)
        try:
            self._make_parents(os.path.dirname(name))
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o660)
        except OSError as exc:
            raise _write_error(full, exc) from None
        file = self._files[path] = _File(name, full, fd)
        if self._direct.enabled:
            try:
                file.direct_fd = open_direct(full)
            except OSError as exc:
                raise _write_error(full, exc) from None
        return file

    def _relative(self, path: bytes) -> str:
        name = os.fsdecode(path)
        parts = [part for part in name.split("/") if part]
        if name.startswith("/") or not parts or any(part in (".", "..") for part in parts) or "\0" in name:
            raise StreamDamaged(f"the mariabackup stream of {self.what} names a file outside its directory "
                                f"({name!r}); nothing was restored")
        return "/".join(parts)

    def _make_parents(self, directory: str) -> None:
        if not directory or directory in self._dirs:
            return
        self._make_parents(os.path.dirname(directory))
        try:
            os.mkdir(os.path.join(self.target, directory), 0o700)
        except FileExistsError:
            pass
        self._dirs.add(directory)

    def _pwrite(self, file: _File, data: memoryview, offset: int) -> int:
        """Write ``data`` at ``offset`` of ``file``; its CRC-32 (computed here, on a writer thread)."""
        crc = zlib_ng.crc32(data)
        try:
            self._direct.pwrite(file.fd, file.direct_fd, data, offset)
        except OSError as exc:
            raise _write_error(file.full, exc) from None
        return crc


def _write_error(path: str, exc: OSError) -> RestoreTargetError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RestoreTargetError(f"cannot write {path}: {reason}; nothing was restored",
                                  hint="free space on the --target file system or restore to another --target")
    return RestoreTargetError(f"cannot write {path}: {reason}; nothing was restored")
