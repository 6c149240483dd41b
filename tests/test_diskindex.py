"""The blob index's disk cache (repository/diskindex.py): rebuilt, updated, repaired, shared."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from drtool.repository.diskindex import DiskIndex
from drtool.repository.index import Location, MemoryIndex
from drtool.repository.layered import LayeredIndex
from drtool.repository.packfile import ENTRY, BlobEntry

REPO = "ab" * 16


def blob(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def pack_id(n: int) -> bytes:
    return b"P" + n.to_bytes(4, "big") * 7 + b"xyz"


def index_object(first_pack: int, packs: int, blobs_per_pack: int, first_blob: int) -> list[tuple[bytes, bytes]]:
    """(pack id, packed entries) as an index object holds them."""
    out, n = [], first_blob
    for p in range(first_pack, first_pack + packs):
        raw = b"".join(ENTRY.pack(0, blob(n + i), 100 * i, 90, 7, 1000 + i) for i in range(blobs_per_pack))
        out.append((pack_id(p), raw))
        n += blobs_per_pack
    return out


OBJECTS = {"i1": index_object(0, 3, 10, 0), "i2": index_object(3, 2, 10, 30), "i3": index_object(5, 1, 5, 50)}


class Fetcher:
    def __init__(self, objects: dict[str, list[tuple[bytes, bytes]]]) -> None:
        self.objects, self.fetched = objects, []

    def __call__(self, index_id: str) -> list[tuple[bytes, bytes]] | None:
        self.fetched.append(index_id)
        return self.objects.get(index_id)


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DRTOOL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "drtool" / REPO / "index"


def test_a_new_cache_is_built_from_the_index_objects_and_kept(cache_home: Path) -> None:
    disk = DiskIndex.open(REPO)
    assert disk is not None and disk.path == cache_home
    fetch = Fetcher(OBJECTS)
    assert disk.sync(set(OBJECTS), fetch) == 3
    assert sorted(fetch.fetched) == ["i1", "i2", "i3"]
    assert len(disk) == 55
    assert disk.get(blob(31)) == Location(pack_id(3), 0, 100, 90, 7, 1001)
    assert blob(54) in disk and blob(55) not in disk
    assert disk.has_all([blob(0).hex(), blob(54).hex()]) and not disk.has_all([blob(0).hex(), blob(99).hex()])
    assert disk.packs() == {**{pack_id(p): 10 for p in range(5)}, pack_id(5): 5}
    disk.close()
    again = DiskIndex.open(REPO)
    assert again is not None
    fetch = Fetcher(OBJECTS)
    assert again.sync(set(OBJECTS), fetch) == 0 and fetch.fetched == []  # nothing read twice
    assert again.get(blob(54)) == Location(pack_id(5), 0, 400, 90, 7, 1004)
    again.close()


def test_sync_reads_only_new_objects_and_forgets_gone_ones_keeping_other_copies(cache_home: Path) -> None:
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync({"i1"}, Fetcher(OBJECTS))
    # i4 repacked blobs 0..9 of i1's first pack into pack 9 (as prune does), then i1 went away
    objects = {**OBJECTS, "i4": index_object(9, 1, 10, 0)}
    fetch = Fetcher(objects)
    disk.sync({"i1", "i2", "i4"}, fetch)
    assert sorted(fetch.fetched) == ["i2", "i4"]
    assert disk.get(blob(3)).pack_id == pack_id(0)  # the first cached copy wins
    fetch = Fetcher(objects)
    disk.sync({"i2", "i4"}, fetch)
    assert fetch.fetched == []
    assert disk.get(blob(3)).pack_id == pack_id(9)  # the other copy is still found
    assert blob(15) not in disk and blob(29) not in disk  # only in i1's other packs: gone
    assert blob(35) in disk
    assert set(disk.index_ids()) == {"i2", "i4"} and len(disk) == 30
    assert pack_id(0) not in disk.packs()
    disk.close()


def test_a_listed_object_that_is_gone_is_skipped_and_asked_for_again(cache_home: Path) -> None:
    disk = DiskIndex.open(REPO)
    assert disk is not None
    assert disk.sync({"i1", "gone"}, Fetcher(OBJECTS)) == 1
    fetch = Fetcher(OBJECTS)
    disk.sync({"i1", "gone"}, fetch)
    assert fetch.fetched == ["gone"]
    disk.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-repository"])
def test_a_damaged_or_foreign_cache_file_is_rebuilt(cache_home: Path, damage: str) -> None:
    disk = DiskIndex.open(REPO if damage != "other-repository" else "cd" * 16)
    if damage == "other-repository":  # a cache copied from another repository's directory
        disk.close()
        disk = DiskIndex(Path(str(disk.path)), "cd" * 16)
    assert disk is not None
    disk.sync(set(OBJECTS), Fetcher(OBJECTS))
    path = disk.path
    disk.close()
    data = path / "data.mdb"
    if damage == "garbage":
        data.write_bytes(os.urandom(data.stat().st_size))
    elif damage == "truncated":
        with data.open("r+b") as f:
            f.truncate(100)
    else:
        cache_home.parent.mkdir(parents=True, exist_ok=True)
        path.rename(cache_home)
    rebuilt = DiskIndex.open(REPO)
    assert rebuilt is not None and rebuilt.path == cache_home
    assert rebuilt.index_ids() == set() and blob(1) not in rebuilt
    fetch = Fetcher(OBJECTS)
    rebuilt.sync(set(OBJECTS), fetch)
    assert sorted(fetch.fetched) == ["i1", "i2", "i3"] and blob(54) in rebuilt
    rebuilt.close()


def test_an_unwritable_shared_directory_falls_back_to_a_private_cache(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "not-a-directory"
    shared.write_text("a file where the shared cache directory should be\n")
    monkeypatch.setenv("DRTOOL_CACHE_DIR", str(shared))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "private"))
    disk = DiskIndex.open(REPO)
    assert disk is not None and disk.path == tmp_path / "private" / "drtool" / REPO / "index"
    disk.close()


def test_two_handles_in_one_process_share_the_environment_and_see_each_others_writes(cache_home: Path) -> None:
    one, two = DiskIndex.open(REPO), DiskIndex.open(REPO)
    assert one is not None and two is not None and one.env is two.env
    assert blob(1) not in two  # opens two's read transaction before one writes
    one.sync({"i1"}, Fetcher(OBJECTS))
    two.refresh()
    assert blob(1) in two
    one.close()
    assert blob(1) in two  # still open: the environment is closed with its last handle
    two.close()


def _writer(home: str, worker: int, rounds: int) -> None:
    os.environ["XDG_CACHE_HOME"] = home
    os.environ.pop("DRTOOL_CACHE_DIR", None)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    shared = {"shared": index_object(1000, 2, 50, 100_000)}
    for r in range(rounds):
        own = {f"w{worker}-{r}": index_object(worker * 10_000 + r * 10, 4, 50, worker * 1_000_000 + r * 200)}
        # the repository lists what the other process wrote before the listing; what it writes
        # between the listing and the sync must not be dropped (the stamp)
        listed_at = disk.stamp()
        disk.sync({*shared, *own, *disk.index_ids()}, Fetcher({**shared, **own}), listed_at)
        assert disk.has_all(blob(worker * 1_000_000 + r * 200 + i).hex() for i in range(200))
    disk.close()


def test_concurrent_writers_in_two_processes_neither_corrupt_nor_duplicate(cache_home: Path) -> None:
    home = os.environ["XDG_CACHE_HOME"]
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_writer, args=(home, w, 25)) for w in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    disk = DiskIndex.open(REPO)
    assert disk is not None
    assert len(disk.index_ids()) == 51
    assert len(disk) == 2 * 25 * 200 + 100  # the shared object's packs went in once
    for w in (1, 2):
        assert disk.has_all(blob(w * 1_000_000 + i).hex() for i in range(25 * 200))
    assert disk.packs()[pack_id(1000)] == 50
    disk.close()


def test_the_layered_index_moves_indexed_packs_out_of_memory(cache_home: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from drtool.repository import layered
    monkeypatch.setattr(layered, "OVERLAY_ENTRIES", 4)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync({"i1"}, Fetcher(OBJECTS))
    index = LayeredIndex(disk)
    written = {"i7": [(pack_id(7), b"".join(ENTRY.pack(0, blob(900 + i), 10 * i, 10, 0, 5) for i in range(3)))],
               "i6": [(pack_id(6), ENTRY.pack(0, blob(800), 0, 10, 0, 5))]}
    index.add_entries(pack_id(6), [BlobEntry(0, blob(800), 0, 10, 0, 5)])
    assert index.written("i6", written.__getitem__) == set()  # below the threshold: stays in memory
    index.add_entries(pack_id(7), [BlobEntry(0, blob(900 + i), 10 * i, 10, 0, 5) for i in range(3)])
    index.add_entries(pack_id(8), [BlobEntry(0, blob(950), 0, 10, 0, 5)])
    assert blob(901) in index and blob(3) in index and blob(800) not in disk
    assert index.has_all([blob(3).hex(), blob(950).hex()])
    assert index.get(blob(902)) == Location(pack_id(7), 0, 20, 10, 0, 5)
    cached = index.written("i7", written.__getitem__)  # past it: both objects move to the cache
    assert cached == {pack_id(6), pack_id(7)} and disk.index_ids() == {"i1", "i6", "i7"}
    index.indexed(cached)
    assert len(index.overlay) == 1 and set(index.overlay.packs) == {pack_id(8)}
    assert blob(902) in index and blob(800) in index and blob(950) in index  # the cache's, then the overlay's
    assert blob(902) not in index.overlay and blob(999) not in index
    assert index.get(blob(902)) == Location(pack_id(7), 0, 20, 10, 0, 5)  # now from the disk
    assert index.get(blob(950)) == Location(pack_id(8), 0, 0, 10, 0, 5)
    assert dict(index.items()).keys() == {*(blob(i) for i in range(30)), *(blob(900 + i) for i in range(3)),
                                          blob(800), blob(950)}
    disk.close()


def test_a_memory_index_without_some_packs_keeps_the_rest_and_their_order() -> None:
    index = MemoryIndex()
    for p in range(6):
        index.add_entries(pack_id(p), [BlobEntry(0, blob(i), p, 1, 0, 1) for i in range(40)])
    index.add_entries(pack_id(9), [BlobEntry(0, blob(1000 + i), 9, 1, 0, 1) for i in range(50)])
    kept = index.without_packs({pack_id(0), pack_id(9)})
    assert len(kept) == 5 * 40 and blob(1001) not in kept
    assert all(kept.get(blob(i)).pack_id == pack_id(1) for i in range(40))  # the first remaining pack wins
    assert set(kept.packs) == {pack_id(p) for p in range(1, 6)}


def test_a_listing_older_than_another_process_s_write_does_not_drop_it(cache_home: Path) -> None:
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync({"i1"}, Fetcher(OBJECTS))
    listed_at = disk.stamp()  # then this run lists index/: {"i1"}; meanwhile another run adds i2
    disk.add_indexes([("i2", OBJECTS["i2"])])
    disk.sync({"i1"}, Fetcher(OBJECTS), listed_at)
    assert disk.index_ids() == {"i1", "i2"} and blob(35) in disk
    disk.sync({"i1"}, Fetcher(OBJECTS), disk.stamp())  # a listing taken after it: i2 is gone
    assert disk.index_ids() == {"i1"} and blob(35) not in disk
    disk.close()


def many_objects(count: int) -> dict[str, list[tuple[bytes, bytes]]]:
    objects = {f"m{k:03d}": index_object(100 + 3 * k, 3, 20, 10_000 + 60 * k) for k in range(count)}
    objects["z-dup"] = index_object(900, 1, 20, 10_000)  # the first pack's blobs stored again
    return objects


def test_an_empty_cache_is_bulk_built_and_equals_one_built_incrementally(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from drtool.repository import diskindex
    objects = many_objects(40)
    monkeypatch.setattr(diskindex, "BUILD_RUN_ENTRIES", 500)  # several sorted runs to merge
    monkeypatch.setattr(diskindex, "BUILD_COMMIT_ENTRIES", 300)
    built = {}
    for how in ("bulk", "incremental"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / how))
        disk = DiskIndex.open(REPO)
        assert disk is not None
        if how == "bulk":
            assert disk.sync(set(objects), Fetcher(objects)) == 41
        else:
            for index_id in sorted(objects):  # one at a time: the bulk path for the first only
                disk.sync(disk.index_ids() | {index_id}, Fetcher(objects))
        built[how] = (dict(disk.items()), disk.packs(), disk.index_ids(), len(disk))
        assert disk.get(blob(10_005)).pack_id == pack_id(100)  # m000's copy sorts first
        disk.drop({"m000"})
        assert disk.get(blob(10_005)).pack_id == pack_id(900)  # the other copy is still found
        assert blob(10_025) not in disk and blob(10_065) in disk
        disk.close()
    assert built["bulk"] == built["incremental"]
    assert len(built["bulk"][0]) == 40 * 60 and built["bulk"][3] == 40 * 60 + 20


def test_an_interrupted_bulk_build_is_started_again(cache_home: Path) -> None:
    objects = many_objects(20)
    disk = DiskIndex.open(REPO)
    assert disk is not None

    def failing(index_id: str) -> list[tuple[bytes, bytes]] | None:
        if index_id == "m010":
            raise OSError("connection reset")
        return objects[index_id]

    with pytest.raises(OSError):
        disk.sync(set(objects), failing)
    disk.close()
    again = DiskIndex.open(REPO)  # marked as building: not trusted, built afresh
    assert again is not None and again.index_ids() == set() and blob(10_005) not in again
    assert again.sync(set(objects), Fetcher(objects)) == 21
    assert again.has_all(blob(10_000 + i).hex() for i in range(20 * 60))
    assert not list(again.path.glob("build-*"))  # its temporary runs are gone
    again.close()


def _mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) == 6 and head[5] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux: reads /proc/self/smaps")
def test_released_pages_leave_the_resident_set_and_every_lookup_still_answers(cache_home: Path) -> None:
    objects = {f"x{i}": index_object(100 + 40 * i, 40, 25, 10_000 + 1000 * i) for i in range(8)}  # 8,000 blobs
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), Fetcher(objects))
    ids = [blob(10_000 + n) for n in range(8000)]
    assert all(i in disk for i in ids)
    data, bloom = cache_home / "data.mdb", cache_home / "ids.bloom"
    assert _mapped_rss_kib(data) > 0 and _mapped_rss_kib(bloom) > 0
    disk.release_pages()
    assert _mapped_rss_kib(data) == 0 and _mapped_rss_kib(bloom) == 0
    assert all(i in disk for i in ids) and blob(9_999) not in disk  # mapped again from the page cache
    assert disk.get(ids[123]) == Location(pack_id(104), 0, 2300, 90, 7, 1023)
    disk.close()


def test_entries_added_while_another_handle_bulk_builds_are_neither_lost_nor_misplaced(cache_home: Path) -> None:
    """Two runs on one host share the cache: one rebuilds it from scratch (append-mode inserts,
    pack numbers taken in several transactions) while the other adds the index object it has
    just written.  Neither may lose entries or point a blob at the other's pack."""
    import threading
    objects = many_objects(20)  # more than 16 objects into an empty cache: the bulk build
    late = [("late", index_object(950, 1, 5, 90_000))]  # ids above every built one
    builder, adder = DiskIndex.open(REPO), DiskIndex.open(REPO)
    assert builder is not None and adder is not None
    second_fetch, resume = threading.Event(), threading.Event()

    def slow_fetch(index_id: str) -> list[tuple[bytes, bytes]] | None:
        if index_id == sorted(objects)[1]:
            second_fetch.set()
            assert resume.wait(30)
        return objects[index_id]

    build = threading.Thread(target=builder.sync, args=(set(objects), slow_fetch))
    build.start()
    assert second_fetch.wait(30)
    add = threading.Thread(target=adder.add_indexes, args=(late,))
    add.start()
    add.join(0.5)  # give the adder its chance to interleave (it must wait for the build instead)
    resume.set()
    build.join(60)
    add.join(60)
    assert not build.is_alive() and not add.is_alive()
    for handle in (builder, adder):
        handle.refresh()
        for index_id, packs in [*objects.items(), *late]:
            for pack, raw in packs:
                for entry in ENTRY.iter_unpack(raw):
                    found = handle.get(entry[1])
                    assert found is not None, (index_id, entry[1].hex())
                    copies = {p for i, ps in [*objects.items(), *late] for p, r in ps
                              if any(e[1] == entry[1] for e in ENTRY.iter_unpack(r))}
                    assert found.pack_id in copies, (index_id, found.pack_id)
    assert builder.index_ids() == set(objects) | {"late"}
    builder.close()
    adder.close()


def test_renewing_the_snapshot_many_times_does_not_use_up_lmdb_s_reader_slots(cache_home: Path) -> None:
    """Each renewal (after every write of a long run) used to keep its old transaction, and
    with it one of LMDB's 1,024 reader slots: the 1,025th failed with MDB_READERS_FULL."""
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync({"i1"}, Fetcher(OBJECTS))
    for _ in range(3000):
        disk.refresh()
        assert blob(1) in disk
    disk.close()


def test_an_empty_cache_built_from_a_run_s_objects_keeps_that_run_s_completeness_mark(cache_home: Path) -> None:
    """A first backup that moved nothing marks its tree complete with all its index objects
    pending; the re-run's build of the empty cache takes nothing out, so the mark holds (issue 21:
    the re-run looked up every file's blobs again)."""
    objects = many_objects(20)  # more than 16: built afresh before this change too
    disk = DiskIndex.open(REPO)
    assert disk is not None
    tree = "ab" * 32
    assert disk.mark_complete(tree, disk.removals_token(), sorted(objects))
    assert not disk.is_complete(tree)  # its objects have not reached the cache yet
    assert disk.sync(set(objects), Fetcher(objects)) == 21
    assert disk.is_complete(tree) and disk.has_all(blob(10_000 + i).hex() for i in range(20 * 60))
    # a cache that held entries and is built afresh (far behind) forgets its marks: entries left
    more = {f"n{k:03d}": index_object(2000 + k, 1, 5, 50_000 + 5 * k) for k in range(40)}
    assert disk.mark_complete(tree, disk.removals_token(), [])
    disk.sync(set(objects) | set(more), Fetcher({**objects, **more}))
    assert not disk.is_complete(tree) and disk.has_all(blob(50_000 + i).hex() for i in range(200))
    disk.close()


def test_the_objects_a_run_left_uncached_go_into_the_cache_in_one_move(cache_home: Path) -> None:
    """Index objects another run (or host) wrote since: all found, moved in at once (in key
    ranges), not in 16,384-entry moves that each rewrote half the cache's leaves."""
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(OBJECTS), Fetcher(OBJECTS))
    left = {f"r{k}": index_object(5000 + 10 * k, 4, 1000, 100_000 + 4000 * k) for k in range(10)}
    before = disk.stamp()
    assert disk.sync(set(OBJECTS) | set(left), Fetcher({**OBJECTS, **left})) == 10
    assert disk.stamp() == before + 1  # one move of 40,000 entries
    assert disk.has_all(blob(100_000 + i).hex() for i in range(40_000)) and blob(140_000) not in disk
    assert disk.index_ids() == set(OBJECTS) | set(left)
    disk.close()


def test_read_ahead_reads_a_file_a_large_write_touches_and_skips_one_a_small_write_does_not(tmp_path: Path) -> None:
    from drtool.repository.cacheenv import read_ahead
    path = tmp_path / "data.mdb"
    path.write_bytes(os.urandom(4 << 20))  # 1,024 pages

    def read_bytes(keys: int) -> int:
        with open("/proc/self/io") as io:
            before = int(next(line for line in io if line.startswith("rchar:")).split()[1])
        read_ahead([path, tmp_path / "missing"], keys)
        with open("/proc/self/io") as io:
            return int(next(line for line in io if line.startswith("rchar:")).split()[1]) - before

    assert read_bytes(64) >= 4 << 20  # 64 keys x 16 >= 1,024 pages
    assert read_bytes(63) < 1 << 20
