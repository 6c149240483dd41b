"""File-system edge cases of a backup source: huge sparse files, many files,
deep trees, odd names, hard links, link loops, FIFOs and sockets, and a tree
that changes while the backup runs.

``DRTOOL_BIG_TESTS=1`` runs the 200,000-file variant of the RSS test instead
(about 15 s and 200,000 inodes); CI runs 20,000.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, DrEnv, spawn_without_override
from drtool import api
from drtool.backup.treewalk import WalkStats
from drtool.snapshot.model import FIFO, SOCKET
from drtool.snapshot.store import walk_tree
from treegen import allocated_bytes, describe

GiB = 1024 ** 3
BIG = os.environ.get("DRTOOL_BIG_TESTS") == "1"


def backup_json(env: DrEnv, *args: str) -> dict:
    result = env.run("backup", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def restore_ok(env: DrEnv, target: Path, snapshot: str = "latest") -> dict:
    result = env.run("restore", snapshot, "--target", str(target), "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def data_regions(path: Path) -> list[tuple[int, int]]:
    """(start, end) of every data extent (SEEK_DATA / SEEK_HOLE)."""
    regions, offset = [], 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            regions.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return regions


def same_sparse_content(a: Path, b: Path) -> bool:
    """Byte equality without reading the holes: compare every data extent of either file."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in data_regions(a) + data_regions(b):
            fa.seek(start)
            fb.seek(start)
            if fa.read(end - start) != fb.read(end - start):
                return False
    return True


# ----- size and count ---------------------------------------------------------------------------
def test_5gib_sparse_file_is_quick_small_and_restored_sparse(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    image = src / "disk.img"
    with open(image, "wb") as handle:
        handle.write(b"head of the image " * 1000)
        handle.seek(5 * GiB)
        handle.write(b"tail of the image " * 1000)
    started = time.monotonic()
    snap = backup_json(repo_env, str(src), "--name", "sparse")
    backup_seconds = time.monotonic() - started
    stored = sum(p.stat().st_size for p in repo_env.repo.rglob("*") if p.is_file())
    assert snap["summary"]["bytes_added"] < 2 * 1024 * 1024
    assert stored < 4 * 1024 * 1024
    started = time.monotonic()
    restore_ok(repo_env, tmp_path / "out")
    restore_seconds = time.monotonic() - started
    restored = tmp_path / "out" / "src" / "disk.img"
    print(f"\n5 GiB sparse file: backup {backup_seconds:.2f}s, restore {restore_seconds:.2f}s, "
          f"repository {stored / 1024:.0f} KiB, restored allocation {allocated_bytes(restored) / 1024:.0f} KiB")
    assert allocated_bytes(restored) < 4 * 1024 * 1024
    assert same_sparse_content(image, restored)


def make_many_files(root: Path, count: int) -> None:
    per_dir = 200
    for d in range(count // per_dir):
        folder = root / f"d{d:04d}"
        folder.mkdir(parents=True)
        for f in range(per_dir):
            (folder / f"f{f:03d}.txt").write_bytes(b"%d/%d " % (d, f) * (1 + (d * f) % 200))


# Runs the CLI and then prints the process's own peak RSS (VmHWM): the rusage of a
# child also counts the forking parent's peak (here pytest's, hundreds of MiB).
RUN_AND_REPORT_PEAK = """
import sys
from drtool.cli.main import main
code = main(sys.argv[1:])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(int(hwm.split()[1]) // 1024, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("count", [200_000 if BIG else 20_000])
def test_many_small_files_peak_rss(repo_env: DrEnv, tmp_path: Path, count: int) -> None:
    """Peak RSS of the backup process stays bounded; printed for the record."""
    src = tmp_path / "many"
    make_many_files(src, count)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RUN_AND_REPORT_PEAK, "backup", str(src), "--name", "many",
                           "--json"], env=repo_env.env, cwd=repo_env.tmp, capture_output=True, text=True,
                          timeout=600)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["files"] == count and snap["unreadable"] == []
    rss_mib = int(proc.stderr.strip().splitlines()[-1])
    print(f"\n{count} files: backup {seconds:.1f}s, peak RSS {rss_mib} MiB")
    assert 20 < rss_mib < (300 if count > 20_000 else 200)


# ----- shapes and names ---------------------------------------------------------------------------
def make_deep(root: Path, depth: int) -> Path:
    """A chain of ``depth`` directories (os.makedirs recurses; this does not)."""
    path = root
    path.mkdir()
    for _ in range(depth):
        path = path / "d"
        path.mkdir()
    (path / "leaf").write_text(f"depth {depth}")
    return path


def depth_of(root: Path) -> tuple[int, str]:
    depth, path = 0, root
    while (path / "d").is_dir():
        path, depth = path / "d", depth + 1
    return depth, (path / "leaf").read_text()


def remove_deep(root: Path) -> None:
    """shutil.rmtree (and pytest's cleanup) recurse: remove the chain bottom-up instead."""
    path = root
    while (path / "d").is_dir():
        path = path / "d"
    while path != root.parent:
        for child in path.iterdir():
            if not child.is_dir():
                child.unlink()
        path.rmdir()
        path = path.parent


@pytest.mark.parametrize("depth", [300, 1200])
def test_deep_tree(repo_env: DrEnv, tmp_path: Path, depth: int) -> None:
    """300 as in the issue; 1200 is beyond Python's recursion limit (the walk is iterative)."""
    make_deep(tmp_path / "deep", depth)
    try:
        snap = backup_json(repo_env, str(tmp_path / "deep"), "--name", "deep")
        assert snap["summary"]["dirs"] == depth + 1
        restore_ok(repo_env, tmp_path / "out")
        assert depth_of(tmp_path / "out" / "deep") == (depth, f"depth {depth}")
        assert repo_env.run("check").code == 0
    finally:
        for root in (tmp_path / "deep", tmp_path / "out" / "deep"):
            if root.exists():
                remove_deep(root)


def test_long_and_non_utf8_names(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    base = os.fsencode(str(src))
    names = [b"a" * 255, ("é" * 127 + "x").encode(), b"\xff\xfe latin-1 caf\xe9",
             b"tab\tnewline\nname", b"-starts-with-dash", b" leading space"]
    for i, name in enumerate(names):
        with open(base + b"/" + name, "wb") as handle:
            handle.write(b"content %d" % i)
    os.mkdir(base + b"/dir-\xe9\xff")
    with open(base + b"/dir-\xe9\xff/" + b"b" * 255, "wb") as handle:
        handle.write(b"inside a non-UTF-8 directory")
    os.symlink(b"target-\xff-" + b"c" * 200, base + b"/link-\xfe")
    assert len(names[1]) == 255
    backup_json(repo_env, str(src), "--name", "names")
    restore_ok(repo_env, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(src)


def test_hard_links_across_directories(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for folder in ("a", "b", "c/deep"):
        (src / folder).mkdir(parents=True)
    (src / "a" / "original").write_bytes(os.urandom(400_000))
    os.link(src / "a" / "original", src / "b" / "second")
    os.link(src / "a" / "original", src / "c" / "deep" / "third")
    (src / "b" / "alone").write_text("not linked")
    backup_json(repo_env, str(src), "--name", "links")
    (src / "b" / "alone").write_text("changed")  # second backup: links taken over unchanged
    snap = backup_json(repo_env, str(src), "--name", "links")
    assert snap["summary"]["files_read"] == 1  # only "alone"; the linked inode is not read again
    for snapshot in [s["id"] for s in json.loads(repo_env.run("snapshots", "--json").out)]:
        out = tmp_path / f"out-{snapshot[:8]}"
        restore_ok(repo_env, out, snapshot)
        inodes = {os.stat(out / "src" / p).st_ino for p in ("a/original", "b/second", "c/deep/third")}
        assert len(inodes) == 1 and os.stat(out / "src" / "a" / "original").st_nlink == 3
    assert describe(out / "src") == describe(src)


def test_symlink_loops_are_stored_as_links(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    os.symlink("loop-b", src / "loop-a")
    os.symlink("loop-a", src / "loop-b")
    os.symlink("self", src / "self")
    os.symlink("..", src / "sub" / "up")  # following it would walk the tree forever
    os.symlink(str(src), src / "sub" / "root")
    snap = backup_json(repo_env, str(src), "--name", "loops")
    assert snap["summary"]["dirs"] == 2 and snap["unreadable"] == []
    restore_ok(repo_env, tmp_path / "out")
    out = tmp_path / "out" / "src"
    for link in ("loop-a", "loop-b", "self", "sub/up", "sub/root"):
        assert os.readlink(out / link) == os.readlink(src / link)
    assert describe(out) == describe(src)


def test_fifo_and_socket_are_recorded_not_read(repo_env: DrEnv, tmp_path: Path) -> None:
    """A FIFO with no writer must not block the backup (subprocess with a timeout)."""
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    (src / "regular").write_text("data")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(src / "sock"))
    listener.listen(1)
    try:
        proc = repo_env.spawn("backup", str(src), "--name", "special", "--json", timeout=60)
    finally:
        listener.close()
    assert proc.returncode == 0, proc.stderr
    with repo_env.session() as session:
        session.repo.load_index()
        types = {p: n.type for p, n in walk_tree(session.repo, session.find_snapshot("latest").tree)}
    assert types["src/fifo"] == FIFO and types["src/sock"] == SOCKET
    result = repo_env.run("restore", "latest", "--target", str(tmp_path / "out"))
    assert result.code == 0, result.err
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out" / "src" / "fifo").st_mode)
    assert "socket not restored" in result.err
    assert (tmp_path / "out" / "src" / "regular").read_text() == "data"


# ----- a tree that changes while it is backed up ----------------------------------------------------
def backup_with_hook(env: DrEnv, src: Path, hook) -> api._backup.BackupResult:  # type: ignore[no-untyped-def]
    """Back up in-process; ``hook(stats)`` runs after each file read (the walk's progress callback).

    One reader: files are read one at a time in walk order, so "after the first file"
    is before the others are opened.  The same problems with 8 readers (faults injected
    just before a file is opened): tests/test_read_concurrency.py.
    """
    with env.session() as session:
        return api.backup(session, [str(src)], name="live", progress=hook, reading=api.Reading(readers=1))


def test_entries_vanishing_during_backup_are_warnings_not_errors(repo_env: DrEnv, tmp_path: Path) -> None:
    """Deleted between the directory scan and the read: left out with a warning, no exit 3."""
    src = tmp_path / "src"
    (src / "c-dir" / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("read first")
    (src / "b.txt").write_text("deleted before it is opened")
    (src / "c-dir" / "sub" / "x").write_text("deleted with its directory")
    os.symlink("a.txt", src / "d-link")
    (src / "e.txt").write_text("stays")

    def hook(stats: WalkStats) -> None:
        if stats.files_read == 1:  # a.txt was read; the rest of the directory was scanned already
            (src / "b.txt").unlink()
            shutil.rmtree(src / "c-dir")
            (src / "d-link").unlink()

    result = backup_with_hook(repo_env, src, hook)
    assert result.unreadable == []
    assert sorted(Path(line.split(":")[0]).name for line in result.vanished) == ["b.txt", "c-dir", "d-link"]
    assert result.snapshot.summary["vanished"] == 3
    restore_ok(repo_env, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out" / "src")) == ["a.txt", "e.txt"]


CHURN = """
import os, sys
busy = sys.argv[1]
names = [os.path.join(busy, f"tmp{i:05d}") for i in range(3000)]
i = 0
while True:
    name = names[(i * 7919) % 3000]
    try:
        os.unlink(name)
    except FileNotFoundError:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644))
    i += 1
    if i == 1000:
        open(sys.argv[2], "w").close()
"""


def test_busy_directory_never_hides_its_other_entries(repo_env: DrEnv, tmp_path: Path) -> None:
    """Files deleted between readdir and lstat used to make the whole directory unreadable
    (exit 3, its other entries missing); files deleted before open were 'unreadable'."""
    src = tmp_path / "src"
    busy = src / "busy"
    busy.mkdir(parents=True)
    for i in range(3000):
        (busy / f"tmp{i:05d}").write_bytes(b"x")
    (busy / "zz-stable").write_text("must be in every snapshot")
    ready = tmp_path / "churning"
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(busy), str(ready)])
    try:
        while not ready.exists():
            time.sleep(0.01)
        runs = [repo_env.spawn("backup", str(src), "--name", "busy", "--json", timeout=120) for _ in range(4)]
    finally:
        churn.kill()
        churn.wait()
    assert [r.returncode for r in runs] == [0] * 4, runs[-1].stderr[-2000:]
    vanished = sum(json.loads(r.stdout)["summary"]["vanished"] for r in runs)
    print(f"\nentries that vanished during 4 busy backups: {vanished}")
    for snap in json.loads(repo_env.run("snapshots", "--json").out):
        out = tmp_path / f"out-{snap['short_id']}"
        restore_ok(repo_env, out, snap["id"])
        assert (out / "src" / "busy" / "zz-stable").read_text() == "must be in every snapshot"


REPLACE_BY_FIFO = """
import os, sys, json
from drtool import api
src = sys.argv[1]
def hook(stats):
    if stats.files_read == 1:
        os.unlink(os.path.join(src, "b.txt"))
        os.mkfifo(os.path.join(src, "b.txt"))
with api.open_repository(sys.argv[2], sys.argv[3].encode(), catalog=sys.argv[4]) as s:
    r = api.backup(s, [src], name="fifo", progress=hook, reading=api.Reading(readers=1))
print(json.dumps({"vanished": r.vanished, "unreadable": r.unreadable}))
"""


def test_file_replaced_by_fifo_does_not_block(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("read first")
    (src / "b.txt").write_text("replaced by a FIFO after the scan")
    proc = subprocess.run([sys.executable, "-c", REPLACE_BY_FIFO, str(src), str(repo_env.repo), PASSWORD,
                           str(repo_env.catalog)], env=repo_env.env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["unreadable"] == [] and len(result["vanished"]) == 1
    assert "b.txt" in result["vanished"][0] and "replaced" in result["vanished"][0]


def test_file_growing_before_it_is_read_is_reported_changed(repo_env: DrEnv, tmp_path: Path) -> None:
    """Deterministic companion of test_roundtrip's appender thread: lstat size != bytes read."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("read first")
    (src / "b.log").write_bytes(b"line\n" * 1000)

    def hook(stats: WalkStats) -> None:
        if stats.files_read == 1:
            with open(src / "b.log", "ab") as handle:
                handle.write(b"appended while the backup ran\n" * 100)

    result = backup_with_hook(repo_env, src, hook)
    assert [Path(p).name for p in result.changed] == ["b.log"]
    assert result.snapshot.summary["changed_during_backup"] == 1
    restore_ok(repo_env, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "b.log").read_bytes() == (src / "b.log").read_bytes()


def test_unreadable_entries_exit_3_and_the_rest_restores(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "ok" / "locked-dir").mkdir(parents=True)
    (src / "ok" / "good.bin").write_bytes(os.urandom(300_000))
    (src / "ok" / "locked.bin").write_bytes(b"no access")
    (src / "ok" / "locked-dir" / "inside").write_text("x")
    (src / "ok" / "locked.bin").chmod(0)
    (src / "ok" / "locked-dir").chmod(0)
    try:
        result = spawn_without_override(repo_env, "backup", str(src), "--name", "perm", "--json")
    finally:
        (src / "ok" / "locked-dir").chmod(0o755)
    assert result.returncode == 3, result.stderr
    snap = json.loads(result.stdout)
    assert len(snap["unreadable"]) == 2 and snap["summary"]["vanished"] == 0
    assert "locked.bin" in result.stderr and "locked-dir" in result.stderr
    restore_ok(repo_env, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "ok" / "good.bin").read_bytes() == (src / "ok" / "good.bin").read_bytes()
    assert not (tmp_path / "out" / "src" / "ok" / "locked.bin").exists()


def test_eio_while_reading_a_source_is_listed_unreadable(repo_env: DrEnv, tmp_path: Path) -> None:
    """A cheap real EIO: reading /proc/self/mem at offset 0 fails with 'Input/output error'."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "fine.txt").write_text("fine")
    result = repo_env.spawn("backup", str(src), "/proc/self/mem", "--name", "eio", "--json")
    assert result.returncode == 3, result.stderr
    snap = json.loads(result.stdout)
    assert len(snap["unreadable"]) == 1 and "Input/output error" in snap["unreadable"][0]
    restore_ok(repo_env, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "fine.txt").read_text() == "fine"
    assert not (tmp_path / "out" / "mem").exists()
