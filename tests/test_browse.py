"""Browsing and single-file recovery: the per-file index, ls, find, diff and dump.

Real repositories (local directory, and S3 over HTTP through moto), the CLI
as documented, default key derivation.  The index is checked for what it
promises: a row per file *version* (not per file per snapshot), the same
answers after ``catalog rebuild`` or with no catalog at all, and the same
idea of what a path holds as ``restore --include``.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import DrEnv, make_env, terminal_signals
from drtool.backup.run import backup_paths
from drtool.browse.listing import resolve
from drtool.catalog.files import FileIndex
from drtool.snapshot.model import Node, Snapshot
from drtool.snapshot.store import save_snapshot, store_tree
from s3server import MotoServer, client_env, create_bucket, moto_server  # noqa: F401


def ok(result: Any) -> Any:
    assert result.code == 0, f"exit {result.code}\n{result.out}\n{result.err}"
    return json.loads(result.out) if result.out.lstrip().startswith(("{", "[")) else result.out


def make_tree(root: Path, files: int = 40) -> Path:
    for i in range(files):
        folder = root / f"d{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i}.txt").write_text(f"content of file {i}\n" * (i + 1))
    (root / "d0" / "photo.JPG").write_bytes(os.urandom(300_000))
    (root / "d1" / "link").symlink_to("file1.txt")
    return root


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def spawn_bytes(dr: DrEnv, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI as a process, stdout kept as bytes (dump writes binary data)."""
    return subprocess.run([sys.executable, "-m", "drtool", *args], env=dr.env, capture_output=True,
                          timeout=120, cwd=dr.tmp)


def versions(dr: DrEnv, *args: str) -> list[dict[str, Any]]:
    return ok(dr.run("find", *args, "--json"))


def index_rows(dr: DrEnv) -> int:
    with dr.session() as session:
        return FileIndex(session.catalog).counts()["versions"]


@pytest.fixture
def env(tmp_path: Path) -> DrEnv:
    dr = make_env(tmp_path / "dr")
    ok(dr.run("init"))
    return dr


def test_versions_are_intervals_and_the_index_grows_with_changes(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    entries = sum(len(dirs) + len(files) for _, dirs, files in os.walk(src)) + 1  # + the root directory
    s1 = ok(env.run("backup", str(src), "--name", "media", "--json"))
    assert index_rows(env) == entries
    (src / "d1" / "file5.txt").write_text("edited\n")
    (src / "d2" / "file6.txt").unlink()
    (src / "d3" / "new.txt").write_text("new\n")
    s2 = ok(env.run("backup", str(src), "--name", "media", "--json"))
    assert index_rows(env) == entries + 2   # the edited file's new version and the new file, nothing else
    s3 = ok(env.run("backup", str(src), "--name", "media", "--json"))
    assert index_rows(env) == entries + 2   # nothing changed: not a single row

    edited = versions(env, "file5.txt")
    assert [(v["size"], v["first"]["id"], v["last"]["id"], v["snapshots"]) for v in edited] == [
        (len("content of file 5\n" * 6), s1["id"], s1["id"], 1), (7, s2["id"], s3["id"], 2)]
    deleted = versions(env, "file6.txt")
    assert [(v["path"], v["first"]["id"], v["last"]["id"]) for v in deleted] == [
        ("src/d2/file6.txt", s1["id"], s1["id"])]
    same = versions(env, "file7.txt")
    assert [(v["first"]["id"], v["last"]["id"], v["snapshots"]) for v in same] == [(s1["id"], s3["id"], 3)]

    everything = versions(env, "*")
    with env.session() as session, session.lock("prune", exclusive=True):
        assert versions(env, "*") == everything   # an index that is up to date is read without a lock
    ok(env.run("catalog", "rebuild"))
    assert versions(env, "*") == everything
    for leftover in env.catalog.parent.glob(env.catalog.name + "*"):
        leftover.unlink()
    assert versions(env, "*") == everything   # a new catalog: find indexes the snapshots first

    ok(env.run("forget", s1["id"]))
    assert versions(env, "file6.txt") == []
    assert [(v["first"]["id"], v["snapshots"]) for v in versions(env, "file7.txt")] == [(s2["id"], 2)]


def test_find_filters(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    with open(os.path.join(os.fsencode(src), b"d2", b"caf\xe9.txt"), "wb") as odd_file:
        odd_file.write(b"not UTF-8 in the name\n")
    ok(env.run("backup", str(src), "--name", "media", "--content-hash", "sha256"))
    other = make_tree(tmp_path / "other" / "src", files=3)
    ok(env.run("backup", str(other), "--name", "other", "--content-hash", "sha1"),)
    assert {v["name"] for v in versions(env, "file1.txt")} == {"media", "other"}
    assert {v["name"] for v in versions(env, "file1.txt", "--name", "other")} == {"other"}
    assert [v["path"] for v in versions(env, "*.JPG", "--name", "media")] == ["src/d0/photo.JPG"]
    assert versions(env, "*.jpg", "--name", "media") == []            # globs are case-sensitive
    assert {v["path"] for v in versions(env, "file1[0-2].txt")} == {
        "src/d2/file10.txt", "src/d3/file11.txt", "src/d0/file12.txt"}
    assert [v["path"] for v in versions(env, "src/d1/file1*", "--name", "media")] == [
        "src/d1/file1.txt", "src/d1/file13.txt", "src/d1/file17.txt"]
    big = versions(env, "--path", "src", "--min-size", "200k")
    assert [v["path"] for v in big] == ["src/d0/photo.JPG", "src/d0/photo.JPG"]
    assert all(v["size"] <= 100 for v in versions(env, "*.txt", "--max-size", "100"))
    assert {v["path"] for v in versions(env, "--path", "src/d1/", "--name", "media")} == {
        "src/d1"} | {f"src/d1/{n}" for n in os.listdir(src / "d1")}
    photo = src / "d0" / "photo.JPG"
    assert [v["path"] for v in versions(env, "--hash", sha256(photo)[:20])] == ["src/d0/photo.JPG"]
    assert versions(env, "--hash", sha256(photo)) == versions(env, "--hash", sha256(photo)[7:])
    sha1 = hashlib.sha1((other / "d0" / "file0.txt").read_bytes()).hexdigest()
    assert [(v["name"], v["hash"]) for v in versions(env, "--hash", "sha1:" + sha1)] == [
        ("other", "sha1:" + sha1)]
    assert versions(env, "file1.txt", "--since", "-1h", "--until", "now")
    assert versions(env, "file1.txt", "--until", "-1h") == []
    assert versions(env, "file1.txt", "--newer", "-1h")
    assert versions(env, "file1.txt", "--older", "-1h") == []
    odd = versions(env, "caf*")   # a name that is not UTF-8 is found, and shown escaped
    assert [v["path"] for v in odd] == ["src/d2/caf\\xe9.txt"]
    host = versions(env, "file1.txt", "--host", "no-such-host")
    assert host == []
    for args, words in ([("find",), "needs a PATTERN"], [("find", "--hash", "xyz"), "not a hex digest"],
                        [("find", "x", "--min-size", "lots"), "is not a size"],
                        [("find", "x", "--path", "../etc"), "not a path inside"]):
        result = env.run(*args)
        assert result.code == 2 and words in result.err and "Traceback" not in result.err, result.err


def test_restore_include_and_find_agree_on_what_a_path_holds(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    ok(env.run("backup", str(src), "--name", "media", "--content-hash", "sha256"))
    (src / "d1" / "file1.txt").write_text("changed later\n")
    (src / "d1" / "extra.txt").write_text("only in the second snapshot\n")
    (src / "d1_old").mkdir()  # shares the prefix "d1", and '_' is a wildcard in SQL LIKE
    (src / "d1_old" / "kept.txt").write_text("a sibling, not inside src/d1\n")
    (src / "d1xold").mkdir()  # what 'd1_old' would match if the '_' were not escaped
    (src / "d1xold" / "other.txt").write_text("not inside src/d1_old\n")
    second = ok(env.run("backup", str(src), "--name", "media", "--content-hash", "sha256", "--json"))
    for include in ("src/d1", "src/d1_old", "src/d1/file1.txt", "src"):
        found = {(v["path"], v["hash"]) for v in versions(env, "--path", include)
                 if v["last"]["id"] == second["id"] and v["type"] == "file"}
        target = tmp_path / "restored" / include.replace("/", "_")
        ok(env.run("restore", second["id"][:8], "--include", include, "--target", str(target)))
        restored = {(str(p.relative_to(target)), sha256(p)) for p in target.rglob("*")
                    if p.is_file() and not p.is_symlink()}
        assert found == restored and found, include


def test_ls_long_recursive_and_json(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    os.chmod(src / "d2" / "file2.txt", 0o600)
    ok(env.run("backup", str(src), "--name", "media"))
    top = ok(env.run("ls", "latest", "--name", "media")).splitlines()
    assert top == ["src/"]
    listed = ok(env.run("ls", "latest", "src", "-R", "--name", "media")).splitlines()
    on_disk = sorted(str(p.relative_to(src.parent)) + ("/" if p.is_dir() and not p.is_symlink() else "")
                     for p in src.rglob("*"))
    assert sorted(listed) == on_disk
    entries = ok(env.run("ls", "latest", "src/d2", "--json", "--name", "media"))
    stats = {e["name"]: e for e in entries}
    assert set(stats) == set(os.listdir(src / "d2"))
    assert stats["file2.txt"]["mode"] == "0600" and stats["file2.txt"]["size"] == (src / "d2" / "file2.txt").stat().st_size
    long_lines = ok(env.run("ls", "-l", "latest", "src/d1", "--name", "media")).splitlines()
    link = next(line for line in long_lines if line.endswith("src/d1/link -> file1.txt"))
    assert link.startswith("lrwxrwxrwx")
    file_line = next(line for line in long_lines if line.endswith(" src/d1/file1.txt"))
    assert file_line.startswith("-rw-r--r--") and f" {(src / 'd1' / 'file1.txt').stat().st_size} " in file_line
    one = ok(env.run("ls", "latest", "src/d2/file2.txt", "-l", "--name", "media")).splitlines()
    assert len(one) == 1 and one[0].startswith("-rw-------")
    missing = env.run("ls", "latest", "src/nope", "--name", "media")
    assert missing.code == 1 and "has no 'src/nope'" in missing.err and "d0" in missing.err


def test_ls_refuses_a_forged_tree(env: DrEnv) -> None:
    """``ls`` prints stored entries without a ``Node`` each; a tree no backup writes still fails
    clearly: a name that leads out of its directory, a size that is not a number."""
    with env.session() as session, session.lock("backup"):
        escaping = store_tree(session.repo, [Node(name="..", type="file"), Node(name="ok", type="file")])
        odd = store_tree(session.repo, [Node(name="f", type="file", size="big")])  # type: ignore[arg-type]
        root = store_tree(session.repo, [Node(name="bad", type="dir", subtree=escaping),
                                         Node(name="odd", type="dir", subtree=odd)])
        session.repo.flush()
        save_snapshot(session.repo, Snapshot(name="forged", host="h", time=datetime.now(timezone.utc), tree=root))
    assert ok(env.run("ls", "latest", "--name", "forged")).split() == ["bad/", "odd/"]
    for flag, path, words in (("-R", "", "entry name '..'"), ("-l", "odd", "size is not a non-negative integer")):
        result = env.run("ls", flag, "latest", path, "--name", "forged")
        assert result.code == 1 and words in result.err and "Traceback" not in result.err, result.err


def test_diff_added_removed_modified_metadata(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    first = ok(env.run("backup", str(src), "--name", "media", "--json"))
    (src / "d0" / "file0.txt").write_text("new content\n")
    os.chmod(src / "d1" / "file1.txt", 0o640)
    (src / "d2" / "file2.txt").unlink()
    (src / "d3" / "added").mkdir()
    (src / "d3" / "added" / "a.txt").write_text("a\n")
    second = ok(env.run("backup", str(src), "--name", "media", "--json"))
    text = ok(env.run("diff", first["id"][:8], second["id"][:8])).splitlines()
    assert text == ["M    src/d0/file0.txt", "U    src/d1/file1.txt", "-    src/d2/file2.txt",
                    "+    src/d3/added", "+    src/d3/added/a.txt",
                    "2 added, 1 removed, 1 modified, 1 metadata only"]
    data = ok(env.run("diff", first["id"], "latest", "--name", "media", "--json"))
    assert data["summary"] == {"added": 2, "removed": 1, "modified": 1, "metadata": 1}
    assert data["metadata"][0]["before"]["mode"] == "0644" and data["metadata"][0]["after"]["mode"] == "0640"
    assert ok(env.run("diff", "latest", "latest", "--name", "media", "--json"))["summary"] == {
        "added": 0, "removed": 0, "modified": 0, "metadata": 0}


def test_dump_file_directory_and_stream(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    big = src / "d3" / "big.bin"
    big.write_bytes(os.urandom(3_000_000) * 3)   # several chunks, deduplicated
    ok(env.run("backup", str(src), "--name", "media"))
    out = spawn_bytes(env, "dump", "latest", "src/d3/big.bin", "--name", "media")
    assert out.returncode == 0 and out.stdout == big.read_bytes(), out.stderr
    tar = spawn_bytes(env, "dump", "latest", "src/d1", "--name", "media")
    assert tar.returncode == 0, tar.stderr
    target = tmp_path / "untarred"
    with tarfile.open(fileobj=io.BytesIO(tar.stdout), mode="r|") as archive:
        archive.extractall(target, filter="tar")
    assert sorted(os.listdir(target / "d1")) == sorted(os.listdir(src / "d1"))
    for name in os.listdir(src / "d1"):
        assert os.readlink(target / "d1" / name) == os.readlink(src / "d1" / name) \
            if (src / "d1" / name).is_symlink() else (target / "d1" / name).read_bytes() == (src / "d1" / name).read_bytes()
    dump_file = tmp_path / "wiki.sql"
    dump_file.write_text("".join(f"INSERT INTO page VALUES ({i}, 'row {i}');\n" for i in range(50_000)))
    ok(env.run("backup", "--from-command", f"cat {dump_file}", "--name", "db/wiki", "--filename", "wiki.sql"))
    piped = subprocess.run(f"{sys.executable} -m drtool dump latest --name db/wiki | cmp - {dump_file}",
                           shell=True, env=env.env, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stdout + piped.stderr
    early = subprocess.run(["bash", "-c", f"{sys.executable} -m drtool dump latest src/d3/big.bin --name media "
                            f"| head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"],
                           env=env.env, capture_output=True, text=True, timeout=120)
    assert early.stdout.strip() == "141" and early.stderr == ""   # a reader that stops: as SIGPIPE, quiet
    # PYTHONUNBUFFERED (systemd units, containers) makes sys.stdout.buffer a raw FileIO whose write
    # may take part of a big window and say so: that once read as done and exited 0 (CI, 4 Dec)
    unbuffered = subprocess.run(["bash", "-c", f"{sys.executable} -u -m drtool dump latest src/d3/big.bin "
                                 f"--name media | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"],
                                env={**env.env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                                timeout=120)
    assert unbuffered.stdout.strip() == "141" and unbuffered.stderr == ""
    wrong = spawn_bytes(env, "dump", "latest", "src/d9", "--name", "media")
    assert wrong.returncode == 1 and wrong.stderr.startswith(b"drtool: error: snapshot") and not wrong.stdout


def test_dump_of_a_big_file_stops_at_a_damaged_pack(env: DrEnv, tmp_path: Path) -> None:
    """A big file is dumped by the stream reader's worker pool (``WINDOWED_BYTES``): a damaged
    pack must stop it with one line and a non-zero exit, never pass on wrong bytes."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(12 << 20))
    ok(env.run("backup", str(src), "--name", "media"))
    good = spawn_bytes(env, "dump", "latest", "src/big.bin", "--name", "media")
    assert good.returncode == 0 and good.stdout == (src / "big.bin").read_bytes(), good.stderr
    packs = sorted((p for p in (env.repo / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(packs[-1].read_bytes())  # the biggest pack holds the file's data
    data[len(data) // 2] ^= 0x01
    packs[-1].write_bytes(bytes(data))
    bad = spawn_bytes(env, "dump", "latest", "src/big.bin", "--name", "media")
    assert bad.returncode != 0
    assert bad.stderr.startswith(b"drtool: ") and bad.stderr.count(b"\n") <= 2 and b"Traceback" not in bad.stderr
    assert bad.stdout != (src / "big.bin").read_bytes() and (src / "big.bin").read_bytes().startswith(bad.stdout)


def test_what_backups_index_from_memory_equals_what_the_trees_give(env: DrEnv, tmp_path: Path) -> None:
    """A backup hands its changed directories to the index instead of reading the trees back:
    the rows must be the ones ``catalog rebuild`` derives from the trees alone -- removed
    directories with subdirectories, a file replaced by a directory and back, a hash first
    recorded for unchanged files."""
    src = make_tree(tmp_path / "src")
    (src / "d3" / "deep" / "er").mkdir(parents=True)
    (src / "d3" / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    ok(env.run("backup", str(src), "--name", "media"))
    shutil.rmtree(src / "d3")
    (src / "d0" / "file0.txt").unlink()
    (src / "d0" / "file0.txt").mkdir()
    (src / "d0" / "file0.txt" / "inside.txt").write_text("a directory now\n")
    ok(env.run("backup", str(src), "--name", "media"))
    shutil.rmtree(src / "d0" / "file0.txt")
    (src / "d0" / "file0.txt").write_text("a file again\n")
    ok(env.run("backup", str(src), "--name", "media", "--content-hash", "sha256"))
    written = versions(env, "*")
    assert {"src/d3/deep/er/leaf.txt", "src/d0/file0.txt/inside.txt"} <= {v["path"] for v in written}
    assert [(v["type"], v["snapshots"]) for v in written if v["path"] == "src/d0/file0.txt"] == [
        ("file", 1), ("dir", 1), ("file", 1)]
    unchanged = [v for v in written if v["type"] == "file" and v["snapshots"] == 3]
    assert unchanged and all(v["hash"] for v in unchanged)
    ok(env.run("catalog", "rebuild"))
    assert versions(env, "*") == written


def all_index_rows(dr: DrEnv) -> list[tuple[Any, ...]]:
    from sqlalchemy import select
    from drtool.catalog.files import version_table
    v = version_table.c
    with dr.session() as session, session.catalog.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(v.series, v.path, v.basename, v.type, v.size, v.mtime_ns,
                                                      v.mode, v.content, v.hash, v.first_seq, v.end_seq)
                                               .order_by(v.series, v.path, v.first_seq))]


def test_a_first_backup_beyond_the_walked_limit_indexes_what_a_rebuild_does(env: DrEnv, tmp_path: Path) -> None:
    """Above ``WALKED_CHANGES`` the walk stops collecting (memory) and the index compares the
    trees itself, streaming: a first backup of that many files must still index every file,
    the same rows ``catalog rebuild`` derives."""
    from drtool.backup.treewalk import WALKED_CHANGES
    src = tmp_path / "many"
    for i in range(WALKED_CHANGES + 100):
        folder = src / f"d{i % 50}"
        if i < 50:
            folder.mkdir(parents=True)
        (folder / f"f{i}").write_bytes(b"%d" % (i % 7))
    ok(env.run("backup", str(src), "--name", "many"))
    written = all_index_rows(env)
    files = [row for row in written if row[3] == "file"]
    assert len(files) == WALKED_CHANGES + 100 and {row[1].rsplit("/", 1)[-1] for row in files} == {
        f"f{i}" for i in range(WALKED_CHANGES + 100)}
    assert all(row[10] is None and row[9] == 1 for row in written)
    ok(env.run("catalog", "rebuild"))
    assert all_index_rows(env) == written


def test_an_older_snapshot_arriving_late_reindexes_its_series(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=4)
    ok(env.run("backup", str(src), "--name", "media"))
    (src / "d0" / "file0.txt").write_text("as it was last week\n")
    with env.session() as session:  # a copied snapshot from last week, say
        old = backup_paths(session, [str(src)], "media",
                           clock=lambda: datetime.now(timezone.utc) - timedelta(days=7)).snapshot
    found = versions(env, "file0.txt")
    assert [(v["size"], v["first"]["id"]) for v in found] == [(20, old.id), (18, found[1]["first"]["id"])]
    assert found[1]["first"]["id"] != old.id and found[1]["snapshots"] == 1


def test_browse_on_s3(moto_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    dr = make_env(tmp_path / "dr")
    dr.env.update(client_env(moto_server.url), DRTOOL_REPOSITORY=f"s3://{create_bucket(moto_server.url)}/r")
    ok(dr.run("init"))
    src = make_tree(tmp_path / "src", files=8)
    first = ok(dr.run("backup", str(src), "--name", "media", "--json"))
    (src / "d1" / "file1.txt").write_text("edited on s3\n")
    ok(dr.run("backup", str(src), "--name", "media"))
    assert [v["size"] for v in versions(dr, "file1.txt")] == [len("content of file 1\n" * 2), 13]
    assert "src/d1/file1.txt" in ok(dr.run("ls", "latest", "src/d1", "--name", "media"))
    assert ok(dr.run("diff", first["id"], "latest", "--name", "media", "--json"))["summary"]["modified"] == 1
    out = spawn_bytes(dr, "dump", first["id"][:8], "src/d1/file1.txt")
    assert out.returncode == 0 and out.stdout == b"content of file 1\n" * 2, out.stderr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "drtool", "mount", str(mnt)], env=dr.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_mount(proc, mnt)
        assert (mnt / "ids" / first["short_id"] / "src" / "d1" / "file1.txt").read_bytes() == \
            b"content of file 1\n" * 2
        assert (mnt / "latest" / "media" / "src" / "d1" / "file1.txt").read_text() == "edited on s3\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        assert proc.wait(timeout=30) == 0


def _blobs_of(dr: DrEnv, snapshot_id: str, path: str) -> list[str]:
    with dr.session() as session:
        session.repo.load_index()
        snap = session.find_snapshot(snapshot_id)
        return list(resolve(session.repo, snap, path).content)


def _stored(dr: DrEnv, blobs: list[str]) -> list[bool]:
    with dr.session() as session:
        session.repo.load_index()
        return [bytes.fromhex(b) in session.repo.index for b in blobs]


def _wait_for_mount(proc: subprocess.Popen[bytes], mountpoint: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"drtool mount did not mount: {proc.communicate()[1].decode()}")
        time.sleep(0.05)


@pytest.mark.parametrize("stop", ["umount", "ctrl-c"])
def test_mount_read_with_ordinary_tools(env: DrEnv, tmp_path: Path, stop: str) -> None:
    src = make_tree(tmp_path / "src", files=12)
    big = src / "d3" / "big.bin"
    big.write_bytes(os.urandom(2_500_000) * 2)
    first = ok(env.run("backup", str(src), "--name", "media", "--json"))
    (src / "d0" / "file0.txt").write_text("second version\n")
    ok(env.run("backup", str(src), "--name", "media", "--tag", "nightly"))
    ok(env.run("backup", "--from-command", f"cat {big}", "--name", "db/wiki", "--filename", "wiki.sql"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "drtool", "mount", str(mnt)], env=env.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=terminal_signals)  # Ctrl-C as at a terminal, even under CI
    try:
        _wait_for_mount(proc, mnt)
        assert sorted(os.listdir(mnt)) == ["by-host", "by-name", "by-time", "ids", "latest"]
        latest = mnt / "latest" / "media"
        for tool in (["cmp", str(latest / "src" / "d3" / "big.bin"), str(big)],
                     ["cmp", str(mnt / "latest" / "db" / "wiki" / "wiki.sql"), str(big)],
                     ["diff", "-r", "--no-dereference", str(latest / "src"), str(src)]):
            assert subprocess.run(tool, capture_output=True, env=env.env).returncode == 0, tool
        old = mnt / "ids" / first["id"][:8] / "src" / "d0" / "file0.txt"
        assert subprocess.run(["cat", str(old)], capture_output=True).stdout == b"content of file 0\n"
        found = subprocess.run(["find", str(mnt / "by-name" / "media"), "-name", "file0.txt"],
                               capture_output=True, text=True).stdout.split()
        assert len(found) == 2 and all(p.startswith(str(mnt / "by-name" / "media")) for p in found)
        assert os.readlink(latest / "src" / "d1" / "link") == "file1.txt"
        assert len(os.listdir(mnt / "ids")) == 3 and len(os.listdir(mnt / "by-host")) == 1
        in_time_tree = subprocess.run(["find", str(mnt / "by-time"), "-name", "file0.txt"],
                                      capture_output=True, text=True).stdout.split()
        assert len(in_time_tree) == 2   # both media snapshots, even when taken in the same second
        host = mnt / "by-host" / os.listdir(mnt / "by-host")[0]
        assert sorted(os.listdir(host)) == ["db", "media"] and len(os.listdir(host / "media")) == 2
        with pytest.raises(OSError) as refused:
            (latest / "src" / "new.txt").write_text("no")
        assert refused.value.errno == errno.EROFS
    finally:
        if stop == "umount":
            subprocess.run(["umount", str(mnt)], check=False)
        else:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0 and not os.path.ismount(mnt), proc.stderr.read() if proc.stderr else ""


def test_mount_without_fuse_is_one_clear_error(env: DrEnv, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run([sys.executable, "-m", "drtool", "mount", str(mnt)], capture_output=True,
                            text=True, timeout=60,
                            env={**env.env, "FUSE_LIBRARY_PATH": str(tmp_path / "no-libfuse3.so")})
    assert result.returncode == 1 and not os.path.ismount(mnt)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("drtool: error: FUSE is not available here") and "drtool dump" in last
    missing = env.run("mount", str(tmp_path / "nowhere"))
    assert missing.code == 2 and "is not a directory" in missing.err


def test_rewrite_takes_a_file_out_of_every_snapshot(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", files=8)
    secret = src / "d1" / "leaked.txt"
    secret.write_bytes(os.urandom(5000))
    s1 = ok(env.run("backup", str(src), "--name", "media", "--tag", "nightly", "--json"))
    (src / "d0" / "file0.txt").write_text("edited\n")
    s2 = ok(env.run("backup", str(src), "--name", "media", "--tag", "nightly", "--json"))
    secret.unlink()
    s3 = ok(env.run("backup", str(src), "--name", "media", "--json"))
    other = ok(env.run("backup", str(make_tree(tmp_path / "other" / "src", files=2)), "--name", "other", "--json"))
    before = ok(env.run("snapshots", "--json"))
    leaked_blobs = _blobs_of(env, s1["id"], "src/d1/leaked.txt")
    assert leaked_blobs and _stored(env, leaked_blobs) == [True] * len(leaked_blobs)
    plan = ok(env.run("rewrite", "--exclude", "src/d1/leaked.txt", "--reason", "takedown T1", "--dry-run",
                      "--json"))
    assert [a["id"] for a in plan["affected"]] == [s1["id"], s2["id"]] and plan["unaffected"] == 2
    assert plan["affected"][0]["files"] == 1 and plan["affected"][0]["bytes"] == 5000
    assert ok(env.run("snapshots", "--json")) == before            # a dry run changes nothing
    leaked = versions(env, "leaked.txt")
    assert len(leaked) == 1 and leaked[0]["snapshots"] == 2
    done = ok(env.run("rewrite", "--exclude", "src/d1/leaked.txt", "--reason", "takedown T1", "--json"))
    assert done["complete"] and all(a["original_deleted"] for a in done["affected"])
    after = {s["id"]: s for s in ok(env.run("snapshots", "--json"))}
    assert s1["id"] not in after and s2["id"] not in after and {s3["id"], other["id"]} <= set(after)
    for original, item in zip((s1, s2), done["affected"]):
        new = after[item["new_id"]]
        assert (new["name"], new["host"], new["time"], new["tags"]) == (
            original["name"], original["host"], original["time"], original["tags"])
        mark = new["meta"]["rewritten"][0]
        assert mark["from"] == original["id"] and mark["reason"] == "takedown T1"
        assert mark["excluded"] == ["src/d1/leaked.txt"] and new["files"] == original["files"] - 1
    assert versions(env, "leaked.txt") == []
    assert ok(env.run("diff", done["affected"][0]["new_id"], s3["id"], "--json"))["summary"]["removed"] == 0
    target = tmp_path / "restored"
    ok(env.run("restore", done["affected"][1]["new_id"][:8], "--target", str(target)))
    assert not (target / "src" / "d1" / "leaked.txt").exists()
    assert (target / "src" / "d0" / "file0.txt").read_text() == "edited\n"
    history = ok(env.run("rewrite", "--history", "--json"))
    assert [(h["original_id"], h["reason"], h["outcome"]) for h in history] == [
        (s1["id"], "takedown T1", "original forgotten"), (s2["id"], "takedown T1", "original forgotten")]
    again = ok(env.run("rewrite", "--exclude", "src/d1/leaked.txt", "--reason", "takedown T1", "--json"))
    assert again["affected"] == [] and again["unaffected"] == 4
    assert all(_stored(env, leaked_blobs))       # rewrite alone frees nothing: prune does
    for _ in range(2):                            # two phases: mark, then sweep
        ok(env.run("prune", "--grace", "0s", "--max-unused", "0%"))
    assert not any(_stored(env, leaked_blobs))
    assert ok(env.run("check", "--read-data", "--json"))["ok"]
    bad = env.run("rewrite", "--exclude", "src/d1/leaked.txt")
    assert bad.code == 2 and "--reason is required" in bad.err
    typo = env.run("rewrite", "--exclude", "src/d1/leakd.txt", "--reason", "takedown T2")
    assert typo.code == 1 and "matches nothing in the 4 snapshot(s)" in typo.err
    assert len(ok(env.run("snapshots", "--json"))) == 4


def test_rewrite_under_object_lock_says_what_stays_until_when(moto_server: MotoServer,  # noqa: F811
                                                              tmp_path: Path) -> None:
    bucket = create_bucket(moto_server.url, object_lock=True)
    dr = make_env(tmp_path / "dr")
    dr.env.update(client_env(moto_server.url))
    config = tmp_path / "drtool.toml"
    config.write_text(f'repository = "s3://{bucket}/worm"\n\n[s3]\naddressing_style = "path"\n'
                      'object_lock_mode = "GOVERNANCE"\nobject_lock_days = 1\n')
    dr.env.pop("DRTOOL_REPOSITORY")
    dr.env["DRTOOL_CONFIG"] = str(config)
    ok(dr.run("init"))
    src = make_tree(tmp_path / "src", files=4)
    (src / "d2" / "leaked.txt").write_text("must go\n")
    original = ok(dr.run("backup", str(src), "--name", "media", "--json"))
    plan = ok(dr.run("rewrite", "--exclude", "src/d2/leaked.txt", "--reason", "T2", "--dry-run", "--json"))
    locked = {item["object"]: item["until"] for item in plan["affected"][0]["locked"]}
    tomorrow = datetime.now(timezone.utc) + timedelta(hours=23)
    assert f"worm/snapshots/{original['id']}".endswith(next(n for n in locked if n.startswith("snapshots/")))
    assert any(n.startswith("packs/") for n in locked)
    assert all(datetime.fromisoformat(until) > tomorrow for until in locked.values())
    result = dr.run("rewrite", "--exclude", "src/d2/leaked.txt", "--reason", "T2")
    assert result.code == 3, result.err
    assert f"snapshots/{original['id']} is under Object Lock until " in result.out
    assert "cannot be deleted before then" in result.out and "Object Lock keeps" in result.err
    snaps = ok(dr.run("snapshots", "--json"))
    assert len(snaps) == 2 and original["id"] in {s["id"] for s in snaps}   # kept: it is locked
    rewritten = next(s for s in snaps if s["id"] != original["id"])
    assert rewritten["meta"]["rewritten"][0]["from"] == original["id"]
    assert [v["first"]["id"] for v in versions(dr, "leaked.txt")] == [original["id"]]
    rerun = dr.run("rewrite", "--exclude", "src/d2/leaked.txt", "--reason", "T2", "--json")
    assert rerun.code == 3 and len(ok(dr.run("snapshots", "--json"))) == 2   # no second replacement
    assert json.loads(rerun.out)["affected"][0]["new_id"] == rewritten["id"]
    history = ok(dr.run("rewrite", "--history", "--json"))
    assert len(history) == 2 and all("locked until" in h["outcome"] for h in history)


def test_file_index_on_a_postgresql_catalog(tmp_path: Path) -> None:
    """A shared catalog on PostgreSQL: the index's bulk inserts and interval queries work there too."""
    from dbservers import postgres_server
    with postgres_server() as server:
        server.sql("CREATE DATABASE browse_catalog")
        dr = make_env(tmp_path / "dr")
        dr.env["DRTOOL_CATALOG"] = f"postgresql+psycopg://postgres@/browse_catalog?host={server.root}&port={server.port}"
        ok(dr.run("init"))
        src = make_tree(tmp_path / "src", files=6)
        first = ok(dr.run("backup", str(src), "--name", "media", "--content-hash", "sha1", "--json"))
        (src / "d1" / "file1.txt").write_text("edited\n")
        second = ok(dr.run("backup", str(src), "--name", "media", "--content-hash", "sha1", "--json"))
        found = versions(dr, "file1.txt")
        assert [(v["first"]["id"], v["last"]["id"]) for v in found] == [(first["id"], first["id"]),
                                                                        (second["id"], second["id"])]
        assert found[1]["hash"] == "sha1:" + hashlib.sha1(b"edited\n").hexdigest()
        assert [v["snapshots"] for v in versions(dr, "file2.txt")] == [2]
        ok(dr.run("catalog", "rebuild"))
        assert versions(dr, "file1.txt") == found


class _Sip(io.RawIOBase):
    """A raw stream that takes at most 1,000 bytes per write, as a pipe may under signals."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        taken = bytes(memoryview(data)[:1000])
        self.data += taken
        return len(taken)


def test_dump_writes_everything_to_a_stream_that_takes_part_of_each_write(env: DrEnv, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    big = src / "d3" / "big.bin"
    big.write_bytes(os.urandom(3_000_000) * 3)  # read by the windowed reader (>= 8 MiB)
    ok(env.run("backup", str(src), "--name", "media"))
    from drtool.browse.dump import dump
    with env.session() as session:
        snap = session.find_snapshot("latest", "media")
        session.repo.load_index()
        for path, expected in (("src/d3/big.bin", big.read_bytes()), ("src/d1/file1.txt", None)):
            sink = _Sip()
            dump(session.repo, snap, path, sink)
            assert bytes(sink.data) == (expected if expected is not None else (src / "d1" / "file1.txt").read_bytes())
        sink = _Sip()
        dump(session.repo, snap, "src/d1", sink)
        with tarfile.open(fileobj=io.BytesIO(bytes(sink.data)), mode="r|") as archive:
            names = sorted(member.name for member in archive)
    assert names == sorted(["d1", *(f"d1/{n}" for n in os.listdir(src / "d1"))])
