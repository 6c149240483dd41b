"""Keeping the index cache's mapped pages out of a backup's resident set.

The cache (LMDB's ``data.mdb``, the id table, the absent-id filter) is read
through shared file mappings, and every page a lookup maps counts in the
process's RSS until it is unmapped, although it is clean page cache the
kernel can drop at any time.  With small pages that was a few MiB per
thousand lookups.  Kernels that keep files in large folios (seen on 6.18
with ext4: the 1.2 GB id table of a 20 M-blob cache sat in the page cache
as 2 MiB folios after being read or written in order) map a whole folio
per fault, PMD or PTEs alike (``MADV_NOHUGEPAGE`` and ``MADV_RANDOM`` did
not change it): ~1,000 lookups of a 1 GiB backup against that cache mapped
~900 MiB of the table and the run peaked at 932-1,166 MiB RSS, 80 MiB of it
its own memory.

So lookups are counted, and every :data:`CHECK_EVERY` of them the process's
resident file pages are read (``/proc/self/statm``, one ``pread``); past
:data:`BUDGET_BYTES` more than after the last release, the cache's pages
are released (``DiskIndex.release_pages``: an unmap; the next lookup maps
its page again from the page cache).  Between two checks at most
``CHECK_EVERY`` folios can be mapped (64 MiB at 2 MiB folios).  Past the budget the id
table's buckets are read with ``pread`` from then on (``IdTable.paged``): a 20 M-blob
table's random buckets would otherwise be released and mapped again all the time.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from drtool.repository.cacheenv import madvise_dontneed, mapping_start

log = logging.getLogger("drtool")

CHECK_EVERY = 32  # lookups between two reads of the resident file pages (~2 µs each)
# mapped cache pages allowed before they are released: 64 MiB made the 1,000,000-file first
# backup (its cache's B-tree and table ~170 MB) release and fault its pages again all through
# the run (+16 s of system time); at 128 MiB it never trips there, and a 20 M-blob backup on
# 2 MiB folios peaks at 238-245 MiB
BUDGET_BYTES = 128 * 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Statm:
    """``/proc/self/statm``'s resident shared (file-backed) pages, kept open per process
    (a descriptor opened before a fork would read the parent's)."""

    def __init__(self) -> None:
        self._fd = -1
        self._pid = -1
        self._lock = threading.Lock()

    def file_bytes(self) -> int | None:
        """Resident file-backed bytes of this process, or None where there is no procfs."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                try:
                    self._fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    self._fd = -1
            if self._fd < 0:
                return None
            try:
                fields = os.pread(self._fd, 128, 0).split()
                return int(fields[2]) * _PAGE
            except (OSError, IndexError, ValueError):
                return None


STATM = _Statm()


class ResidentBound:
    """Counts lookups and calls ``release`` when the mapped file pages grew past ``budget``.

    ``resident``: how many file-backed bytes are resident (``STATM.file_bytes`` by default);
    ``budget`` and ``every`` are the module's constants unless a unit test of this one
    mechanism sets them.  Thread-safe enough for counting: a lost increment only delays a check.
    """

    def __init__(self, release: Callable[[], None], resident: Callable[[], int | None] = STATM.file_bytes,
                 budget: int | None = None, every: int | None = None) -> None:
        self._release, self._resident = release, resident
        self._budget = BUDGET_BYTES if budget is None else budget
        self._every = CHECK_EVERY if every is None else every
        self._count = 0
        self._floor: int | None = resident()  # what the process had mapped before any lookup
        self.releases = 0

    def tick(self, lookups: int = 1, release: Callable[[], None] | None = None) -> None:
        """Note ``lookups`` more lookups (or ids written); every ``every`` of them, :meth:`check`."""
        self._count += lookups
        if self._count >= self._every:
            self._count = 0
            self.check(release)

    def check(self, release: Callable[[], None] | None = None) -> None:
        """Release (``release``, else the bound's own) if the resident file pages grew past the
        budget since the last release; the level after it is the new floor."""
        now = self._resident()
        if now is None:
            return
        if self._floor is None or now < self._floor:
            self._floor = now
        elif now - self._floor > self._budget:
            (release or self._release)()
            self.releases += 1
            after = self._resident()
            self._floor = now if after is None else after


def add_in_steps(ids: list[bytes], adders: list[Callable[[list[bytes]], None]], bound: ResidentBound,
                 release: Callable[[], None]) -> None:
    """``ids`` given to each of ``adders`` (a move's filter and table) ``CHECK_EVERY`` at a time,
    the bound checked between: random ids touch a page (or a 2 MiB folio) each."""
    for start in range(0, len(ids), CHECK_EVERY):
        part = ids[start:start + CHECK_EVERY]
        for add in adders:
            add(part)
        bound.tick(len(part), release)


class MappedPages:
    """The disk index's part in this: releasing its mapped pages (a base of ``DiskIndex``, whose
    ``path``, ``env``, ``_filter``, ``_table`` and ``_generation`` these use)."""

    path: Path
    env: Any
    _filter: Any
    _table: Any
    _generation: int

    def release_pages(self) -> None:
        """Drop the cache's mapped pages from this process's resident set (they stay in the page cache).

        Moving a run's entries into the cache (``LayeredIndex.written``, every
        262,144 new blobs) reads B-tree pages through the mapping, and those
        stay counted in the process's RSS: a 200,000-file first backup that
        moved its entries four times peaked at 204 MiB (64 MiB of mapped
        files) against 148 MiB without.  ``MADV_DONTNEED`` on a shared file
        mapping only unmaps: the next lookup maps its page again from the
        page cache (a minor fault), whatever thread is reading.  Linux only;
        elsewhere nothing happens.
        """
        self._release_mapped(self._filter, self._table)  # read once: another thread may replace them

    def _release_mapped(self, *mapped: Any) -> None:
        """The LMDB mapping's pages, and those of each filter or table given (None: skipped)."""
        self._release_cache_pages()
        for one in mapped:
            if one is not None:
                one.release_pages()

    def _over_budget(self) -> None:
        """Past the budget: table buckets are read from now on, and every mapped page is released."""
        table = self._table
        if table is not None and not table.paged:
            table.paged = True
            self._generation += 1  # each thread makes its answerer again
            log.debug("index cache: mapped pages past the budget; id table buckets are read from now on")
        try:
            self.release_pages()
        except ValueError:  # a mapping closed meanwhile (close(), a replaced file)
            pass

    def _release_cache_pages(self) -> None:
        start = mapping_start(self.path / "data.mdb")
        if start is not None:
            madvise_dontneed(start, (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"])
