"""The blob index on disk: an LMDB cache of the repository's index objects.

Holding the whole index in memory cost ~70 bytes per blob (3.5 GiB peak at
5 million tiny objects); a store of 10^8 blobs cannot afford it.  This
cache keeps it in a memory-mapped B-tree in the local cache directory, so a
process touches only the pages its lookups need, whatever the repository's
size (restic and borg keep theirs in RAM; kopia maps index blobs from its
cache the same way).

**Never trusted over the repository.**  The cache is keyed by index object
ids (content-derived: one id, one content).  Each run lists ``index/``,
forgets the index objects that are gone and reads in the new ones
(:meth:`DiskIndex.sync`); a file that is not a valid cache of this
repository (damaged, another format, another repository) is removed and
rebuilt from the index objects.  Entries of packs not yet named by an index
object are never put here, so a crashed run cannot leave the cache claiming
blobs the repository cannot prove.

**Concurrency.**  LMDB serialises writers across processes (its lock file)
and readers never block; opening, validating and resetting the files take
an ``flock`` beside them.  LMDB forbids opening one file twice in a process,
so environments are shared per path and reference-counted.

Layout (named databases): ``blobs`` blob id → (cache pack number, type,
offset, length, inner, raw length), duplicates sorted by pack number (a blob
stored in two packs has two; the first wins); ``packs`` number → pack id;
``members`` number → the pack's blob ids (to forget them when its index
object goes); ``indexes`` index id → the stamp it was added under and its
pack numbers; ``meta`` (format, repository id, next pack number, stamp, the
``token`` of the blobs' state that :mod:`idtable` checks, ``building``
while a bulk build or a move runs, and a move's ``moving`` mark: :mod:`keyranges`).  Beside ``data.mdb``: the absent-id filter
(:mod:`idfilter`) and the exact id table (:mod:`idtable`), which answers
``in`` for present and absent ids while its token is the snapshot's.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import lmdb

from drtool.crypto.ids import ID_SIZE
from drtool.repository import completeness, idtable, keyranges
from drtool.repository.buildruns import FILTER_FILE, NUM as _NUM, REC as _REC, TABLE_FILE, bulk_build
from drtool.repository.cacheenv import (DBS, MAP_SIZE, CacheUnusable, acquire_env, cache_roots, guard,
                                        read_ahead, release_env)
from drtool.repository.idfilter import STALE, IdFilter, open_for_cache
from drtool.repository.idtable import IdTable
from drtool.repository.keyranges import STAMP as _STAMP, Move
from drtool.repository.index import Location
from drtool.repository.packfile import ENTRY
from drtool.repository.residency import MappedPages, ResidentBound, add_in_steps
from drtool.testing_hooks import crash_point

log = logging.getLogger("drtool")

SYNC_BATCH_ENTRIES = 262_144  # entries per move of an incremental sync (held in RAM: ~13 MiB packed)
BUILD_RUN_ENTRIES = 262_144  # entries per sorted run of a bulk build (~25 MiB of bytes objects)
BUILD_COMMIT_ENTRIES = 131_072  # appended entries per write transaction of a bulk build
PACK_ID_MEMO = 65_536  # pack ids remembered by number (restores look up many blobs of one pack)


class DiskIndex(MappedPages):
    """The on-disk blob index of one repository (see the module docstring).

    Lookups use one read transaction per thread, kept open and renewed after
    this process writes (:meth:`refresh`): a snapshot of the cache, like the
    in-memory index was.  Thread-safe.
    """

    def __init__(self, path: Path, repo_id: str) -> None:
        self.path = path
        self.env = acquire_env(path, repo_id)
        try:
            self._db = {name: self.env.open_db(name, dupsort=name == b"blobs") for name in DBS}
        except lmdb.Error as exc:
            release_env(path)
            raise CacheUnusable(f"{path}: {exc}") from None
        self._blobs, self._packs = self._db[b"blobs"], self._db[b"packs"]
        self._local = threading.local()
        self._generation = 0
        # pack number -> id of the packs a restore reads (a lookup less per blob; bounded: ~6 MiB)
        self._pack_ids: dict[int, bytes] = {}
        self._readers: list[lmdb.Transaction] = []
        self._readers_lock = threading.Lock()
        self._retired: list[IdFilter] = []  # replaced filters (a thread may still read one)
        self._retired_tables: list[IdTable] = []
        self._filter = None
        self._table: IdTable | None = None
        self._resident = ResidentBound(self._over_budget)  # lookups' mapped pages (residency.py)
        try:
            if self._moving():  # before the filter and table are checked against the cache
                with guard(path):
                    self._undo_interrupted_move()
        except BaseException:
            release_env(path)
            raise
        if os.environ.get("DRTOOL_INDEX_FILTER", "on") != "off":
            self._filter = open_for_cache(self.path / FILTER_FILE, self.env, self._blobs, self._db[b"members"],
                                          lambda txn: _STAMP.unpack(txn.get(b"stamp", _STAMP.pack(0),
                                                                            db=self._db[b"meta"]))[0])
        if os.environ.get("DRTOOL_INDEX_TABLE", "on") != "off":
            self._table = idtable.open_for_cache(self.path / TABLE_FILE, self.env, self._blobs,
                                                 self._db[b"members"], self._db[b"meta"], self._token_of,
                                                 self._release_cache_pages)
        self._closed = False

    def _token_of(self, txn: lmdb.Transaction) -> bytes:
        """The token of the blobs' state ``txn`` sees (a new one per write that changes them)."""
        return bytes(txn.get(b"token", idtable.NO_TOKEN, db=self._db[b"meta"]))

    @classmethod
    def open(cls, repo_id: str) -> "DiskIndex | None":
        """The cache in the first usable root of :func:`cache_roots`; None when none is.

        A shared root that this user may not write (the database's
        ``archive_command`` runs as ``postgres``, the nightly backup as
        ``drtool``) is passed over for a private one, never made unsafe.
        """
        for root in cache_roots():
            path = root / repo_id / "index"
            try:
                return cls(path, repo_id)
            except CacheUnusable as exc:
                log.debug("index cache not usable here: %s", exc)
        return None

    # ----- reading -----------------------------------------------------------------
    def _txn(self) -> lmdb.Transaction:
        local = self._local
        txn = getattr(local, "txn", None)
        if txn is None or local.generation != self._generation:
            if txn is not None:
                txn.abort()
                with self._readers_lock:  # its reader slot goes with the object (LMDB has 1,024)
                    self._readers.remove(txn)
            generation = self._generation  # before the snapshot: a refresh meanwhile renews it again
            txn = local.txn = self.env.begin(db=self._blobs)
            # The filter serves this snapshot only if it covers it (its stamp is not behind).
            at = _STAMP.unpack(txn.get(b"stamp", _STAMP.pack(0), db=self._db[b"meta"]))[0]
            filt = self._filter
            local.filter = filt if filt is not None and at <= filt.stamp() != STALE else None
            local.token = token = self._token_of(txn)
            local.table = table = self._current_table(token)
            local.answer = table.answerer(token, local.filter) if table is not None else None
            local.paged = table is not None and table.paged
            local.get = txn.get
            local.generation = generation  # last: ``__contains__`` trusts the fields once it is set
            with self._readers_lock:
                self._readers.append(txn)
        return txn

    def _current_table(self, token: bytes) -> IdTable | None:
        """The table if it holds the state ``token``; one another process rebuilt is mapped anew."""
        table = self._table
        if table is not None and table.token() == token:
            return table
        if table is None and os.environ.get("DRTOOL_INDEX_TABLE", "on") == "off":
            return None
        fresh = IdTable.open(self.path / TABLE_FILE)
        if fresh is None or fresh.token() != token:
            if fresh is not None:
                fresh.close()
            return None
        if table is not None:
            self._retired_tables.append(table)
        self._table = fresh
        return fresh

    def _table_begin(self, txn: lmdb.Transaction) -> IdTable | None:
        """In a write transaction that changes the blobs: the table, set ``BUSY``, if it holds the
        state this transaction starts from; else None (it is then stale for everyone: the
        transaction's new token matches nothing it holds)."""
        table = self._table
        if table is None:
            return None
        if table.token() != self._token_of(txn):
            self._retired_tables.append(table)
            self._table = None
            return None
        table.set_token(idtable.BUSY)
        return table

    def _table_end(self, table: IdTable | None, token: bytes) -> None:
        """After the commit (still under the guard): the table holds the committed state."""
        crash_point("index-table-after-commit")
        if table is not None:
            table.set_token(token)

    def _before_move(self, adding: int, grow_table: bool) -> None:
        """Under the guard: a table the move would make overfull is replaced by a bigger one now,
        not by the next run's open (:func:`idtable.grown_for`), unless the move is a backup's own
        (``LayeredIndex.written``: its lookups then map the bigger table's pages, +45-60 MiB at the
        1,000,000-file first backup's peak); then the files a large move touches most pages of
        are read in order (:func:`cacheenv.read_ahead`)."""
        table = self._table if grow_table else None
        grown = None if table is None else idtable.grown_for(
            table, adding, self.path / TABLE_FILE, self.env, self._blobs, self._db[b"meta"],
            self._token_of, self._release_cache_pages)
        if grown is not None and table is not None:
            self._retired_tables.append(table)
            self._table = grown
        read_ahead([self.path / "data.mdb", self.path / TABLE_FILE, self.path / FILTER_FILE], adding)

    def _table_failed(self, table: IdTable | None) -> None:
        """The transaction did not commit: the ``BUSY`` table is left for the next open to rebuild."""
        if table is not None and table is self._table:
            self._retired_tables.append(table)
            self._table = None

    def _filter_for(self, stamp: int) -> IdFilter | None:
        """At the start of a move from ``stamp``: the filter, if it covers that state (else it
        is retired: a writer that did not keep it, or a bulk build replaced it)."""
        filt = self._filter
        if filt is not None and filt.stamp() != stamp:
            filt.set_stamp(STALE)
            self._retired.append(filt)
            self._filter = filt = None
        return filt

    def refresh(self) -> None:
        """Make this process's own writes visible to its lookups (each thread renews on its next one)."""
        self._generation += 1
        self._pack_ids = {}

    def __contains__(self, blob_id: bytes) -> bool:
        # A backup asks this for every new chunk: one thread-local read for the transaction's
        # ``get`` and the filter (``_txn`` renews both after this process's own writes).
        local = self._local
        if getattr(local, "generation", -1) != self._generation:
            self._txn()
        self._resident.tick()
        filt = local.filter  # a paged table's answer asks it first (IdTable.answerer)
        answer = local.answer
        if answer is not None:
            found = answer(blob_id)
            if found is not None:
                return found
        if filt is not None and not local.paged and not filt.maybe(blob_id):
            return False
        try:
            return local.get(blob_id) is not None
        except lmdb.Error as exc:
            raise self._damaged(exc) from None

    def has_all(self, hex_ids: Iterable[str]) -> bool:
        get, fromhex = self._txn().get, bytes.fromhex
        answer = self._local.answer or (lambda _blob_id: None)
        asked = 0
        try:
            for hex_id in hex_ids:
                blob_id = fromhex(hex_id)
                asked += 1
                found = answer(blob_id)
                if found is False or found is None and get(blob_id) is None:
                    return False
        except lmdb.Error as exc:
            raise self._damaged(exc) from None
        finally:
            self._resident.tick(asked)
        return True

    def get(self, blob_id: bytes) -> Location | None:
        # No filter here: restores and checks ask for ids that are there (it would only cost).
        txn = self._txn()
        self._resident.tick()
        try:
            raw = txn.get(blob_id)
            if raw is None:
                return None
            number, blob_type, offset, length, inner, raw_length = _REC.unpack(raw)
            pack_id = self._pack_ids.get(number)
            if pack_id is None:
                pack_id = txn.get(_NUM.pack(number), db=self._packs)
                if pack_id is None or len(pack_id) != ID_SIZE:
                    raise self._damaged(ValueError(f"no pack for cache number {number}"))
                if len(self._pack_ids) >= PACK_ID_MEMO:
                    self._pack_ids.clear()
                self._pack_ids[number] = pack_id
        except (lmdb.Error, struct.error) as exc:
            raise self._damaged(exc) from None
        return Location(pack_id, blob_type, offset, length, inner, raw_length)

    def _damaged(self, exc: Exception) -> Exception:
        from drtool.errors import IntegrityError
        return IntegrityError(f"the local index cache {self.path} is damaged ({exc})",
                              hint=f"remove {self.path} (it is rebuilt from the repository on the next run)")

    def index_ids(self, before: int | None = None) -> set[str]:
        """Cached index objects (``before``: only those added before that :meth:`stamp`)."""
        with self.env.begin(db=self._db[b"indexes"]) as txn:
            return {bytes(key).decode() for key, value in txn.cursor()
                    if before is None or _STAMP.unpack_from(value)[0] < before}

    def stamp(self) -> int:
        """A counter of the write transactions that added index objects: taken before listing
        ``index/``, it tells which cached objects that listing could not have shown yet."""
        with self.env.begin(db=self._db[b"meta"]) as txn:
            return int(_STAMP.unpack(txn.get(b"stamp", _STAMP.pack(0)))[0])

    def removals_token(self) -> bytes | None:
        """The cache's ``removals`` token (:mod:`completeness`), read before a backup's look-ups."""
        with self.env.begin() as txn:
            return completeness.token(txn, self._db[b"meta"])

    def mark_complete(self, tree_id: str, since: bytes, pending: list[str]) -> bool:
        """Record that every blob of ``tree_id`` is indexed (``pending``: this run's index
        objects not cached yet), unless entries left the cache since ``since`` was read."""
        with self.env.begin(write=True) as txn:
            return completeness.mark(txn, self._db[b"meta"], tree_id, since, pending)

    def is_complete(self, tree_id: str) -> bool:
        with self.env.begin() as txn:
            return completeness.is_complete(txn, self._db[b"meta"], self._db[b"indexes"], tree_id)

    def listing_digest(self, tree_id: str) -> bytes | None:
        """(``backup.listings``; asked from the scan threads: this thread's read snapshot.)"""
        try:
            return completeness.listing(self._txn(), self._db[b"meta"], tree_id)
        except lmdb.Error as exc:
            raise self._damaged(exc) from None

    def record_listings(self, digests: dict[str, bytes]) -> None:
        if digests:
            with self.env.begin(write=True) as txn:
                completeness.record_listings(txn, self._db[b"meta"], digests)

    def packs(self) -> dict[bytes, int]:
        """pack id → entries (for maintenance commands; reads the whole pack table)."""
        found: dict[bytes, int] = {}
        with self.env.begin() as txn:
            members = txn.cursor(db=self._db[b"members"])
            for number, pack_id in txn.cursor(db=self._packs):
                found[bytes(pack_id)] = found.get(bytes(pack_id), 0) + len(members.get(number) or b"") // ID_SIZE
        return found

    def items(self) -> Iterator[tuple[bytes, Location]]:
        """Every blob once with the location lookups give (checks and warming, not hot paths)."""
        with self.env.begin() as txn:
            for blob_id, raw in txn.cursor(db=self._blobs).iternext_nodup(keys=True, values=True):
                number, blob_type, offset, length, inner, raw_length = _REC.unpack(raw)
                pack_id = txn.get(_NUM.pack(number), db=self._packs)
                yield bytes(blob_id), Location(pack_id, blob_type, offset, length, inner, raw_length)

    def __len__(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._blobs)["entries"])

    # ----- writing -----------------------------------------------------------------
    def add_indexes(self, objects: list[tuple[str, list[tuple[bytes, bytes]]]], grow_table: bool = True) -> None:
        """Add index objects ((id, [(pack id, packed trailer entries)])); one already cached
        (another process read it in first) is skipped, so concurrent runs never add a pack twice.

        In key ranges (:mod:`keyranges`): a first transaction writes the pack
        tables and the ``moving`` mark, one per range puts that range's
        entries in sorted, a last one records the objects as cached (a move
        of one range, as a sync's batches, is all one transaction).  The
        cache's ``flock`` is held throughout (no other writer in between;
        opens wait), and the id table is ``BUSY`` until the end.  ``grow_table`` False: a table
        the move makes overfull is left for the next open to rebuild (:meth:`_before_move`).
        """
        table = None
        try:
            # the guard: a bulk build in another run takes pack numbers in many transactions and
            # appends keys in order; an add in between would collide with both
            with guard(self.path):
                self._undo_interrupted_move()
                self._before_move(sum(len(raw) for _i, packs in objects for _p, raw in packs) // ENTRY.size, grow_table)
                with self.env.begin(write=True) as txn:
                    table = self._table_begin(txn)
                    move = self._begin_move(txn, objects)
                    entries = sum(len(raw) for _number, raw in move.packs) // ENTRY.size
                    ranges = keyranges.range_count(entries, int(txn.stat(self._blobs)["leaf_pages"]))
                    if ranges == 1:
                        self._put_range(txn, next(keyranges.range_rows(move.packs, 1)), move, table)
                        token = self._end_move(txn, move, table)
                if ranges > 1:
                    self._move_ranges(move, ranges, table)
                    with self.env.begin(write=True) as txn:
                        token = self._end_move(txn, move, table)
                self._table_end(table, token)
        except lmdb.MapFullError:
            self._table_failed(table)
            raise CacheUnusable(f"{self.path} is full ({MAP_SIZE >> 30} GiB)") from None
        except BaseException:
            self._table_failed(table)
            raise
        self.refresh()

    def _begin_move(self, txn: lmdb.Transaction, objects: list[tuple[str, list[tuple[bytes, bytes]]]]) -> Move:
        """The move's first transaction (:func:`keyranges.begin_move`), a new token, and the
        absent-id filter it will add to (if it covers the state the move starts from)."""
        move = keyranges.begin_move(txn, self._db, objects)
        txn.put(b"token", idtable.new_token(), db=self._db[b"meta"])
        move.filter = self._filter_for(move.stamp)
        return move

    def _put_range(self, txn: lmdb.Transaction, rows: list[tuple[bytes, bytes]], move: Move,
                   table: IdTable | None) -> None:
        """A range's entries, and its ids in the filter (flushed before the commit: it never
        lacks a committed id) and in the ``BUSY`` table: one range's ids at a time, not the move's."""
        txn.cursor(db=self._blobs).putmulti(rows, dupdata=True)
        ids = [blob_id for blob_id, _rec in rows]

        def release() -> None:  # the move's own filter and table, which may not be the open ones yet
            self._release_mapped(move.filter, table)
        self._resident.check(release)  # the B-tree pages the inserts touched
        add_in_steps(ids, [m.add for m in (move.filter, table) if m is not None], self._resident, release)
        if move.filter is not None:
            move.filter.set_stamp(move.stamp)

    def _move_ranges(self, move: Move, ranges: int, table: IdTable | None) -> None:
        """One write transaction per key range (each with a new token); the cache's and the table's
        mapped pages the inserts touched are dropped after each (read again from the page cache:
        a table sized for 1 M ids is 65 MB, nearly every page of it touched by a 214,000-entry move)."""
        for rows in keyranges.range_rows(move.packs, ranges):
            with self.env.begin(write=True) as txn:
                self._put_range(txn, rows, move, table)
                txn.put(b"token", idtable.new_token(), db=self._db[b"meta"])
            del rows
            crash_point("index-move-between-ranges")
            self._release_cache_pages()
            if table is not None:
                table.release_pages()

    def _end_move(self, txn: lmdb.Transaction, move: Move, table: IdTable | None) -> bytes:
        """The move's last transaction (:func:`keyranges.end_move`); returns the new token (the
        table stays ``BUSY`` until the commit)."""
        keyranges.end_move(txn, self._db, move)
        if move.filter is not None:
            move.filter.set_stamp(move.stamp + 1)
        token = idtable.new_token()
        txn.put(b"token", token, db=self._db[b"meta"])
        return token

    def _moving(self) -> bool:
        with self.env.begin(db=self._db[b"meta"]) as txn:
            return txn.get(keyranges.MOVING) is not None

    def _undo_interrupted_move(self) -> None:
        """Under the guard: a ``moving`` mark means its mover died between its transactions (a
        live one holds the guard): take its packs out, so the cache holds only listed objects."""
        if not self._moving():
            return
        meta = self._db[b"meta"]
        log.warning("the index cache %s holds an interrupted move; taking it out", self.path)
        table = None
        try:
            with self.env.begin(write=True) as txn:
                table = self._table_begin(txn)
                for number in keyranges.pack_numbers(txn.get(keyranges.MOVING, db=meta) or b""):
                    for blob_id in keyranges.forget_pack(txn, self._db, number):
                        if table is not None:
                            table.remove(blob_id)
                txn.delete(keyranges.MOVING, db=meta)
                txn.delete(keyranges.BUILDING, db=meta)
                token = idtable.new_token()
                txn.put(b"token", token, db=meta)
            self._table_end(table, token)
        except BaseException:
            self._table_failed(table)
            raise
        self.refresh()

    def drop(self, index_ids: Iterable[str]) -> None:
        """Forget index objects the repository no longer has (prune replaced or deleted them)."""
        table = None
        try:
            with guard(self.path):  # not during a bulk build
                self._undo_interrupted_move()
                with self.env.begin(write=True) as txn:
                    table = self._table_begin(txn)
                    for index_id in index_ids:
                        numbers = txn.pop(index_id.encode(), db=self._db[b"indexes"]) or b""
                        for number in keyranges.pack_numbers(numbers[_STAMP.size:]):
                            for blob_id in keyranges.forget_pack(txn, self._db, number):
                                if table is not None:  # no other copy
                                    table.remove(blob_id)
                    token = idtable.new_token()
                    txn.put(b"token", token, db=self._db[b"meta"])
                self._table_end(table, token)
        except BaseException:
            self._table_failed(table)
            raise
        self.refresh()

    def sync(self, listed: set[str], fetch: Callable[[str], list[tuple[bytes, bytes]] | None],
             listed_at: int | None = None) -> int:
        """Make the cache hold the listed index objects and no others; returns how many were read in.

        ``listed_at``: the :meth:`stamp` taken before listing; objects another
        process cached after it are kept (the listing may predate them).

        ``fetch(id)``: the object's (pack id, packed entries), or None when
        it is listed but gone (or the caller keeps it out of the cache: a restore).  An empty
        or far-behind cache is built afresh (:meth:`_bulk_build`); else objects are read in
        batches of about ``SYNC_BATCH_ENTRIES`` entries, each one move (:meth:`add_indexes`):
        the entries a backup left below ``OVERLAY_ENTRIES`` for the next run go in at once
        (in key ranges, each leaf written once), not in 16,384-entry transactions that each
        rewrote half the leaves (1,000,000 files: 5.5 s of CPU, 13 moves, against 2.6 s).
        """
        gone = self.index_ids(before=listed_at) - listed
        if gone:
            self.drop(gone)
        cached = self.index_ids()
        if listed - cached and (not cached or len(listed - cached) > max(16, len(cached))):  # empty or far behind
            built = self._bulk_build(listed, fetch)
            if built is not None:
                return built
            cached = self.index_ids()  # another process built it meanwhile
        batch: list[tuple[str, list[tuple[bytes, bytes]]]] = []
        entries = added = 0
        for index_id in sorted(listed - cached):
            packs = fetch(index_id)
            if packs is None:
                continue
            batch.append((index_id, packs))
            entries += sum(len(raw) for _pack, raw in packs) // ENTRY.size
            added += 1
            if entries >= SYNC_BATCH_ENTRIES:
                self.add_indexes(batch)
                batch, entries = [], 0
        if batch:
            self.add_indexes(batch)
        return added

    def _bulk_build(self, listed: set[str],
                    fetch: Callable[[str], list[tuple[bytes, bytes]] | None]) -> int | None:
        """Build the cache afresh from every listed index object; None when another process did
        (:func:`buildruns.bulk_build`)."""
        return bulk_build(self, listed, fetch, BUILD_RUN_ENTRIES, BUILD_COMMIT_ENTRIES)

    def _install_built_filter(self, made: IdFilter | None, whole: bool, stamp: int) -> None:
        """In the bulk build's last transaction: put its filter in place, unless another
        process added entries during the build (``whole`` False: they are not in it)."""
        old = self._filter
        if old is not None:
            old.set_stamp(STALE)  # whatever happens next, the old file no longer covers the cache
            self._retired.append(old)
            self._filter = None
        if made is None:
            return
        if whole:
            made.install(self.path / FILTER_FILE, stamp)
            self._filter = made
        else:
            made.discard()

    def _install_built_table(self, made: IdTable, whole: bool, token: bytes) -> None:
        """As :meth:`_install_built_filter`, for the id table (installed with the token the build's
        last transaction commits: a crash before that commit leaves a token nothing has)."""
        if self._table is not None:
            self._retired_tables.append(self._table)
            self._table = None
        if whole:
            made.install(self.path / TABLE_FILE, token)
            self._table = made
        else:
            made.discard()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for txn in readers:
            try:
                txn.abort()
            except lmdb.Error:
                pass
        for filt in [self._filter, *self._retired]:
            if filt is not None:
                filt.close()
        for table in [self._table, *self._retired_tables]:
            if table is not None:
                table.close()
        release_env(self.path)

