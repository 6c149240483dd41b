"""Extracting a stored mbstream in process: what ``mbstream -x`` writes, from the verified windows.

Why not pipe it to ``mbstream -x`` (as before): that program reads the pipe
and writes each chunk (mariabackup's are 10 MiB) on one thread, one after
the other, so the restore's pace was one core's page-cache writes while
drtool's readers waited on the pipe (600,000-row bench: extraction 3.8–4.4 s
of which ``mbstream -x`` 1.7 s of system time in ``write``, drtool's
reading alone 1.0 s).  The windows are parsed where they lie and written by
:class:`~drtool.databases.tree_writer.TreeWriter` (``pwrite`` on a few
threads, O_DIRECT for a full restored alone, writes kept in flight across
windows); each payload's CRC-32 is computed by the thread writing it
(zlib-ng's ``crc32`` releases the GIL).

The result is ``mbstream -x``'s: the same files with the same bytes (mode
0660 less the umask; directories 0700), every payload's CRC-32 and offset
checked.  Where ``mbstream -x`` printed a message and still exited 0 (a path
with ``..`` or absolute, a file named twice, a directory it could not make)
this refuses the stream: a stored backup never has them.
"""
from __future__ import annotations

import struct
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from zlib_ng import zlib_ng  # CRC-32 at ~30 GiB/s (CPython's zlib: 3 GiB/s), and crc32_combine

from drtool.databases.tree_writer import LAG, OpenFile, StreamDamaged, TreeWriter
from drtool.sources import mbstream

__all__ = ["LAG", "MbstreamWriter", "StreamDamaged"]

_HEAD = len(mbstream.MAGIC) + struct.calcsize("<BBI")
_PAYLOAD = struct.Struct("<QQI")


@dataclass
class _Payload:
    """A payload being written: its file, where its next byte goes, what is left, the CRC-32 it must
    have, and its pieces handed to the writers (each returns its piece's CRC-32)."""

    file: OpenFile
    offset: int
    left: int
    expected_crc: int
    pieces: list[tuple[Future[int], int]] = field(default_factory=list)


class MbstreamWriter(TreeWriter):
    """Writes an mbstream fed window by window (:meth:`write`) into ``target`` (an empty directory)."""

    stream_name = "the mariabackup stream"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head = bytearray()          # a chunk header cut by the end of a window
        self._payload: _Payload | None = None

    def _parse(self, window: memoryview, jobs: list[Future[Any]]) -> None:
        pos = 0
        while pos < len(window):
            if self._payload is not None:
                pos = self._payload_piece(window, pos, jobs)
            else:
                pos = self._header(window, pos, jobs)

    def _check_ends_whole(self) -> None:
        if self._head or self._payload is not None:
            raise StreamDamaged(f"the mariabackup stream of {self.what} ends in the middle of a chunk: it was "
                                f"cut short; nothing was restored")

    # ----- parsing -------------------------------------------------------------------------------
    def _header(self, window: memoryview, pos: int, jobs: list[Future[Any]]) -> int:
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
        self._chunk(bytes(head), jobs)
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

    def _chunk(self, head: bytes, jobs: list[Future[Any]]) -> None:
        """A whole chunk header: open its file; a payload's bytes come next."""
        kind = head[len(mbstream.MAGIC) + 1]
        path = head[_HEAD:len(head) - (_PAYLOAD.size if kind == mbstream.PAYLOAD else 0)]
        file = self._open(path, jobs)
        if kind == mbstream.EOF:
            self.finish_file(path, jobs)  # closed now, or once this window's writes are done and checked
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
            self._check(payload, 0)

    def _payload_piece(self, window: memoryview, pos: int, jobs: list[Future[Any]]) -> int:
        """Hand the payload's bytes in ``window`` from ``pos`` to the writers."""
        payload = self._payload
        assert payload is not None
        size = min(payload.left, len(window) - pos)
        data = window[pos:pos + size]
        if size == payload.left <= self.inline_bytes and not payload.pieces:  # all of a small payload
            self.write_now(payload.file, data, payload.offset)
            payload.offset, payload.left, self._payload = payload.offset + size, 0, None
            self._check(payload, zlib_ng.crc32(data))
            return pos + size
        payload.pieces.extend(self.submit(payload.file, data, payload.offset, jobs))
        payload.offset += size
        payload.left -= size
        if not payload.left:
            self._ending.append(payload)
            self._payload = None
        return pos + size

    def _window_done(self, ending: list[Any]) -> None:
        """Payloads ended in a window: their CRC-32 (pieces combined in order); then the files ended
        in it are closed."""
        for payload in ending:
            if not isinstance(payload, _Payload):
                continue
            crc = 0
            for job, size in payload.pieces:
                crc = zlib_ng.crc32_combine(crc, job.result(), size)
            self._check(payload, crc)
        super()._window_done(ending)

    def _check(self, payload: _Payload, crc: int) -> None:
        """``crc`` (of the payload's bytes as written) against the one its chunk header gives."""
        if crc != payload.expected_crc:
            raise StreamDamaged(f"the mariabackup stream of {self.what} is damaged: a chunk of "
                                f"{payload.file.path} ending at offset {payload.offset} does not match its "
                                f"CRC-32; nothing was restored")

    def _open(self, path: bytes, jobs: list[Future[Any]]) -> OpenFile:
        file = self._files.get(path)
        if file is not None:
            return file
        name = self.relative(path)
        self.claim(name)
        return self.create(path, name, jobs)

    def _digest(self, data: memoryview) -> int:
        """A piece's CRC-32 (on a writer thread; a carried last block's where it is cut)."""
        return zlib_ng.crc32(data)
