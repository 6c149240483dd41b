"""Backup, restore, check and prune with the blob index's disk cache (repository/diskindex.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, DrEnv
from test_forget_prune import DAY, T, assert_check_ok, backup_at, repo_files, restored, run_prune, write_tree


@pytest.fixture
def cached(repo_env: DrEnv, monkeypatch: pytest.MonkeyPatch) -> DrEnv:
    """In-process sessions and CLI runs share one cache directory, as runs on one host do."""
    monkeypatch.setenv("XDG_CACHE_HOME", repo_env.env["XDG_CACHE_HOME"])
    return repo_env


def cache_dir(dr: DrEnv) -> Path:
    (found,) = (Path(dr.env["XDG_CACHE_HOME"]) / "drtool").glob("*/index")
    return found


def backup(dr: DrEnv, src: Path, name: str = "files", env: dict[str, str] | None = None) -> dict:
    """``name``: a new series has no parent snapshot, so every file is read and looked up again."""
    result = dr.run("backup", str(src), "--name", name, "--json", env=env)
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_backups_dedup_through_the_cache_and_restore_and_check_use_it(cached: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = write_tree(src, {"a": os.urandom(3_000_000), "b": os.urandom(200_000)})
    first = backup(cached, src)
    assert (cache_dir(cached) / "data.mdb").stat().st_size > 0
    cached.catalog.unlink()  # no help from the catalog's copy of the index: the cache alone
    second = backup(cached, src, "again")  # every file read again
    assert second["summary"]["files_read"] == 2 and second["summary"]["blobs_added"] == 0
    assert restored(cached, first["id"], tmp_path / "out") == files
    assert_check_ok(cached)


@pytest.mark.parametrize("damage", ["removed", "garbage"])
def test_a_lost_or_damaged_cache_is_rebuilt_from_the_repository(cached: DrEnv, tmp_path: Path, damage: str) -> None:
    src = tmp_path / "src"
    files = write_tree(src, {"a": os.urandom(1_500_000)})
    first = backup(cached, src)
    data = cache_dir(cached) / "data.mdb"
    if damage == "removed":
        data.unlink()
    else:
        data.write_bytes(os.urandom(data.stat().st_size))
    again = backup(cached, src, "again")
    assert again["summary"]["blobs_added"] == 0  # knew every blob again after the rebuild
    assert restored(cached, first["id"], tmp_path / "out") == files


def test_another_host_s_cache_learns_its_index_objects_from_the_repository(cached: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"a": os.urandom(1_000_000)})
    backup(cached, src)
    other_host = {"XDG_CACHE_HOME": str(tmp_path / "other-cache"), "DRTOOL_CATALOG": str(tmp_path / "other.sqlite")}
    assert backup(cached, src, "other", env=other_host)["summary"]["blobs_added"] == 0
    write_tree(src, {"a": (src / "a").read_bytes(), "b": os.urandom(500_000)})
    backup(cached, src, "other", env=other_host)  # b's index object: written on the other host
    assert backup(cached, src, "third")["summary"]["blobs_added"] == 0  # this host's cache learned it


def test_after_prune_the_cache_forgets_deleted_packs(cached: DrEnv, tmp_path: Path) -> None:
    """A stale cache would let a backup dedup against deleted packs: a snapshot that cannot be restored."""
    src = tmp_path / "src"
    big = os.urandom(2_000_000)
    write_tree(src, {"big": big})
    backup_at(cached, src, "files", T)
    expected = write_tree(src, {"new": os.urandom(30_000)})
    backup_at(cached, src, "files", T + DAY)
    assert cached.run("forget", "--keep-last", "1").code == 0
    run_prune(cached, T + 2 * DAY)
    sweep = run_prune(cached, T + 3 * DAY + DAY)
    assert sweep.packs_deleted >= 1
    expected = write_tree(src, {"new": expected["new"], "big": big})  # big's blobs are gone: stored again
    again = backup_at(cached, src, "files", T + 5 * DAY)
    assert restored(cached, again, tmp_path / "out") == expected
    assert_check_ok(cached)
    assert len(repo_files(cached, "index/")) >= 1


def test_an_unwritable_shared_cache_directory_falls_back_to_a_private_one(cached: DrEnv, tmp_path: Path) -> None:
    shared = tmp_path / "shared-cache"
    shared.write_text("not a directory\n")  # as root, a file is what no user can create a cache in
    src = tmp_path / "src"
    files = write_tree(src, {"a": os.urandom(100_000)})
    snap = backup(cached, src, env={"DRTOOL_CACHE_DIR": str(shared)})
    assert (cache_dir(cached) / "data.mdb").exists()
    assert restored(cached, snap["id"], tmp_path / "out") == files


RSS_PROBE = r"""
import os, sys
from drtool.repository.diskindex import DiskIndex
from drtool.repository.packfile import ENTRY
mode, blobs = sys.argv[1], int(sys.argv[2])
disk = DiskIndex.open("ef" * 16)
if mode == "build":  # index objects of 10,000 random blob ids each
    for n in range(0, blobs, 10_000):
        disk.add_indexes([(f"i{n}", [(os.urandom(32), b"".join(ENTRY.pack(0, os.urandom(32), 0, 1, 0, 1)
                                                               for _ in range(10_000)))])])
    sys.exit(0)
found = sum(os.urandom(32) in disk for _ in range(20_000))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["RssAnon"].split()[0]), len(disk))
"""


def anon_kib_after_lookups(tmp_path: Path, blobs: int) -> tuple[int, int]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"c{blobs}"), "PYTHONPATH": str(ROOT)}
    for mode in ("build", "measure"):  # measured in a fresh process: nothing left from building
        out = subprocess.run([sys.executable, "-c", RSS_PROBE, mode, str(blobs)], env=env, capture_output=True,
                             text=True, timeout=300, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_memory_of_lookups_does_not_grow_with_the_blobs_in_the_cache(tmp_path: Path) -> None:
    small, small_blobs = anon_kib_after_lookups(tmp_path, 10_000)
    large, large_blobs = anon_kib_after_lookups(tmp_path, 400_000)
    assert (small_blobs, large_blobs) == (10_000, 400_000)
    # Anonymous memory after 20,000 lookups: the cache is file-backed and mapped, so the 390,000
    # more blobs cost none (held in RAM, even packed as MemoryIndex packs them, they were ~27 MiB)
    assert large < small + 4 * 1024, (small, large)


def test_the_index_can_still_be_held_in_memory(repo_env: DrEnv, tmp_path: Path) -> None:
    """DRTOOL_INDEX_CACHE=memory, and the fallback when no cache directory is usable: no cache files."""
    src = tmp_path / "src"
    files = write_tree(src, {"a": os.urandom(1_200_000)})
    memory = {"DRTOOL_INDEX_CACHE": "memory"}
    snap = backup(repo_env, src, env=memory)
    assert backup(repo_env, src, "again", env=memory)["summary"]["blobs_added"] == 0
    assert not (Path(repo_env.env["XDG_CACHE_HOME"]) / "drtool").exists()
    result = repo_env.run("restore", snap["id"], "--target", str(tmp_path / "out"), env=memory)
    assert result.code == 0, result.err
    assert (tmp_path / "out" / "src" / "a").read_bytes() == files["a"]


def cached_index_ids(dr: DrEnv) -> set[str]:
    from drtool.repository.diskindex import DiskIndex
    disk = DiskIndex.open(cache_dir(dr).parent.name)
    assert disk is not None
    try:
        return disk.index_ids()
    finally:
        disk.close()


def test_a_restore_reads_index_objects_the_cache_lacks_without_writing_them_into_it(
        cached: DrEnv, tmp_path: Path) -> None:
    """A restore holds the few index objects its cache lacks in memory (the next backup caches
    them): what it restores is the same, and a backup after it still learns them."""
    src = tmp_path / "src"
    write_tree(src, {"a": os.urandom(1_000_000)})
    backup(cached, src)
    files = write_tree(src, {"a": (src / "a").read_bytes(), "b": os.urandom(600_000)})
    second = backup(cached, src)  # caches the first backup's index objects, not its own
    listed = {p.name for p in (cached.repo / "index").rglob("*") if p.is_file()}
    before = cached_index_ids(cached)
    assert before < listed  # the second backup's objects: in the repository only
    assert restored(cached, second["id"], tmp_path / "out") == files
    assert cached_index_ids(cached) == before  # read, not cached
    (cache_dir(cached) / "data.mdb").unlink()  # an empty cache: a disaster-recovery host
    assert restored(cached, second["id"], tmp_path / "out2") == files
    assert backup(cached, src, "again")["summary"]["blobs_added"] == 0  # the backup knows every blob
    assert cached_index_ids(cached) == listed | {p.name for p in (cached.repo / "index").rglob("*") if p.is_file()}
