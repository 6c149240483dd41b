"""The absent-id filter in front of the disk index (repository/idfilter.py): never a false negative."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from drtool.repository.diskindex import FILTER_FILE, DiskIndex
from drtool.repository.idfilter import SAMPLED_PER_PACK, IdFilter, members_sampled_in
from drtool.repository.layered import LayeredIndex
from drtool.repository.packfile import ENTRY

REPO = "ef" * 16


def index_object(ids: list[bytes], per_pack: int = 50) -> list[tuple[bytes, bytes]]:
    return [(os.urandom(32), b"".join(ENTRY.pack(0, b, 100 * i, 90, 7, 1000) for i, b in enumerate(ids[s:s + per_pack])))
            for s in range(0, len(ids), per_pack)]


def make_objects(count: int, blobs: int) -> tuple[dict[str, list[tuple[bytes, bytes]]], dict[str, list[bytes]]]:
    ids = {f"idx{i:03d}-{os.urandom(4).hex()}": [os.urandom(32) for _ in range(blobs)] for i in range(count)}
    return {name: index_object(blob_ids) for name, blob_ids in ids.items()}, ids


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DRTOOL_CACHE_DIR", raising=False)
    monkeypatch.delenv("DRTOOL_INDEX_FILTER", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "drtool" / REPO / "index"


def filter_of(disk: DiskIndex) -> IdFilter:
    disk._txn()  # this thread's snapshot decides whether the filter serves it
    filt = disk._local.filter
    assert filt is not None, "the filter is not in use"
    return filt


def assert_no_false_negatives(disk: DiskIndex, ids: list[bytes]) -> None:
    filt = filter_of(disk)
    missing = [b for b in ids if not filt.maybe(b)]
    assert missing == []
    assert all(b in disk for b in ids) and all(disk.get(b) is not None for b in ids)


def test_bulk_build_and_incremental_adds_have_no_false_negatives_and_reject_absent_ids(cache_home: Path) -> None:
    objects, ids = make_objects(40, 500)  # 20,000 blobs: the empty cache is bulk-built
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    every = [b for blob_ids in ids.values() for b in blob_ids]
    assert_no_false_negatives(disk, every)
    absent = [os.urandom(32) for _ in range(5000)]
    assert not any(b in disk for b in absent)
    rejected = sum(not filter_of(disk).maybe(b) for b in absent)
    assert rejected > 4900  # the filter answers them, not the B-tree (false positives ~0.1 % here)
    more, more_ids = make_objects(3, 200)  # incremental: a few new index objects
    disk.sync(set(objects) | set(more), {**objects, **more}.get)
    assert_no_false_negatives(disk, every + [b for blob_ids in more_ids.values() for b in blob_ids])
    layered = LayeredIndex(disk)  # entries a run adds, moved into the cache
    run_ids = [os.urandom(32) for _ in range(300)]
    packs = index_object(run_ids)
    for pack_id, raw in packs:
        layered.add_packed(pack_id, raw)
    disk.add_indexes([("run-object", packs)])
    layered.indexed({p for p, _raw in packs})
    assert len(layered.overlay) == 0
    assert_no_false_negatives(disk, run_ids)
    disk.close()
    again = DiskIndex.open(REPO)  # kept on disk and trusted by the next process
    assert again is not None
    stamp = filter_of(again).stamp()
    assert_no_false_negatives(again, every + run_ids)
    assert filter_of(again).stamp() == stamp
    again.close()


def test_dropped_packs_answer_absent_though_their_bits_stay(cache_home: Path) -> None:
    objects, ids = make_objects(20, 100)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    gone = sorted(objects)[:2]
    disk.sync(set(objects) - set(gone), objects.get)
    for name, blob_ids in ids.items():
        for b in blob_ids:
            if name in gone:
                assert filter_of(disk).maybe(b) and b not in disk and disk.get(b) is None
            else:
                assert b in disk and disk.get(b) is not None
    disk.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bits-zeroed", "missing"])
def test_a_damaged_or_missing_filter_file_is_rebuilt_from_the_cache(cache_home: Path, damage: str) -> None:
    objects, ids = make_objects(20, 100)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    disk.close()
    path = cache_home / FILTER_FILE
    size = path.stat().st_size
    if damage == "garbage":
        path.write_bytes(os.urandom(size))
    elif damage == "truncated":
        with path.open("r+b") as f:
            f.truncate(size // 2)
    elif damage == "bits-zeroed":  # header intact, bits lost: caught by the sampled packs
        with path.open("r+b") as f:
            f.seek(32)
            f.write(bytes(size - 32))
    else:
        path.unlink()
    rebuilt = DiskIndex.open(REPO)
    assert rebuilt is not None
    assert_no_false_negatives(rebuilt, [b for blob_ids in ids.values() for b in blob_ids])
    rebuilt.close()


def test_entries_added_without_the_filter_make_it_stale_not_wrong(cache_home: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    objects, _ids = make_objects(20, 100)
    reader = DiskIndex.open(REPO)
    assert reader is not None
    reader.sync(set(objects), objects.get)
    filter_of(reader)
    monkeypatch.setenv("DRTOOL_INDEX_FILTER", "off")  # a writer that does not keep the filter
    writer = DiskIndex.open(REPO)
    assert writer is not None and writer._filter is None
    late = [os.urandom(32) for _ in range(100)]
    writer.add_indexes([("late", index_object(late))])
    writer.close()
    reader.refresh()
    assert all(b in reader for b in late)  # the filter is behind this snapshot: not used
    reader._txn()
    assert reader._local.filter is None
    reader.close()
    monkeypatch.delenv("DRTOOL_INDEX_FILTER")
    again = DiskIndex.open(REPO)  # rebuilt at the next open
    assert again is not None
    assert_no_false_negatives(again, late)
    again.close()


def test_a_handle_open_across_a_bulk_build_never_trusts_the_replaced_filter(cache_home: Path) -> None:
    small, _small_ids = make_objects(1, 50)
    other = DiskIndex.open(REPO)  # a second handle, as another thread or process would hold
    assert other is not None
    other.sync(set(small), small.get)
    filter_of(other)
    builder = DiskIndex.open(REPO)
    assert builder is not None
    objects, ids = make_objects(40, 100)  # far behind: the cache is built afresh, with a new filter
    builder.sync(set(objects), objects.get)
    every = [b for blob_ids in ids.values() for b in blob_ids]
    assert_no_false_negatives(builder, every)
    other.refresh()
    assert all(b in other for b in every)  # its old mapping is marked stale, not consulted
    other._txn()
    assert other._local.filter is None
    other.close()
    builder.close()


def test_the_open_check_samples_a_bounded_number_of_ids_of_each_pack_and_catches_a_lost_one(
        cache_home: Path) -> None:
    """Opening a filter or id table checks a sample of cached ids: a bounded one (it was every
    id of 16 packs, twice per open), spread over each pack, and still a check that fails."""
    big = [os.urandom(32) for _ in range(1600)]
    small = [os.urandom(32) for _ in range(10)]
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync({"big", "small"}, {"big": [(os.urandom(32), index_object(big, 1600)[0][1])],
                                 "small": [(os.urandom(32), index_object(small, 10)[0][1])]}.get)
    asked: list[bytes] = []

    def holds(blob_id: bytes) -> bool:
        asked.append(blob_id)
        return True

    with disk.env.begin() as txn:
        assert members_sampled_in(txn, disk._db[b"members"], holds)
        assert 0 < len(asked) <= 16 * SAMPLED_PER_PACK
        assert set(asked) <= set(big) | set(small)
        sampled_big = {b for b in asked if b in set(big)}
        if sampled_big:  # spread over the pack, not its first ids
            assert max(big.index(b) for b in sampled_big) >= 1600 - 1600 // SAMPLED_PER_PACK - 1
        lost = set(big[::2]) | set(small[::2])  # half of every pack's ids gone from the file
        assert not members_sampled_in(txn, disk._db[b"members"], lambda blob_id: blob_id not in lost)
    disk.close()
