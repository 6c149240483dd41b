"""Small files read on several threads (drtool.backup.readers): same snapshot whatever
the number of readers, a bounded number of files open at once, and per-file problems
(vanished, replaced, grown) reported as when one file was read at a time.

The file operations are injected (drtool.testing.files) and act on the real file
system; nothing of drtool's own is patched.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import DrEnv
from drtool import api
from drtool.testing.files import CountingFileOps, FaultyFileOps
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
    trees = {readers: r.snapshot.tree for readers, r in results.items()}
    assert len(set(trees.values())) == 1, trees
    summaries = {readers: (r.snapshot.summary["files"], r.snapshot.summary["files_read"],
                           r.snapshot.summary["size"]) for readers, r in results.items()}
    assert len(set(summaries.values())) == 1 and summaries[8][0] == 6 * 41 + 3, summaries
    out = tmp_path / "out"
    restored = repo_env.run("restore", results[8].snapshot.id, "--target", str(out))
    assert restored.code == 0, restored.err
    assert describe(out / "src") == describe(src)


def test_files_open_at_once_are_bounded_by_the_readers(repo_env: DrEnv, tmp_path: Path) -> None:
    """Each open is held 3 ms, as a cold disk would: the peak reaches the bound, never more.

    Small files are read on the reader threads; large files and hard links on the
    walking thread, one at a time: the bound is ``readers + 1``."""
    src = tmp_path / "src"
    make_mixed_tree(src)
    for readers in (1, 3):
        ops = CountingFileOps(hold=0.003)
        result = backup_with(repo_env, src, f"bound{readers}", api.Reading(readers=readers, ops=ops))
        assert result.unreadable == [] and result.vanished == []
        assert ops.opened == result.snapshot.summary["files_read"] == 6 * 41 + 2, ops.opened
        # reader threads, plus the walking thread streaming a large file or a hard link meanwhile
        assert readers <= ops.peak <= readers + 1, (readers, ops.peak)
        if readers == 1:
            assert ops.threads == {"MainThread"}  # one reader: read on the walking thread, in walk order


def _unlink(path: bytes) -> None:
    os.unlink(path)


def _into_fifo(path: bytes) -> None:
    os.unlink(path)
    os.mkfifo(path)


def _append(path: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(b"appended between the scan and the read\n" * 50)


@pytest.mark.parametrize("readers", [1, 8])
def test_problems_of_one_file_are_reported_as_before(repo_env: DrEnv, tmp_path: Path, readers: int) -> None:
    """Vanished and replaced files are left out with a warning (no exit 3), a file that
    grew is stored as read and listed as changed; its 200 neighbours are all stored."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"n{i:03d}.txt").write_bytes(b"neighbour %d\n" % i * (i % 30))
    (src / "n050-gone.txt").write_text("deleted before it is opened")
    (src / "n100-fifo.txt").write_text("replaced by a FIFO before it is opened")
    (src / "n150-grows.log").write_bytes(b"line\n" * 100)
    ops = FaultyFileOps({"n050-gone.txt": _unlink, "n100-fifo.txt": _into_fifo, "n150-grows.log": _append})
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
