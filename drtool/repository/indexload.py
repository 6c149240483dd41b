"""Loading the blob index at the start of a run: the disk cache brought up to date, or RAM.

``Repository.load_index`` delegates here.  With the disk cache
(``diskindex``), loading reads in only the index objects the cache lacks
and forgets the ones the repository no longer lists, so memory does not
grow with the repository.  The in-memory index is the fallback when no
cache directory can be used (or ``DRTOOL_INDEX_CACHE=memory``).

The catalog still hears of every index object (``IndexCache.store_index``):
it remembers committed index objects for rollback detection.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from drtool.errors import IntegrityError, ObjectMissing
from drtool.repository.index import MemoryIndex, PackRecord
from drtool.repository.objects import INDEX
from drtool.repository.packfile import ENTRY, TREE_BLOB, unpack_entries

if TYPE_CHECKING:
    from drtool.repository.diskindex import DiskIndex
    from drtool.repository.repo import Repository

log = logging.getLogger("drtool")

Packed = list[tuple[bytes, bytes]]

# A run that writes nothing to the repository (a restore) holds up to this many entries of
# index objects the disk cache lacks in memory (~70 bytes each) instead of writing them into
# the cache: the nightly bench's restore wrote night 2's ~10,000 entries (LMDB, filter, id
# table: ~0.05 s of CPU on the path to its first byte) for the next backup's benefit.
READ_ONLY_ENTRIES = 65_536


def cache_wanted() -> bool:
    return os.environ.get("DRTOOL_INDEX_CACHE", "disk").lower() != "memory"


def open_disk_index(repo_id: str) -> DiskIndex | None:
    """The repository's disk cache, or None (then the index is held in memory, with a warning)."""
    if not cache_wanted():
        return None
    try:
        from drtool.repository.diskindex import DiskIndex
    except ImportError as exc:  # an install without the lmdb package
        log.warning("no index cache (%s): the blob index is held in memory", exc)
        return None
    disk = DiskIndex.open(repo_id)
    if disk is None:
        log.warning("no writable cache directory (DRTOOL_CACHE_DIR, XDG_CACHE_HOME, the temporary "
                    "directory): the blob index is held in memory")
    return disk


def load_index(repo: Repository, trees_only: bool = False, read_only: bool = False) -> None:
    """``trees_only`` narrows only the in-memory fallback (see ``Repository.load_index``);
    ``read_only``: index objects the disk cache lacks, up to ``READ_ONLY_ENTRIES`` entries,
    are held in memory for this run instead of being written into the cache."""
    disk = repo.disk_index()
    listed_at = disk.stamp() if disk is not None else None
    names = {info.name.split("/", 1)[1] for info in repo.backend.list(f"{INDEX}/")}
    if disk is None:
        _load_into_memory(repo, names, TREE_BLOB if trees_only else None)
        return
    from drtool.repository.layered import LayeredIndex
    cache = repo.cache  # once: a catalog opening in the background may arrive meanwhile
    catalog_ids: set[str] = set()
    if cache:
        catalog_ids = cache.cached_index_ids()
        cache.drop_indexes(catalog_ids - names)
    read_in: set[str] = set()
    held: list[Packed] = []  # read_only: objects kept out of the cache, for this run's overlay
    room = READ_ONLY_ENTRIES if read_only else 0

    def fetch(index_id: str) -> Packed | None:
        nonlocal room
        packs = _fetch(repo, index_id)
        if packs is not None and cache and index_id not in catalog_ids:
            cache.store_index(index_id, [PackRecord(p, unpack_entries(raw)) for p, raw in packs])
        read_in.add(index_id)
        entries = sum(len(raw) for _pack, raw in packs or ()) // ENTRY.size
        if packs is not None and entries <= room:
            room -= entries
            held.append(packs)
            return None  # not for the cache: the next run that writes the repository caches it
        return packs

    try:
        added = disk.sync(names, fetch, listed_at)
    except ValueError as exc:
        raise IntegrityError(f"an index object is malformed: {exc}") from None
    if added:
        disk.release_pages()  # the pages the sync wrote through are not the run's lookups
    room = 0  # what follows is only for the catalog
    for index_id in sorted(names - catalog_ids - read_in if cache else ()):
        fetch(index_id)  # the catalog lacks it (rebuilt, or new) while the disk cache has it
    repo.index = index = LayeredIndex(disk)
    try:
        for packs in held:
            for pack_id, raw_entries in packs:
                index.add_packed(pack_id, raw_entries)
    except ValueError as exc:
        raise IntegrityError(f"an index object is malformed: {exc}") from None


def _fetch(repo: Repository, index_id: str) -> Packed | None:
    try:
        return repo.read_index_packed(index_id)
    except ObjectMissing:
        # Listed but gone: a prune deleted it and the store's listing lags (S3-compatible
        # stores may).  Its packs were repacked or deleted; nothing may dedup against them.
        log.debug("index object %s is listed but missing; skipped", index_id[:16])
        return None


def _load_into_memory(repo: Repository, names: set[str], only: int | None = None) -> None:
    """Read every index object (through the catalog) into memory, forgetting stale entries.

    Starting from an empty index matters for long-lived sessions: packs
    that a prune deleted must not be deduplicated against.  Entries go
    in packed, never as one Python object per blob, and the index is
    sized for all of them first (see ``MemoryIndex.reserve``).
    """
    repo.index = index = MemoryIndex()
    cache = repo.cache
    cached = cache.cached_index_ids() & names if cache else set()
    rows: Packed = []
    if cache:
        cache.drop_indexes(cache.cached_index_ids() - names)
        rows = list(cache.cached_pack_entries(cached))
    fetched = [(i, packs) for i in sorted(names - cached) if (packs := _fetch(repo, i)) is not None]
    if only is None:
        index.reserve((sum(len(raw) for _pack, raw in rows)
                       + sum(len(raw) for _id, packs in fetched for _pack, raw in packs)) // ENTRY.size)
    for pack_id, raw_entries in rows:
        try:
            index.add_packed(pack_id, raw_entries, only)
        except ValueError:
            raise IntegrityError("the catalog's index cache is damaged",
                                 hint="run 'drtool catalog rebuild'") from None
    del rows
    for index_id, packs in fetched:
        for pack_id, raw_entries in packs:
            index.add_packed(pack_id, raw_entries, only)
        if cache:
            cache.store_index(index_id, [PackRecord(p, unpack_entries(raw)) for p, raw in packs])
