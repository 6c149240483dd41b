"""The index cache's mapped pages kept out of the resident set (repository/residency.py).

A kernel that caches files in 2 MiB folios maps a whole folio per lookup: a 1 GiB backup against
a 20 M-blob cache peaked at ~1 GiB of RSS, nearly all of it mapped id-table pages.  These tests
run the real cache files and read the real ``/proc/self`` figures; only the budget is set low,
which is the one thing under test."""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from drtool.repository import residency
from drtool.repository.diskindex import DiskIndex
from drtool.repository.packfile import ENTRY
from drtool.repository.residency import STATM, ResidentBound

REPO = "ae" * 16


def _objects(count: int, blobs: int) -> tuple[dict, list[bytes]]:
    every: list[bytes] = []
    objects = {}
    for i in range(count):
        ids = [os.urandom(32) for _ in range(blobs)]
        every += ids
        objects[f"idx{i:03d}"] = [(os.urandom(32), b"".join(ENTRY.pack(0, b, 100 * n, 90, 7, 1000)
                                                            for n, b in enumerate(ids[s:s + 50])))
                                  for s in range(0, len(ids), 50)]
    return objects, every


def _mapped_kib(path: Path) -> int:
    """This process's resident KiB of the mapping of ``path`` (0 when not mapped)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:
                inside = len(fields) > 5 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DRTOOL_CACHE_DIR", "DRTOOL_INDEX_TABLE", "DRTOOL_INDEX_FILTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "drtool" / REPO / "index"


def test_the_bound_releases_past_its_budget_and_starts_again_from_what_is_left() -> None:
    level, released = [100], []

    def release() -> None:
        released.append(level[0])
        level[0] = 110  # what stays mapped after a release (libraries and the like)
    bound = ResidentBound(release, resident=lambda: level[0], budget=50, every=4)
    for grown in (20, 40, 55):  # checked every 4 lookups
        level[0] = 100 + grown
        bound.tick(4)
    assert released == [155]  # only past the budget over the level it started from
    level[0] = 150
    bound.tick(4)
    assert released == [155]  # 40 over the new floor (110): within the budget
    level[0] = 170
    bound.tick(3)
    assert released == [155]  # not checked before 4 lookups
    bound.tick(1)
    assert released == [155, 170] and bound.releases == 2


def test_no_procfs_means_no_release() -> None:
    released: list[int] = []
    bound = ResidentBound(lambda: released.append(1), resident=lambda: None, budget=0, every=1)
    bound.tick(10)
    assert not released


def test_the_process_s_resident_file_pages_grow_when_a_mapping_is_touched(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(16 << 20))
    before = STATM.file_bytes()
    assert before is not None and before > 0
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        total = sum(mapped[offset] for offset in range(0, len(mapped), mmap.PAGESIZE))
        after = STATM.file_bytes()
        assert after is not None and after - before >= (12 << 20), (before, after, total)
        mapped.madvise(mmap.MADV_DONTNEED)
        released = STATM.file_bytes()
        assert released is not None and released - before < (4 << 20)


@pytest.mark.parametrize("probe", ["c", "python"])  # the paged lookup in C (_idprobe.c) and its fallback
def test_lookups_past_the_budget_release_the_cache_pages_and_still_answer_right(
        cache_home: Path, monkeypatch: pytest.MonkeyPatch, probe: str) -> None:
    monkeypatch.setenv("DRTOOL_INDEX_PROBE", probe)
    objects, present = _objects(8, 2000)
    absent = [os.urandom(32) for _ in range(2000)]
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    disk.close()
    monkeypatch.setattr(residency, "BUDGET_BYTES", 0)  # any growth is past the budget
    monkeypatch.setattr(residency, "CHECK_EVERY", 1)
    disk = DiskIndex.open(REPO)
    assert disk is not None and disk._table is not None
    try:
        assert all(blob_id in disk for blob_id in present)
        assert not any(blob_id in disk for blob_id in absent)
        assert disk._table.paged  # buckets are read now, not mapped
        assert (type(disk._local.answer).__name__ == "PagedProbe") == (probe == "c")
        assert disk._resident.releases > 0
        assert all(blob_id in disk for blob_id in present[:500])  # and answer the same when read
        assert not any(blob_id in disk for blob_id in absent[:500])
        assert disk.has_all([blob_id.hex() for blob_id in present[::7]])
        assert _mapped_kib(disk.path / "ids.table") <= 64  # the header's page or so, not the buckets
        disk._resident = ResidentBound(lambda: None, budget=1 << 60)  # nothing released from here on
        assert not any(blob_id in disk for blob_id in absent)  # read buckets map nothing
        assert all(blob_id in disk for blob_id in present[:2000:3])
        assert _mapped_kib(disk.path / "ids.table") <= 64
    finally:
        disk.close()


def test_within_the_budget_the_table_stays_mapped(cache_home: Path) -> None:
    objects, present = _objects(4, 1000)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    try:
        assert all(blob_id in disk for blob_id in present)
        assert disk._table is not None and not disk._table.paged and disk._resident.releases == 0
        assert _mapped_kib(disk.path / "ids.table") > 0
    finally:
        disk.close()
