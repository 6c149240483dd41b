"""The exact id table beside the disk index (repository/idtable.py): its answers are LMDB's, or none.

A stale table that answered "present" for a dropped blob would make a backup skip storing it, so
these tests check the answers against LMDB itself across adds, drops, bulk builds, a second
process, a crash between the LMDB commit and the table update, and a cache of the previous format.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from drtool.repository import idtable
from drtool.repository.cacheenv import CACHE_FORMAT
from drtool.repository.diskindex import TABLE_FILE, DiskIndex
from drtool.repository.idtable import IdTable
from drtool.repository.packfile import ENTRY

REPO = "ad" * 16
ROOT = Path(__file__).resolve().parent.parent


def index_object(ids: list[bytes], per_pack: int = 50) -> list[tuple[bytes, bytes]]:
    return [(os.urandom(32), b"".join(ENTRY.pack(0, b, 100 * i, 90, 7, 1000) for i, b in enumerate(ids[s:s + per_pack])))
            for s in range(0, len(ids), per_pack)]


def make_objects(count: int, blobs: int, prefix: str = "idx") -> tuple[dict, dict[str, list[bytes]]]:
    ids = {f"{prefix}{i:03d}-{os.urandom(4).hex()}": [os.urandom(32) for _ in range(blobs)] for i in range(count)}
    return {name: index_object(blob_ids) for name, blob_ids in ids.items()}, ids


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DRTOOL_CACHE_DIR", raising=False)
    monkeypatch.delenv("DRTOOL_INDEX_TABLE", raising=False)
    monkeypatch.delenv("DRTOOL_CRASH_AT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "drtool" / REPO / "index"


def lmdb_has(disk: DiskIndex, blob_id: bytes) -> bool:
    """LMDB's own answer, from a fresh read transaction (no table, no filter)."""
    with disk.env.begin(db=disk._blobs) as txn:
        return txn.get(blob_id) is not None


def table_answers(disk: DiskIndex, ids: list[bytes]) -> list[bool | None]:
    """What the table in use says for ``ids`` (None: it sends the lookup to LMDB)."""
    disk._txn()
    table = disk._local.table
    assert table is not None, "the id table is not in use"
    return [table.answer(b, disk._local.token) for b in ids]


def test_present_and_absent_answers_equal_lmdb_on_random_ids(cache_home: Path) -> None:
    disk = DiskIndex.open(REPO)
    assert disk is not None
    objects, ids = make_objects(40, 100)  # far behind: bulk built, table made alongside
    disk.sync(set(objects), objects.get)
    more, more_ids = make_objects(3, 100, "more")  # then incremental adds
    disk.sync(set(objects) | set(more), {**objects, **more}.get)
    gone = sorted(objects)[:5]
    dup = ids[gone[0]][0]  # a blob stored in a gone object and in a kept one stays present
    extra = {"dup": index_object([dup])}
    disk.sync(set(objects) | set(more) | set(extra), {**objects, **more, **extra}.get)
    disk.sync(set(objects) - set(gone) | set(more) | set(extra), {**objects, **more, **extra}.get)
    present = [b for name, blob_ids in {**ids, **more_ids}.items() if name not in gone for b in blob_ids]
    dropped = [b for name in gone for b in ids[name] if b != dup]
    absent = [os.urandom(32) for _ in range(2000)]
    sample = random.sample(present, 1000) + random.sample(dropped, 200) + absent + [dup]
    assert [b in disk for b in sample] == [lmdb_has(disk, b) for b in sample]
    assert dup in disk and not any(b in disk for b in dropped)
    answers = table_answers(disk, sample)
    # the table answered nearly all of them itself (the rest: ids of overflowed buckets)
    assert sum(a is not None for a in answers) > 0.9 * len(sample)
    assert all(a is None or a == lmdb_has(disk, b) for a, b in zip(answers, sample))
    disk.close()


def test_ids_that_overflow_their_buckets_are_answered_by_lmdb_even_after_removals(cache_home: Path) -> None:
    disk = DiskIndex.open(REPO)
    assert disk is not None
    lead = os.urandom(8)  # ids with one home bucket: the first 8 fill its window, the rest overflow
    first, crowded = [lead + os.urandom(24) for _ in range(8)], [lead + os.urandom(24) for _ in range(22)]
    disk.sync({"a"}, {"a": index_object(first)}.get)
    disk.sync({"a", "b"}, {"a": index_object(first), "b": index_object(crowded)}.get)
    stranger = lead + os.urandom(24)
    assert table_answers(disk, first + crowded + [stranger]) == [True] * 8 + [None] * 23
    assert all(b in disk for b in first + crowded) and stranger not in disk
    disk.drop({"a"})  # the window has room again, but the ids that overflowed are still not in it
    assert table_answers(disk, first + crowded + [stranger]) == [None] * 31
    assert not any(b in disk for b in first) and all(b in disk for b in crowded)
    disk.close()


def test_a_writer_without_the_table_makes_it_stale_not_wrong(cache_home: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    objects, ids = make_objects(3, 50)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    gone = sorted(objects)[0]
    assert all(table_answers(disk, ids[gone]))
    monkeypatch.setenv("DRTOOL_INDEX_TABLE", "off")  # e.g. an operator's switch, in another handle
    plain = DiskIndex.open(REPO)
    assert plain is not None and plain._table is None
    plain.drop({gone})
    disk.refresh()
    assert not any(b in disk for b in ids[gone])
    disk._txn()
    assert disk._local.table is None  # its token is not the cache's: not consulted
    plain.close()
    disk.close()
    monkeypatch.delenv("DRTOOL_INDEX_TABLE")
    again = DiskIndex.open(REPO)  # rebuilt at open
    assert again is not None
    assert table_answers(again, ids[gone]) == [False] * 50
    again.close()


def _holder(home: str, ids_hex: list[str], ready, dropped, done, out) -> None:  # type: ignore[no-untyped-def]
    try:
        _hold(home, ids_hex, ready, dropped, done, out)
    except BaseException:
        import traceback
        out.put({"error": traceback.format_exc()})
        raise


def _hold(home: str, ids_hex: list[str], ready, dropped, done, out) -> None:  # type: ignore[no-untyped-def]
    """The second process: maps the table, answers, and must never say "present" for a
    dropped id once its snapshot is renewed after the drop; records what it saw."""
    os.environ["XDG_CACHE_HOME"] = home
    disk = DiskIndex.open(REPO)
    assert disk is not None
    ids = [bytes.fromhex(h) for h in ids_hex]
    first = table_answers(disk, ids)
    old_table = disk._table
    ready.set()
    wrong = late = lookups = 0
    while not done.is_set():  # lookups while the other process drops and rebuilds
        after = dropped.is_set()
        disk.refresh()
        snapshot = disk._txn()  # this thread's LMDB snapshot, which the lookups answer for
        for blob_id in ids:
            lookups += 1
            found = blob_id in disk
            wrong += found != (snapshot.get(blob_id) is not None)
            late += after and found
    disk.refresh()
    out.put({"first": first, "wrong": wrong, "late": late, "lookups": lookups, "now": [b in disk for b in ids],
             "old_table_token": old_table.token() if old_table else None,
             "table_now": table_answers(disk, ids) if disk._table is not None else None})
    disk.close()


def test_a_drop_and_a_rebuild_in_one_process_while_another_maps_the_table(cache_home: Path) -> None:
    objects, ids = make_objects(3, 50)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    gone = sorted(objects)[0]
    spawn = multiprocessing.get_context("spawn")
    ready, dropped, done, out = spawn.Event(), spawn.Event(), spawn.Event(), spawn.Queue()
    holder = spawn.Process(target=_holder, args=(os.environ["XDG_CACHE_HOME"], [b.hex() for b in ids[gone]],
                                                 ready, dropped, done, out))
    holder.start()
    assert ready.wait(60)
    disk.drop({gone})  # a prune's effect, in this process
    dropped.set()
    big, _big_ids = make_objects(20, 100)  # far behind: a bulk build replaces the table file
    disk.sync(set(objects) - {gone} | set(big), {**objects, **big}.get)
    done.set()
    seen = out.get(timeout=120)
    assert "error" not in seen, seen.get("error")
    holder.join(60)
    assert holder.exitcode == 0
    assert seen["first"] == [True] * 50  # it answered from the table before
    assert seen["lookups"] > 0 and seen["wrong"] == 0 and seen["late"] == 0
    assert seen["now"] == [False] * 50
    assert seen["old_table_token"] == idtable.STALE  # the replaced file, still mapped there, says so
    assert seen["table_now"] == [False] * 50  # and it maps the new one
    disk.close()


_CRASHING_ADD = """
import os, sys
from drtool.repository.diskindex import DiskIndex
from drtool.repository.packfile import ENTRY
ids = [bytes.fromhex(h) for h in sys.argv[1:]]
disk = DiskIndex.open({repo!r})
disk.add_indexes([("crashed", [(b"P" * 32, b"".join(ENTRY.pack(0, b, 0, 9, 0, 9) for b in ids))])])
print("not reached")
"""


def test_a_crash_between_the_lmdb_commit_and_the_table_update_leaves_it_stale(cache_home: Path) -> None:
    objects, ids = make_objects(2, 50)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    disk.close()
    new = [os.urandom(32) for _ in range(40)]
    env = {**os.environ, "DRTOOL_CRASH_AT": "index-table-after-commit", "PYTHONPATH": str(ROOT)}
    crashed = subprocess.run([sys.executable, "-c", _CRASHING_ADD.format(repo=REPO), *[b.hex() for b in new]],
                             env=env, capture_output=True, timeout=120)
    assert crashed.returncode == -9 and b"not reached" not in crashed.stdout
    left = IdTable.open(cache_home / TABLE_FILE)
    assert left is not None and left.token() == idtable.BUSY  # it was being changed
    left.close()
    again = DiskIndex.open(REPO)  # detects it at open and rebuilds it from the cache
    assert again is not None and "crashed" in again.index_ids()
    every = [b for blob_ids in ids.values() for b in blob_ids] + new
    assert table_answers(again, every) == [True] * len(every)
    assert all(b in again for b in every)
    again.close()


@pytest.mark.parametrize("previous", [b"1", b"2"])
def test_a_cache_of_the_previous_format_is_rebuilt_and_gets_a_table(cache_home: Path, previous: bytes) -> None:
    """A format-1 cache (no token, no table) as the previous version wrote it; format 2 (no
    removals token: a version that does not renew it must not share the cache) likewise."""
    cache_home.mkdir(parents=True)
    old_id = os.urandom(32)
    env = lmdb.open(str(cache_home), map_size=1 << 24, max_dbs=5)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        txn.put(b"format", previous, db=meta)
        txn.put(b"repository", REPO.encode(), db=meta)
        blobs = env.open_db(b"blobs", txn=txn, dupsort=True)
        txn.put(old_id, bytes(25), db=blobs)
        for name in (b"packs", b"members", b"indexes"):
            env.open_db(name, txn=txn)
    env.close()
    disk = DiskIndex.open(REPO)
    assert disk is not None
    assert old_id not in disk and disk.index_ids() == set()  # not trusted: rebuilt empty
    objects, ids = make_objects(2, 50)
    disk.sync(set(objects), objects.get)
    every = [b for blob_ids in ids.values() for b in blob_ids]
    assert table_answers(disk, every) == [True] * 100 and all(b in disk for b in every)
    with disk.env.begin(db=disk._db[b"meta"]) as txn:
        assert txn.get(b"format") == CACHE_FORMAT == b"3"
    disk.close()


def test_a_damaged_table_file_is_rebuilt(cache_home: Path) -> None:
    objects, ids = make_objects(2, 50)
    disk = DiskIndex.open(REPO)
    assert disk is not None
    disk.sync(set(objects), objects.get)
    disk.close()
    path = cache_home / TABLE_FILE
    data = bytearray(path.read_bytes())
    data[64 + 4096:] = bytes(len(data) - 64 - 4096)  # buckets lost, header (and token) intact
    path.write_bytes(bytes(data))
    again = DiskIndex.open(REPO)
    assert again is not None
    every = [b for blob_ids in ids.values() for b in blob_ids]
    assert table_answers(again, every) == [True] * 100
    again.close()


def test_a_move_past_the_table_s_room_grows_it_and_the_next_open_keeps_it(cache_home: Path) -> None:
    """A first backup's moves filled the table its empty cache had opened with (65,536 ids), and
    the next run's open rebuilt it from every member list, before its walk (issue 21)."""
    disk = DiskIndex.open(REPO)
    assert disk is not None
    small = IdTable.open(cache_home / TABLE_FILE)
    assert small is not None and small.capacity == idtable.MIN_CAPACITY
    objects, ids = make_objects(10, 10_000)  # one move of 100,000 entries: past OVERFULL x 65,536
    disk.add_indexes(sorted(objects.items()))
    assert small.token() == idtable.STALE  # replaced: a process still mapping it asks LMDB
    small.close()
    sample = random.sample([b for blob_ids in ids.values() for b in blob_ids], 2000)
    absent = [os.urandom(32) for _ in range(1000)]
    assert table_answers(disk, sample + absent) == [True] * 2000 + [False] * 1000
    inode = (cache_home / TABLE_FILE).stat().st_ino
    disk.close()
    again = DiskIndex.open(REPO)
    assert again is not None and again._table is not None
    assert (cache_home / TABLE_FILE).stat().st_ino == inode  # kept, not rebuilt
    assert table_answers(again, sample + absent) == [True] * 2000 + [False] * 1000
    assert len(again) + 3 * 100_000 <= idtable.OVERFULL * again._table.capacity  # room for three more
    more, more_ids = make_objects(1, 1000, "more")  # a small move keeps it
    again.add_indexes(sorted(more.items()))
    assert (cache_home / TABLE_FILE).stat().st_ino == inode
    assert table_answers(again, more_ids[next(iter(more))] + sample) == [True] * 3000
    again.close()


def test_a_table_filled_in_key_order_answers_as_one_filled_id_by_id(tmp_path: Path) -> None:
    """The rebuild fills a new table from the cache's ids in key order (``fill_sorted``): each
    id found, ids crowded past their two buckets flagged (LMDB answers), absent ids absent."""
    lead = os.urandom(8)
    crowded = [lead + os.urandom(24) for _ in range(30)]  # one home bucket: 8 fit in its window
    ids = [os.urandom(32) for _ in range(50_000)] + crowded
    absent = [os.urandom(32) for _ in range(5000)]
    answers = {}
    for how in ("sorted", "add"):
        table = IdTable.start(tmp_path / f"{how}.table", idtable.capacity_for(len(ids)))
        if how == "sorted":
            table.fill_sorted(sorted(ids))
        else:
            table.add(ids)
        table.set_token(b"t" * 8)
        answers[how] = [table.answer(b, b"t" * 8) for b in ids + absent]
        table.discard()
    for found in answers.values():
        assert False not in found[:50_030] and True not in found[50_030:]  # never a wrong answer
        assert found[:50_000].count(True) >= 50_000 - 16  # only ids beside the crowded bucket miss
        assert 1 <= found[50_000:50_030].count(True) <= 8  # its window holds 8 ids at most
    assert sum(a is None for a in answers["sorted"]) <= sum(a is None for a in answers["add"]) + 8


def test_a_table_filled_in_steps_with_repeated_ids_is_the_table_filled_once(tmp_path: Path) -> None:
    """A bulk build feeds the table its merged runs a transaction at a time, and a blob stored in
    two packs comes twice: the table must come out byte for byte as one filled from the unique ids
    in one go (a repeated id taking a second slot would crowd its neighbours out to LMDB)."""
    lead = os.urandom(8)
    unique = sorted([os.urandom(32) for _ in range(40_000)] + [lead + os.urandom(24) for _ in range(12)])
    rng = random.Random(5)
    fed = sorted(unique + rng.sample(unique, 4000))  # every repeat right after its first
    files = {}
    for how in ("once", "steps"):
        table = IdTable.start(tmp_path / f"{how}.table", idtable.capacity_for(len(unique)))
        if how == "once":
            table.fill_sorted(unique)
        else:
            fill = idtable.SortedFill(table)
            for start in range(0, len(fed), 777):  # steps that end anywhere, in a bucket or a repeat
                for blob_id in fed[start:start + 777]:
                    fill.put(blob_id)
                table.release_pages()
            fill.close()
        table.install(tmp_path / f"{how}.table", b"t" * 8)
        assert [table.answer(b, b"t" * 8) for b in unique].count(False) == 0
        table.close()
        files[how] = (tmp_path / f"{how}.table").read_bytes()
    assert files["once"] == files["steps"]
