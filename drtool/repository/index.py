"""Blob → pack index: in memory while running, ``index/<id>`` objects at rest.

Index objects are a cache of what pack trailers say; they exist so a backup
does not have to read every pack to know what is stored.  An index object
lists whole packs, so it is written only after those packs are safely stored
(write order packs → index → snapshot).
"""
from __future__ import annotations

import struct
from typing import Iterable, Iterator, NamedTuple, Protocol

from drtool.crypto.ids import ID_SIZE
from drtool.repository.packfile import ENTRY, BlobEntry, pack_entries, unpack_entries

PACK_HEADER = struct.Struct(f"<{ID_SIZE}sI")


class Location(NamedTuple):
    pack_id: bytes
    blob_type: int
    offset: int        # sealed group's offset in the pack
    length: int        # sealed group's length
    inner: int         # blob's offset in the group plaintext
    raw_length: int


class PackRecord:
    """A pack's trailer entries, as :class:`BlobEntry` objects or still packed (``packed``).

    A backup keeps its packs' entries packed until their index object is
    written (``Repository._upload_pack``): a few thousand entries per pack of a
    dump, ~53 bytes each packed and ~260 as objects.
    """

    __slots__ = ("pack_id", "_entries", "_packed")

    def __init__(self, pack_id: bytes, entries: list[BlobEntry] | None = None,
                 packed: bytes | None = None) -> None:
        self.pack_id = pack_id
        self._entries = entries if entries is not None else (None if packed is not None else [])
        self._packed = packed

    @property
    def entries(self) -> list[BlobEntry]:
        if self._entries is None:
            return unpack_entries(self._packed or b"")
        return self._entries

    def packed(self) -> bytes:
        """The entries as index objects and the catalog store them."""
        return self._packed if self._packed is not None else pack_entries(self.entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackRecord):
            return NotImplemented
        return self.pack_id == other.pack_id and self.packed() == other.packed()

    def __repr__(self) -> str:
        return f"PackRecord({self.pack_id.hex()[:16]}, {len(self.packed()) // ENTRY.size} entries)"


def encode_index(packs: Iterable[PackRecord]) -> bytes:
    parts: list[bytes] = []
    for pack in packs:
        packed = pack.packed()
        parts.append(PACK_HEADER.pack(pack.pack_id, len(packed) // ENTRY.size))
        parts.append(packed)
    return b"".join(parts)


def decode_index(raw: bytes) -> list[PackRecord]:
    """Raise ValueError when the plaintext is not a well-formed index."""
    return [PackRecord(pack_id, unpack_entries(entries)) for pack_id, entries in decode_index_packed(raw)]


def decode_index_packed(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(pack id, its entries still packed) for each pack; ValueError when malformed."""
    packs: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(raw):
        if pos + PACK_HEADER.size > len(raw):
            raise ValueError("index ends inside a pack header")
        pack_id, count = PACK_HEADER.unpack_from(raw, pos)
        pos += PACK_HEADER.size
        end = pos + count * ENTRY.size
        if end > len(raw):
            raise ValueError("index ends inside a pack's entries")
        packs.append((pack_id, raw[pos:end]))
        pos = end
    return packs


class IndexCache(Protocol):
    """Somewhere to keep decoded index objects between runs (the catalog implements it)."""

    def cached_index_ids(self) -> set[str]: ...

    def cached_pack_entries(self, index_ids: set[str]) -> Iterator[tuple[bytes, bytes]]:
        """(pack id, its trailer entries as packed by ``pack_entries``) of the given index objects."""
        ...

    def store_index(self, index_id: str, packs: list[PackRecord]) -> None: ...

    def drop_indexes(self, index_ids: set[str]) -> None: ...


_RECORD = struct.Struct("<IBQIII")  # pack number, type, offset, length, inner, raw length
_SLOT = ID_SIZE + _RECORD.size       # one entry: blob id, then its record
BUCKET_CAPACITY = 16                 # entries before a bucket splits (~0.9 KiB: one find ~0.3 us)
_FILL_AFTER_RESERVE = 10             # entries per bucket a reserved directory is sized for
# The absent-id bitmap of MemoryIndex: 2^22 bits (512 KiB), from hash bits 40-61 (the directory uses
# the low ones; a million-blob index has 2^17 buckets).  With a layered index's overlay of at most
# 262,144 entries, ~6 % of absent ids still search their bucket; a large in-memory index fills it.
_SEEN_BITS = 1 << 22
_SEEN_SHIFT, _SEEN_MASK = 40, _SEEN_BITS - 1


class _Bucket(bytearray):
    """Entries back to back; ``depth`` low hash bits are shared by all of them.

    ``single``: the bucket was found to hold copies of this one blob id only
    (a blob stored in many packs): splitting cannot separate equal ids, so it
    is not tried again until another id arrives.
    """

    __slots__ = ("depth", "single")

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.single: bytes | None = None


class MemoryIndex:
    """blob id → Location, plus which packs exist.

    At millions of files the index is most of a backup's memory, so entries
    are not Python objects: each is 57 bytes (id + packed record) in a
    bucket (a ``bytearray``) chosen by the low bits of the id's hash, with
    extendible hashing -- a full bucket splits on its next bit, and the
    directory of buckets doubles (pointers only) when a bucket is as deep as
    it.  About 70 bytes per blob, where a ``dict[bytes, bytes]`` took ~180
    (the 200,000-file backup: ~36 MiB → ~14 MiB); a lookup is one
    ``bytearray.find`` in a bucket of at most ~0.9 KiB (~1 us, against
    ~0.1 us for the dict: 0.2 s per million lookups).

    Entries are appended without a lookup (every caller adds blobs it knows
    to be new, or whole packs at load time).  A blob stored in two packs
    therefore has two entries; lookups find the first, so the first pack
    added wins, as it always did.
    """

    def __init__(self) -> None:
        self._mask = 0  # directory index = hash(id) & mask; len(_dir) == mask + 1
        self._dir: list[_Bucket] = [_Bucket(0)]
        self._entries = 0
        # One bit per id (bits of its hash above the directory's), so most absent ids skip the
        # bucket search: the layered index asks its overlay for every chunk the cache lacks.
        self._seen = bytearray(_SEEN_BITS >> 3)
        self.packs: dict[bytes, int] = {}
        self._pack_ids: list[bytes] = []
        self._pack_numbers: dict[bytes, int] = {}

    def reserve(self, entries: int) -> None:
        """Size the directory for about ``entries`` more blobs, so loading them splits no bucket.

        Only on an empty index: the start-up load of a large repository
        (splitting moves each entry about 1.4 times: 2.7 us per entry
        instead of ~1).
        """
        if self._entries:
            return
        depth = max(0, (entries // _FILL_AFTER_RESERVE).bit_length())
        self._mask = (1 << depth) - 1
        self._dir = [_Bucket(depth) for _ in range(1 << depth)]

    def _find(self, blob_id: bytes) -> tuple[_Bucket, int]:
        """The bucket for ``blob_id`` and the entry's position in it (-1: not there)."""
        bucket = self._dir[hash(blob_id) & self._mask]
        pos = bucket.find(blob_id)
        while pos > 0 and pos % _SLOT:  # a match must start on an entry boundary
            pos = bucket.find(blob_id, pos + 1)
        return bucket, pos if len(blob_id) == ID_SIZE else -1

    def __contains__(self, blob_id: bytes) -> bool:
        # ``_find`` inlined: a backup asks this (through the layered index) for every new chunk.
        h = hash(blob_id)
        seen = h >> _SEEN_SHIFT & _SEEN_MASK
        if not self._seen[seen >> 3] >> (seen & 7) & 1:
            return False
        bucket = self._dir[h & self._mask]
        pos = bucket.find(blob_id)
        while pos > 0 and pos % _SLOT:
            pos = bucket.find(blob_id, pos + 1)
        return pos >= 0 and len(blob_id) == ID_SIZE

    def removals_token(self) -> bytes | None:
        """No completeness marks without the disk cache (:mod:`completeness`): look every blob up."""
        return None

    def mark_complete(self, tree_id: str, since: bytes) -> bool:
        return False

    def is_complete(self, tree_id: str) -> bool:
        return False

    def listing_digest(self, tree_id: str) -> bytes | None:
        return None

    def record_listings(self, digests: dict[str, bytes]) -> None:
        """Nowhere to keep them without the disk cache."""

    def has_all(self, hex_ids: Iterable[str]) -> bool:
        """Whether every blob (hex ids, as trees list them) is in the index.

        The parent-snapshot skip asks this for every unchanged file; one
        loop here (``_find`` inlined) instead of a method call per id halves
        its cost.
        """
        directory, mask, fromhex = self._dir, self._mask, bytes.fromhex
        for hex_id in hex_ids:
            blob_id = fromhex(hex_id)
            bucket = directory[hash(blob_id) & mask]
            pos = bucket.find(blob_id)
            while pos > 0 and pos % _SLOT:
                pos = bucket.find(blob_id, pos + 1)
            if pos < 0 or len(blob_id) != ID_SIZE:
                return False
        return True

    def __len__(self) -> int:
        """Entries stored (a blob in two packs counts twice)."""
        return self._entries

    def get(self, blob_id: bytes) -> Location | None:
        bucket, pos = self._find(blob_id)
        if pos < 0:
            return None
        number, blob_type, offset, length, inner, raw_length = _RECORD.unpack_from(bucket, pos + ID_SIZE)
        return Location(self._pack_ids[number], blob_type, offset, length, inner, raw_length)

    def _append(self, blob_id: bytes, record: bytes) -> None:
        h = hash(blob_id)
        seen = h >> _SEEN_SHIFT & _SEEN_MASK
        self._seen[seen >> 3] |= 1 << (seen & 7)
        bucket = self._dir[h & self._mask]
        bucket += blob_id
        bucket += record
        self._entries += 1
        if len(bucket) > BUCKET_CAPACITY * _SLOT and bucket.single != blob_id:
            self._split(bucket)

    def _split(self, bucket: _Bucket) -> None:
        """Split a full bucket on its next hash bit, doubling the directory when needed.

        A bucket that holds nothing but copies of one blob (stored in many
        packs: concurrent backups of one file on many hosts, re-indexed
        packs of interrupted runs, or a forged repository) is left to grow:
        splitting it would double the directory on every further copy (45
        copies of one blob took 4 GiB) and never separate anything.
        """
        depth = bucket.depth
        if depth >= 60:
            return  # 60 equal hash bits: only possible for one blob added again and again
        first = bytes(bucket[:ID_SIZE])
        with memoryview(bucket) as view:
            alone = all(view[pos:pos + ID_SIZE] == first for pos in range(_SLOT, len(bucket), _SLOT))
        if alone:
            bucket.single = first
            return
        if depth == self._mask.bit_length():  # as deep as the directory: double it (pointers only)
            self._dir = self._dir + self._dir
            self._mask = (self._mask << 1) | 1
        low, high = _Bucket(depth + 1), _Bucket(depth + 1)
        bit = 1 << depth
        for pos in range(0, len(bucket), _SLOT):  # entries keep their order: the first still wins
            half = high if hash(bytes(bucket[pos:pos + ID_SIZE])) & bit else low
            half += bucket[pos:pos + _SLOT]
        # the directory slots that pointed at the old bucket share its low `depth` bits
        first = hash(bytes(bucket[:ID_SIZE])) & (bit - 1)
        for i in range(first, len(self._dir), bit):
            self._dir[i] = high if i & bit else low

    def _pack_number(self, pack_id: bytes) -> int:
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = self._pack_numbers[pack_id] = len(self._pack_ids)
            self._pack_ids.append(pack_id)
        return number

    def add_packed(self, pack_id: bytes, raw_entries: bytes, only_type: int | None = None) -> None:
        """Add a pack from its packed trailer entries, without a BlobEntry per blob.

        Loading the index from the catalog is on every command's start-up
        path: building ~50 k BlobEntry objects only to re-pack them cost
        0.05 s on the bench repository (cProfile), ~1 s per million blobs.
        ``only_type``: add only the blobs of that type (readers of trees).
        """
        if len(raw_entries) % ENTRY.size:
            raise ValueError("partial blob entry")
        number = self._pack_number(pack_id)
        append, record = self._append, _RECORD.pack
        for blob_type, blob_id, offset, length, inner, raw_length in ENTRY.iter_unpack(raw_entries):
            if only_type is None or blob_type == only_type:
                append(blob_id, record(number, blob_type, offset, length, inner, raw_length))
        self.packs[pack_id] = len(raw_entries) // ENTRY.size

    def add_pack(self, pack: PackRecord) -> None:
        self.packs[pack.pack_id] = 0
        self.add_entries(pack.pack_id, pack.entries)

    def add_entries(self, pack_id: bytes, entries: list[BlobEntry]) -> None:
        """Add some of a pack's entries (a pack may be added in several slices)."""
        self.packs[pack_id] = self.packs.get(pack_id, 0) + len(entries)
        number = self._pack_number(pack_id)
        append, record = self._append, _RECORD.pack
        for e in entries:
            append(e.blob_id, record(number, e.blob_type, e.offset, e.length, e.inner, e.raw_length))

    def without_packs(self, pack_ids: set[bytes]) -> "MemoryIndex":
        """A copy without the entries of ``pack_ids`` (the layered index's overlay, once they are
        cached on disk); entries keep their order."""
        kept = MemoryIndex()
        done: set[int] = set()
        for bucket in self._dir:
            if id(bucket) in done:
                continue
            done.add(id(bucket))
            for pos in range(0, len(bucket), _SLOT):
                number, = struct.unpack_from("<I", bucket, pos + ID_SIZE)
                pack_id = self._pack_ids[number]
                if pack_id not in pack_ids:
                    kept._append(bytes(bucket[pos:pos + ID_SIZE]),
                                 _RECORD.pack(kept._pack_number(pack_id),
                                              *_RECORD.unpack_from(bucket, pos + ID_SIZE)[1:]))
        kept.packs = {p: n for p, n in self.packs.items() if p not in pack_ids}
        return kept

    def items(self) -> Iterator[tuple[bytes, Location]]:
        """Every blob once, with the location lookups give (for checks and tests, not hot paths)."""
        done: set[int] = set()
        seen: set[bytes] = set()
        for bucket in self._dir:
            if id(bucket) in done:  # a bucket fills several directory slots
                continue
            done.add(id(bucket))
            for pos in range(0, len(bucket), _SLOT):
                blob_id = bytes(bucket[pos:pos + ID_SIZE])
                if blob_id not in seen:
                    seen.add(blob_id)
                    yield blob_id, self.get(blob_id)  # type: ignore[misc]
