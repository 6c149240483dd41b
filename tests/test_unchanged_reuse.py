"""Unchanged files taken over from the parent snapshot without a look-up of their blobs
(``repository.completeness``): only while the index cache can show that nothing left it
since the parent was marked complete.  A file whose blob the repository lost must be read
and stored again, never taken over by its unchanged look.

Everything runs through the CLI, so the backups, ``prune`` and ``catalog rebuild`` share
one index cache (the test environment's), as the runs on one host do.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import DrEnv
from drtool.repository.objects import pack_name
from drtool.snapshot.presence import packs_of


def backup(env: DrEnv, src: Path, name: str = "n") -> dict:
    result = env.run("backup", str(src), "--name", name, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def counts(snap: dict) -> tuple[int, int, int]:
    summary = snap["summary"]
    return summary["files_read"], summary["files_unchanged"], summary["files_known_present"]


def make_tree(src: Path) -> None:
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / f"f{i}.txt").write_bytes(os.urandom(100 + i))
        (src / "sub" / f"g{i}.txt").write_bytes(os.urandom(200 + i))


def test_an_unchanged_re_run_trusts_the_marked_parent_and_a_change_is_still_read(
        repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    first = backup(repo_env, src)
    assert counts(first) == (10, 0, 0)
    again = backup(repo_env, src)
    assert counts(again) == (0, 10, 10)
    (src / "sub" / "g3.txt").write_bytes(b"changed")
    changed = backup(repo_env, src)
    assert counts(changed) == (1, 9, 9)
    out = tmp_path / "out"
    assert repo_env.run("restore", changed["id"], "--target", str(out)).code == 0
    assert (out / "src" / "sub" / "g3.txt").read_bytes() == b"changed"
    assert (out / "src" / "f4.txt").read_bytes() == (src / "f4.txt").read_bytes()


def test_a_prune_voids_the_marks_for_one_run(repo_env: DrEnv, tmp_path: Path) -> None:
    src, other = tmp_path / "src", tmp_path / "other"
    make_tree(src)
    other.mkdir()
    (other / "x.bin").write_bytes(os.urandom(5000))
    backup(repo_env, src)
    gone = backup(repo_env, other, "gone")
    assert counts(backup(repo_env, src))[2] == 10
    forgot = repo_env.run("forget", gone["id"])
    assert forgot.code == 0, forgot.err
    pruned = repo_env.run("prune")
    assert pruned.code == 0, pruned.err
    after = backup(repo_env, src)
    assert counts(after) == (0, 10, 0)  # index objects left the cache: every blob looked up
    assert counts(backup(repo_env, src)) == (0, 10, 10)  # and the new snapshot is marked again


@pytest.mark.parametrize("cached", [False, True], ids=["parent-index-not-yet-cached", "parent-index-cached"])
def test_a_file_whose_blob_was_lost_is_read_again_not_taken_over(repo_env: DrEnv, tmp_path: Path,
                                                                 cached: bool) -> None:
    """The failing case of a wrong reuse rule: the parent's data pack and every index object
    are lost, ``catalog rebuild`` indexes what is left (the tree pack), and the files still
    look unchanged.  Their blobs are gone from the index, so they must be read and stored;
    taken over, the new snapshot would name blobs the repository does not have."""
    src = tmp_path / "src"
    make_tree(src)
    first = backup(repo_env, src)
    if cached:  # a second run reads the first's index objects into the cache and marks the tree
        assert counts(backup(repo_env, src)) == (0, 10, 10)
    with repo_env.session() as session:
        session.repo.load_index()
        snap = session.find_snapshot(first["id"])
        needs = packs_of(session.repo, snap)
        tree_pack = session.repo.locate(bytes.fromhex(snap.tree)).pack_id
    data_packs = set(needs) - {tree_pack}
    assert data_packs
    for pack in data_packs:
        (repo_env.repo / pack_name(pack)).unlink()
    for index_object in (repo_env.repo / "index").iterdir():
        index_object.unlink()
    repo_env.run("catalog", "rebuild")  # re-indexes the packs left (the trees); reports the loss
    healed = backup(repo_env, src)
    assert counts(healed) == (10, 0, 0)
    out = tmp_path / "out"
    restored = repo_env.run("restore", healed["id"], "--target", str(out))
    assert restored.code == 0, restored.err
    for path in sorted(src.rglob("*.txt")):
        assert (out / "src" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert counts(backup(repo_env, src)) == (0, 10, 10)


def test_without_the_disk_cache_every_blob_is_looked_up(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    memory = {"DRTOOL_INDEX_CACHE": "memory"}
    for _ in range(3):
        result = repo_env.run("backup", str(src), "--name", "n", "--json", env=memory)
        assert result.code == 0, result.err
    assert counts(json.loads(result.out)) == (0, 10, 0)


# ----- directories taken over whole on their listing (backup/listings.py)

def leaf_tree(src: Path) -> list[Path]:
    """Four leaf directories of regular files under one directory that also holds a file."""
    leaves = [src / "top" / f"d{i}" for i in range(4)]
    for leaf in leaves:
        leaf.mkdir(parents=True)
        for j in range(3):
            (leaf / f"f{j}.bin").write_bytes(os.urandom(50 + j))
    (src / "top" / "note.txt").write_bytes(b"note")
    return leaves


def listed(snap: dict) -> int:
    return snap["summary"]["dirs_listed_as_before"]


def restored_equal(env: DrEnv, snap: dict, src: Path, out: Path) -> None:
    result = env.run("restore", snap["id"], "--target", str(out))
    assert result.code == 0, result.err
    from treegen import describe
    assert describe(out / src.name) == describe(src)


def change_size_kept(leaf: Path) -> None:
    path = leaf / "f1.bin"
    data = path.read_bytes()
    path.write_bytes(bytes(reversed(data)))  # same size, new content (and mtime/ctime)


def change_mode(leaf: Path) -> None:
    (leaf / "f0.bin").chmod(0o600)


def add_file(leaf: Path) -> None:
    (leaf / "new.bin").write_bytes(b"new")


def remove_file(leaf: Path) -> None:
    (leaf / "f2.bin").unlink()


def add_hard_link(leaf: Path) -> None:
    os.link(leaf / "f0.bin", leaf.parent / "linked.bin")  # f0 has two links now


def add_symlink(leaf: Path) -> None:
    (leaf / "f2.bin").unlink()
    (leaf / "f2.bin").symlink_to("f0.bin")


def add_subdir(leaf: Path) -> None:
    (leaf / "sub").mkdir()


def restore_old_mtime(leaf: Path) -> None:
    path = leaf / "f1.bin"
    st = path.stat()
    path.write_bytes(b"X" * st.st_size)  # same size, mtime put back: only ctime tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("change", [change_size_kept, change_mode, add_file, remove_file, add_hard_link,
                                    add_symlink, add_subdir, restore_old_mtime])
def test_a_leaf_directory_is_taken_over_whole_only_while_its_listing_is_as_before(
        repo_env: DrEnv, tmp_path: Path, change) -> None:
    src = tmp_path / "src"
    leaves = leaf_tree(src)
    first = backup(repo_env, src)
    assert listed(first) == 0
    recorded = backup(repo_env, src)  # parent now marked complete: per-file reuse, listings recorded
    assert counts(recorded) == (0, 13, 13)
    whole = backup(repo_env, src)
    assert listed(whole) == 4 and counts(whole) == (0, 13, 13)
    assert whole["summary"]["size"] == first["summary"]["size"]
    change(leaves[2])
    after = backup(repo_env, src)
    assert listed(after) == 3  # the changed directory is walked file by file
    restored_equal(repo_env, after, src, tmp_path / "out")


def test_whole_directories_give_the_tree_the_file_by_file_walk_gives(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    leaf_tree(src)
    trees = []
    for _ in range(3):
        backup(repo_env, src)
        with repo_env.session() as session:
            trees.append(session.snapshots("n")[-1].tree)
    assert len(set(trees)) == 1
    memory = repo_env.run("backup", str(src), "--name", "m", "--json", env={"DRTOOL_INDEX_CACHE": "memory"})
    assert memory.code == 0, memory.err
    with repo_env.session() as session:
        assert session.snapshots("m")[-1].tree == trees[0]


def test_no_directory_is_taken_over_whole_when_a_content_hash_is_asked_for(repo_env: DrEnv,
                                                                            tmp_path: Path) -> None:
    src = tmp_path / "src"
    leaf_tree(src)
    for _ in range(3):
        backup(repo_env, src)
    hashed = repo_env.run("backup", str(src), "--name", "n", "--content-hash", "sha256", "--json")
    assert hashed.code == 0, hashed.err
    summary = json.loads(hashed.out)["summary"]
    assert summary["dirs_listed_as_before"] == 0 and summary["files_read"] == 13  # hashes not yet recorded
    found = repo_env.run("find", "--hash", "sha256:" + __import__("hashlib").sha256(
        (src / "top" / "note.txt").read_bytes()).hexdigest())
    assert found.code == 0 and "note.txt" in found.out
