"""The compiled helper (drtool.sources._fsbatch: a directory listed, a batch of small files
read, each with the GIL released once) gives exactly what the pure-Python path gives:
the same listings and ``stat_result``s, the same per-file outcomes for files that vanish,
are replaced, grow, change or cannot be read, and the same snapshots. The pure-Python
path stays the fallback where the helper is not built, and is used then.

Everything runs on the real file system; the two paths are chosen through
``FileOps(compiled=...)``, nothing of drtool's own is patched.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DrEnv, ROOT
from drtool import api
from drtool.backup.readers import FileOps, FileRead, ReadAhead, Reading
from drtool.sources import files as fs
from drtool.sources import fsbatch

STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime",
               "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize",
               "st_blocks", "st_rdev")


def test_the_compiled_helper_is_built() -> None:
    """scripts/test installs drtool with setup.py, which builds it: the tests below run both paths."""
    assert fsbatch.load() is not None, "drtool/sources/_fsbatch.c was not built (pip install -e .)"
    assert FileOps().native is not None and FileOps(compiled=False).native is None


class OpensCounted(FileOps):
    """A caller's own file operations, written before the helper existed."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[bytes] = []

    def open(self, path: bytes, check_regular: bool) -> int:
        self.opened.append(path)
        return super().open(path, check_regular)


def test_a_subclass_that_opens_files_itself_is_called_for_every_file(tmp_path: Path) -> None:
    """``FileOps`` subclasses overriding ``open`` (``api.FileOps`` is public) keep being
    called for each small file: the helper, which opens a batch itself, is theirs only
    when they ask for it."""
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"x" * i)
    ops = OpensCounted()
    assert ops.native is None
    ahead = ReadAhead(Reading(readers=2, ops=ops), lambda item, read, data: None)
    for i in range(5):
        path = os.fsencode(tmp_path / f"f{i}")
        ahead.add(i, path, os.lstat(path))
    ahead.take_all()
    ahead.close()
    assert sorted(ops.opened) == [os.fsencode(tmp_path / f"f{i}") for i in range(5)]


def make_tricky_dir(root: Path) -> Path:
    """Every kind of entry a listing meets, with names that are not plain ASCII."""
    root.mkdir()
    (root / "plain.txt").write_text("plain")
    (root / "empty").write_bytes(b"")
    (root / "sub dir").mkdir()
    (root / "sub dir" / "inner").write_text("inner")
    (root / "empty dir").mkdir()
    os.symlink("plain.txt", root / "link")
    os.symlink("nowhere", root / "dangling")
    os.symlink("loop", root / "loop")
    os.mkfifo(root / "fifo")
    os.link(root / "plain.txt", root / "hard link")
    (root / "caf\u00e9 \u65e5\u672c").write_text("utf-8 name")
    (root / "line\nbreak").write_text("newline in the name")
    (root / ("long" * 60)).write_text("a 240-character name")
    with open(os.fsencode(root) + b"/latin1-\xe9t\xe9", "wb") as handle:  # not UTF-8: surrogates
        handle.write(b"bytes name")
    far = root / "far future"
    far.write_text("mtime in 2400, beyond 64-bit nanoseconds")
    os.utime(far, ns=(13_569_465_600 * 10**9 + 123, 13_569_465_600 * 10**9 + 456_789))
    old = root / "before 1970"
    old.write_text("mtime in 1938")
    os.utime(old, ns=(-1_000_000_000 * 10**9 + 5, -1_000_000_000 * 10**9 + 999_999_999))
    return root


def listed(ops: FileOps, path: bytes) -> tuple[list[tuple[object, ...]], list[tuple[str, str]]]:
    entries, problems = ops.scan(path)
    return ([(e.path, e.name, tuple(getattr(e.st, f) for f in STAT_FIELDS), tuple(e.st)) for e in entries],
            [(type(p).__name__, str(p)) for p in problems])


def test_a_listing_is_the_same_through_the_helper(tmp_path: Path) -> None:
    root = make_tricky_dir(tmp_path / "tricky")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        for where in (os.fsencode(root), os.fsencode(root) + b"/", os.fsencode(root / "sub dir"),
                      os.fsencode(root / "empty dir")):
            compiled, python = listed(FileOps(compiled=True), where), listed(FileOps(compiled=False), where)
            assert compiled == python, where
    entries, _ = FileOps(compiled=True).scan(os.fsencode(root))
    by_name = {e.name: e for e in entries}
    assert len(entries) == 16 and by_name["latin1-\udce9t\udce9"].path.endswith(b"/latin1-\xe9t\xe9")
    assert by_name["far future"].st.st_mtime_ns == 13_569_465_600 * 10**9 + 456_789
    assert by_name["before 1970"].st.st_mtime_ns == -1_000_000_000 * 10**9 + 999_999_999
    assert by_name["caf\u00e9 \u65e5\u672c"].path == os.fsencode(root) + "/caf\u00e9 \u65e5\u672c".encode()


def test_a_directory_larger_than_one_chunk_is_listed_whole(tmp_path: Path) -> None:
    """The helper lists 1,024 entries per GIL release (its buffer stays that small): a
    directory of 2,500 entries of every kind comes back whole and as Python lists it."""
    big = tmp_path / "big"
    big.mkdir()
    for i in range(2500):
        if i % 100 == 7:
            (big / f"d{i:05d}").mkdir()
        elif i % 100 == 13:
            os.symlink(f"f{i:05d}", big / f"s{i:05d}")
        else:
            (big / f"f{i:05d}").write_bytes(b"x" * (i % 17))
    compiled, python = listed(FileOps(compiled=True), os.fsencode(big)), listed(FileOps(compiled=False),
                                                                                 os.fsencode(big))
    assert compiled == python and len(compiled[0]) == 2500 and compiled[1] == []


@pytest.mark.parametrize("compiled", [True, False])
def test_a_directory_that_cannot_be_listed_raises_as_before(tmp_path: Path, compiled: bool) -> None:
    (tmp_path / "a file").write_text("not a directory")
    ops = FileOps(compiled=compiled)
    with pytest.raises(fs.Vanished, match="vanished during the backup"):
        ops.scan(os.fsencode(tmp_path / "missing"))
    with pytest.raises(fs.Vanished, match="vanished during the backup"):
        ops.scan(os.fsencode(tmp_path / "a file"))


PERMISSIONS = """
import json, os, sys
from drtool.backup.readers import FileOps, ReadAhead, Reading
root = sys.argv[1].encode()
out = {}
for compiled in (True, False):
    ops, seen = FileOps(compiled=compiled), {}
    for name in (b"/locked-dir", b"/list-only"):
        try:
            entries, problems = ops.scan(root + name)
            seen[name.decode()] = [[e.name for e in entries], [[type(p).__name__, str(p)] for p in problems]]
        except Exception as exc:
            seen[name.decode()] = [type(exc).__name__, str(exc)]
    reads = []
    handle = lambda item, read, data: reads.append([item, type(read.error).__name__, str(read.error), bytes(data).decode()])
    ahead = ReadAhead(Reading(readers=2, ops=ops), handle)
    for name in ("locked.txt", "open.txt"):
        ahead.add(name, root + b"/" + name.encode(), os.lstat(root + b"/" + name.encode()))
    ahead.take_all()
    ahead.close()
    seen["reads"] = reads
    out[str(compiled)] = seen
print(json.dumps(out))
"""


def test_permission_problems_are_the_same_through_the_helper(repo_env: DrEnv, tmp_path: Path) -> None:
    """Without the DAC override a root test run has: a directory that cannot be listed, one
    that can be listed but not searched (every entry's lstat fails), a file that cannot be opened."""
    root = tmp_path / "perm"
    (root / "locked-dir").mkdir(parents=True)
    (root / "list-only").mkdir()
    (root / "list-only" / "one").write_text("1")
    (root / "list-only" / "two").write_text("2")
    (root / "locked.txt").write_text("no access")
    (root / "open.txt").write_text("readable")
    (root / "locked-dir").chmod(0)
    (root / "list-only").chmod(0o444)
    (root / "locked.txt").chmod(0)
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    try:
        proc = subprocess.run([*prefix, sys.executable, "-c", PERMISSIONS, str(root)], env=repo_env.env,
                              capture_output=True, text=True, timeout=60)
    finally:
        (root / "locked-dir").chmod(0o755)
        (root / "list-only").chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["True"] == out["False"]
    seen = out["True"]
    assert seen["/locked-dir"] == ["Unreadable", f"{root}/locked-dir: Permission denied"]
    names, problems = seen["/list-only"]
    assert names == [] and sorted(problems) == [["Unreadable", f"{root}/list-only/{n}: Permission denied"]
                                                for n in ("one", "two")]
    assert seen["reads"] == [["locked.txt", "Unreadable", f"{root}/locked.txt: Permission denied", ""],
                             ["open.txt", "NoneType", "None", "readable"]]


def _replace_by_socket(path: Path) -> socket.socket:
    path.unlink()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def read_scenario(where: Path, ops: FileOps, content_hash: str | None) -> list[tuple[object, ...]]:
    """Small files lstat'ed, then changed the ways a live tree changes before they are read."""
    where.mkdir()
    names = ["plain", "empty", "grows", "touched", "gone", "fifo", "dir", "symlink", "socket", "after"]
    for i, name in enumerate(names):
        (where / name).write_bytes(b"%s %d\n" % (name.encode(), i) * (i * 40) if name != "empty" else b"")
    listed_ = [(name, where / name, os.lstat(where / name)) for name in names]
    with open(where / "grows", "ab") as handle:
        handle.write(b"appended after the lstat\n" * 30)
    st = os.lstat(where / "touched")
    os.utime(where / "touched", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, new mtime
    (where / "gone").unlink()
    (where / "fifo").unlink()
    os.mkfifo(where / "fifo")
    (where / "dir").unlink()
    (where / "dir").mkdir()
    (where / "symlink").unlink()
    os.symlink("plain", where / "symlink")
    sock = _replace_by_socket(where / "socket")
    listed_.append(("proc-mem", Path("/proc/self/mem"), os.lstat("/proc/self/mem")))  # a real EIO
    got: list[tuple[object, ...]] = []

    def handle(item: str, read: FileRead, data: memoryview) -> None:
        error = None if read.error is None else (type(read.error).__name__,
                                                 str(read.error).replace(str(where), "WHERE"))
        got.append((item, error, read.changed, read.grew, read.hash, bytes(data)))

    try:
        ahead = ReadAhead(Reading(readers=2, ops=ops), handle, content_hash)
        for name, path, st in listed_:
            ahead.add(name, os.fsencode(path), st)
        ahead.take_all()
        ahead.close()
    finally:
        sock.close()
    return got


@pytest.mark.parametrize("content_hash", [None, "sha256"])
def test_small_reads_are_the_same_through_the_helper(tmp_path: Path, content_hash: str | None) -> None:
    compiled = read_scenario(tmp_path / "c", FileOps(compiled=True), content_hash)
    python = read_scenario(tmp_path / "p", FileOps(compiled=False), content_hash)
    assert compiled == python
    outcome = {item: (error, changed, grew) for item, error, changed, grew, _hash, _data in compiled}
    assert outcome == {
        "plain": (None, False, False), "empty": (None, False, False), "after": (None, False, False),
        "grows": (None, False, True),  # read again on the walking thread, which follows growth
        "touched": (None, True, False),
        "gone": (("Vanished", "WHERE/gone: vanished during the backup"), False, False),
        "fifo": (("Vanished", "WHERE/fifo: replaced by another kind of file during the backup"), False, False),
        "dir": (("Vanished", "WHERE/dir: replaced by another kind of file during the backup"), False, False),
        "symlink": (("Vanished", "WHERE/symlink: replaced by a symbolic link during the backup"), False, False),
        "socket": (("Vanished", "WHERE/socket: replaced by a special file during the backup"), False, False),
        "proc-mem": (("Unreadable", "/proc/self/mem: Input/output error"), False, False),
    }
    data = {item: blob for item, _e, _c, _g, _h, blob in compiled}
    assert data["plain"] == (tmp_path / "c" / "plain").read_bytes() and data["empty"] == b""
    assert data["after"] == (tmp_path / "c" / "after").read_bytes()
    if content_hash:
        assert all(h.startswith("sha256:") for item, err, _c, grew, h, _d in compiled if err is None and not grew)


def test_read_batch_refuses_a_buffer_smaller_than_the_batch(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    native = fsbatch.load()
    assert native is not None
    with pytest.raises(ValueError, match="smaller than the batch"):
        native.read_batch([os.fsencode(tmp_path / "f")], [101], bytearray(100))
    assert native.read_batch([os.fsencode(tmp_path / "f")], [101], bytearray(101))[0][:2] == (0, 100)


WITHOUT_HELPER = """
import importlib.abc, json, sys
class NoHelper(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "drtool.sources._fsbatch":
            raise ImportError("not built here")
        return None
sys.meta_path.insert(0, NoHelper())
from drtool import api
from drtool.backup.readers import FileOps
assert FileOps().native is None, "the helper was loaded"
with api.open_repository(sys.argv[1], sys.argv[2].encode(), catalog=sys.argv[3]) as s:
    r = api.backup(s, [sys.argv[4]], name="without")
print(json.dumps({"tree": r.snapshot.tree, "files": r.snapshot.summary["files"],
                  "helper": "drtool.sources._fsbatch" in sys.modules}))
"""


def test_without_the_helper_the_python_path_makes_the_same_snapshot(repo_env: DrEnv, tmp_path: Path) -> None:
    """Where ``_fsbatch`` cannot be imported, a backup lists and reads through Python's calls
    and stores the same tree as one through the helper."""
    from test_read_concurrency import make_mixed_tree

    src = tmp_path / "src"
    make_mixed_tree(src)
    from conftest import PASSWORD
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HELPER, str(repo_env.repo), PASSWORD,
                           str(repo_env.catalog), str(src)], env=repo_env.env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    without = json.loads(proc.stdout)
    assert without["helper"] is False and without["files"] == 6 * 41 + 3
    with repo_env.session() as session:
        with_helper = api.backup(session, [str(src)], name="with", reading=api.Reading(ops=FileOps(compiled=True)))
    assert with_helper.snapshot.tree == without["tree"]
