"""Writes around the page cache (``fdio.DirectWrites``) and copies outside the GIL (``copy_into``),
on the real file system: the bytes written must be exactly the ones asked for, wherever a write
starts and ends, and the aligned middle must really bypass the page cache (``fincore``)."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from drtool.fdio import DIRECT_ALIGN, DIRECT_MIN, DirectWrites, copy_into, open_direct, sync_tree
from pagecache import unwritten_pages

MiB = 1024 * 1024


def on_tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a tmpfs (its pages are the page cache: nothing to bypass)."""
    best = ""
    fstype = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mount, kind, *_ = line.split()
        if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, fstype = mount, kind
    return fstype == "tmpfs"


def resident_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def write_pieces(path: Path, data: bytes, cuts: list[int], writes: DirectWrites) -> None:
    """Write ``data`` into a new file at ``path`` as pieces ending at ``cuts``, in a shuffled order."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    direct = open_direct(str(path))
    try:
        pieces = list(zip([0, *cuts], [*cuts, len(data)]))
        random.Random(5).shuffle(pieces)
        source = bytearray(data)
        for start, end in pieces:
            writes.pwrite(fd, direct, memoryview(source)[start:end], start)
    finally:
        os.close(fd)
        if direct >= 0:
            os.close(direct)


@pytest.mark.parametrize("enabled", [True, False], ids=["o_direct", "page_cache"])
def test_every_byte_lands_where_asked_whatever_the_alignment(tmp_path: Path, enabled: bool) -> None:
    rng = random.Random(11)
    data = rng.randbytes(9 * MiB + 123)
    cuts = sorted({1, 4095, 4096, 70_000, 3 * MiB, 3 * MiB + 1, 5 * MiB + 4097, 9 * MiB,
                   *(rng.randrange(len(data)) for _ in range(20))})
    writes = DirectWrites(enabled)
    write_pieces(tmp_path / "f", data, cuts, writes)
    assert (tmp_path / "f").read_bytes() == data
    assert writes.enabled is enabled


@pytest.mark.parametrize("enabled", [True, False], ids=["o_direct", "page_cache"])
def test_a_prefix_is_written_before_the_view_at_any_offset(tmp_path: Path, enabled: bool) -> None:
    """``prefix`` (the tree writer's carried partial block) lands at ``offset`` and the view after it,
    gathered into one aligned write when the offset is a block boundary, through the page cache
    when it is not or when the whole is short."""
    rng = random.Random(4)
    data = bytearray(rng.randbytes(12 * MiB))
    writes = DirectWrites(enabled)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    direct = open_direct(str(tmp_path / "f"))
    try:
        for offset, prefix_len, view_len in [(0, 1000, 3 * MiB - 1000 + 17), (5 * MiB, 4095, 8193),
                                             (6 * MiB, 3000, DIRECT_MIN * 2), (7 * MiB + 100, 500, MiB),
                                             (9 * MiB, 100, 100), (10 * MiB, 1, 2 * MiB - 1)]:
            prefix = bytes(data[offset:offset + prefix_len])
            view = memoryview(data)[offset + prefix_len:offset + prefix_len + view_len]
            writes.pwrite(fd, direct, view, offset, prefix)
            del view
    finally:
        os.close(fd)
        os.close(direct)
    written = (tmp_path / "f").read_bytes()
    for offset, size in [(0, 3 * MiB + 17), (5 * MiB, 4095 + 8193), (6 * MiB, 3000 + DIRECT_MIN * 2),
                         (7 * MiB + 100, 500 + MiB), (9 * MiB, 200), (10 * MiB, 2 * MiB)]:
        assert written[offset:offset + size] == data[offset:offset + size], offset
    assert writes.enabled is enabled


def test_the_aligned_middle_bypasses_the_page_cache(tmp_path: Path) -> None:
    """What the change is for: the restored file's blocks are not left in the page cache (only the
    unaligned edges are); written through the page cache, all of them are."""
    if on_tmpfs(tmp_path):
        pytest.fail(f"{tmp_path} is on a tmpfs, where O_DIRECT has no page cache to bypass: run the "
                    f"tests with TMPDIR on a disk file system")
    data = random.Random(2).randbytes(24 * MiB)
    cuts = list(range(10 * MiB + 100, len(data), 10 * MiB))  # unaligned edges inside the file
    write_pieces(tmp_path / "direct", data, cuts, DirectWrites(True))
    write_pieces(tmp_path / "cached", data, cuts, DirectWrites(False))
    assert (tmp_path / "direct").read_bytes() == data  # read back: now cached, so measure a fresh one
    write_pieces(tmp_path / "direct2", data, cuts, DirectWrites(True))
    assert resident_bytes(tmp_path / "direct2") <= 4 * DIRECT_ALIGN * (len(cuts) + 1)
    assert resident_bytes(tmp_path / "cached") >= len(data) // 2


def test_a_file_system_refusing_o_direct_is_written_through_the_page_cache(tmp_path: Path) -> None:
    """procfs refuses O_DIRECT at open (EINVAL): open_direct says -1 and the write still happens."""
    assert open_direct("/proc/self/comm") == -1
    data = bytes(range(256)) * 1024
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        DirectWrites(True).pwrite(fd, -1, memoryview(bytearray(data)), 4096)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == bytes(4096) + data
    assert len(data) >= DIRECT_MIN


@pytest.mark.parametrize("kind", ["writable", "readonly", "strided", "small"])
def test_copy_into_copies_every_kind_of_source(kind: str) -> None:
    data = bytearray(random.Random(1).randbytes(3 * MiB))
    source = {"writable": memoryview(data)[7:2 * MiB + 7], "readonly": memoryview(bytes(data))[7:2 * MiB + 7],
              "strided": memoryview(data)[7:4 * MiB:2], "small": memoryview(data)[7:1007]}[kind]
    target = bytearray(5 * MiB)
    copy_into(target, source, at=12345)
    assert target[12345:12345 + len(source)] == source.tobytes()
    assert not any(target[:12345]) and not any(target[12345 + len(source):])


def test_sync_tree_leaves_no_page_of_the_tree_unwritten(tmp_path: Path) -> None:
    """Every file's dirty pages reach the disk (``cachestat``), files nested at any depth; the
    count is every file and directory; symlinks are not followed (their target is not ours)."""
    root = tmp_path / "restored"
    (root / "data" / "db").mkdir(parents=True)
    files = [root / "data" / "ibdata1", root / "data" / "db" / "t.ibd", root / "top"]
    for n, path in enumerate(files):
        path.write_bytes(os.urandom(256 * 1024 + n))
    (root / "link").symlink_to("/etc/hostname")
    assert unwritten_pages(files), "the files were written through the page cache: some pages are dirty"
    assert sync_tree(str(root)) == len(files) + 3
    assert unwritten_pages(files) == {}


def test_sync_tree_syncs_files_before_their_directories_and_the_parent_last(tmp_path: Path) -> None:
    """The order the durability argument needs: a directory's entries are synced after the files
    they name, the directory holding the tree (its entry for the tree) last."""
    root = tmp_path / "restored"
    (root / "sub").mkdir(parents=True)
    (root / "a").write_bytes(b"a")
    (root / "sub" / "b").write_bytes(b"b")
    synced: list[str] = []

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
    sync_tree(str(root), fsync=record, threads=1)
    assert sorted(synced[:2]) == sorted([str(root / "a"), str(root / "sub" / "b")])
    assert synced[2:] == [str(root / "sub"), str(root), str(tmp_path)]


def test_sync_tree_names_the_path_that_failed(tmp_path: Path) -> None:
    root = tmp_path / "restored"
    root.mkdir()
    (root / "bad").write_bytes(b"x")

    def failing(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/bad"):
            raise OSError(5, "Input/output error")
    with pytest.raises(OSError) as caught:
        sync_tree(str(root), fsync=failing)
    assert caught.value.filename == str(root / "bad") and caught.value.errno == 5
