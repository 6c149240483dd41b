"""The bulk build's two passes (``DiskIndex._bulk_build``): pack tables written as the index
objects are read, blob entries to sorted run files (:func:`build_runs`); then the runs merged and
appended in key order (:func:`append_runs`).  Apart from :mod:`drtool.repository.diskindex` to keep
that module readable.
"""
from __future__ import annotations

import heapq
import struct
import tempfile
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

import lmdb

from drtool.crypto.ids import ID_SIZE
from drtool.repository.packfile import ENTRY

if TYPE_CHECKING:
    from drtool.repository.idfilter import IdFilter
    from drtool.repository.idtable import IdTable

REC = struct.Struct(">IBQIII")  # pack number (big-endian: duplicates sort by it), then as ENTRY
NUM = struct.Struct(">I")
ROW = ID_SIZE + REC.size  # a run's row: blob id + record (57 bytes)


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
                new_filter: "IdFilter | None", new_table: "IdTable | None") -> None:
    """The runs merged in key order and appended to ``blobs`` (LMDB's append mode fills each page
    once) in transactions of ``commit_entries``; each chunk's ids also go to the build's new filter
    and id table, whose pages are released as they fill (1.2 GB at 20 M blobs: not this run's
    resident set).  The runs are closed."""
    merged = heapq.merge(*(read_run(run) for run in runs))
    while chunk := list(islice(merged, commit_entries)):
        with env.begin(write=True) as txn:
            txn.cursor(db=blobs).putmulti(((r[:ID_SIZE], r[ID_SIZE:]) for r in chunk), dupdata=True, append=True)
        if new_filter is not None:
            new_filter.add(r[:ID_SIZE] for r in chunk)
        if new_table is not None:
            new_table.add(r[:ID_SIZE] for r in chunk)
            new_table.release_pages()
    for run in runs:
        run.close()
