"""The bulk build of the disk index (:func:`bulk_build`, for ``DiskIndex.sync`` of an empty or
far-behind cache) and its two passes: pack tables written as the index objects are read, blob
entries to sorted run files (:func:`build_runs`); then the runs merged and appended in key order
(:func:`append_runs`), with a new filter and id table filled as they go.  Apart from
:mod:`drtool.repository.diskindex`, which keeps the cache's reads and incremental writes: the
build replaces the cache wholesale and touches its internals only under its ``flock``.
"""
from __future__ import annotations

import heapq
import os
import shutil
import struct
import tempfile
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

import lmdb

from drtool.crypto.ids import ID_SIZE
from drtool.repository import completeness, idtable
from drtool.repository.cacheenv import DBS, MAP_SIZE, CacheUnusable, guard
from drtool.repository.idfilter import IdFilter, capacity_for
from drtool.repository.idtable import IdTable, SortedFill
from drtool.repository.packfile import ENTRY

if TYPE_CHECKING:
    from drtool.repository.diskindex import DiskIndex

REC = struct.Struct(">IBQIII")  # pack number (big-endian: duplicates sort by it), then as ENTRY
NUM = struct.Struct(">I")
ROW = ID_SIZE + REC.size  # a run's row: blob id + record (57 bytes)
FILTER_FILE = "ids.bloom"  # the absent-id filter (idfilter), beside data.mdb
TABLE_FILE = "ids.table"  # the exact id table (idtable), beside data.mdb


def build_runs(env: lmdb.Environment, db: dict[bytes, Any], ids: list[str],
               fetch: Callable[[str], list[tuple[bytes, bytes]] | None], work: Path,
               run_entries: int) -> tuple[list[tuple[str, bytes]], list[BinaryIO]]:
    """Pack tables written as read (``db``: the cache's named databases); blob entries to sorted
    run files of ``run_entries`` rows (id + record, 57 bytes)."""
    done: list[tuple[str, bytes]] = []
    runs: list[BinaryIO] = []
    rows: list[bytes] = []
    with env.begin(db=db[b"meta"]) as txn:  # numbers are never reused, not even here
        number = NUM.unpack(txn.get(b"next_pack", NUM.pack(0)))[0]
    for index_id in ids:
        packs = fetch(index_id)
        if packs is None:
            continue
        numbers = []
        with env.begin(write=True) as txn:
            for pack_id, raw in packs:
                if len(raw) % ENTRY.size:
                    raise ValueError(f"index object {index_id}: partial blob entry")
                key = NUM.pack(number)
                txn.put(key, pack_id, db=db[b"packs"], append=True)
                ids_ = []
                for blob_type, blob_id, offset, length, inner, raw_length in ENTRY.iter_unpack(raw):
                    rows.append(blob_id + REC.pack(number, blob_type, offset, length, inner, raw_length))
                    ids_.append(blob_id)
                txn.put(key, b"".join(ids_), db=db[b"members"], append=True)
                numbers.append(key)
                number += 1
            txn.put(b"next_pack", NUM.pack(number), db=db[b"meta"])
        done.append((index_id, b"".join(numbers)))
        if len(rows) >= run_entries:
            runs.append(write_run(work, rows))
            rows = []
    if rows:
        runs.append(write_run(work, rows))
    return done, runs


def write_run(work: Path, rows: list[bytes]) -> BinaryIO:
    rows.sort()
    run = tempfile.TemporaryFile(dir=work)
    run.write(b"".join(rows))
    run.seek(0)
    return run


def read_run(run: BinaryIO) -> Iterator[bytes]:
    while block := run.read(ROW * 1024):
        for pos in range(0, len(block), ROW):
            yield block[pos:pos + ROW]


def append_runs(env: lmdb.Environment, blobs: Any, runs: list[BinaryIO], commit_entries: int,
                new_filter: IdFilter | None, new_table: IdTable | None) -> None:
    """The runs merged in key order and appended to ``blobs`` (LMDB's append mode fills each page
    once) in transactions of ``commit_entries``; each chunk's ids also go to the build's new filter
    and id table, whose pages are released as they fill (1.2 GB at 20 M blobs: not this run's
    resident set).  The runs are closed."""
    merged = heapq.merge(*(read_run(run) for run in runs))
    fill = SortedFill(new_table) if new_table is not None else None  # ids come in key order: no search
    while chunk := list(islice(merged, commit_entries)):
        with env.begin(write=True) as txn:
            txn.cursor(db=blobs).putmulti(((r[:ID_SIZE], r[ID_SIZE:]) for r in chunk), dupdata=True, append=True)
        if new_filter is not None:
            new_filter.add(r[:ID_SIZE] for r in chunk)
        if fill is not None and new_table is not None:
            for row in chunk:
                fill.put(row[:ID_SIZE])
            new_table.release_pages()
    if fill is not None:
        fill.close()
    for run in runs:
        run.close()


def bulk_build(index: "DiskIndex", listed: set[str], fetch: Callable[[str], list[tuple[bytes, bytes]] | None],
               run_entries: int, commit_entries: int) -> int | None:
    """Build the cache afresh from every listed index object; None when another process did.

    Inserting millions of random keys one transaction at a time rewrites
    a B-tree page per entry and holds each transaction's dirty pages in
    RAM (~600 MiB at 20 M blobs).  Instead: sorted runs of entries in
    temporary files, merged and appended in key order (LMDB's append
    mode fills each page once), in transactions of ~130 k entries.  A
    ``building`` mark makes an interrupted build invalid (rebuilt on the
    next open); the ``flock`` makes other processes' opens, adds and drops wait for it.
    """
    from drtool.repository import keyranges  # it imports this module's record layout
    stamp_of = keyranges.STAMP
    with guard(index.path):
        if index.index_ids() and len(listed - index.index_ids()) <= max(16, len(index.index_ids())):
            return None
        with index.env.begin(write=True) as txn:
            if txn.stat(index._blobs)["entries"]:  # everything leaves, if only for a moment; from a
                completeness.removed(txn, index._db[b"meta"])  # cache without entries nothing does
            for name in DBS[:-1]:
                txn.drop(index._db[name], delete=False)
            txn.put(b"building", b"1", db=index._db[b"meta"])
            txn.delete(keyranges.MOVING, db=index._db[b"meta"])  # its packs went with the rest
            txn.put(b"token", idtable.new_token(), db=index._db[b"meta"])  # no table holds this
            began = stamp_of.unpack(txn.get(b"stamp", stamp_of.pack(0), db=index._db[b"meta"]))[0]
        work = Path(tempfile.mkdtemp(prefix="build-", dir=index.path))
        made = table = None
        try:
            done, runs = build_runs(index.env, index._db, sorted(listed), fetch, work, run_entries)
            entries = sum(os.fstat(run.fileno()).st_size for run in runs) // ROW
            if index._filter is not None:  # a new filter, sized for these entries, filled as they go in
                made = IdFilter.start(index.path / FILTER_FILE, capacity_for(entries))
            if index._table is not None:  # and a new table
                table = IdTable.start(index.path / TABLE_FILE, idtable.capacity_for(entries))
            append_runs(index.env, index._blobs, runs, commit_entries, made, table)
            with index.env.begin(write=True) as txn:
                meta = index._db[b"meta"]
                stamp = stamp_of.unpack(txn.get(b"stamp", stamp_of.pack(0), db=meta))[0]
                for index_id, numbers in done:
                    txn.put(index_id.encode(), stamp_of.pack(stamp) + numbers, db=index._db[b"indexes"])
                txn.put(b"stamp", stamp_of.pack(stamp + 1), db=meta)
                txn.delete(b"building", db=meta)
                index._install_built_filter(made, stamp == began, stamp + 1)
                made = None
                token = idtable.new_token()
                txn.put(b"token", token, db=meta)
                if table is not None:  # durable and in place before the token commits
                    index._install_built_table(table, stamp == began, token)
                    table = None
        except lmdb.MapFullError:
            raise CacheUnusable(f"{index.path} is full ({MAP_SIZE >> 30} GiB)") from None
        finally:
            if made is not None:
                made.discard()
            if table is not None:
                table.discard()
            shutil.rmtree(work, ignore_errors=True)
    index.refresh()
    return len(done)
