"""The restore's data path: groups planned and opened once, recycled buffers, bounded open files.

Promises: every group a restore needs is read once even when a file
alternates between groups; the planner hands a group out once the walk has
left it (sooner while many files wait for their groups) and never holds
more references than its bound; recycled buffers
give the same plaintext as the allocating path and go back to their pool on
damage; a restore with more files than it may keep open still finishes; an
index cache that points a blob at the wrong place in its group is caught
by the blob's id, and nothing wrong is written.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from conftest import PASSWORD, DrEnv
from drtool.backends.registry import open_backend
from drtool import api
from drtool.errors import IntegrityError
from drtool.restore.run import Restorer
from drtool.restore.groups import GroupPlanner
from drtool.core.session import OpenOptions, Session
from drtool.repository.envelope import Envelope, EnvelopeError
from drtool.repository.index import Location
from drtool.repository.packfile import ENTRY, DATA_BLOB
from drtool.repository.reading import ScratchPool
from drtool.repository.repo import RepoConfig, Repository
from drtool.snapshot.model import FILE
from drtool.snapshot.store import walk_tree
from drtool.testing import FaultyBackend, MemoryBackend

MiB = 1024 * 1024


def _loc(group: int, length: int = 100) -> Location:
    return Location(b"p" * 32, DATA_BLOB, group * 1000, 500, 0, length)


class TestPlanner:
    def test_a_group_is_handed_out_once_the_walk_has_moved_on(self) -> None:
        out: list[tuple[int, int]] = []
        planner = GroupPlanner(lambda loc, refs: out.append((loc.offset // 1000, len(refs))),
                               lag_bytes=1000)
        for i in range(5):
            planner.add(_loc(0), ("job", i, 0, 100, b"x"))  # type: ignore[arg-type]
        assert out == []
        for i in range(11):  # 1100 bytes of other groups later, group 0 goes out
            planner.add(_loc(1 + i % 2), ("job", i, 0, 100, b"x"))  # type: ignore[arg-type]
        assert out == [(0, 5)]
        planner.flush()
        assert sorted(out) == [(0, 5), (1, 6), (2, 5)]

    def test_a_group_touched_again_stays_pending(self) -> None:
        out: list[int] = []
        planner = GroupPlanner(lambda loc, refs: out.append(loc.offset // 1000), lag_bytes=300)
        for i in range(20):  # 0 and 1 interleave: neither is ever 300 bytes behind
            planner.add(_loc(i % 2), ("job", i, 0, 100, b"x"))  # type: ignore[arg-type]
        assert out == []

    def test_pending_references_are_bounded(self) -> None:
        handed: list[int] = []
        planner = GroupPlanner(lambda loc, refs: handed.append(len(refs)), lag_bytes=1 << 40, max_refs=50)
        for i in range(1000):
            planner.add(_loc(i), ("job", i, 0, 100, b"x"))  # type: ignore[arg-type]
        assert sum(handed) >= 1000 - 50
        planner.flush()
        assert sum(handed) == 1000


    def test_while_crowded_groups_go_out_after_the_shorter_lag(self) -> None:
        """Many files waiting: groups the walk left crowded_lag_bytes ago go out, newer ones stay."""
        out: list[int] = []
        crowded = [False]
        planner = GroupPlanner(lambda loc, refs: out.append(loc.offset // 1000), lag_bytes=10_000,
                               crowded=lambda: crowded[0], crowded_lag_bytes=300)
        for i in range(10):  # one group per 100 bytes of walk: 1000 bytes, far below the long lag
            planner.add(_loc(i), ("job", i, 0, 100, b"x"))  # type: ignore[arg-type]
        assert out == []
        crowded[0] = True
        planner.add(_loc(10), ("job", 10, 0, 100, b"x"))  # type: ignore[arg-type]
        assert out == list(range(9))  # left 300 bytes ago or more; 9 and 10 are recent
        crowded[0] = False
        planner.add(_loc(11), ("job", 11, 0, 100, b"x"))  # type: ignore[arg-type]
        assert out == list(range(9))  # not crowded: the long lag again


def _repo() -> Repository:
    config = RepoConfig(repo_id="plan", file_chunk_avg=64 * 1024, stream_chunk_avg=4096)
    return Repository.init(MemoryBackend(), b"pw", config=config)


class TestRecycledOpen:
    @pytest.mark.parametrize("payload", [b"row %d;\n" * 200_000, os.urandom(300_000)],
                             ids=["compressible", "raw"])
    def test_same_plaintext_as_the_allocating_path(self, payload: bytes) -> None:
        envelope = Envelope(os.urandom(32))
        sealed = envelope.seal(b"group-data", b"", payload)
        pool = ScratchPool(keep=4)
        plain, held = envelope.open_recycled(b"group-data", b"", sealed, pool)
        assert bytes(plain) == bytes(envelope.open(b"group-data", b"", sealed)) == payload
        for buf in held:
            pool.give(buf)
        again, _ = envelope.open_recycled(b"group-data", b"", sealed, pool)
        assert bytes(again) == payload

    def test_damage_is_an_error_and_the_buffer_goes_back(self) -> None:
        envelope = Envelope(os.urandom(32))
        sealed = envelope.seal(b"group-data", b"", b"x" * 100_000)
        sealed[len(sealed) // 2] ^= 1
        pool = ScratchPool(keep=4)
        with pytest.raises(EnvelopeError):
            envelope.open_recycled(b"group-data", b"", sealed, pool)
        assert len(pool._free) == 1

    def test_pool_reuses_the_smallest_fitting_buffer_and_keeps_its_limit(self) -> None:
        pool = ScratchPool(keep=2)
        small, big = pool.take(100), pool.take(5 * MiB)
        pool.give(big)
        pool.give(small)
        assert pool.take(10) is small
        assert pool.take(2 * MiB) is big
        for buf in [pool.take(MiB) for _ in range(4)]:
            pool.give(buf)
        assert len(pool._free) == 2


class RecordingBackend(FaultyBackend):
    """Records every ranged read of a pack (name, offset): the reads a restore makes."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.ranges: list[tuple[str, int]] = []

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("packs/"):
            self.ranges.append((name, offset))
        return super().get_range(name, offset, length)


def _session(env: DrEnv, backend=None) -> Session:  # type: ignore[no-untyped-def]
    options = OpenOptions(str(env.repo), PASSWORD.encode(), str(env.catalog))
    return Session.open(options, backend=backend)


def _dump(rows: int, edited: set[int]) -> bytes:
    return b"".join(b"INSERT INTO t VALUES (%d,'%s');\n" % (i, b"edited" if i in edited else b"original")
                    for i in range(rows))


def test_a_file_alternating_between_groups_reads_each_group_once(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rows = 250_000  # ~9 MiB of dump: 16 KiB chunks from one old group and one new
    (src / "dump.sql").write_bytes(_dump(rows, set()))
    assert repo_env.run("backup", str(src), "--name", "db").code == 0
    (src / "dump.sql").write_bytes(_dump(rows, set(range(0, rows, 997))))
    assert repo_env.run("backup", str(src), "--name", "db").code == 0
    backend = RecordingBackend(open_backend(str(repo_env.repo), {}))
    with _session(repo_env, backend) as session:
        session.repo.load_index()
        snap = session.find_snapshot("latest", "db")
        groups, tree_groups = set(), set()
        for _path, node in walk_tree(session.repo, snap.tree):
            target = groups if node.type == FILE else tree_groups
            for hexid in node.content:
                loc = session.repo.locate(bytes.fromhex(hexid))
                target.add((loc.pack_id, loc.offset))
        backend.ranges.clear()
        Restorer(session, snap, str(tmp_path / "out"), includes=[]).run()
    assert (tmp_path / "out" / "src" / "dump.sql").read_bytes() == (src / "dump.sql").read_bytes()
    assert len(groups) >= 2, "the edited dump should need an old and a new group"
    data_reads = [r for r in backend.ranges if r[1] in {offset for _p, offset in groups}]
    assert len(data_reads) == len(groups), backend.ranges


def test_more_files_than_may_stay_open_still_restore(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(40):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(1000 + f))
    assert repo_env.run("backup", str(src), "--name", "small").code == 0
    with _session(repo_env) as session:
        session.repo.load_index()
        snap = session.find_snapshot("latest", "small")
        restorer = Restorer(session, snap, str(tmp_path / "out"), includes=[], max_open_files=3)
        result = restorer.run()
    assert result.files == 120
    for path in src.rglob("f*"):
        assert (tmp_path / "out" / "src" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert not [p for p in (tmp_path / "out").rglob(".drtool-part-*")]


def _two_same_size_files(repo_env: DrEnv, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(5000))
    (src / "b.bin").write_bytes(os.urandom(5000))
    assert repo_env.run("backup", str(src), "--name", "t").code == 0
    return src


def _swap_inner_offsets(records: list[list[int]], type_at: int, inner_at: int, size_at: int) -> bool:
    """Swap the inner offsets of the two 5000-byte data blobs of one group (False: not found)."""
    same_size = [r for r in records if r[type_at] == DATA_BLOB and r[size_at] == 5000]
    if len(same_size) != 2:
        return False
    same_size[0][inner_at], same_size[1][inner_at] = same_size[1][inner_at], same_size[0][inner_at]
    return True


def _restore_is_refused(repo_env: DrEnv, tmp_path: Path) -> None:
    with _session(repo_env) as session:
        with pytest.raises(IntegrityError, match="does not match its id"):
            api.restore(session, "latest", str(tmp_path / "out"))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_wrong_place_in_the_catalog_index_copy_is_caught_by_the_blob_id(
        repo_env: DrEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog's copy of the index is not authenticated (a shared PostgreSQL catalog is
    writable by others) and is what the in-memory index loads from when no disk cache can be
    used: blobs of one group with swapped inner offsets must not be written into each
    other's files."""
    monkeypatch.setenv("DRTOOL_INDEX_CACHE", "memory")
    src = _two_same_size_files(repo_env, tmp_path)
    with sqlite3.connect(repo_env.catalog) as db:
        for pack_id, entries in db.execute("SELECT pack_id, entries FROM index_packs").fetchall():
            records = [list(r) for r in ENTRY.iter_unpack(entries)]
            if _swap_inner_offsets(records, 0, 4, 5):
                swapped = b"".join(ENTRY.pack(*r) for r in records)
                db.execute("UPDATE index_packs SET entries = ? WHERE pack_id = ?", (swapped, pack_id))
                break
        else:
            pytest.fail("both files' blobs should share one group")
    _restore_is_refused(repo_env, tmp_path)
    # With the disk cache (the default), the catalog's copy is not read for lookups at all.
    monkeypatch.delenv("DRTOOL_INDEX_CACHE")
    with _session(repo_env) as session:
        api.restore(session, "latest", str(tmp_path / "disk"))
    assert (tmp_path / "disk" / "src" / "b.bin").read_bytes() == (src / "b.bin").read_bytes()


def test_a_wrong_place_in_the_disk_index_cache_is_caught_by_the_blob_id(repo_env: DrEnv, tmp_path: Path) -> None:
    """The LMDB index cache (repository/diskindex.py) is a local file anyone with the user's
    rights can damage: a swapped inner offset must be caught by the blob id, not restored."""
    import lmdb
    from drtool.repository.diskindex import _REC
    src = _two_same_size_files(repo_env, tmp_path)
    with _session(repo_env) as session:
        session.repo.load_index()  # brings the disk cache up to date with the repository
        disk = session.repo.disk_index()
        assert disk is not None
        path = disk.path
    env = lmdb.open(str(path), max_dbs=8, subdir=True)
    try:
        blobs = env.open_db(b"blobs", dupsort=True)
        with env.begin(write=True, db=blobs) as txn:
            rows = [(bytes(k), list(_REC.unpack(bytes(v)))) for k, v in txn.cursor()]
            records = [rec for _key, rec in rows]
            assert _swap_inner_offsets(records, 1, 4, 5), "both files' blobs should share one group"
            for key, rec in rows:
                txn.delete(key, db=blobs)
            for key, rec in rows:
                txn.put(key, _REC.pack(*rec), db=blobs, dupdata=True)
    finally:
        env.close()
    _restore_is_refused(repo_env, tmp_path)


def test_a_local_restore_needs_no_catalog_and_leaves_it_alone(repo_env: DrEnv, tmp_path: Path) -> None:
    """At 3 a.m. the catalog (a cache) may be gone or damaged: the restore reads the
    repository, and neither creates nor touches the catalog."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("needed at 3 a.m.")
    assert repo_env.run("backup", str(src), "--name", "t").code == 0
    repo_env.catalog.write_bytes(b"this is not an SQLite database" * 100)
    damaged = repo_env.catalog.read_bytes()
    assert repo_env.run("snapshots").code != 0  # the catalog is really unusable
    for args in (["--dry-run"], []):
        result = repo_env.run("restore", "latest", "--name", "t", "--target", str(tmp_path / "out"), *args)
        assert result.code == 0, result.err
    assert (tmp_path / "out" / "src" / "f.txt").read_text() == "needed at 3 a.m."
    assert repo_env.catalog.read_bytes() == damaged
    repo_env.catalog.unlink()
    assert repo_env.run("restore", "latest", "--target", str(tmp_path / "again")).code == 0
    assert not repo_env.catalog.exists()
