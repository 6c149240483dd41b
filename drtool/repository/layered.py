"""The blob index of a run with a disk cache: the cache, plus this run's packs in memory.

Kept apart from ``diskindex`` so that importing the repository does not
import LMDB (``drtool pg wal-push`` with asynchronous archiving stays light).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from drtool.repository.index import Location, MemoryIndex, PackRecord
from drtool.repository.packfile import BlobEntry, trim_heap

if TYPE_CHECKING:
    from drtool.repository.diskindex import DiskIndex

# This run's entries held in memory before they move to the cache (~70 bytes each: ~18 MiB)
OVERLAY_ENTRIES = 262_144


class LayeredIndex:
    """``Repository.index`` once loaded with a disk cache: the cache, plus this run's packs in memory.

    Packs uploaded in this run go to ``overlay`` (a :class:`MemoryIndex`).
    Once their index object is written they may move to the cache; they do
    when the overlay passes ``OVERLAY_ENTRIES`` (:meth:`written`,
    :meth:`indexed`), so memory holds at most that many of this run's
    entries, whatever the repository's size.  Lookups ask the overlay
    first, then the cache.  Same interface as :class:`MemoryIndex`.
    """

    def __init__(self, disk: DiskIndex) -> None:
        self.disk = disk
        self.overlay = MemoryIndex()
        self.uncached: list[str] = []  # index objects this run wrote, not yet in the cache

    def written(self, index_id: str, read: Callable[[str], list[tuple[bytes, bytes]]]) -> set[bytes]:
        """Note an index object this run wrote; past OVERLAY_ENTRIES, move them all into the cache.

        Returns the packs now cached (for :meth:`indexed`).  Below the
        threshold nothing is written here: the next run's load reads these
        objects in, before its data path allocates anything, instead of
        this run's LMDB write transactions (their dirty pages are heap)
        adding to its peak (+26 MiB on the nightly bench's first night).
        ``read``: an index object's packed entries, read back from the
        repository (cheaper than keeping them).
        """
        self.uncached.append(index_id)
        if len(self.overlay) < OVERLAY_ENTRIES:
            return set()
        objects = [(i, read(i)) for i in self.uncached]
        self.disk.add_indexes(objects, grow_table=False)  # its lookups would map a bigger table
        self.disk.release_pages()  # the insert's B-tree pages: not this run's working set
        trim_heap()  # the move's rows were freed inside the heap
        self.uncached = []
        return {pack_id for _i, packs in objects for pack_id, _raw in packs}

    def __contains__(self, blob_id: bytes) -> bool:
        # The cache first: an id it holds is answered without the overlay's bucket search
        # (~1 us with this run's 200 k entries); an absent one costs its filter, then the overlay.
        # Either order is the same set: packs reach the cache (and its readers' next snapshot)
        # before ``indexed`` takes them out of the overlay.
        return blob_id in self.disk or blob_id in self.overlay

    def has_all(self, hex_ids: Iterable[str]) -> bool:
        overlay = self.overlay
        if not len(overlay):
            return self.disk.has_all(hex_ids)
        fromhex, disk = bytes.fromhex, self.disk
        return all(blob_id in overlay or blob_id in disk for blob_id in map(fromhex, hex_ids))

    def removals_token(self) -> bytes | None:
        return self.disk.removals_token()

    def mark_complete(self, tree_id: str, since: bytes) -> bool:
        """Every blob ``tree_id`` reads is indexed now: in the cache, or in the index objects this
        run wrote (``uncached``, which a later run must find cached: :mod:`completeness`)."""
        return self.disk.mark_complete(tree_id, since, list(self.uncached))

    def is_complete(self, tree_id: str) -> bool:
        return self.disk.is_complete(tree_id)

    def listing_digest(self, tree_id: str) -> bytes | None:
        return self.disk.listing_digest(tree_id)

    def record_listings(self, digests: dict[str, bytes]) -> None:
        self.disk.record_listings(digests)

    def get(self, blob_id: bytes) -> Location | None:
        found = self.overlay.get(blob_id)
        return found if found is not None else self.disk.get(blob_id)

    def __len__(self) -> int:
        return len(self.disk) + len(self.overlay)

    def reserve(self, entries: int) -> None:
        """Nothing to size: the cache grows on disk."""

    def add_packed(self, pack_id: bytes, raw_entries: bytes) -> None:
        self.overlay.add_packed(pack_id, raw_entries)

    def add_pack(self, pack: PackRecord) -> None:
        self.overlay.add_pack(pack)

    def add_entries(self, pack_id: bytes, entries: list[BlobEntry]) -> None:
        self.overlay.add_entries(pack_id, entries)

    def indexed(self, pack_ids: set[bytes]) -> None:
        """These packs are in the cache now (their index object was written): forget them here."""
        if pack_ids & self.overlay.packs.keys():
            self.overlay = self.overlay.without_packs(pack_ids)

    @property
    def packs(self) -> dict[bytes, int]:
        found = self.disk.packs()
        for pack_id, count in self.overlay.packs.items():
            found[pack_id] = found.get(pack_id, 0) + count
        return found

    def items(self) -> Iterator[tuple[bytes, Location]]:
        yield from self.disk.items()
        for blob_id, loc in self.overlay.items():
            if blob_id not in self.disk:
                yield blob_id, loc
