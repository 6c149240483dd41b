"""Index moves in key ranges (repository/keyranges.py): the split, and a crash between ranges.

A move puts a run's entries into the disk cache in one write transaction per range of leading id
bytes.  These tests check that the split puts every entry in exactly one range, sorted and in key
order, and that a process killed (SIGKILL) between two range transactions leaves a cache that the
next open, or the next write of a process that had it open, turns back into one holding exactly the
listed index objects: never "present" for a blob of the half-moved object that no listed object
holds, never "absent" for a listed one once synced.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from drtool.repository import keyranges
from drtool.repository.buildruns import REC
from drtool.repository.diskindex import DiskIndex
from drtool.repository.keyranges import MAX_RANGES, range_bounds, range_count, range_rows
from drtool.repository.packfile import ENTRY

REPO = "be" * 16
ROOT = Path(__file__).resolve().parent.parent


def packed(ids: list[bytes]) -> bytes:
    return b"".join(ENTRY.pack(i % 3, b, 100 * i, 90 + i % 7, 7, 1000 + i) for i, b in enumerate(ids))


def index_object(ids: list[bytes], per_pack: int = 500) -> list[tuple[bytes, bytes]]:
    return [(os.urandom(32), packed(ids[s:s + per_pack])) for s in range(0, len(ids), per_pack)]


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DRTOOL_CACHE_DIR", raising=False)
    monkeypatch.delenv("DRTOOL_INDEX_TABLE", raising=False)
    monkeypatch.delenv("DRTOOL_INDEX_FILTER", raising=False)
    monkeypatch.delenv("DRTOOL_CRASH_AT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "drtool" / REPO / "index"


# ----- the split ------------------------------------------------------------------------------

@pytest.mark.parametrize("ranges", [1, 2, 7, 16, MAX_RANGES])
def test_every_entry_lands_in_one_range_sorted_and_in_key_order(ranges: int) -> None:
    edge = [b"\x00" * 32, b"\xff" * 32, b"\x7f" + os.urandom(31), b"\x80" + os.urandom(31)]
    ids = [os.urandom(32) for _ in range(3000)] + edge
    dup = ids[5]  # a blob in two packs: two rows, one per pack
    packs = [(4, packed(ids[:1000])), (9, packed(ids[1000:2500] + [dup])), (11, packed(ids[2500:]))]
    out = list(range_rows(packs, ranges))
    assert len(out) == ranges
    flat = [row for rows in out for row in rows]
    assert flat == sorted(flat)  # sorted within each range, and each range after the one before
    bounds = range_bounds(ranges) + [256]
    for r, rows in enumerate(out):
        assert all(bounds[r] <= blob_id[0] < bounds[r + 1] for blob_id, _rec in rows)
    expected = sorted((blob_id, REC.pack(number, t, off, length, inner, raw))
                      for number, raw_entries in packs
                      for t, blob_id, off, length, inner, raw in ENTRY.iter_unpack(raw_entries))
    assert flat == expected
    assert sum(blob_id == dup for blob_id, _rec in flat) == 2


def test_range_bounds_cover_every_leading_byte_once() -> None:
    for ranges in (1, 3, 16, 100, 255, 256):
        bounds = range_bounds(ranges)
        assert bounds[0] == 0 and len(bounds) == ranges
        assert all(a < b for a, b in zip(bounds, bounds[1:])) and bounds[-1] <= 255


def test_range_count_grows_with_the_pages_a_move_touches_and_stops_at_one_byte() -> None:
    assert range_count(10, 0) == 1  # a small move: one transaction, as before
    assert range_count(262_144, 0) == 4  # into an empty cache: the leaves it creates
    at_1m = range_count(262_144, 20_000)  # a cache of ~800 k blobs: nearly every leaf is touched
    assert 10 <= at_1m <= 16
    assert range_count(262_144, 500_000) == 132  # a large cache: one dirty page per entry
    assert range_count(10_000_000, 10_000_000) == MAX_RANGES


def test_ids_of_pack_are_the_entries_ids_in_order() -> None:
    ids = [os.urandom(32) for _ in range(50)]
    assert keyranges.ids_of_pack(packed(ids)) == b"".join(ids)


# ----- a move in ranges, whole and interrupted --------------------------------------------------

def lmdb_has(disk: DiskIndex, blob_id: bytes) -> bool:
    """LMDB's own answer, from a fresh read transaction (no table, no filter)."""
    with disk.env.begin(db=disk._blobs) as txn:
        return txn.get(blob_id) is not None


def prefilled(count: int = 200_000) -> tuple[dict[str, list[tuple[bytes, bytes]]], list[bytes]]:
    """Index objects of ``count`` blobs: enough leaves that a move of a few thousand spans ranges."""
    ids = [os.urandom(32) for _ in range(count)]
    objects = {f"base{i:03d}": index_object(ids[s:s + 10_000]) for i, s in enumerate(range(0, count, 10_000))}
    return objects, ids


def test_a_move_in_several_ranges_holds_exactly_its_entries(cache_home: Path) -> None:
    objects, ids = prefilled()
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    with disk.env.begin() as txn:
        leaves = txn.stat(disk._blobs)["leaf_pages"]
    new = [os.urandom(32) for _ in range(8_000)] + ids[:10]  # ten already held by another pack
    assert range_count(len(new), leaves) >= 2
    moved = index_object(new)
    where = {blob_id: (pack_id, off) for pack_id, raw in moved for _t, blob_id, off, *_rest in ENTRY.iter_unpack(raw)}
    disk.add_indexes([("moved", moved)])
    assert "moved" in disk.index_ids()
    with disk.env.begin(db=disk._db[b"meta"]) as txn:
        assert txn.get(keyranges.MOVING) is None
    sample = random.sample(ids, 2000) + new + [os.urandom(32) for _ in range(2000)]
    assert [b in disk for b in sample] == [lmdb_has(disk, b) for b in sample]
    assert all(lmdb_has(disk, b) for b in new)
    found = [disk.get(b) for b in new[:8_000]]
    assert [(loc.pack_id, loc.offset) if loc else None for loc in found] == [where[b] for b in new[:8_000]]
    disk.drop(["moved"])  # its packs go, the ten kept by their first pack stay
    assert not any(lmdb_has(disk, b) for b in new[:8_000]) and all(b in disk for b in ids[:10])
    disk.close()


_CRASHING_MOVE = """
import sys
from pathlib import Path
from drtool.repository.diskindex import DiskIndex
raw = Path(sys.argv[1]).read_bytes()
disk = DiskIndex.open({repo!r})
disk.add_indexes([("crashed", [(b"P" * 32, raw[:len(raw) // 2]), (b"Q" * 32, raw[len(raw) // 2:])])])
print("not reached")
"""


def crash_a_move(tmp_path: Path, new: list[bytes]) -> None:
    """Run a move of ``new`` in a child process that SIGKILLs itself after its first range."""
    half = len(new) // 2
    (tmp_path / "move").write_bytes(packed(new[:half]) + packed(new[half:]))
    env = {**os.environ, "DRTOOL_CRASH_AT": "index-move-between-ranges", "PYTHONPATH": str(ROOT)}
    crashed = subprocess.run([sys.executable, "-c", _CRASHING_MOVE.format(repo=REPO), str(tmp_path / "move")],
                             env=env, capture_output=True, timeout=300)
    assert crashed.returncode == -9 and b"not reached" not in crashed.stdout, crashed.stderr[-2000:]


def left_behind(cache_home: Path, new: list[bytes]) -> tuple[bytes | None, bytes | None, int]:
    """The marks (``moving``, ``building``) and how many of ``new`` the cache's blobs hold, read
    with LMDB alone."""
    env = lmdb.open(str(cache_home), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn)
            blobs = env.open_db(b"blobs", txn=txn, dupsort=True)
            return (txn.get(keyranges.MOVING, db=meta), txn.get(b"building", db=meta),
                    sum(txn.get(b, db=blobs) is not None for b in new))
    finally:
        env.close()


def check_exactly(disk: DiskIndex, held: list[bytes], not_held: list[bytes]) -> None:
    assert all(lmdb_has(disk, b) for b in held) and all(b in disk for b in held)
    assert not any(lmdb_has(disk, b) for b in not_held) and not any(b in disk for b in not_held)


def test_a_crash_between_ranges_is_undone_by_the_next_open(cache_home: Path, tmp_path: Path) -> None:
    objects, ids = prefilled()
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    disk.close()
    new = [os.urandom(32) for _ in range(8_000)]
    crash_a_move(tmp_path, new)
    mark, building, moved = left_behind(cache_home, new)
    assert mark is not None and 0 < moved < len(new)  # killed between two ranges, not before or after
    assert building is not None  # what a drtool that predates the move's mark checks: it rebuilds
    again = DiskIndex.open(REPO)
    assert again is not None
    assert "crashed" not in again.index_ids() and set(again.index_ids()) == set(objects)
    assert len(again) == len(ids)
    check_exactly(again, random.sample(ids, 3000), new)
    assert not {b"P" * 32, b"Q" * 32} & set(again.packs())
    with again.env.begin(db=again._db[b"meta"]) as txn:
        assert txn.get(keyranges.MOVING) is None and txn.get(b"building") is None
    listed = {**objects, "crashed": index_object(new)}  # the next sync reads the object in again
    again.sync(set(listed), listed.get)
    check_exactly(again, new + random.sample(ids, 3000), [os.urandom(32) for _ in range(3000)])
    again.close()


def test_a_crash_between_ranges_is_undone_by_a_process_that_had_the_cache_open(cache_home: Path,
                                                                               tmp_path: Path) -> None:
    objects, ids = prefilled()
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    new = [os.urandom(32) for _ in range(8_000)]
    crash_a_move(tmp_path, new)
    with disk.env.begin(db=disk._db[b"meta"]) as txn:  # a fresh snapshot: the killed move's state
        assert txn.get(keyranges.MOVING) is not None
    assert 0 < sum(lmdb_has(disk, b) for b in new) < len(new)
    other = [os.urandom(32) for _ in range(100)]
    disk.add_indexes([("other", index_object(other))])  # its guarded write finds the mark first
    assert set(disk.index_ids()) == set(objects) | {"other"}
    check_exactly(disk, other + random.sample(ids, 3000), new)
    disk.drop(["other"])
    check_exactly(disk, random.sample(ids, 3000), new + other)
    disk.close()
