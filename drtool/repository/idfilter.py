"""A Bloom filter of blob ids in front of the disk index: absent ids answered without the B-tree.

A lookup in the LMDB cache of 20 M blobs costs 2.5–3.2 µs (four B-tree
levels in a 2.2 GB mapping: cache and TLB misses), and a backup of new data
mostly asks for ids that are not there.  This filter, a file beside
``data.mdb`` mapped shared, answers most of those with one or two byte reads.

**No false negatives**, which is what makes it safe: every id in the cache
is in the filter.  Bits are set inside the LMDB write transaction that adds
the entries (LMDB serialises writers across processes, so two processes
never race on a byte), flushed to disk before that transaction commits, and
the header's ``stamp`` then equals the cache's ``meta/stamp``.  A filter
whose stamp is behind the cache's (a writer that did not keep it, a crash,
a bulk build that replaced the file) is not used: plain lookups answer, and
the next open rebuilds it from the cache.  Dropping packs leaves their bits
(false positives: the B-tree answers).  Blob ids are keyed BLAKE3 hashes,
uniform, so their own bytes are the hash functions: a blocked Bloom filter,
the first 8 bytes choose a 64-byte block (one cache line), the next 8 set
four bits in it, so a lookup costs one memory miss, not four.

Layout: header (magic, stamp, bit count, capacity), then the bits.  Sized
at ``BITS_PER_ENTRY`` bits per entry of its capacity (about 1.5 bytes per
blob; a false-positive rate of ~1 % when full), rebuilt bigger when the
cache outgrows it.
"""
from __future__ import annotations

import logging
import mmap
import random
import struct
from pathlib import Path
from typing import Any, Callable, Iterable

from drtool.crypto.ids import ID_SIZE
from drtool.repository.mappedfile import MappedFile, create_mapped, open_mapped

SAMPLED_PER_PACK = 64  # ids of each sampled pack checked when a filter or id table is opened

log = logging.getLogger("drtool")

MAGIC = b"DRBLOOM2"
_PROBES = struct.Struct("<2Q").unpack_from  # a blob id's first 16 bytes as two 64-bit hash values
_ALL_PROBES = struct.Struct("<4Q").iter_unpack
_HEADER = struct.Struct("<8sQQQ32x")  # magic, stamp, bits, capacity; 64 bytes: blocks stay cache-line aligned
STALE = (1 << 64) - 1  # a stamp no cache has: written when the filter cannot be kept up to date
BITS_PER_ENTRY = 12
BLOCK_BITS = 512  # one cache line: all four probes of an id fall in one block
MIN_CAPACITY = 1 << 20
HEADROOM = 1.25  # capacity = entries × this (+ MIN_CAPACITY) when built


def capacity_for(entries: int) -> int:
    return int(entries * HEADROOM) + MIN_CAPACITY


class IdFilter(MappedFile):
    """The mapped filter file: :meth:`maybe` (False: certainly absent), :meth:`add`, the stamp."""

    def __init__(self, path: Path, file: int, mapping: mmap.mmap) -> None:
        super().__init__(path, file, mapping)
        _magic, _stamp, self.bits, self.capacity = _HEADER.unpack_from(mapping, 0)
        self._bits = memoryview(mapping)[_HEADER.size:]
        self._blocks = self.bits // BLOCK_BITS

    @classmethod
    def open(cls, path: Path) -> IdFilter | None:
        """The filter at ``path``, or None when it is missing or not a whole filter file."""
        def valid(mapping: mmap.mmap, size: int) -> bool:
            magic, _stamp, bits, capacity = _HEADER.unpack_from(mapping, 0)
            return (magic == MAGIC and bool(bits) and not bits % BLOCK_BITS
                    and size == _HEADER.size + bits // 8 and bool(capacity))
        opened = open_mapped(path, _HEADER.size, valid)
        return cls(path, *opened) if opened is not None else None

    @classmethod
    def start(cls, path: Path, capacity: int) -> IdFilter:
        """A new, empty filter in a temporary file beside ``path`` (stamp STALE until :meth:`install`)."""
        bits = -(-capacity * BITS_PER_ENTRY // BLOCK_BITS) * BLOCK_BITS
        tmp, fd, mapping = create_mapped(path, _HEADER.size + (bits + 7) // 8)
        _HEADER.pack_into(mapping, 0, MAGIC, STALE, bits, capacity)
        return cls(tmp, fd, mapping)

    def install(self, path: Path, stamp: int) -> None:
        """Stamp a filter made by :meth:`start`, make it durable and rename it to ``path``."""
        self.set_stamp(stamp)
        self._durable_over(path)

    def stamp(self) -> int:
        return int(struct.unpack_from("<Q", self._map, 8)[0])

    def set_stamp(self, stamp: int) -> None:
        """Flush the bits, then record which cache state they cover (flushed too)."""
        self._map.flush()
        struct.pack_into("<Q", self._map, 8, stamp)
        self._map.flush()

    def maybe(self, blob_id: bytes) -> bool:
        """False: ``blob_id`` is certainly not in the cache.  The id's first 8 bytes pick a
        64-byte block (one cache line, one page: the one memory miss), the next 8 four bits in it."""
        m = self._bits
        a, b = _PROBES(blob_id)
        base = (a % self._blocks) << 6
        if not (m[base + (b >> 3 & 63)] >> (b & 7)) & 1:
            return False
        if not (m[base + (b >> 12 & 63)] >> (b >> 9 & 7)) & 1:
            return False
        if not (m[base + (b >> 21 & 63)] >> (b >> 18 & 7)) & 1:
            return False
        return bool((m[base + (b >> 30 & 63)] >> (b >> 27 & 7)) & 1)

    def layout(self) -> tuple[mmap.mmap, int, int]:
        """The mapping, where its bits start and how many 64-byte blocks they are (for the paged
        table's lookup in C, ``idtable._PagedProbe``, which asks :meth:`maybe`'s question)."""
        return self._map, _HEADER.size, self._blocks

    def release_pages(self) -> None:
        """Unmap the pages this process touched (``DiskIndex.release_pages``): shared and
        file-backed, so nothing is lost, and a later lookup maps its page again."""
        self._map.madvise(mmap.MADV_DONTNEED)

    def add(self, ids: Iterable[bytes]) -> None:
        m, blocks = self._bits, self._blocks
        for a, b, _c, _d in _ALL_PROBES(b"".join(ids)):
            base = (a % blocks) << 6
            m[base + (b >> 3 & 63)] |= 1 << (b & 7)
            m[base + (b >> 12 & 63)] |= 1 << (b >> 9 & 7)
            m[base + (b >> 21 & 63)] |= 1 << (b >> 18 & 7)
            m[base + (b >> 30 & 63)] |= 1 << (b >> 27 & 7)

    def close(self) -> None:
        self._bits.release()
        super().close()


def open_for_cache(path: Path, env: Any, blobs: Any, members: Any, stamp_of: Callable[[Any], int]) -> IdFilter | None:
    """The disk index's filter, rebuilt from the cache's pack members (``members``: number →
    blob ids) when it is missing, damaged, not at the cache's stamp or overfull; None (plain
    lookups) when it cannot be written.  ``env``: the cache's LMDB environment."""
    def fits(filt: IdFilter | None, txn: Any) -> bool:
        return (filt is not None and filt.stamp() == stamp_of(txn)
                and txn.stat(blobs)["entries"] <= 2 * filt.capacity
                and members_sampled_in(txn, members, filt.maybe, release=filt.release_pages))

    found = IdFilter.open(path)
    with env.begin() as txn:
        if fits(found, txn):
            return found
    if found is not None:
        found.close()
    try:
        with env.begin(write=True) as txn:  # other writers wait: nothing is added meanwhile
            found = IdFilter.open(path)  # another process may have rebuilt it first
            if fits(found, txn):
                return found
            if found is not None:
                found.close()
            made = IdFilter.start(path, capacity_for(int(txn.stat(blobs)["entries"])))
            try:
                for _number, ids in txn.cursor(db=members):
                    made.add(ids[pos:pos + ID_SIZE] for pos in range(0, len(ids), ID_SIZE))
                made.install(path, stamp_of(txn))
            except BaseException:
                made.discard()
                raise
        return made
    except Exception as exc:  # OSError (no space, permissions) or an LMDB error: lookups still work
        log.warning("no absent-id filter for the index cache %s (%s): plain lookups", path.parent, exc)
        return None


def members_sampled_in(txn: Any, members: Any, holds: Callable[[bytes], bool], packs: int = 16,
                       per_pack: int = SAMPLED_PER_PACK, release: Callable[[], None] | None = None) -> bool:
    """Whether ``holds`` answers yes for a sample of the ids of a few random cached packs: a filter
    or id table whose file lost its contents (zeroed pages after a crash, a copy gone wrong) is
    caught at open, not trusted.  ``members``: the cache's pack number -> blob ids database.

    At most ``per_pack`` ids of each pack, evenly spaced from a random start.  Every id of
    16 packs was ~25,000 ids for the bench's packs (~1,600 blobs each), checked twice (filter
    and id table) on every open: 0.05-0.1 s of CPU at the start of each restore and backup,
    for a check whose ids, being hashes, land on random pages of the file either way.  A
    damaged file that a sample misses answers "absent" for ids it lost (a blob stored again,
    never one skipped), and the next open samples other ids.  ``release``: called after each
    pack's ids, to unmap the pages they touched (``repository.residency``: on a kernel that maps
    2 MiB folios, 1,024 random ids could map 2 GiB of a large table at open)."""
    cursor = txn.cursor(db=members)
    if not cursor.last():
        return True
    top = int.from_bytes(cursor.key(), "big")
    for _ in range(packs):
        if cursor.set_range(random.randrange(top + 1).to_bytes(4, "big")):
            ids = cursor.value()
            count = len(ids) // ID_SIZE
            step = max(1, -(-count // per_pack))
            picked = range(random.randrange(step) * ID_SIZE, count * ID_SIZE, step * ID_SIZE)
            held = all(holds(bytes(ids[pos:pos + ID_SIZE])) for pos in picked)
            if release is not None:
                release()
            if not held:
                return False
    return True
