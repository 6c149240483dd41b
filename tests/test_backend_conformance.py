"""One behavioural contract, checked against every backend.

Higher layers are tested mostly on the memory backend; that is only sound if
every backend behaves the same for the operations they use.  The checks
themselves live in ``drtool.testing.conformance`` (``verify_backend``), so a
new backend is verified by one call; here each check runs against local,
memory, S3 (moto over real HTTP) and the lagging-listing fake (except the
checks that need a listing to show a write at once).
"""
from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from drtool.backends import capabilities
from drtool.backends.base import Backend, ObjectInfo
from drtool.backends.capabilities import (CAPABILITIES, BufferedReads, ColdStorage, ConcurrentReads,
                                          ConditionalCreate,
                                          LocationSetup,
                                          ObjectLock, PartWrites, ServerClock, StagedWrites, TemporaryCleanup,
                                          ViewReads, supports)
from drtool.backends.local import TMP_PREFIX, LocalBackend
from drtool.errors import BackendError, DrtoolError, RepositoryNotFound
from drtool.testing import (CHECKS, BackendCheck, BackendCheckFailed, FaultyBackend, LaggingListings,
                            MemoryBackend, run_check, verify_backend)

try:
    from s3server import MotoServer, create_bucket, moto_server, set_dummy_env  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.s3server import MotoServer, create_bucket, moto_server, set_dummy_env  # noqa: F401

MiB = 1024 * 1024
S3_SMALL_MULTIPART = {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB,
                      "addressing_style": "path", "read_timeout": 10, "max_attempts": 3}
KINDS = ["local", "memory", "s3", "lagging"]


def _make_s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    from drtool.backends.s3 import S3Backend

    server: MotoServer = request.getfixturevalue("moto_server")
    set_dummy_env(monkeypatch, server.url)  # endpoint comes from AWS_ENDPOINT_URL
    bucket = create_bucket(server.url)
    backend = S3Backend.from_url(f"s3://{bucket}/repo/one", dict(S3_SMALL_MULTIPART))
    backend.create_location()
    return backend


@pytest.fixture
def make_backend(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Callable[[], Backend]:
    """A factory of fresh, empty backends of the kind the test is parametrized with."""
    kind = request.node.callspec.params["kind"]
    counter = itertools.count()

    def make() -> Backend:
        if kind == "local":
            be: Backend = LocalBackend(tmp_path / f"repo-{next(counter)}")
            capabilities.create_location(be)
            return be
        if kind == "memory":
            return MemoryBackend(uuid.uuid4().hex)
        if kind == "lagging":
            return LaggingListings(MemoryBackend(uuid.uuid4().hex), lag=2)
        return _make_s3(request, monkeypatch)
    return make


def _names(backend: Backend, prefix: str = "") -> set[str]:
    return {info.name for info in backend.list(prefix)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.name)
def test_contract(check: BackendCheck, kind: str, make_backend: Callable[[], Backend]) -> None:
    outcome = run_check(check, make_backend, listing_lags=kind == "lagging")
    if outcome.status == "skipped":
        pytest.skip(outcome.detail)
    assert outcome.status == "passed", f"{check.name}: {outcome.detail}"


# -- verify_backend as a one-call API --------------------------------------------------------------

def test_verify_backend_in_one_call() -> None:
    outcomes = verify_backend(lambda: MemoryBackend(uuid.uuid4().hex))
    assert {o.name for o in outcomes} == {c.name for c in CHECKS}
    assert {o.name for o in outcomes if o.status == "skipped"} == {"staged-object", "aborted-stage-leaves-nothing"}
    lagging = verify_backend(lambda: LaggingListings(lag=3), listing_lags=True)
    assert {o.name for o in lagging if o.status == "skipped"} >= {c.name for c in CHECKS if c.read_after_list}
    assert any(o.name == "listing-catches-up" and o.status == "passed" for o in lagging)


def test_verify_backend_names_the_failed_checks_and_why() -> None:
    class Clipping(MemoryBackend):
        """Returns what there is of a range past the end (a store that ignores Range bounds)."""

        def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
            data = self.get(name)
            return data[offset:] if length is None else data[offset:offset + length]

    with pytest.raises(BackendCheckFailed) as raised:
        verify_backend(lambda: Clipping(uuid.uuid4().hex))
    failures = raised.value.failures
    assert set(failures) == {"get-range-past-end-raises", "get-range-to-the-end", "read-view", "read-into"}
    assert "get_range(95, 10) of a 100-byte object returned 5 instead of raising ObjectMissing" \
        in failures["get-range-past-end-raises"]
    assert "check get-range-past-end-raises failed: get_range(95, 10)" in str(raised.value)

    def flipping() -> Backend:
        broken = FaultyBackend(MemoryBackend(uuid.uuid4().hex))
        broken.flip_get("packs/aa/")
        return broken

    with pytest.raises(BackendCheckFailed, match="check get-range-exact failed: get_range"):
        verify_backend(flipping, only=("get-range-exact", "put-get-roundtrip"))


def test_a_lagging_store_fails_the_read_after_list_checks() -> None:
    """The checks really depend on the listing: skipping them for lagging stores is needed."""
    with pytest.raises(BackendCheckFailed) as raised:
        verify_backend(lambda: LaggingListings(lag=1), only=("list-prefixes-and-nesting",
                                                               "list-shows-deletes-at-once"))
    assert set(raised.value.failures) == {"list-prefixes-and-nesting", "list-shows-deletes-at-once"}


# -- capabilities: the performance paths stay where docs/performance.md measured them ---------------

def _capabilities_of(backend: Backend) -> set[str]:
    return {cap.__name__ for cap in CAPABILITIES if supports(backend, cap)}


def test_each_backend_has_its_capabilities(tmp_path: Path, moto_server: MotoServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from drtool.backends.s3 import S3Backend

    set_dummy_env(monkeypatch, moto_server.url)
    local = LocalBackend(tmp_path)
    assert _capabilities_of(local) == {"StagedWrites", "PartWrites", "ViewReads", "BufferedReads", "ReadAhead",
                                       "ConditionalCreate", "LocationSetup", "TemporaryCleanup", "GroupSharing"}
    s3 = S3Backend.from_url("s3://bucket/prefix", {})
    assert _capabilities_of(s3) == {"ConditionalCreate", "ObjectLock", "ServerClock", "LocationSetup",
                                    "BufferedReads", "ConcurrentReads", "StreamedReads", "PartWrites",
                                    "ColdStorage"}
    # [s3] connections; requests of up to 64 MiB (a whole pack), streamed group by group
    assert capabilities.read_concurrency(s3) == (4, 64 * 1024 * 1024)
    assert capabilities.range_opener(s3) is not None and capabilities.range_opener(local) is None
    assert capabilities.read_concurrency(local) is None  # local restores read on the decrypting threads
    assert _capabilities_of(MemoryBackend()) == {"ConditionalCreate"}
    for backend, cap in ((local, StagedWrites), (local, BufferedReads), (s3, ObjectLock)):
        assert isinstance(backend, cap)  # the protocols also hold structurally
    assert not isinstance(MemoryBackend(), ViewReads)


def test_wrappers_mirror_exactly_the_capabilities_of_what_they_wrap(tmp_path: Path) -> None:
    """A wrapper must send callers down the path production takes with the wrapped backend,
    except where the fault wrapper must see the data (it has no staged, part or mapped I/O)."""
    local = LocalBackend(tmp_path)
    assert _capabilities_of(FaultyBackend(local)) == {"ReadAhead", "ConditionalCreate", "LocationSetup", "TemporaryCleanup",
                                                      "GroupSharing"}
    assert _capabilities_of(FaultyBackend(MemoryBackend())) == {"ConditionalCreate"}
    assert _capabilities_of(LaggingListings(local)) == {"ViewReads", "BufferedReads", "ReadAhead", "ConditionalCreate",
                                                        "LocationSetup", "TemporaryCleanup", "GroupSharing"}
    assert _capabilities_of(LaggingListings()) == {"ConditionalCreate"}
    assert type(FaultyBackend(local)) is type(FaultyBackend(LocalBackend(tmp_path / "b")))  # one class per mix
    assert isinstance(FaultyBackend(local), FaultyBackend) and type(FaultyBackend(local)).__name__ == "FaultyBackend"

    class Locking(MemoryBackend):
        def retention_until(self, name: str) -> None:
            return None

        def is_locked(self, name: str) -> bool:
            return name == "snapshots/kept"

        def extend_retention(self, name: str, until: object) -> None:
            pass

    faulty = FaultyBackend(Locking())
    assert supports(faulty, ObjectLock) and capabilities.is_locked(faulty, "snapshots/kept")
    assert not capabilities.is_locked(FaultyBackend(MemoryBackend()), "snapshots/kept")
    for cap in (PartWrites, ConditionalCreate, ConcurrentReads, ColdStorage, LocationSetup, ServerClock,
                TemporaryCleanup):
        assert cap in CAPABILITIES


def test_fallbacks_of_missing_capabilities() -> None:
    memory = MemoryBackend()
    assert capabilities.stage(memory, "packs") is None
    assert capabilities.server_time(memory) is None
    assert capabilities.remove_abandoned_temporaries(memory, 0) == 0
    assert capabilities.object_lock(memory) is None
    capabilities.create_location(memory)  # nothing to prepare
    capabilities.put_parts(memory, "packs/ab/x", [b"ab", bytearray(b"cd")])
    assert memory.get("packs/ab/x") == b"abcd"
    assert bytes(capabilities.read_into(memory, "packs/ab/x", 1, 2, bytearray(10))) == b"bc"
    assert capabilities.check_then_put(memory, "locks/a", b"1") is True
    assert capabilities.check_then_put(memory, "locks/a", b"2") is False
    assert memory.get("locks/a") == b"1"


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


def test_local_read_ahead_queues_the_range_into_the_page_cache(tmp_path: Path) -> None:
    """``read_ahead`` (``posix_fadvise(WILLNEED)``) reads the range in the background: the range's
    pages arrive in the page cache without a read, the rest of the object does not; a missing
    object is not an error (the read itself reports it)."""
    from test_fdio import on_tmpfs, resident_bytes
    if on_tmpfs(tmp_path):
        pytest.fail(f"{tmp_path} is on a tmpfs, where every page is resident: run with TMPDIR on a disk")
    local = LocalBackend(tmp_path)
    local.put("packs/ab/cd", os.urandom(8 * 1024 * 1024))
    path = tmp_path / "packs/ab/cd"
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert resident_bytes(path) <= 64 * 1024
    local.read_ahead("packs/ab/cd", 2 * 1024 * 1024, 4 * 1024 * 1024)
    deadline = time.monotonic() + 10
    while resident_bytes(path) < 4 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 4 * 1024 * 1024 <= resident_bytes(path) <= 4 * 1024 * 1024 + 256 * 1024
    local.read_ahead("packs/ab/missing", 0, 4096)  # nothing raised


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
    assert created.stat("config") == ObjectInfo("config", 1)


def test_s3_large_objects_go_up_in_parts(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The multipart path ran: the ETag is "<md5 of part md5s>-<parts>" (the large-object check
    proves the bytes round-trip)."""
    from drtool.backends.s3 import S3Backend

    set_dummy_env(monkeypatch, moto_server.url)
    bucket = create_bucket(moto_server.url)
    backend = S3Backend.from_url(f"s3://{bucket}/repo", dict(S3_SMALL_MULTIPART))
    data = os.urandom(11 * MiB + 123)
    backend.put("packs/ff/large", data)
    head = backend.client.head_object(Bucket=bucket, Key=backend._key("packs/ff/large"))
    assert head["ETag"].strip('"').endswith("-3")
    assert backend.get("packs/ff/large") == data


def test_s3_endpoint_from_specific_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from drtool.backends.s3 import S3Backend

    set_dummy_env(monkeypatch, "http://127.0.0.1:9")  # generic variable points nowhere
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    bucket = create_bucket(moto_server.url)
    be = S3Backend.from_url(f"s3://{bucket}", {})
    be.put("x", b"1")
    assert be.get("x") == b"1" and moto_server.url in be.endpoint


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


def test_only_real_stores_have_urls() -> None:
    """The memory fake has no URL scheme: a deployed command cannot write into a vanishing store."""
    from drtool.backends.registry import open_backend
    from drtool.errors import UsageError

    with pytest.raises(UsageError, match="unsupported repository URL scheme 'memory'"):
        open_backend("memory://nightly")
