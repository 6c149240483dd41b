"""Is every pack a snapshot reads still in the repository?  Asked before a restore starts.

A physical restore extracts its chain's members one after another: a pack
lost from the storage (or cut short) used to be found only when the
extraction reached it, after minutes or hours of work on the earlier
members, and then nothing older was tried.  Asking first costs the
snapshots' trees (a stream snapshot is one file), one index look-up per blob
and one ``stat`` per distinct pack, a few hundred for a chain of some GiB,
issued in parallel.  ``stat`` is used, not a listing: listings may lag
deletes (the storage contract), ``stat`` never does.

Only presence and length are checked here: a pack whose bytes changed is
found by the restore as it reads (every group is authenticated), or by
``drtool check --read-data``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from drtool.errors import DrtoolError
from drtool.repository.objects import pack_name
from drtool.repository.repo import Repository
from drtool.snapshot.model import Snapshot
from drtool.snapshot.store import load_tree

STAT_WORKERS = 8  # S3: one HEAD each; ~0.1 s of latency apiece, so a few hundred in a few seconds


def missing_data(repo: Repository, snaps: Iterable[Snapshot]) -> dict[str, str]:
    """Snapshot id → one line naming the first pack (or tree, or blob) it needs that the repository
    lacks or holds shorter than the index says; snapshots whose data is all there are left out.

    The caller loads the index first (``Repository.load_index``).
    """
    needs: dict[str, dict[bytes, int]] = {}
    problems: dict[str, str] = {}
    for snap in snaps:
        try:
            needs[snap.id] = packs_of(repo, snap)
        except DrtoolError as exc:
            problems[snap.id] = str(exc)
    wanted = sorted({pack for packs in needs.values() for pack in packs})
    with ThreadPoolExecutor(max_workers=max(1, min(STAT_WORKERS, len(wanted)))) as pool:
        sizes = dict(zip(wanted, pool.map(lambda p: _size(repo, p), wanted)))
    for snap_id, packs in needs.items():
        for pack, end in sorted(packs.items()):
            size = sizes[pack]
            if size is None:
                problems[snap_id] = f"pack {pack_name(pack)} is missing from the repository"
            elif size < end:
                problems[snap_id] = (f"pack {pack_name(pack)} is shorter than the index says "
                                     f"({size} bytes, data up to {end})")
            else:
                continue
            break
    return problems


def missing_data_cached(repo: Repository, snaps: Iterable[Snapshot]) -> dict[str, str] | None:
    """:func:`missing_data` answered from the local index cache as it stands, without listing the
    repository's index objects or reading new ones (dry runs, ``mariadb window``).

    Only an empty answer can be trusted: packs are named by their content and never change, so a
    blob the cache places in a pack that ``stat`` finds whole is there, whatever the cache's age.
    A blob the cache lacks, or a pack gone or short (a prune may have moved the blob since), is
    answered only by the up-to-date index: the caller then loads it.  None: there is no disk cache
    (the in-memory fallback would be the whole index), or it is empty."""
    disk = repo.disk_index()
    if disk is None or len(disk) == 0:  # a host that never loaded this repository's index: nothing to ask
        return None
    from drtool.repository.layered import LayeredIndex
    return missing_data(repo.with_index(LayeredIndex(disk)), snaps)


def packs_of(repo: Repository, snap: Snapshot) -> dict[bytes, int]:
    """Every pack ``snap`` reads (its trees' and its files'), each with the end of the last group it
    needs there.  Raises the repository's error for a tree or blob that cannot be found."""
    ends: dict[bytes, int] = {}

    def need(blob_id: bytes) -> None:
        loc = repo.locate(blob_id)
        end = loc.offset + loc.length
        if ends.get(loc.pack_id, -1) < end:
            ends[loc.pack_id] = end
    stack, seen = [snap.tree], set()
    while stack:  # not recursive: trees may be deeper than the recursion limit
        tree_id = stack.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        need(bytes.fromhex(tree_id))
        for node in load_tree(repo, tree_id):
            for hexid in node.content:
                need(bytes.fromhex(hexid))
            if node.subtree:
                stack.append(node.subtree)
    return ends


def _size(repo: Repository, pack: bytes) -> int | None:
    info = repo.backend.stat(pack_name(pack))
    return info.size if info is not None else None
