"""The mbstream container mariabackup writes with ``--stream=mbstream``: read it chunk by chunk, write it.

A stream is a run of chunks, each ``XBSTCK01``, a flags byte, a type byte
(``P``: payload, ``E``: end of file), the path, and — for payloads —
length, offset in the file and a CRC-32 (zlib's) of the
payload.  Files may interleave (``--parallel``).  drtool reads it to rewrite
an incremental's ``.delta`` files into sub-page form on their way into the
repository (:mod:`drtool.databases.subpage_backup`) and writes chunks that
``mbstream -x`` extracts like mariabackup's own.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import IO, Iterator

from drtool.errors import SourceError

MAGIC = b"XBSTCK01"
PAYLOAD = ord("P")
EOF = ord("E")
_CHUNK_HEAD = struct.Struct("<BBI")        # flags, type, path length
_PAYLOAD_HEAD = struct.Struct("<QQI")      # payload length, offset, checksum
MAX_PATH = 4096
MAX_PAYLOAD = 1 << 30                      # mariabackup writes ≤ 10 MiB; a larger claim is a damaged stream


class StreamCut(SourceError):
    """The stream ended inside a chunk: the program writing it stopped (its exit status says why)."""


@dataclass
class Chunk:
    """One chunk: ``payload`` and ``offset`` for P chunks; ``head`` + ``payload`` is the chunk as it
    came (two pieces, so a 10 MiB payload passed through is never copied into a new one)."""

    path: bytes
    kind: int
    flags: int
    offset: int
    payload: bytes
    head: bytes


@dataclass
class ChunkHead:
    """A chunk's header as it came (``head``); a P chunk's ``length`` payload bytes follow it."""

    path: bytes
    kind: int
    flags: int
    offset: int
    length: int
    head: bytes


def read_head(stream: IO[bytes]) -> ChunkHead | None:
    """The next chunk's header, None at the end of the stream; the payload is left to read.

    A stream that is not an mbstream, or is cut inside the header, raises SourceError."""
    head = _read_exact(stream, len(MAGIC) + _CHUNK_HEAD.size, allow_end=True)
    if not head:
        return None
    if head[:len(MAGIC)] != MAGIC:
        raise SourceError("the mariabackup stream is damaged: a chunk does not start with XBSTCK01")
    flags, kind, path_len = _CHUNK_HEAD.unpack_from(head, len(MAGIC))
    if path_len > MAX_PATH:
        raise SourceError(f"the mariabackup stream is damaged: a chunk names a path of {path_len} bytes")
    path = _read_exact(stream, path_len)
    if kind == EOF:
        return ChunkHead(path, kind, flags, 0, 0, head + path)
    if kind != PAYLOAD:  # MariaDB's mbstream has P and E only (Percona's sparse S is not read here)
        raise SourceError(f"the mariabackup stream has a chunk of unknown type {kind:#x} (file "
                          f"{path.decode('utf-8', 'replace')}): a mariabackup newer than this drtool?")
    payload_head = _read_exact(stream, _PAYLOAD_HEAD.size)
    length, offset, _checksum = _PAYLOAD_HEAD.unpack(payload_head)  # not checked: see read_chunks
    if length > MAX_PAYLOAD:
        raise SourceError(f"the mariabackup stream is damaged: a chunk claims {length} bytes")
    return ChunkHead(path, kind, flags, offset, length, head + path + payload_head)


def read_chunks(stream: IO[bytes]) -> Iterator[Chunk]:
    """The chunks of ``stream`` in order; a stream that is not an mbstream, or is cut, raises SourceError.

    Payload CRCs are not checked on a backup's way in: the stream comes through a local pipe
    (checking cost 0.6–1.6 s of CPU per GiB here); ``mbstream -x`` checks every stored chunk at
    restore, and each page rebuilt from blocks is checked against its digest."""
    while True:
        head = read_head(stream)
        if head is None:
            return
        payload = _read_exact(stream, head.length) if head.length else b""
        yield Chunk(head.path, head.kind, head.flags, head.offset, payload, head.head)


def payload_chunk(path: bytes, offset: int, payload: bytes | memoryview, flags: int = 0) -> bytes:
    """A ``P`` chunk as mariabackup writes it."""
    return b"".join((MAGIC, _CHUNK_HEAD.pack(flags, PAYLOAD, len(path)), path,
                     _PAYLOAD_HEAD.pack(len(payload), offset, zlib.crc32(payload)), payload))


def eof_chunk(path: bytes, flags: int = 0) -> bytes:
    return MAGIC + _CHUNK_HEAD.pack(flags, EOF, len(path)) + path


def _read_exact(stream: IO[bytes], size: int, allow_end: bool = False) -> bytes:
    parts, left = [], size
    while left:
        data = stream.read(left)
        if not data:
            if allow_end and left == size:
                return b""
            raise StreamCut("the mariabackup stream ends in the middle of a chunk: it was cut short")
        parts.append(data)
        left -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)
