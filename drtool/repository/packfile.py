"""Pack files: sealed compression groups of blobs, plus a sealed trailer.

Layout::

    [group 0 sealed][group 1 sealed]...[trailer sealed][u32 trailer length]["DRP2"]

Deduplication works on chunks (blobs), but compression works on *groups*
of consecutive new blobs (2 MiB, or 16 MiB for dump-like data): a 16 KiB chunk of a SQL dump
compresses poorly on its own, while a group keeps zstd's window wide enough
to find the long-range redundancy of dumps and small files.  Measured on the
bench dump: 16 KiB chunks compressed one by one need 59 MiB, grouped 38 MiB.

Each group is one AEAD message whose associated data names its blob type
(data or tree), and each blob is verified by its keyed id after
decompression, so a moved, swapped or forged group yields an error, never
wrong data.  The trailer lists (type, blob id, group offset, group length,
offset inside the group, length) for every blob, so every index and the
catalog can be rebuilt from packs alone.  Pack names are the BLAKE3 hash of
their bytes.
"""
from __future__ import annotations

import functools
import mmap
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import blake3

from drtool.backends.base import StagedObject
from drtool.crypto.ids import ID_SIZE, content_hash
from drtool.repository.envelope import RAW, Envelope, PendingSeal
from drtool.repository.objects import GROUP_DATA_KIND, GROUP_TREE_KIND, TRAILER_KIND, pack_name

MAGIC = b"DRP2"
FOOTER = struct.Struct("<I4s")
ENTRY = struct.Struct(f"<B{ID_SIZE}sQIII")

DATA_BLOB = 0
TREE_BLOB = 1
BLOB_TYPE_NAMES = {DATA_BLOB: "data", TREE_BLOB: "tree"}
_GROUP_KINDS = {DATA_BLOB: GROUP_DATA_KIND, TREE_BLOB: GROUP_TREE_KIND}
POOL_IDLE_SECONDS = 5.0  # a recycled group buffer unused this long is freed (BufferPool)
GroupBuffer = bytearray | mmap.mmap


@dataclass(frozen=True)
class BlobEntry:
    blob_type: int
    blob_id: bytes
    offset: int        # of the sealed group in the pack
    length: int        # of the sealed group
    inner: int         # offset of the blob in the group's plaintext
    raw_length: int    # of the blob's plaintext


def pack_entries(entries: Iterable[BlobEntry]) -> bytes:
    return b"".join(ENTRY.pack(e.blob_type, e.blob_id, e.offset, e.length, e.inner, e.raw_length)
                    for e in entries)


def unpack_entries(raw: bytes) -> list[BlobEntry]:
    if len(raw) % ENTRY.size:
        raise ValueError("partial blob entry")
    return [BlobEntry(*fields) for fields in ENTRY.iter_unpack(raw)]


def group_kind(blob_type: int) -> bytes:
    """The envelope kind of a compression group of ``blob_type`` (KeyError for an unknown type)."""
    return _GROUP_KINDS[blob_type]


@dataclass
class SealedGroup:
    """A group on its way into a pack: sealed, or sealed as it is written (:class:`PendingSeal`).

    With ``release`` set, the bytes lie in a buffer their maker reuses (the
    group buffer, a thread's output area, a stream's mapping) once ``done`` is
    called, which the one who stores the group does when they are written out.
    """

    blob_type: int
    members: list[tuple[bytes, int, int]]  # (blob id, inner offset, raw length)
    sealed: bytes | bytearray | PendingSeal
    raw_size: int
    release: Callable[[], None] | None = None

    def done(self) -> None:
        """The group is written out (or copied): its buffer may be reused (idempotent)."""
        release, self.release = self.release, None
        if release is not None:
            release()


class BufferPool:
    """Recycled group buffers, so a backup does not fault in fresh pages for every group.

    A 16 MiB group is above glibc's mmap threshold: allocated fresh, each of
    its 4096 pages is faulted in and zeroed, and unmapped again after
    sealing.  Reusing a few buffers took night 1 of the bench from ~460 k to
    ~150 k minor faults.  At most ``keep`` buffers per capacity are kept, and
    none longer than ``idle`` seconds unused: a dump's 16 MiB text groups are
    not needed by a long walk of small files after it.  Expired buffers are
    handed back to the system (unmapped), not only to malloc.  Not less
    than a few seconds: a loaded machine's stalls would have them freed and
    faulted in again in the middle of a dump.

    The buffers are anonymous mappings, not heap blocks: only the pages a
    group reaches are resident (a tree group, a group of text-like files
    sealed at a dump's end), and freeing one leaves no hole in the heap
    between the allocations that outlive it.
    """

    def __init__(self, keep: int = 2, idle: float = POOL_IDLE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keep = keep
        self.idle = idle
        self._clock = clock
        self._free: dict[int, list[tuple[GroupBuffer, float]]] = {}  # oldest first
        self._dropped: set[int] = set()  # capacities not wanted again until the next take
        self._lock = threading.Lock()

    def take(self, capacity: int) -> GroupBuffer:
        with self._lock:
            self._dropped.discard(capacity)
            expired = self._expire()
            free = self._free.get(capacity)
            buf = free.pop()[0] if free else None
        if expired:
            trim_heap()
        return buf if buf is not None else mmap.mmap(-1, capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def give(self, buf: GroupBuffer) -> bool:
        """Take ``buf`` back for re-use; False when it is not kept (its size was dropped):
        the caller then trims the heap once it holds no reference to it (``OpenGroup``)."""
        with self._lock:
            kept = len(buf) not in self._dropped
            free = self._free.setdefault(len(buf), [])
            if len(free) < self.keep and kept:
                free.append((buf, self._clock()))
            expired = self._expire()
        if expired:
            trim_heap()
        return kept

    def _expire(self) -> int:
        """Drop buffers unused for ``idle`` seconds; how many bytes were dropped."""
        dropped, limit = 0, self._clock() - self.idle
        for free in self._free.values():
            while free and free[0][1] < limit:
                dropped += len(free.pop(0)[0])
        return dropped

    def kept_bytes(self) -> int:
        """Bytes of the buffers kept for re-use."""
        with self._lock:
            return sum(len(buf) for free in self._free.values() for buf, _ in free)

    def drop(self, capacity: int) -> None:
        """Drop the kept buffers of one capacity (no more groups of that size are expected soon),
        and do not keep one given back later, until a buffer of that size is taken again: the
        dump's last long group, still being sealed on another worker when the dump ended, kept
        its 16 MiB as a spare through the rest of the walk (night 1's peak)."""
        with self._lock:
            self._free.pop(capacity, None)
            self._dropped.add(capacity)

    def clear(self) -> None:
        """Drop every kept buffer (the data path is done: nothing will take one again)."""
        with self._lock:
            self._free.clear()


def trim_heap() -> None:
    """Give malloc's free pages back to the system (glibc ``malloc_trim``; elsewhere nothing).

    The backup pins glibc's trim threshold at 16 MiB so that its recycled
    buffers are not faulted in again and again; memory freed for good (an
    expired pool buffer, the end of the data path) is returned with this.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


class OpenGroup:
    """A group being filled: blobs are copied once, into one (recycled) buffer."""

    __slots__ = ("buf", "size", "members", "_pool")

    def __init__(self, capacity: int = 0, pool: BufferPool | None = None) -> None:
        self._pool = pool
        self.buf: GroupBuffer = pool.take(capacity) if pool is not None and capacity else bytearray(capacity)
        self.size = 0
        self.members: list[tuple[bytes, int, int]] = []

    def add(self, blob_id: bytes, data: bytes | memoryview) -> None:
        end = self.size + len(data)
        if end > len(self.buf):  # an oversized blob: grow (rare; leaves the pool's buffer)
            grown = bytearray(max(end, 2 * len(self.buf)))
            grown[:self.size] = memoryview(self.buf)[:self.size]
            self._release()
            self.buf, self._pool = grown, None
        self.members.append((blob_id, self.size, len(data)))
        self.buf[self.size:end] = data
        self.size = end

    @property
    def capacity(self) -> int:
        return len(self.buf)

    def view(self) -> memoryview:
        return memoryview(self.buf)[:self.size]

    def _release(self) -> None:
        if self._pool is not None:
            pool, buf = self._pool, self.buf
            self._pool, self.buf = None, bytearray()
            if not pool.give(buf):
                del buf  # the last reference: its pages can go back to the system now
                trim_heap()

    def __len__(self) -> int:
        return self.size


def seal_open_group(envelope: Envelope, blob_type: int, group: OpenGroup,
                    long: bool = False) -> SealedGroup:
    """Compress a group as one message (called on worker threads), to be encrypted as it is
    written into its pack (:class:`PendingSeal`).

    The group buffer goes back to its pool once the group is written out
    (:meth:`SealedGroup.done`), or at once when its compressed form is in the
    thread's output area.
    """
    with group.view() as plain:
        sealed = envelope.pending_seal(group_kind(blob_type), b"", plain, long=long)
    if not isinstance(sealed, PendingSeal):
        group._release()
        return SealedGroup(blob_type, group.members, sealed, group.size)
    if sealed.flags != RAW:
        group._release()

    def release() -> None:
        sealed.release()
        group._release()  # a no-op when released already
    return SealedGroup(blob_type, group.members, sealed, group.size, release)


def seal_group(envelope: Envelope, blob_type: int, blobs: list[tuple[bytes, bytes | memoryview]],
               long: bool = False) -> SealedGroup:
    group = OpenGroup()
    for blob_id, data in blobs:
        group.add(blob_id, data)
    return seal_open_group(envelope, blob_type, group, long)


def open_group(envelope: Envelope, blob_type: int, sealed: bytes | memoryview) -> bytes:
    """Plaintext of a group; raises EnvelopeError when damaged or of another blob type."""
    return envelope.open(group_kind(blob_type), b"", sealed)


class PackBuilder:
    """Collects sealed groups until the pack is big enough.

    With a ``sink`` (a backend's staged object) each group is written out as
    it is added and only its trailer entries stay in memory, so a backup
    holds no whole packs in RAM (perf/tracemalloc: 27-43 MiB of sealed
    groups waiting in builders and uploads).  Without one, the groups are
    kept for ``finish_parts``.  ``lock`` and ``closed`` let worker threads
    add to a shared builder while one of them retires it.
    """

    def __init__(self, sink: StagedObject | None = None) -> None:
        self._parts: list[bytes | bytearray] = []
        # The trailer's entries, packed as they come: as BlobEntry objects (~260 bytes each with
        # their ints, against 53 packed) a dump's packs in flight and waiting for their index
        # held ~5 MiB of Python objects at night 1's peak.
        self._entries = bytearray()
        self.size = 0
        self._sink = sink
        self._hasher = blake3.blake3() if sink is not None else None
        self.lock = threading.Lock()
        self.closed = False

    @property
    def streaming(self) -> bool:
        return self._sink is not None

    def add(self, group: SealedGroup) -> None:
        """Write the group out (or keep it).  A pending one is encrypted straight into a sink that
        is done with what it is given when ``write`` returns (``StagedObject.retains_data``),
        a piece at a time; kept or given to any other sink, it is sealed whole first."""
        sealed = group.sealed
        entry, blob_type, offset, length = ENTRY.pack, group.blob_type, self.size, len(sealed)
        self._entries += b"".join(entry(blob_type, blob_id, offset, length, inner, raw_length)
                                  for blob_id, inner, raw_length in group.members)
        self.size += len(sealed)
        if isinstance(sealed, PendingSeal):
            if self._sink is not None and not self._sink.retains_data:
                sealed.write_to(self._write)
                return
            sealed = sealed.sealed()
        if self._sink is not None:
            self._write(sealed)
        else:
            self._parts.append(sealed)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._sink is not None and self._hasher is not None
        self._sink.write(data)
        self._hasher.update(data)

    def commit_staged(self, envelope: Envelope) -> bytes:
        """Append the trailer, name the streamed pack by its hash and make it visible."""
        assert self._sink is not None and self._hasher is not None
        sealed_trailer = envelope.seal(TRAILER_KIND, b"", self._entries)
        for part in (sealed_trailer, FOOTER.pack(len(sealed_trailer), MAGIC)):
            self._sink.write(part)
            self._hasher.update(part)
        pack_id = self._hasher.digest()
        self._sink.commit(pack_name(pack_id))
        return pack_id

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()

    @property
    def entries(self) -> list[BlobEntry]:
        return unpack_entries(self._entries)

    def packed_entries(self) -> bytes:
        """The entries as the trailer and index objects store them."""
        return bytes(self._entries)

    def __len__(self) -> int:
        return len(self._entries) // ENTRY.size

    def finish_parts(self, envelope: Envelope) -> tuple[bytes, list[bytes | bytearray]]:
        """Return (pack id, the pack as a list of parts), without joining them.

        Joining would duplicate a 16 MiB pack in memory right before upload;
        backends that can write parts in sequence (local files) never need it.
        """
        sealed_trailer = envelope.seal(TRAILER_KIND, b"", self._entries)
        parts, self._parts = self._parts, []
        parts.append(sealed_trailer)
        parts.append(FOOTER.pack(len(sealed_trailer), MAGIC))
        hasher = blake3.blake3()
        for part in parts:
            hasher.update(part)
        return hasher.digest(), parts

    def finish(self, envelope: Envelope) -> tuple[bytes, bytes]:
        """Return (pack id, pack bytes)."""
        sealed_trailer = envelope.seal(TRAILER_KIND, b"", self._entries)
        parts, self._parts = self._parts, []
        parts.append(sealed_trailer)
        parts.append(FOOTER.pack(len(sealed_trailer), MAGIC))
        data = bytearray()
        while parts:  # move, don't duplicate: peak stays ~one pack, not two
            data += parts.pop(0)
        return content_hash(data), data  # type: ignore[return-value]  (bytes-like)


class PackFormatError(Exception):
    pass


def read_trailer(envelope: Envelope, pack_bytes: bytes | memoryview) -> list[BlobEntry]:
    """Parse a whole pack's trailer; raise PackFormatError or EnvelopeError when damaged."""
    start, length = trailer_span(pack_bytes[-FOOTER.size:], len(pack_bytes))
    return parse_trailer(envelope, pack_bytes[start:start + length], start)


def trailer_span(footer: bytes | memoryview, pack_size: int) -> tuple[int, int]:
    """(offset, length) of the sealed trailer, from the pack's last ``FOOTER.size`` bytes.

    Together with :func:`parse_trailer` this reads a pack's entries with two
    ranged reads instead of downloading the pack (prune, for unindexed packs).
    """
    if pack_size < FOOTER.size or len(footer) != FOOTER.size:
        raise PackFormatError("pack is shorter than its footer")
    trailer_len, magic = FOOTER.unpack(footer)
    if magic != MAGIC or trailer_len > pack_size - FOOTER.size:
        raise PackFormatError("pack footer is damaged")
    return pack_size - FOOTER.size - trailer_len, trailer_len


def parse_trailer(envelope: Envelope, sealed: bytes | memoryview, start: int) -> list[BlobEntry]:
    """Open and check a sealed trailer found at ``start``; entries must lie before it.

    Raises PackFormatError, or EnvelopeError when it fails authentication.
    """
    raw = envelope.open(TRAILER_KIND, b"", sealed)
    try:
        entries = unpack_entries(raw)
    except ValueError as exc:
        raise PackFormatError(f"pack trailer is malformed: {exc}") from None
    for entry in entries:
        if entry.offset + entry.length > start or entry.blob_type not in BLOB_TYPE_NAMES:
            raise PackFormatError("pack trailer points outside the pack")
    return entries


def groups_of(entries: list[BlobEntry]) -> Iterator[list[BlobEntry]]:
    """Entries grouped by the sealed group that holds them, in pack order."""
    by_offset: dict[int, list[BlobEntry]] = {}
    for entry in entries:
        by_offset.setdefault(entry.offset, []).append(entry)
    for offset in sorted(by_offset):
        yield sorted(by_offset[offset], key=lambda e: e.inner)
