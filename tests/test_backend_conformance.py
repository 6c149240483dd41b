"""One behavioural contract, checked against every backend.

Higher layers are tested mostly on the memory backend; that is only sound if
every backend behaves the same for the operations they use.  Each test here
runs against local, memory and S3 (moto over real HTTP).
"""
from __future__ import annotations

import itertools
import os
import random
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from drtool.backends.base import Backend, ObjectInfo
from drtool.backends.local import TMP_PREFIX, LocalBackend
from drtool.backends.memory import MemoryBackend
from drtool.errors import BackendError, DrtoolError, ObjectMissing, RepositoryNotFound

try:
    from s3server import MotoServer, create_bucket, moto_server, set_dummy_env  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.s3server import MotoServer, create_bucket, moto_server, set_dummy_env  # noqa: F401

MiB = 1024 * 1024
S3_SMALL_MULTIPART = {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB,
                      "addressing_style": "path", "read_timeout": 10, "max_attempts": 3}


def _make_s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    from drtool.backends.s3 import S3Backend

    server: MotoServer = request.getfixturevalue("moto_server")
    set_dummy_env(monkeypatch, server.url)  # endpoint comes from AWS_ENDPOINT_URL
    bucket = create_bucket(server.url)
    backend = S3Backend.from_url(f"s3://{bucket}/repo/one", dict(S3_SMALL_MULTIPART))
    backend.create_location()
    return backend


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "local":
        be: Backend = LocalBackend(tmp_path / "repo")
        be.create_location()
    elif request.param == "memory":
        be = MemoryBackend(uuid.uuid4().hex)
    else:
        be = _make_s3(request, monkeypatch)
    try:
        yield be
    finally:
        be.close()


def _blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _names(backend: Backend, prefix: str = "") -> set[str]:
    return {info.name for info in backend.list(prefix)}


@pytest.mark.parametrize("size", [0, 1, 1000, 256 * 1024])
def test_put_get_roundtrip(backend: Backend, size: int) -> None:
    data = _blob(size, size)
    backend.put("data/obj", data)
    assert backend.get("data/obj") == data
    assert backend.stat("data/obj") == ObjectInfo("data/obj", size)


def test_put_parts_stores_the_concatenation(backend: Backend) -> None:
    parts = [_blob(1000, 1), bytearray(_blob(70_000, 2)), b"", _blob(5, 3)]
    backend.put_parts("data/parts", parts)
    joined = b"".join(bytes(p) for p in parts)
    assert backend.get("data/parts") == joined
    assert backend.stat("data/parts") == ObjectInfo("data/parts", len(joined))


def test_overwrite_replaces_whole_object(backend: Backend) -> None:
    backend.put("config", _blob(5000, 1))
    backend.put("config", b"short")
    assert backend.get("config") == b"short"
    assert backend.stat("config") == ObjectInfo("config", 5)


def test_get_range_exact(backend: Backend) -> None:
    data = _blob(100_000, 7)
    backend.put("packs/aa/range", data)
    rng = random.Random(3)
    cases = [(0, 1), (0, len(data)), (len(data) - 1, 1), (99_000, 1000), (12345, 0)]
    cases += [(o, rng.randrange(1, len(data) - o + 1)) for o in rng.sample(range(len(data)), 10)]
    for offset, length in cases:
        got = backend.get_range("packs/aa/range", offset, length)
        assert got == data[offset:offset + length], (offset, length)
        assert len(got) == length


def test_get_range_view_matches_get_range(backend: Backend) -> None:
    """Views (mapped by the local backend from 1 MiB on) hold exactly the bytes of get_range."""
    data = _blob(3 * 1024 * 1024 + 77, 9)
    backend.put("packs/bb/view", data)
    for offset, length in [(0, 10), (4097, 2 * 1024 * 1024), (1, len(data) - 1), (len(data) - 1024 * 1024, 1024 * 1024)]:
        view = backend.get_range_view("packs/bb/view", offset, length)
        assert bytes(view) == data[offset:offset + length] == backend.get_range("packs/bb/view", offset, length)
    with pytest.raises(ObjectMissing):
        backend.get_range_view("packs/bb/view", 1024 * 1024, len(data))
    with pytest.raises(ObjectMissing):
        backend.get_range_view("packs/bb/absent", 0, 2 * 1024 * 1024)


def test_get_range_into_a_reused_buffer_matches_get_range(backend: Backend) -> None:
    """Restores read every group into one of a few recycled buffers: stale bytes must never show."""
    data = _blob(3 * 1024 * 1024 + 77, 11)
    backend.put("packs/cc/into", data)
    buf = bytearray(b"\xee" * (3 * 1024 * 1024 + 100))
    for offset, length in [(0, 10), (4097, 2 * 1024 * 1024), (1, len(data) - 1), (len(data) - 5, 5)]:
        view = backend.get_range_into("packs/cc/into", offset, length, buf)
        assert len(view) == length and bytes(view) == data[offset:offset + length]
        del view
    with pytest.raises(ObjectMissing):
        backend.get_range_into("packs/cc/into", 1024 * 1024, len(data), buf)
    with pytest.raises(ObjectMissing):
        backend.get_range_into("packs/cc/absent", 0, 1000, buf)


@pytest.mark.parametrize("offset,length", [(95, 10), (100, 1), (5000, 10)])
def test_get_range_past_end_raises(backend: Backend, offset: int, length: int) -> None:
    backend.put("small", _blob(100))
    with pytest.raises(ObjectMissing):
        backend.get_range("small", offset, length)


def test_absent_objects(backend: Backend) -> None:
    with pytest.raises(ObjectMissing):
        backend.get("nope/never")
    with pytest.raises(ObjectMissing):
        backend.get_range("nope/never", 0, 10)
    assert backend.stat("nope/never") is None
    assert not backend.exists()
    backend.put("config", b"c")
    assert backend.exists()


def test_delete_is_idempotent(backend: Backend) -> None:
    backend.put("locks/one", b"x")
    backend.delete("locks/one")
    assert backend.stat("locks/one") is None
    with pytest.raises(ObjectMissing):
        backend.get("locks/one")
    backend.delete("locks/one")
    backend.delete("never/existed")
    assert "locks/one" not in _names(backend)


def test_list_prefixes_and_nesting(backend: Backend) -> None:
    names = ["config", "keys/k1", "packs/ab/ab01", "packs/ab/ab02", "packs/cd/cd01",
             "packs/cd/deeper/x", "snapshots/s1", "packsX"]
    for i, name in enumerate(names):
        backend.put(name, b"z" * i)
    assert _names(backend) == set(names)
    assert _names(backend, "packs/") == {n for n in names if n.startswith("packs/")}
    assert _names(backend, "packs/ab/") == {"packs/ab/ab01", "packs/ab/ab02"}
    assert _names(backend, "packs/ab/ab0") == {"packs/ab/ab01", "packs/ab/ab02"}
    assert _names(backend, "packs") == {n for n in names if n.startswith("packs")}
    assert _names(backend, "missing/") == set()
    sizes = {info.name: info.size for info in backend.list("")}
    assert sizes == {n: i for i, n in enumerate(names)}


def test_put_if_absent(backend: Backend) -> None:
    assert backend.put_if_absent("locks/exclusive", b"first") is True
    assert backend.put_if_absent("locks/exclusive", b"second") is False
    assert backend.get("locks/exclusive") == b"first"
    backend.delete("locks/exclusive")
    assert backend.put_if_absent("locks/exclusive", b"third") is True
    assert backend.get("locks/exclusive") == b"third"


def test_put_if_absent_race_has_one_winner(backend: Backend) -> None:
    if type(backend).put_if_absent is Backend.put_if_absent:
        pytest.skip("backend uses the racy default")
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def contend(i: int) -> None:
        barrier.wait()
        results.append(backend.put_if_absent("locks/race", f"writer-{i}".encode()))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert backend.get("locks/race").startswith(b"writer-")


def test_large_object_multipart(backend: Backend) -> None:
    data = _blob(11 * MiB + 123, 11)
    backend.put("packs/ff/large", data)
    assert backend.stat("packs/ff/large") == ObjectInfo("packs/ff/large", len(data))
    assert backend.get("packs/ff/large") == data
    edge = 5 * MiB
    assert backend.get_range("packs/ff/large", edge - 10, 20) == data[edge - 10:edge + 10]
    client = getattr(backend, "client", None)
    if client is not None:  # S3: prove the multipart path ran (ETag "<md5>-<parts>")
        head = client.head_object(Bucket=backend.bucket, Key=backend._key("packs/ff/large"))
        assert head["ETag"].strip('"').endswith("-3")


def test_concurrent_puts_from_threads(backend: Backend) -> None:
    blobs = {f"packs/{i:02x}/obj{i}": _blob(2000 + i, i) for i in range(24)}
    errors: list[BaseException] = []

    def upload(items: list[tuple[str, bytes]]) -> None:
        try:
            for name, data in items:
                backend.put(name, data)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    items = list(blobs.items())
    threads = [threading.Thread(target=upload, args=(items[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, data in blobs.items():
        assert backend.get(name) == data
    assert backend.stats.puts >= len(blobs)


def test_overwrite_is_atomic_for_readers(backend: Backend) -> None:
    versions = [_blob(300_000, 1), _blob(300_000, 2)]
    backend.put("index/current", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(backend.get("index/current"))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(10):
        backend.put("index/current", versions[(i + 1) % 2])
    stop.set()
    for t in threads:
        t.join()
    assert seen and all(s in versions for s in seen)


def test_stats_are_counted(backend: Backend) -> None:
    before = backend.stats.as_dict()
    backend.put("a", b"123")
    backend.get("a")
    backend.stat("a")
    list(backend.list(""))
    backend.delete("a")
    after = backend.stats.as_dict()
    for key in ("puts", "gets", "lists", "deletes", "bytes_up"):
        assert after[key] > before[key], key


# -- local specifics -------------------------------------------------------

def test_local_ignores_temp_files(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path)
    be.put("packs/aa/real", b"data")
    (tmp_path / "packs" / "aa" / f"{TMP_PREFIX}abandoned").write_bytes(b"partial")
    assert _names(be) == {"packs/aa/real"}
    assert _names(be, "packs/aa/") == {"packs/aa/real"}


def test_local_replace_leaves_no_temp_and_keeps_old_on_failure(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path)
    be.put("config", b"old")
    be.put("config", b"new")
    assert sorted(os.listdir(tmp_path)) == ["config"]
    os.chmod(tmp_path, 0o500)  # make the next write fail
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(DrtoolError):
            be.put("config", b"newer")
    finally:
        os.chmod(tmp_path, 0o700)
    assert be.get("config") == b"new"
    assert sorted(os.listdir(tmp_path)) == ["config"]


def test_local_missing_root_is_repository_not_found(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path / "absent")
    with pytest.raises(RepositoryNotFound):
        be.put("config", b"x")


# -- S3 specifics that belong to the contract ----------------------------------

def test_s3_prefix_isolation(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from drtool.backends.s3 import S3Backend

    set_dummy_env(monkeypatch, moto_server.url)
    bucket = create_bucket(moto_server.url)
    outer = S3Backend.from_url(f"s3://{bucket}", {"addressing_style": "path"})
    inner = S3Backend.from_url(f"s3://{bucket}/tenant/repo/", {"endpoint_url": moto_server.url})
    outer.put("tenant/repoX/config", b"other")
    inner.put("config", b"mine")
    assert _names(inner) == {"config"}
    assert _names(outer) == {"tenant/repoX/config", "tenant/repo/config"}
    assert outer.get("tenant/repo/config") == b"mine"


def test_s3_create_location(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from drtool.backends.s3 import S3Backend

    set_dummy_env(monkeypatch, moto_server.url)
    name = f"drtool-new-{uuid.uuid4().hex[:10]}"
    with pytest.raises(RepositoryNotFound, match=name):
        S3Backend.from_url(f"s3://{name}/r", {}).create_location()
    created = S3Backend.from_url(f"s3://{name}/r", {"create_bucket": "true"})
    created.create_location()
    created.put("config", b"x")
    assert created.exists()


def test_s3_endpoint_from_specific_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from drtool.backends.s3 import S3Backend

    set_dummy_env(monkeypatch, "http://127.0.0.1:9")  # generic variable points nowhere
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    bucket = create_bucket(moto_server.url)
    be = S3Backend.from_url(f"s3://{bucket}", {})
    be.put("x", b"1")
    assert be.get("x") == b"1" and moto_server.url in be.endpoint


def test_staged_object_is_invisible_until_commit(backend: Backend) -> None:
    staged = backend.stage("packs")
    if staged is None:  # memory and S3 keep packs in memory and use put_parts
        assert not isinstance(backend, LocalBackend)
        return
    staged.write(b"first ")
    staged.write(memoryview(b"second"))
    assert _names(backend, "packs/") == set()
    staged.commit("packs/ab/abcdef")
    assert backend.get("packs/ab/abcdef") == b"first second"
    assert _names(backend, "packs/") == {"packs/ab/abcdef"}


def test_local_aborted_stage_leaves_nothing(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path)
    be.create_location()
    staged = be.stage("packs")
    staged.write(b"partial pack")
    staged.abort()
    staged.abort()  # idempotent
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    puts = be.stats.puts
    committed = be.stage("packs")
    committed.write(b"x" * 10)
    committed.commit("packs/cd/cdef")
    assert be.stats.puts == puts + 1 and be.stats.bytes_up >= 10
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["cdef"]


@pytest.mark.parametrize("direct", [True, False])
def test_local_stage_exact_bytes_across_aligned_buffers(tmp_path: Path, direct: bool) -> None:
    """O_DIRECT path: odd-sized pieces across several 4 MiB buffers, padded tail truncated away."""
    be = LocalBackend(tmp_path, direct_io=direct)
    be.create_location()
    pieces = [os.urandom(n) for n in (1, 4095, 3 * 1024 * 1024 + 7, 2 * 1024 * 1024 - 3, 12345)]
    staged = be.stage("packs")
    for piece in pieces:
        staged.write(piece)
    staged.commit("packs/ee/eeff")
    expected = b"".join(pieces)
    assert (tmp_path / "packs" / "ee" / "eeff").stat().st_size == len(expected)
    assert be.get("packs/ee/eeff") == expected


def test_local_staged_pack_of_many_buffers_is_written_in_order(tmp_path: Path) -> None:
    """Full aligned buffers go to the write-behind thread: the pack must still be byte-exact."""
    be = LocalBackend(tmp_path)
    be.create_location()
    data = os.urandom(9 * 1024 * 1024 + 12345)  # more buffers than may be in flight, a ragged end
    staged = be.stage("packs")
    position = 0
    for size in itertools.cycle([1, 4095, 700_001, 3 * 1024 * 1024, 65536]):
        if position >= len(data):
            break
        staged.write(memoryview(data)[position:position + size])
        position += size
    staged.commit("packs/ee/eeff")
    assert be.get("packs/ee/eeff") == data
    assert [p.name for p in tmp_path.rglob(".tmp-*")] == []


def test_local_staged_write_error_in_the_background_is_raised_and_cleaned_up(tiny_fs: Path) -> None:
    """ENOSPC met by the write-behind thread surfaces from write or commit; no temporary is left."""
    be = LocalBackend(tiny_fs / "repo")
    be.create_location()
    staged = be.stage("packs")
    with pytest.raises(BackendError, match="full"):
        for _ in range(8):  # 8 MiB into a 2 MiB file system
            staged.write(os.urandom(1024 * 1024))
        staged.commit("packs/ff/ffee")
    assert [p for p in (tiny_fs / "repo").rglob("*") if p.is_file()] == []


def test_local_pack_staged_before_a_sibling_failed_is_not_committed(tiny_fs: Path) -> None:
    """A full disk met by one pack's background write refuses the commit of every pack staged
    before it (a backup's small tree pack must not land while its data pack failed); packs
    staged afterwards, once space is free again, commit normally."""
    be = LocalBackend(tiny_fs / "repo")
    be.create_location()
    tree_pack = be.stage("packs")
    tree_pack.write(b"tree blobs")
    data_pack = be.stage("packs")
    with pytest.raises(BackendError, match="full"):
        for _ in range(8):
            data_pack.write(os.urandom(1024 * 1024))
        data_pack.commit("packs/da/da7a")
    with pytest.raises(BackendError, match="full"):
        tree_pack.commit("packs/7e/7ee5")
    assert [p for p in (tiny_fs / "repo").rglob("*") if p.is_file()] == []
    later = be.stage("packs")
    later.write(b"after the disk was freed")
    later.commit("packs/1a/1a7e")
    assert be.get("packs/1a/1a7e") == b"after the disk was freed"
