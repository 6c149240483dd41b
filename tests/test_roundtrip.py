"""Backup → restore round trips on the real file system."""
from __future__ import annotations

import json
import os
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DrEnv, make_env
from treegen import allocated_bytes, describe, make_rich_tree


def test_rich_tree_round_trip_is_exact(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_tree(src)
    result = repo_env.run("backup", str(src), "--name", "rich", "--json")
    assert result.code == 0, result.err
    restored = tmp_path / "restored"
    result = repo_env.run("restore", "latest", "--target", str(restored))
    assert result.code == 0, result.err
    assert describe(restored / "src") == describe(src)
    # the 64 MiB sparse file comes back sparse
    assert allocated_bytes(restored / "src" / "sparse.img") < 1024 * 1024
    assert os.path.getsize(restored / "src" / "sparse.img") == os.path.getsize(src / "sparse.img")


def test_second_backup_stores_only_new_chunks(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(64 * 2**20)
    (src / "a.bin").write_bytes(big)
    (src / "b.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    first = json.loads(repo_env.run("backup", str(src), "--name", "n", "--json").out)
    # change one MiB in the middle of a.bin; b.bin untouched
    edited = big[:32 * 2**20] + os.urandom(2**20) + big[33 * 2**20:]
    (src / "a.bin").write_bytes(edited)
    second = json.loads(repo_env.run("backup", str(src), "--name", "n", "--json").out)
    assert first["summary"]["bytes_added_raw"] >= 66 * 2**20
    # content-defined chunking re-stores the edit and the chunks around it, not the file: chunks
    # are 256 KiB to 4 MiB (keyed per repository, so where they fall is random: typically ~3 MiB
    # here; a 5 MiB bound on an 8 MiB file was once exceeded by chance: 6.2 MB)
    assert 2**20 <= second["summary"]["bytes_added_raw"] < 16 * 2**20
    assert second["summary"]["files_unchanged"] == 1
    assert second["parent"] == first["id"]


def test_unchanged_tree_adds_nothing(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_tree(src)
    repo_env.run("backup", str(src), "--name", "n")
    second = json.loads(repo_env.run("backup", str(src), "--name", "n", "--json").out)
    assert second["summary"]["blobs_added"] == 0
    assert second["summary"]["files_read"] == 0


def test_a_changed_mode_deep_down_changes_exactly_the_trees_above_it(repo_env: DrEnv,
                                                                      tmp_path: Path) -> None:
    """Unchanged directories keep their parent tree id without re-encoding; a directory
    with one changed entry (here only its mode) must not, nor any directory above it."""
    src = tmp_path / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "x" / "y").mkdir(parents=True)
    (src / "a" / "b" / "c" / "deep.txt").write_text("deep")
    (src / "x" / "y" / "other.txt").write_text("other")
    repo_env.run("backup", str(src), "--name", "n")
    os.chmod(src / "a" / "b" / "c" / "deep.txt", 0o600)
    second = json.loads(repo_env.run("backup", str(src), "--name", "n", "--json").out)
    assert second["summary"]["files_read"] == 1  # chmod changed its ctime: read again, same blob
    assert second["summary"]["blobs_added"] == 5  # trees c, b, a, src and the root; x, y reused
    out = tmp_path / "out"
    assert repo_env.run("restore", "latest", "--target", str(out)).code == 0
    assert (out / "src" / "a" / "b" / "c" / "deep.txt").stat().st_mode & 0o777 == 0o600


def test_point_in_time_picks_newest_at_or_before(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    times = []
    for version in range(3):
        (src / "v.txt").write_text(f"version {version}")
        snap = json.loads(repo_env.run("backup", str(src), "--name", "pit", "--json").out)
        times.append(snap["time"])
    from datetime import datetime, timedelta
    between = (datetime.fromisoformat(times[1]) + timedelta(microseconds=1)).isoformat()
    result = repo_env.run("restore", "--point-in-time", between, "--name", "pit",
                          "--target", str(tmp_path / "out"))
    assert result.code == 0, result.err
    assert (tmp_path / "out" / "src" / "v.txt").read_text() == "version 1"
    exact = repo_env.run("restore", "--point-in-time", times[0], "--name", "pit",
                         "--target", str(tmp_path / "out0"), "--json")
    assert json.loads(exact.out)["snapshot"].startswith(
        json.loads(repo_env.run("snapshots", "--json").out)[0]["id"])


def test_stream_backup_restores_the_command_output(repo_env: DrEnv, tmp_path: Path) -> None:
    payload = tmp_path / "dump.sql"
    payload.write_bytes(b"INSERT INTO t VALUES (1);\n" * 200000)
    result = repo_env.run("backup", "--from-command", f"cat {payload}", "--name", "db/wiki", "--json")
    assert result.code == 0, result.err
    snap = json.loads(result.out)
    assert snap["size"] == payload.stat().st_size and snap["kind"] == "stream"
    repo_env.run("restore", "latest", "--name", "db/wiki", "--target", str(tmp_path / "r"))
    assert (tmp_path / "r" / "wiki").read_bytes() == payload.read_bytes()


def test_include_restores_only_the_selected_subtree(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_tree(src)
    repo_env.run("backup", str(src), "--name", "n")
    out = tmp_path / "out"
    result = repo_env.run("restore", "latest", "--target", str(out), "--include", "src/dir/sub")
    assert result.code == 0, result.err
    assert (out / "src" / "dir" / "sub" / "random.bin").read_bytes() == \
        (src / "dir" / "sub" / "random.bin").read_bytes()
    assert not (out / "src" / "empty").exists()


def test_restore_resumes_and_keeps_correct_files(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_tree(src)
    repo_env.run("backup", str(src), "--name", "n")
    out = tmp_path / "out"
    repo_env.run("restore", "latest", "--target", str(out))
    (out / "src" / "dir" / "hello.txt").write_text("tampered locally")
    kept = repo_env.run("restore", "latest", "--target", str(out), "--json")
    assert kept.code == 3, kept.err  # --overwrite never (the default) leaves the local edit alone
    data = json.loads(kept.out)
    assert data["files_skipped_existing"] >= 3 and data["not_overwritten_count"] == 3  # and its 2 hard links
    assert (out / "src" / "dir" / "hello.txt").read_text() == "tampered locally"
    result = repo_env.run("restore", "latest", "--target", str(out), "--json", "--overwrite", "always")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["files_skipped_existing"] >= 3
    assert describe(out / "src") == describe(src)


names = st.text(alphabet=string.ascii_letters + string.digits + "-_. äöü€", min_size=1,
                max_size=40).filter(lambda n: n not in (".", "..") and "/" not in n)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(names, st.binary(max_size=300_000), min_size=1, max_size=12))
def test_hypothesis_contents_and_names_round_trip(tmp_path_factory, files: dict[str, bytes]) -> None:
    base = tmp_path_factory.mktemp("hyp")
    env = make_env(base / "env")
    env.init()
    src = base / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    assert env.run("backup", str(src), "--name", "h").code == 0
    assert env.run("restore", "latest", "--target", str(base / "out")).code == 0
    for name, data in files.items():
        assert (base / "out" / "src" / name).read_bytes() == data
    assert sorted(os.listdir(base / "out" / "src")) == sorted(files)


def test_file_growing_during_backup_is_reported(repo_env: DrEnv, tmp_path: Path) -> None:
    import threading

    from drtool import api

    src = tmp_path / "src"
    src.mkdir()
    growing = src / "app.log"
    growing.write_bytes(os.urandom(40 * 2**20))
    stop = threading.Event()

    def append() -> None:
        with open(growing, "ab") as handle:
            while not stop.is_set():
                handle.write(b"log line\n" * 100)
                handle.flush()

    writer = threading.Thread(target=append)
    writer.start()
    session = repo_env.session()
    try:
        result = api.backup(session, [str(src)], name="logs")
    finally:
        stop.set()
        writer.join()
        session.close()
    assert result.changed == [str(growing)]
    assert result.snapshot.summary["changed_during_backup"] == 1


def test_small_file_grown_since_stat_is_read_whole(repo_env: DrEnv, tmp_path: Path) -> None:
    """The walker reads what stat promised plus one byte; a file that grew is read on."""
    from drtool.backup.pipeline import ChunkPipeline, resolve
    from drtool.backup.treewalk import TreeWalker
    from drtool.sources import files as fs

    path = tmp_path / "grows"
    path.write_bytes(b"a" * 10)
    stale = os.lstat(path)
    payload = os.urandom(100_000)
    path.write_bytes(payload)
    session = repo_env.session()
    try:
        session.repo.load_index()
        pipeline = ChunkPipeline(session.repo)
        walker = TreeWalker(session.repo, pipeline)
        node = fs.node_from_stat("grows", os.fsencode(str(path)), stale)
        refs = walker._read_file(node, fs.Entry(os.fsencode(str(path)), "grows", stale))
        pipeline.submit_batch()
        ids = [bytes.fromhex(h) for h in resolve(refs)]
        pipeline.close()
        session.repo.flush()
        assert node.changed and node.size == len(payload)
        assert b"".join(bytes(b) for b in session.repo.read_blobs(ids)) == payload
    finally:
        session.close()
