"""An exact hash table of the disk index's blob ids: present *and* absent ids in one ``find``.

A present id costs the LMDB B-tree ~2 µs at 20 M blobs (four levels in a
2 GB mapping), above the 2 µs a backup's lookup may take.  This table, a
file beside ``data.mdb`` mapped shared, holds every cached blob id in a
bucket chosen by the id's leading 64 bits (ids are keyed BLAKE3 hashes,
uniform): 4 ids per 128-byte bucket, an id in its home bucket or the next
one, so a lookup is one ``mmap.find`` over 256 bytes (one or two cache
lines' worth of pages).  An id whose two buckets are full is not stored:
its home bucket's byte in the overflow map is set, and an id not found in a
flagged bucket is asked of LMDB.  ~53–64 bytes per blob on disk.

**Why it is safe.**  Unlike the Bloom filter (whose errors cost a
duplicate), a table that answered "present" for a blob a prune removed
would make a backup skip storing it: data loss.  So the table answers only
while it is exactly the cache's state:

* Every write transaction of the cache that changes its blobs stores a new
  random ``token`` in LMDB's ``meta``; the table's header carries the token
  of the state it holds.  Tokens, unlike the stamp counter, are never
  reused: a transaction lost to a crash (``metasync=False``), a writer that
  does not keep the table (``DRTOOL_INDEX_TABLE=off``) or an older drtool
  leaves a table whose token matches nothing.
* A writer that keeps the table first writes ``BUSY`` in its header
  (flushed), changes the buckets (adds, and removes the ids a ``drop``
  took out), commits LMDB, flushes the buckets, then writes the new token.
  A crash anywhere in between leaves ``BUSY``: stale at every later check.
* A lookup answers from the table only while the header's token equals the
  token of its LMDB snapshot, checked before the search and again after it
  (a seqlock: a writer sets ``BUSY`` before touching a bucket, and tokens
  never come back): otherwise LMDB answers.  So the table's
  answers are LMDB's answers.
* A replaced table (rebuilt bigger, or by a bulk build) is set ``STALE``
  before the new file is renamed over it: processes that still map the old
  file see that and fall back.
"""
from __future__ import annotations

import logging
import mmap
import os
import struct
from os import pread
from pathlib import Path
from typing import Any, Callable, Iterable

from drtool.crypto.ids import ID_SIZE
from drtool.repository.idfilter import IdFilter, members_sampled_in
from drtool.repository.mappedfile import MappedFile, create_mapped, open_mapped

log = logging.getLogger("drtool")

MAGIC = b"DRIDTAB1"
_HEADER = struct.Struct("<8s8sQQ32x")  # magic, token, buckets, capacity; 64 bytes
_TOKEN = slice(8, 16)
STALE = b"\xff" * 8  # never a live token: the table no longer follows the cache
BUSY = b"\xfe" * 8  # a writer is changing it (a crash leaves it so)
NO_TOKEN = b"\x00" * 8  # a cache written before any token (never a table's)
SLOT = ID_SIZE
BUCKET = 4 * SLOT  # 128 bytes
WINDOW = 2 * BUCKET  # an id lives in its home bucket or the next
LOAD = 0.6  # ids per slot at capacity when built
MIN_CAPACITY = 1 << 16
HEADROOM = 1.1  # capacity = entries × this (+ MIN_CAPACITY) when built
OVERFULL = 1.25  # rebuilt bigger when the cache holds more than capacity × this
_EMPTY = bytes(SLOT)  # a slot never used: a window with one was never full, so none of its ids overflowed
_FREED = b"\xff" * SLOT  # a slot whose id was removed (reused by later adds, never emptied again)
_LEAD = struct.Struct(">Q").unpack_from


def _load_native() -> Any:
    """``_idprobe.PagedProbe`` (drtool/repository/_idprobe.c), or None where it was not built."""
    try:
        from drtool.repository._idprobe import PagedProbe  # type: ignore[import-not-found]
    except ImportError:
        return None
    return PagedProbe


_PagedProbe = _load_native()


def new_token() -> bytes:
    while True:
        token = os.urandom(8)
        if token not in (STALE, BUSY, NO_TOKEN):
            return token


def capacity_for(entries: int) -> int:
    return int(entries * HEADROOM) + MIN_CAPACITY


class IdTable(MappedFile):
    """The mapped table file: :meth:`answer` (True, False, or None: ask LMDB), :meth:`add`,
    :meth:`remove` and the token (see the module docstring)."""

    def __init__(self, path: Path, fd: int, mapping: mmap.mmap) -> None:
        super().__init__(path, fd, mapping)
        _magic, _token, self.buckets, self.capacity = _HEADER.unpack_from(mapping, 0)
        self._flags = _HEADER.size
        self._base = self._flags + -(-(self.buckets + 1) // 64) * 64
        self.paged = False  # answerers made from now on read buckets instead of mapping them

    @staticmethod
    def _size(buckets: int) -> int:
        return _HEADER.size + -(-(buckets + 1) // 64) * 64 + (buckets + 1) * BUCKET

    @classmethod
    def open(cls, path: Path) -> IdTable | None:
        """The table at ``path``, or None when it is missing or not a whole table file."""
        def valid(mapping: mmap.mmap, size: int) -> bool:
            magic, _token, buckets, capacity = _HEADER.unpack_from(mapping, 0)
            return magic == MAGIC and bool(buckets) and bool(capacity) and size == cls._size(buckets)
        opened = open_mapped(path, _HEADER.size, valid)
        return cls(path, *opened) if opened is not None else None

    @classmethod
    def start(cls, path: Path, capacity: int) -> IdTable:
        """A new, empty table in a temporary file beside ``path`` (``STALE`` until :meth:`install`)."""
        buckets = int(capacity / (4 * LOAD)) + 1
        tmp, fd, mapping = create_mapped(path, cls._size(buckets))
        _HEADER.pack_into(mapping, 0, MAGIC, STALE, buckets, capacity)
        return cls(tmp, fd, mapping)

    def install(self, path: Path, token: bytes) -> None:
        """Stamp a table made by :meth:`start`, make it durable and rename it over ``path``,
        first marking the file there ``STALE`` for the processes that still map it."""
        self.set_token(token)
        old = IdTable.open(path)
        if old is not None:
            old.set_token(STALE)
            old.close()
        self._durable_over(path)

    def token(self) -> bytes:
        return self._map[_TOKEN]

    def set_token(self, token: bytes) -> None:
        """Flush the buckets, then record which cache state they hold (flushed too)."""
        self._map.flush()
        self._map[_TOKEN] = token
        self._map.flush(0, mmap.PAGESIZE)

    def answer(self, blob_id: bytes, token: bytes) -> bool | None:
        """Whether ``blob_id`` is in the cache state ``token``; None when the table cannot tell
        (another state, or an id of an overflowed bucket): then LMDB answers."""
        return self.answerer(token)(blob_id)

    def answerer(self, token: bytes, filt: IdFilter | None = None,
                 compiled: bool = True) -> Callable[[bytes], bool | None]:
        """:meth:`answer` for one token, with the table's fields bound (a backup asks this for
        every new chunk: attribute lookups are a tenth of its cost).

        Buckets are searched in the mapping until the process has mapped more of the cache
        than ``residency.BUDGET_BYTES``; then (:attr:`paged`, set by the disk index) they are
        read with ``pread``, which maps nothing: a kernel that keeps the file in 2 MiB folios
        maps a whole folio per touched page, and ~1,000 lookups of a 1 GiB backup mapped ~900
        MiB of a 20 M-blob table.  Paged, ``filt`` (the absent-id filter covering the same
        snapshot, if any) is asked first: its mapped block costs less than a read bucket.
        The paged lookup runs in C where ``_idprobe`` is built (3.5-5.8 µs for a present id in
        Python, against the 2 µs a lookup may take: docs/performance.md); ``compiled`` False, or
        ``DRTOOL_INDEX_PROBE=python`` (for comparisons), keeps it in Python."""
        if (self.paged and compiled and _PagedProbe is not None
                and os.environ.get("DRTOOL_INDEX_PROBE", "c") != "python"):
            filter_map, filter_offset, blocks = filt.layout() if filt is not None else (None, 0, 0)
            return _PagedProbe(filter_map, filter_offset, blocks, self._map, token, self._fd, self.buckets,
                               self._base, self._flags)  # type: ignore[no-any-return]
        maybe = filt.maybe if filt is not None and self.paged else None  # mapped: the bucket is cheaper
        m, buckets, base, flags, find, fd = (self._map, self.buckets, self._base, self._flags, self._map.find,
                                             self._fd)

        def mapped(blob_id: bytes) -> tuple[int, bool]:
            home = _LEAD(blob_id)[0] * buckets >> 64
            start = base + home * BUCKET
            end = start + WINDOW
            pos = find(blob_id, start, end)
            while pos >= 0 and (pos - start) % SLOT:  # straddling two slots: not an entry
                pos = find(blob_id, pos + 1, end)
            overflowed = pos < 0 and m[end - SLOT:end] != _EMPTY and m[flags + home]
            return pos, bool(overflowed)

        def read(blob_id: bytes) -> tuple[int, bool]:
            home = _LEAD(blob_id)[0] * buckets >> 64
            window = pread(fd, WINDOW, base + home * BUCKET)
            pos = window.find(blob_id)
            while pos >= 0 and pos % SLOT:
                pos = window.find(blob_id, pos + 1)
            overflowed = pos < 0 and window[-SLOT:] != _EMPTY and pread(fd, 1, flags + home) != b"\0"
            return pos, overflowed

        search = read if self.paged else mapped

        def answer(blob_id: bytes) -> bool | None:
            if maybe is not None and not maybe(blob_id):
                return False
            if m[8:16] != token:
                return None
            pos, overflowed = search(blob_id)
            if overflowed:
                return None  # the window was full once and an id of this bucket did not fit
            # the token again (a seqlock): a writer that began meanwhile may have changed the bucket
            if m[8:16] != token or blob_id == _EMPTY or blob_id == _FREED:
                return None
            return pos >= 0
        return answer

    def _slot_of(self, blob_id: bytes) -> tuple[int, int]:
        home = _LEAD(blob_id)[0] * self.buckets >> 64
        start = self._base + home * BUCKET
        pos = self._map.find(blob_id, start, start + WINDOW)
        while pos >= 0 and (pos - start) % SLOT:
            pos = self._map.find(blob_id, pos + 1, start + WINDOW)
        return home, pos

    def add(self, ids: Iterable[bytes]) -> None:
        """Put ids in (ids already there are skipped; an id with no room flags its home bucket)."""
        m = self._map
        for blob_id in ids:
            blob_id = bytes(blob_id)
            home, pos = self._slot_of(blob_id)
            if pos >= 0:
                continue
            start = self._base + home * BUCKET
            for slot in range(start, start + WINDOW, SLOT):
                if m[slot:slot + SLOT] in (_EMPTY, _FREED):
                    m[slot:slot + SLOT] = blob_id
                    break
            else:
                m[self._flags + home] = 1

    def fill_sorted(self, ids: Iterable[bytes], release: Callable[[], None] = lambda: None) -> None:
        """Fill a new, empty table from ids in ascending order (:class:`SortedFill` in one go).
        ``release``: called with the table's own pages every 262,144 ids."""
        fill = SortedFill(self)
        for count, blob_id in enumerate(ids, 1):
            fill.put(blob_id)
            if count % 262_144 == 0:
                self.release_pages()
                release()
        fill.close()

    def _settle(self, bucket: int, carried: list[bytes], mine: list[bytes]) -> list[bytes]:
        """Write ``bucket``: the ids carried from the one before first (they have no other place),
        then its own; returns its own that did not fit (for the next bucket)."""
        placed = carried[:4]
        if len(carried) > 4:
            self._map[self._flags + bucket - 1] = 1
        room = 4 - len(placed)
        placed.extend(mine[:room])
        if placed:
            start = self._base + bucket * BUCKET
            self._map[start:start + len(placed) * SLOT] = b"".join(placed)
        return mine[room:]

    def remove(self, blob_id: bytes) -> None:
        """Take an id out (one that overflowed is not here: its flag sends lookups to LMDB)."""
        _home, pos = self._slot_of(bytes(blob_id))
        if pos >= 0:
            self._map[pos:pos + SLOT] = _FREED

    def holds(self, blob_id: bytes) -> bool:
        """Whether a lookup of ``blob_id`` would find it or be sent to LMDB (for the sample check)."""
        home, pos = self._slot_of(bytes(blob_id))
        return pos >= 0 or bool(self._map[self._flags + home])

    def release_pages(self) -> None:
        self._map.madvise(mmap.MADV_DONTNEED)


class SortedFill:
    """A new, empty table filled from ids in ascending order, over as many calls as they come in
    (a rebuild's cursor, a bulk build's merged runs a transaction at a time).

    Ascending ids have ascending home buckets, so each bucket is written once with no search
    (``add`` costs ~2–3 µs an id; this ~1 µs: a rebuild of 786,000 ids took 2.6 s of CPU with
    ``add``).  An id goes in its home bucket or, when that is full, the next one, after the ids
    carried there from before; what fits in neither flags its home, as ``add``.  An id equal to
    the one before it (a blob stored in two packs: the bulk build's duplicates) goes in once."""

    def __init__(self, table: IdTable) -> None:
        self._table, self._buckets = table, table.buckets
        self._at = 0
        self._carry: list[bytes] = []  # ids of bucket ``_at - 1`` that did not fit there
        self._mine: list[bytes] = []  # ids of bucket ``_at``
        self._last = b""

    def put(self, blob_id: bytes) -> None:
        blob_id = bytes(blob_id)
        if blob_id == self._last:
            return
        self._last = blob_id
        home = _LEAD(blob_id)[0] * self._buckets >> 64
        if home != self._at:
            carry = self._table._settle(self._at, self._carry, self._mine)
            if carry and home > self._at + 1:
                self._table._settle(self._at + 1, carry, [])
                carry = []
            self._carry, self._at, self._mine = carry, home, []
        self._mine.append(blob_id)

    def close(self) -> None:
        carry = self._table._settle(self._at, self._carry, self._mine)
        if carry:
            self._table._settle(self._at + 1, carry, [])
        self._carry, self._mine = [], []


def open_for_cache(path: Path, env: Any, blobs: Any, members: Any, meta: Any,
                   token_of: Callable[[Any], bytes], release: Callable[[], None]) -> IdTable | None:
    """The disk index's table, rebuilt from the cache's blob ids inside a write transaction
    (no writer changes the cache meanwhile) when it is missing, damaged, not at the cache's token
    or overfull; None (plain lookups) when it cannot be written, or while another handle of this
    process bulk-builds the cache (its member lists are then ahead of its blobs).  ``release``:
    drop the cache's mapped pages from the resident set (the member lists of 20 M blobs are
    ~640 MB of them)."""
    def fits(table: IdTable | None, txn: Any) -> bool:
        return (table is not None and table.token() == token_of(txn)
                and txn.stat(blobs)["entries"] <= OVERFULL * table.capacity
                and members_sampled_in(txn, members, table.holds, release=lambda: _release_both(table, release)))

    found = IdTable.open(path)
    with env.begin() as txn:
        if fits(found, txn):
            return found
    if found is not None:
        found.close()
    return rebuild(path, env, blobs, meta, token_of, release, fits, 0)


def _release_both(table: IdTable, release: Callable[[], None]) -> None:
    table.release_pages()
    release()


def grown_for(table: IdTable, adding: int, path: Path, env: Any, blobs: Any, meta: Any,
              token_of: Callable[[Any], bytes], release: Callable[[], None]) -> IdTable | None:
    """Before a move of ``adding`` entries (under the cache's ``flock``): a new, bigger table when
    the move would take ``table`` past ``OVERFULL``, else None (keep it).

    A sync's move (at a run's start): without this the next open rebuilt
    the table from every member list, on the next run's path to its walk
    (a 200,000-file re-run's load put its entries into the 65,536 table of
    the empty cache, and the run after it rebuilt it: 1.0-1.2 s).  The new
    one has room for three more moves like this one; one rebuild here
    replaces the one at the next open (the same ids, read warm)."""
    with env.begin() as txn:
        if table.token() != token_of(txn):
            return None  # stale: the move leaves it so, and the next open rebuilds it
        entries = int(txn.stat(blobs)["entries"])
    if entries + adding <= OVERFULL * table.capacity:
        return None
    return rebuild(path, env, blobs, meta, token_of, release, lambda _t, _x: False, entries + 4 * adding)


def rebuild(path: Path, env: Any, blobs: Any, meta: Any, token_of: Callable[[Any], bytes],
            release: Callable[[], None], fits: Callable[[IdTable | None, Any], bool], room: int) -> IdTable | None:
    """A table rebuilt from the cache's blob ids in a write transaction, sized for the cache's entries
    or ``room`` if more; the one there if ``fits`` it by then (another process rebuilt it first).
    The cache's file is read in order first (every leaf is read: one 4 KiB fault per page of a
    cold mapping otherwise, :func:`cacheenv.read_ahead`)."""
    from drtool.repository.cacheenv import read_ahead
    try:
        with env.begin() as txn:
            read_ahead([path.parent / "data.mdb"], int(txn.stat(blobs)["entries"]))
        with env.begin(write=True) as txn:
            found = IdTable.open(path)  # another process may have rebuilt it first
            if fits(found, txn):
                return found
            if found is not None:
                found.close()
            if txn.get(b"building", db=meta) is not None:  # a bulk build or a move half done
                return None  # (its blobs are not all in yet): not now
            made = IdTable.start(path, capacity_for(max(room, int(txn.stat(blobs)["entries"]))))
            try:  # every cached id once, in key order; the pages read and filled: not this run's
                made.fill_sorted(txn.cursor(db=blobs).iternext_nodup(keys=True, values=False), release)
                made.install(path, token_of(txn))
                made.release_pages()
                release()
            except BaseException:
                made.discard()
                raise
        return made
    except Exception as exc:  # OSError (no space, permissions) or an LMDB error: lookups still work
        log.warning("no id table for the index cache %s (%s): plain lookups", path.parent, exc)
        return None
