"""Moving a run's index entries into the disk cache in key ranges (``DiskIndex.add_indexes``).

A write transaction's dirty pages are heap until it commits, and LMDB keeps
freed ones for reuse: one transaction that put a run's 262,144 random ids
into a cache of 1 M blobs touched nearly every leaf, and each move left
~20-30 MiB more heap (the 1,000,000-file first backup peaked at 314 MiB).
Splitting the move by *arrival* (whole index objects per transaction)
bounded that but grew the file from 258 MB to 888 MB: every small
transaction touched most leaves again, and the pages each freed stayed
pinned by this process's lookup snapshots.  Split by *key range* instead:
the move's entries, globally sorted, go in one transaction per range, and
a range's transaction touches only the leaves of its range, each leaf once
per move, so the file grows by what one transaction would have written,
and the heap holds one range's pages.

Ids are keyed hashes (uniform), so a range is a span of leading bytes: up
to 256 ranges, as many as keep a transaction near ``TARGET_DIRTY_PAGES``.

The ``moving`` mark (in ``meta``, written with the move's pack tables in its
first transaction and deleted with its last) names the move's pack numbers:
a process that finds it under the cache's ``flock`` knows the mover died
between ranges and takes those packs' entries out again
(:func:`forget_pack`); the index objects, never recorded as cached, are
read in again by the next sync.  The cache so never holds entries of an
index object it does not list (which a later ``drop`` could not find).
A move also sets ``building``, the mark of an interrupted bulk build: a
drtool from before this module that finds it rebuilds the whole cache
(still correct) instead of trusting the half-moved entries.
"""
from __future__ import annotations

import struct
from typing import Any, Iterator

import lmdb

from drtool.crypto.ids import ID_SIZE
from drtool.repository import completeness
from drtool.repository.buildruns import NUM, REC
from drtool.repository.packfile import ENTRY

STAMP = struct.Struct(">Q")  # meta's ``stamp``, and the head of an ``indexes`` row
MOVING = b"moving"  # meta key: the pack numbers of a move under way (see the module docstring)
BUILDING = b"building"  # meta key of a bulk build under way; a move sets it too (an older drtool's check)
TARGET_DIRTY_PAGES = 2048  # dirty pages (4 KiB) one range's transaction should hold: ~8 MiB
LEAF_ENTRIES = 40  # blob entries in a leaf page after random inserts (57-byte nodes, ~2/3 full)
MAX_RANGES = 256  # one leading byte
_ID_AT = 1  # ENTRY: type byte, then the blob id


def begin_move(txn: lmdb.Transaction, dbs: dict[bytes, Any],
               objects: list[tuple[str, list[tuple[bytes, bytes]]]]) -> Move:
    """The move's first transaction: pack numbers for the objects not yet cached, their pack and
    member rows, and the ``moving`` mark naming those numbers (``dbs``: the cache's databases)."""
    meta = dbs[b"meta"]
    move = Move(STAMP.unpack(txn.get(b"stamp", STAMP.pack(0), db=meta))[0])
    number = NUM.unpack(txn.get(b"next_pack", NUM.pack(0), db=meta))[0]
    for index_id, packs in objects:
        if txn.get(index_id.encode(), db=dbs[b"indexes"]) is not None:
            continue
        numbers = []
        for pack_id, raw in packs:
            if len(raw) % ENTRY.size:
                raise ValueError(f"index object {index_id}: partial blob entry")
            key = NUM.pack(number)
            txn.put(key, pack_id, db=dbs[b"packs"])
            ids = ids_of_pack(raw)
            txn.put(key, ids, db=dbs[b"members"])
            move.packs.append((number, raw))
            numbers.append(key)
            number += 1
        move.done.append((index_id, b"".join(numbers)))
    txn.put(b"next_pack", NUM.pack(number), db=meta)
    txn.put(MOVING, b"".join(numbers for _i, numbers in move.done), db=meta)
    txn.put(BUILDING, b"1", db=meta)  # what a drtool without MOVING knows: it rebuilds the cache
    return move


def end_move(txn: lmdb.Transaction, dbs: dict[bytes, Any], move: Move) -> None:
    """The move's last transaction: the objects recorded as cached (under the stamp the move
    began at, which it then advances), the mark gone."""
    meta = dbs[b"meta"]
    for index_id, numbers in move.done:
        txn.put(index_id.encode(), STAMP.pack(move.stamp) + numbers, db=dbs[b"indexes"])
    txn.put(b"stamp", STAMP.pack(move.stamp + 1), db=meta)
    txn.delete(MOVING, db=meta)
    txn.delete(BUILDING, db=meta)


def range_count(entries: int, leaf_pages: int) -> int:
    """How many key ranges a move of ``entries`` into a tree of ``leaf_pages`` leaves needs.

    A transaction dirties each existing leaf its entries land in (at most
    one per entry) and the leaves the inserts split off (about one per
    ``LEAF_ENTRIES``); divided evenly by range, each should stay near
    ``TARGET_DIRTY_PAGES``."""
    pages = min(entries, leaf_pages) + entries // LEAF_ENTRIES
    return max(1, min(MAX_RANGES, -(-pages // TARGET_DIRTY_PAGES)))


def range_bounds(ranges: int) -> list[int]:
    """The first leading byte of each range (ascending, starting at 0)."""
    return [-(-r * 256 // ranges) for r in range(ranges)]


def _range_table(ranges: int) -> bytes:
    """byte -> the range its ids belong to (for ``bytes.translate``)."""
    bounds = range_bounds(ranges) + [256]
    return bytes(r for r in range(ranges) for _b in range(bounds[r], bounds[r + 1]))


def range_rows(packs: list[tuple[int, bytes]], ranges: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """For each key range in order: its (blob id, cache record) rows, sorted.

    ``packs``: (cache pack number, packed ``ENTRY`` trailer entries).  Each
    entry's range is read for all entries at once (its id's leading byte,
    translated; one byte per entry), and a range's rows are built when its
    turn comes: one range's rows in memory, not the move's (~47 MiB of
    tuples for 262,144 entries)."""
    size = ENTRY.size
    table = _range_table(ranges)
    tags = [raw[_ID_AT::size].translate(table) for _number, raw in packs]
    unpack, rec = ENTRY.unpack_from, REC.pack
    for r in range(ranges):
        want = bytes((r,))
        rows: list[tuple[bytes, bytes]] = []
        for (number, raw), tag in zip(packs, tags):
            at = tag.find(want)
            while at >= 0:
                blob_type, blob_id, offset, length, inner, raw_length = unpack(raw, at * size)
                rows.append((blob_id, rec(number, blob_type, offset, length, inner, raw_length)))
                at = tag.find(want, at + 1)
        rows.sort()
        yield rows


def ids_of_pack(raw: bytes) -> bytes:
    """A pack's blob ids, joined (its ``members`` row), from its packed entries."""
    size = ENTRY.size
    return b"".join(raw[pos + _ID_AT:pos + _ID_AT + ID_SIZE] for pos in range(0, len(raw), size))


def forget_pack(txn: lmdb.Transaction, dbs: dict[bytes, Any], number: bytes) -> list[bytes]:
    """Take cache pack ``number`` out (its pack row, member list and blob entries; other packs'
    copies of its blobs stay); returns its ids that no pack holds any more."""
    blobs = txn.cursor(db=dbs[b"blobs"])
    completeness.removed(txn, dbs[b"meta"])  # entries leave: no completeness mark holds any more
    ids = txn.pop(number, db=dbs[b"members"]) or b""
    txn.delete(number, db=dbs[b"packs"])
    gone = []
    for start in range(0, len(ids), ID_SIZE):
        blob_id = ids[start:start + ID_SIZE]
        _delete_dups_of_pack(blobs, blob_id, number)
        if not blobs.set_key(blob_id):
            gone.append(blob_id)
    return gone


def pack_numbers(joined: bytes) -> list[bytes]:
    """The packed numbers in a ``moving`` mark or an ``indexes`` row's tail."""
    return [joined[pos:pos + NUM.size] for pos in range(0, len(joined), NUM.size)]


def _delete_dups_of_pack(cursor: lmdb.Cursor, blob_id: bytes, number: bytes) -> None:
    """Delete ``blob_id``'s entry that points at cache pack ``number`` (its other copies stay)."""
    if not cursor.set_key(blob_id):
        return
    while True:
        if bytes(cursor.value()[:NUM.size]) == number:
            cursor.delete()
            return
        if not cursor.next_dup():
            return


class Move:
    """What a move's first transaction took on (see :meth:`drtool.repository.diskindex.DiskIndex.add_indexes`)."""

    __slots__ = ("stamp", "packs", "done", "filter")

    def __init__(self, stamp: int) -> None:
        self.stamp = stamp
        self.packs: list[tuple[int, bytes]] = []  # (cache pack number, packed entries)
        self.done: list[tuple[str, bytes]] = []  # (index id, its packed pack numbers)
        self.filter: Any = None  # the absent-id filter the move adds to (idfilter.IdFilter), if any
