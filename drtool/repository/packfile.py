"""Pack files: many sealed blobs plus a sealed trailer that lists them.

Layout::

    [blob 0 sealed][blob 1 sealed]...[trailer sealed][u32 trailer length]["DRP1"]

The trailer holds (type, blob id, offset, length, raw length) for every blob,
so every index and the whole catalog can be rebuilt from packs alone.  Pack
names are the BLAKE3 hash of their bytes, so a pack whose bytes change no
longer matches its name.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

from drtool.crypto.ids import ID_SIZE, content_hash
from drtool.repository.envelope import Envelope

MAGIC = b"DRP1"
FOOTER = struct.Struct("<I4s")
ENTRY = struct.Struct(f"<B{ID_SIZE}sQII")
TRAILER_KIND = b"pack-trailer"

DATA_BLOB = 0
TREE_BLOB = 1
BLOB_TYPE_NAMES = {DATA_BLOB: "data", TREE_BLOB: "tree"}


@dataclass(frozen=True)
class BlobEntry:
    blob_type: int
    blob_id: bytes
    offset: int
    length: int
    raw_length: int


def blob_kind(blob_type: int) -> bytes:
    return b"blob-" + BLOB_TYPE_NAMES[blob_type].encode()


def pack_name(pack_id: bytes) -> str:
    hexid = pack_id.hex()
    return f"packs/{hexid[:2]}/{hexid}"


def pack_id_from_name(name: str) -> bytes:
    return bytes.fromhex(name.rsplit("/", 1)[1])


class PackBuilder:
    """Accumulates sealed blobs in memory until the pack is big enough."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.entries: list[BlobEntry] = []
        self.size = 0

    def add(self, blob_type: int, blob_id: bytes, sealed: bytes, raw_length: int) -> None:
        self.entries.append(BlobEntry(blob_type, blob_id, self.size, len(sealed), raw_length))
        self._parts.append(sealed)
        self.size += len(sealed)

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, envelope: Envelope) -> tuple[bytes, bytes]:
        """Return (pack id, pack bytes)."""
        trailer = b"".join(ENTRY.pack(e.blob_type, e.blob_id, e.offset, e.length, e.raw_length)
                           for e in self.entries)
        sealed_trailer = envelope.seal(TRAILER_KIND, b"", trailer)
        self._parts.append(sealed_trailer)
        self._parts.append(FOOTER.pack(len(sealed_trailer), MAGIC))
        data = b"".join(self._parts)
        self._parts = []
        return content_hash(data), data


class PackFormatError(Exception):
    pass


def read_trailer(envelope: Envelope, pack_bytes: bytes) -> list[BlobEntry]:
    """Parse a whole pack's trailer; raise PackFormatError or EnvelopeError when damaged."""
    if len(pack_bytes) < FOOTER.size:
        raise PackFormatError("pack is shorter than its footer")
    trailer_len, magic = FOOTER.unpack_from(pack_bytes, len(pack_bytes) - FOOTER.size)
    if magic != MAGIC or trailer_len > len(pack_bytes) - FOOTER.size:
        raise PackFormatError("pack footer is damaged")
    start = len(pack_bytes) - FOOTER.size - trailer_len
    return parse_trailer(envelope, pack_bytes[start:start + trailer_len], start)


def parse_trailer(envelope: Envelope, sealed_trailer: bytes, blobs_end: int) -> list[BlobEntry]:
    raw = envelope.open(TRAILER_KIND, b"", sealed_trailer)
    if len(raw) % ENTRY.size:
        raise PackFormatError("pack trailer has a partial entry")
    entries = [BlobEntry(*fields) for fields in ENTRY.iter_unpack(raw)]
    for entry in entries:
        if entry.offset + entry.length > blobs_end or entry.blob_type not in BLOB_TYPE_NAMES:
            raise PackFormatError("pack trailer points outside the pack")
    return entries


def entries_total(entries: Iterable[BlobEntry]) -> int:
    return sum(e.length for e in entries)
