"""Small files read on several threads (drtool.backup.readers): same snapshot whatever
the number of readers, a bounded number of files open at once (a batch per reader
thread, opened and prefetched together), and per-file problems (vanished, replaced,
grown, unreadable) reported as when one file was read at a time.

The file operations are injected (drtool.testing.files) and act on the real file
system; nothing of drtool's own is patched.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import DrEnv
from drtool import api
from drtool.backup.readers import FILES_PER_TASK, FileOps
from drtool.testing.files import CountingFileOps, FailingFileOps, FaultyFileOps
from treegen import describe


def make_mixed_tree(root: Path) -> None:
    """Small files of many sizes (0 B to just under 256 KiB), two large ones, hard
    links, a symlink and nested directories: every kind of entry the walk treats apart."""
    for d in range(6):
        folder = root / f"d{d}" / "sub"
        folder.mkdir(parents=True)
        for f in range(40):
            size = (d * 7919 + f * 104729) % 9000 if f % 10 else 0
            (folder.parent / f"f{f:02d}.txt").write_bytes(bytes([65 + (f % 26)]) * size + os.urandom(f))
        (folder / "near-limit.bin").write_bytes(os.urandom(256 * 1024 - 1 - d))
    (root / "large.bin").write_bytes(os.urandom(600_000))
    (root / "d0" / "huge.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    os.link(root / "d1" / "f03.txt", root / "d2" / "hardlink.txt")
    os.symlink("d0/f01.txt", root / "link")


def backup_with(env: DrEnv, src: Path, name: str, reading: api.Reading,
                content_hash: str | None = None) -> api._backup.BackupResult:  # type: ignore[name-defined]
    with env.session() as session:
        return api.backup(session, [str(src)], name=name, reading=reading, content_hash=content_hash)


def test_snapshot_is_the_same_whatever_the_number_of_readers(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_mixed_tree(src)
    results = {readers: backup_with(repo_env, src, f"r{readers}", api.Reading(readers=readers),
                                    content_hash="sha256")
               for readers in (1, 2, 8)}  # separate series: no parent, every file is read
    # and through Python's own calls (no compiled helper), listing and reading on 8 threads
    results[0] = backup_with(repo_env, src, "python", api.Reading(readers=8, ops=FileOps(compiled=False)),
                             content_hash="sha256")
    trees = {readers: r.snapshot.tree for readers, r in results.items()}
    assert len(set(trees.values())) == 1, trees
    summaries = {readers: (r.snapshot.summary["files"], r.snapshot.summary["files_read"],
                           r.snapshot.summary["size"]) for readers, r in results.items()}
    assert len(trees) == 4
    assert len(set(summaries.values())) == 1 and summaries[8][0] == 6 * 41 + 3, summaries
    out = tmp_path / "out"
    restored = repo_env.run("restore", results[8].snapshot.id, "--target", str(out))
    assert restored.code == 0, restored.err
    assert describe(out / "src") == describe(src)


def test_files_open_at_once_are_bounded_by_the_readers(repo_env: DrEnv, tmp_path: Path) -> None:
    """Each open is held 3 ms, as a cold disk would: the peak reaches past one file per
    reader (a reader opens and prefetches its whole batch before reading it), never past
    the bound.

    Small files are read on the reader threads, a batch of at most ``FILES_PER_TASK``
    each; large files and hard links on the walking thread, one at a time: the bound is
    ``readers * FILES_PER_TASK + 1``.  One reader: one file at a time, on the walk."""
    src = tmp_path / "src"
    make_mixed_tree(src)
    for readers in (1, 3):
        ops = CountingFileOps(hold=0.003)
        result = backup_with(repo_env, src, f"bound{readers}", api.Reading(readers=readers, ops=ops))
        assert result.unreadable == [] and result.vanished == []
        assert ops.opened == result.snapshot.summary["files_read"] == 6 * 41 + 2, ops.opened
        assert ops.open_now == 0
        if readers == 1:
            assert ops.peak == 1
            assert ops.threads == {"MainThread"}  # one reader: read on the walking thread, in walk order
        else:
            # reader threads' batches, plus the walking thread streaming a large file or a hard link
            assert readers < ops.peak <= readers * FILES_PER_TASK + 1, (readers, ops.peak)


def test_batches_keep_walk_order(repo_env: DrEnv, tmp_path: Path) -> None:
    """Several batches of one directory (more files than ``FILES_PER_TASK``, sizes so mixed
    that batches close on bytes as well as on count), read by 3 threads: the same tree as
    one file at a time, and every file restored with its own bytes."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5 * FILES_PER_TASK + 7):
        size = (i * 7919) % 40_000 if i % 13 else 150_000 + i
        (src / f"x{i:04d}.bin").write_bytes(os.urandom(size))
    one = backup_with(repo_env, src, "one", api.Reading(readers=1))
    three = backup_with(repo_env, src, "three", api.Reading(readers=3))
    assert one.snapshot.tree == three.snapshot.tree
    out = tmp_path / "out"
    restored = repo_env.run("restore", three.snapshot.id, "--target", str(out))
    assert restored.code == 0, restored.err
    assert describe(out / "src") == describe(src)


def test_a_file_that_fails_costs_only_itself(repo_env: DrEnv, tmp_path: Path) -> None:
    """Files that cannot be opened at the start, middle and end of a batch are reported,
    each for itself (exit 3); their batch neighbours are stored, and no descriptor of
    the batch stays open."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2 * FILES_PER_TASK):
        (src / f"f{i:03d}.txt").write_bytes(b"file %d\n" % i * (1 + i % 7))
    bad = {"f000.txt": "Input/output error", f"f{FILES_PER_TASK // 2:03d}.txt": "permission denied",
           f"f{FILES_PER_TASK - 1:03d}.txt": "Input/output error"}
    ops = FailingFileOps(bad)
    result = backup_with(repo_env, src, "failing", api.Reading(readers=2, ops=ops))
    assert ops.fail == {} and ops.open_now == 0
    assert sorted((Path(line.split(":")[0]).name, line.split(": ", 1)[1]) for line in result.unreadable) \
        == sorted(bad.items())
    assert result.snapshot.summary["files"] == 2 * FILES_PER_TASK - 3
    out = tmp_path / "out"
    restored = repo_env.run("restore", result.snapshot.id, "--target", str(out))
    assert restored.code == 0, restored.err
    want = describe(src)
    for name in bad:
        del want[name.encode()]
    assert describe(out / "src") == want


def test_unchanged_files_keep_the_parent_node(repo_env: DrEnv, tmp_path: Path) -> None:
    """An unchanged re-run reads nothing and gives the parent's tree ids; a file whose
    mode changed is not taken over as it was (its new mode is restored)."""
    src = tmp_path / "src"
    make_mixed_tree(src)
    first = backup_with(repo_env, src, "again", api.Reading())
    again = backup_with(repo_env, src, "again", api.Reading())
    assert again.snapshot.tree == first.snapshot.tree
    assert again.snapshot.summary["files_read"] == 0
    # every file but the hard link's second name (it takes over its first name's content)
    assert again.snapshot.summary["files_unchanged"] == again.snapshot.summary["files"] - 1
    os.chmod(src / "d3" / "f05.txt", 0o600)
    changed = backup_with(repo_env, src, "again", api.Reading())
    assert changed.snapshot.tree != first.snapshot.tree
    out = tmp_path / "out"
    restored = repo_env.run("restore", changed.snapshot.id, "--target", str(out))
    assert restored.code == 0, restored.err
    assert os.stat(out / "src" / "d3" / "f05.txt").st_mode & 0o777 == 0o600
    assert describe(out / "src") == describe(src)


def test_reading_needs_a_reader_and_a_scanner() -> None:
    with pytest.raises(ValueError):
        api.Reading(scanners=0)
    with pytest.raises(ValueError):
        api.Reading(readers=0)


def _unlink(path: bytes) -> None:
    os.unlink(path)


def _into_fifo(path: bytes) -> None:
    os.unlink(path)
    os.mkfifo(path)


def _append(path: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(b"appended between the scan and the read\n" * 50)


@pytest.mark.parametrize("readers,compiled", [(1, True), (8, True), (8, False)])
def test_problems_of_one_file_are_reported_as_before(repo_env: DrEnv, tmp_path: Path, readers: int,
                                                     compiled: bool) -> None:
    """Vanished and replaced files are left out with a warning (no exit 3), a file that
    grew is stored as read and listed as changed; its 200 neighbours are all stored.
    With the compiled helper the faults come just before the batch is read; without it
    (Python's calls), just before each file is opened."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"n{i:03d}.txt").write_bytes(b"neighbour %d\n" % i * (i % 30))
    (src / "n050-gone.txt").write_text("deleted before it is opened")
    (src / "n100-fifo.txt").write_text("replaced by a FIFO before it is opened")
    (src / "n150-grows.log").write_bytes(b"line\n" * 100)
    ops = FaultyFileOps({"n050-gone.txt": _unlink, "n100-fifo.txt": _into_fifo, "n150-grows.log": _append},
                        compiled=compiled)
    result = backup_with(repo_env, src, "faults", api.Reading(readers=readers, ops=ops))
    assert ops.before == {}, "every fault was injected"
    assert result.unreadable == []
    assert sorted(Path(line.split(":")[0]).name for line in result.vanished) == ["n050-gone.txt",
                                                                                 "n100-fifo.txt"]
    assert "replaced" in next(v for v in result.vanished if "fifo" in v)
    assert [Path(p).name for p in result.changed] == ["n150-grows.log"]
    assert result.snapshot.summary["files"] == 201 and result.snapshot.summary["vanished"] == 2
    os.unlink(src / "n100-fifo.txt")
    out = tmp_path / "out"
    restored = repo_env.run("restore", result.snapshot.id, "--target", str(out))
    assert restored.code == 0, restored.err
    got, want = describe(out / "src"), describe(src)
    grown = b"n150-grows.log"  # stored as read (all of it) with the mtime lstat gave before it grew
    assert got.pop(grown)[:4] == want.pop(grown)[:4]
    assert got == want
