"""S3Backend under wire faults, permissions, missing buckets and Object Lock.

Invariant for every fault: the operation either succeeds with exactly the
right data, or raises a clean drtool error; never wrong data, never a
half-written object.  Faults are injected by tests/fault_proxy.py between
the backend and a real moto server, so botocore's real retry paths run.
"""
from __future__ import annotations

import datetime as dt
import random
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from drtool.backends.base import Backend
from drtool.backends.local import LocalBackend
from drtool.backends.s3 import S3Backend
from drtool.errors import (BackendError, DrtoolError, ObjectMissing, RepositoryNotFound,
                           TransientBackendError, UsageError)
from drtool.monitor.validate import validate_backend
from drtool.repository.repo import repository_exists
from drtool.testing import FaultyBackend, MemoryBackend

try:
    from fault_proxy import FaultProxy
    from s3server import MotoServer, create_bucket, make_client, moto_server, set_dummy_env  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.fault_proxy import FaultProxy
    from tests.s3server import (MotoServer, create_bucket, make_client, moto_server,  # noqa: F401
                                set_dummy_env)

MiB = 1024 * 1024
FAST = {"addressing_style": "path", "read_timeout": 1.5, "connect_timeout": 2, "max_attempts": 2,
        "read_attempts": 3, "read_retry_backoff": 0.05,
        "multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}
SMALL = random.Random(1).randbytes(40_000)
LARGE = random.Random(2).randbytes(6 * MiB + 17)


@pytest.fixture(scope="module")
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    fp = FaultProxy(moto_server.url, stall_seconds=2.0).start()
    yield fp
    fp.stop()


@pytest.fixture
def bucket(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    set_dummy_env(monkeypatch, moto_server.url)
    return create_bucket(moto_server.url)


@pytest.fixture
def faulty_s3(proxy: FaultProxy, bucket: str) -> Iterator[S3Backend]:
    """S3Backend talking to moto through the proxy, with short timeouts."""
    proxy.reset()
    be = S3Backend.from_url(f"s3://{bucket}/repo", dict(FAST, endpoint_url=proxy.url))
    yield be
    proxy.reset()
    be.close()


def _direct(moto_server: MotoServer, bucket: str, **opts: Any) -> S3Backend:
    return S3Backend.from_url(f"s3://{bucket}/repo", dict(addressing_style="path",
                                                            endpoint_url=moto_server.url, **opts))


# -- the matrix --------------------------------------------------------------

def _op_put(be: S3Backend) -> Callable[[], None]:
    def run() -> None:
        be.put("packs/aa/small", SMALL)
        assert be.get("packs/aa/small") == SMALL
    return run


def _op_multipart(be: S3Backend) -> Callable[[], None]:
    def run() -> None:
        be.put("packs/bb/large", LARGE)
    return run


def _op_read(be: S3Backend, kind: str) -> Callable[[], None]:
    be.put("packs/cc/obj", SMALL)
    be.put("packs/cc/other", b"x")

    def run() -> None:
        if kind == "get":
            assert be.get("packs/cc/obj") == SMALL
        elif kind == "range_get":
            assert be.get_range("packs/cc/obj", 1000, 20_000) == SMALL[1000:21_000]
        elif kind == "head":
            info = be.stat("packs/cc/obj")
            assert info is not None and info.size == len(SMALL)
        elif kind == "list":
            assert {o.name for o in be.list("packs/cc/")} == {"packs/cc/obj", "packs/cc/other"}
        elif kind == "delete":
            be.delete("packs/cc/obj")
            assert be.stat("packs/cc/obj") is None
    return run


def _prepare(be: S3Backend, kind: str) -> Callable[[], None]:
    if kind == "put":
        return _op_put(be)
    if kind in ("part", "complete", "initiate"):
        return _op_multipart(be)
    return _op_read(be, kind)


KINDS = ["put", "initiate", "part", "complete", "get", "range_get", "head", "list", "delete"]
FAULTS = ["500", "503", "reset", "stall", "truncate", "error200"]
# HEAD and 204 (DELETE) replies have no body to truncate; S3 never sends 200-errors on GET.
NOT_APPLICABLE = {("head", "truncate"), ("delete", "truncate"), ("get", "error200"),
                  ("range_get", "error200"), ("head", "error200")}
MATRIX = [(k, f) for k in KINDS for f in FAULTS if (k, f) not in NOT_APPLICABLE]


def _check_invariants(be: S3Backend, kind: str, moto_server: MotoServer) -> None:
    """After any outcome: objects are absent or exact, and no multipart upload lingers."""
    for name, data in (("packs/aa/small", SMALL), ("packs/bb/large", LARGE), ("packs/cc/obj", SMALL)):
        info = be.stat(name)
        if info is not None:
            assert be.get(name) == data, f"wrong data visible for {name}"
    uploads = make_client(moto_server.url).list_multipart_uploads(Bucket=be.bucket).get("Uploads", [])
    assert uploads == [], "multipart upload left behind"


@pytest.mark.parametrize("kind,fault", MATRIX)
def test_transient_fault_is_survived(faulty_s3: S3Backend, proxy: FaultProxy,
                                     moto_server: MotoServer, kind: str, fault: str) -> None:
    run = _prepare(faulty_s3, kind)
    proxy.add(kind, fault, count=1)
    run()
    assert [i[:2] for i in proxy.injected] == [(kind, fault)]
    proxy.reset()
    if kind in ("part", "complete", "initiate"):
        assert faulty_s3.get("packs/bb/large") == LARGE
    _check_invariants(faulty_s3, kind, moto_server)
    assert faulty_s3.stats.retries >= 1


# Persistent faults cost a full retry budget each, so one or two per request kind.
PERSISTENT = [("put", "500"), ("put", "stall"), ("put", "503"), ("initiate", "truncate"),
              ("part", "reset"), ("complete", "error200"), ("get", "truncate"), ("get", "stall"),
              ("range_get", "reset"), ("head", "500"), ("list", "error200"), ("delete", "reset")]


@pytest.mark.parametrize("kind,fault", PERSISTENT)
def test_persistent_fault_fails_cleanly(faulty_s3: S3Backend, proxy: FaultProxy,
                                        moto_server: MotoServer, kind: str, fault: str) -> None:
    run = _prepare(faulty_s3, kind)
    proxy.add(kind, fault, count=0)
    with pytest.raises(TransientBackendError) as info:
        run()
    assert "testing" not in info.value.one_line()
    assert len(proxy.injected) >= 2  # it did retry
    proxy.reset()
    _check_invariants(faulty_s3, kind, moto_server)


def test_random_faults_under_concurrency(faulty_s3: S3Backend, proxy: FaultProxy) -> None:
    """Many threads, one client, 30% of puts/gets failing: data stays exact."""
    for kind in ("put", "get", "head"):
        proxy.add(kind, "500", rate=0.3)
    blobs = {f"packs/{i:02x}/o": random.Random(i).randbytes(1000 + i) for i in range(24)}
    errors: list[BaseException] = []

    def worker(names: list[str]) -> None:
        for name in names:
            try:
                faulty_s3.put(name, blobs[name])
                assert faulty_s3.get(name) == blobs[name]
            except TransientBackendError:
                pass  # acceptable outcome: a clean, retryable failure
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    names = sorted(blobs)
    threads = [threading.Thread(target=worker, args=(names[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert proxy.injected
    proxy.reset()
    for name, data in blobs.items():
        if faulty_s3.stat(name) is not None:
            assert faulty_s3.get(name) == data


# -- permissions, missing bucket, conditional writes ----------------------------

def test_permanent_403_fails_fast(faulty_s3: S3Backend, proxy: FaultProxy,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SuperSecretDoNotLeak42")
    be = S3Backend.from_url(f"s3://{faulty_s3.bucket}/repo", dict(FAST, endpoint_url=proxy.url,
                                                                  max_attempts=6))
    proxy.add("*", "403", count=0)
    for op in (lambda: be.put("config", b"x"), lambda: be.get("config"),
               lambda: list(be.list("")), lambda: be.delete("config")):
        with pytest.raises(BackendError) as info:
            op()
        assert not isinstance(info.value, TransientBackendError)
        assert "credentials" in info.value.one_line()
        assert "SuperSecret" not in info.value.one_line()
    kinds = [kind for kind, _ in proxy.requests]
    assert len(kinds) == len(set(kinds)) <= 5  # one request each: no retries on 403


def test_no_such_bucket(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_dummy_env(monkeypatch, moto_server.url)
    be = _direct(moto_server, f"absent-{uuid.uuid4().hex[:10]}")
    for op in (lambda: be.put("config", b"x"), lambda: be.get("config"),
               lambda: list(be.list("")), be.create_location, be.server_time):
        with pytest.raises(RepositoryNotFound, match="does not exist"):
            op()
    assert be.stat("config") is None and not repository_exists(be)


def test_put_if_absent_falls_back_when_unsupported(faulty_s3: S3Backend, proxy: FaultProxy) -> None:
    proxy.add("put_if_absent", "501", count=0)
    assert faulty_s3.put_if_absent("locks/a", b"one") is True
    assert faulty_s3.put_if_absent("locks/a", b"two") is False
    assert faulty_s3.get("locks/a") == b"one"
    assert proxy.count("put_if_absent") == 1  # learned once, then HEAD-then-PUT


def test_put_if_absent_survives_lost_response(faulty_s3: S3Backend, proxy: FaultProxy) -> None:
    """The conditional PUT lands but the reply is lost; the retry gets 412: still ours."""
    proxy.add("put_if_absent", "truncate", count=1)
    assert faulty_s3.put_if_absent("locks/b", b"mine") is True
    assert faulty_s3.get("locks/b") == b"mine"


def test_get_range_is_exact_after_truncation(faulty_s3: S3Backend, proxy: FaultProxy) -> None:
    faulty_s3.put("packs/dd/x", SMALL)
    proxy.add("range_get", "truncate", count=2)
    assert faulty_s3.get_range("packs/dd/x", 7, 30_000) == SMALL[7:30_007]
    with pytest.raises(ObjectMissing):
        faulty_s3.get_range("packs/dd/x", 39_990, 20)


# -- Object Lock ------------------------------------------------------------------

def test_object_lock(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_dummy_env(monkeypatch, moto_server.url)
    bucket = create_bucket(moto_server.url, object_lock=True)
    be = _direct(moto_server, bucket, object_lock_mode="GOVERNANCE", object_lock_days=2,
                 multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    be.create_location()
    now = dt.datetime.now(dt.timezone.utc)
    for name, data in (("packs/ee/small", SMALL), ("packs/ee/large", LARGE)):
        be.put(name, data)
        until = be.retention_until(name)
        assert until is not None and dt.timedelta(days=1.9) < until - now < dt.timedelta(days=2.1)
        assert be.is_locked(name)
        with pytest.raises(BackendError, match="locked"):
            be.delete(name)
        assert be.get(name) == data
    be.extend_retention("packs/ee/small", now + dt.timedelta(days=10))
    assert be.retention_until("packs/ee/small") >= now + dt.timedelta(days=9.9)
    plain = _direct(moto_server, bucket)  # no lock configured: objects deletable
    plain.put("locks/l1", b"x")
    assert not plain.is_locked("locks/l1") and plain.retention_until("locks/l1") is None
    plain.delete("locks/l1")
    assert plain.stat("locks/l1") is None


def test_object_lock_needs_lock_enabled_bucket(bucket: str, moto_server: MotoServer) -> None:
    be = _direct(moto_server, bucket, object_lock_mode="COMPLIANCE", object_lock_days=1)
    with pytest.raises(BackendError, match="Object Lock"):
        be.create_location()


# -- validate_backend ----------------------------------------------------------

def _validated(backend: Backend) -> dict[str, Any]:
    results = validate_backend(backend)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert not [o for o in backend.list("validate/")] or "remain" in results[-1].detail
    return {r.name: r.detail for r in results}


def test_validate_memory_and_local(tmp_path: Path) -> None:
    _validated(MemoryBackend(uuid.uuid4().hex))
    local = LocalBackend(tmp_path)
    local.create_location()
    _validated(local)


def test_validate_s3(bucket: str, moto_server: MotoServer) -> None:
    details = _validated(_direct(moto_server, bucket))
    assert details["clock-skew"].startswith("skew")


def test_validate_s3_object_lock(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_dummy_env(monkeypatch, moto_server.url)
    bucket = create_bucket(moto_server.url, object_lock=True)
    details = _validated(_direct(moto_server, bucket, object_lock_mode="GOVERNANCE",
                                 object_lock_days=1))
    assert "delete refused" in details["object-lock"]


def test_validate_reports_broken_backend() -> None:
    broken = FaultyBackend(MemoryBackend(uuid.uuid4().hex))
    broken.add_rule("get_range", "flip", times=0)
    results = {r.name: r for r in validate_backend(broken)}
    assert not results["ranged-read"].ok and results["read-after-write"].ok


def test_validate_reports_clock_skew() -> None:
    class Skewed(MemoryBackend):
        def server_time(self) -> dt.datetime:
            return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)

    results = {r.name: r for r in validate_backend(Skewed(uuid.uuid4().hex))}
    assert not results["clock-skew"].ok and "-600" in results["clock-skew"].detail


# -- FaultyBackend itself -----------------------------------------------------

def test_faulty_backend_rules() -> None:
    fb = FaultyBackend(MemoryBackend(uuid.uuid4().hex))
    fb.fail_nth("put", 2, prefix="packs/")
    fb.put("packs/1", b"a")
    fb.put("index/1", b"b")  # other prefixes do not count
    with pytest.raises(TransientBackendError):
        fb.put("packs/2", b"c")
    fb.put("packs/3", b"d")
    assert fb.stat("packs/2") is None
    fb.truncate_get("packs/3")
    assert fb.get("packs/3") == b""  # half of one byte
    fb.flip_get("packs/1")
    assert fb.get("packs/1") == b"`"
    fb.fail_delete("index/")
    with pytest.raises(BackendError):
        fb.delete("index/1")
    assert [(i.op, i.action) for i in fb.injected] == [
        ("put", "fail"), ("get", "truncate"), ("get", "flip"), ("delete", "fail")]


def test_faulty_backend_random_mode_is_reproducible() -> None:
    def run(seed: int) -> list[str]:
        fb = FaultyBackend(MemoryBackend(uuid.uuid4().hex), fail_rate=0.3, seed=seed)
        outcome = []
        for i in range(40):
            try:
                fb.put(f"o{i}", b"x")
                outcome.append("ok")
            except DrtoolError:
                outcome.append("fail")
        return outcome

    assert run(5) == run(5) and "fail" in run(5) and "ok" in run(5)


def test_options_are_validated() -> None:
    for opts in ({"object_lock_day": 3}, {"sse": "des"}, {"object_lock_mode": "GOVERNANCE"},
                 {"multipart_chunksize": 1024}, {"max_attempts": "many"}):
        with pytest.raises(UsageError):
            S3Backend.from_url("s3://bucket/prefix", opts)
    with pytest.raises(UsageError):
        S3Backend.from_url("s3:///nobucket", {})
    be = S3Backend.from_url("s3://b/p", {"connections": "6", "create_bucket": "true",
                                         "endpoint_url": "http://127.0.0.1:9"})
    assert be.opts["connections"] == 6 and be.opts["create_bucket"] is True
    assert S3Backend.from_url("s3://b/p", {"max_connections": 3}).opts["connections"] == 3  # the old name
    with pytest.raises(UsageError):
        S3Backend.from_url("s3://b/p", {"max_connections": 3, "connections": 3})
    with pytest.raises(UsageError):
        S3Backend.from_url("s3://b/p", {"limit_download": "quick"})
    assert be.url == "s3://b/p"


@pytest.mark.parametrize("fault", ["truncate", "reset", "500", "error200", "stall"])
def test_a_streamed_range_resumes_after_a_fault_and_returns_exact_bytes(
        faulty_s3: S3Backend, proxy: FaultProxy, fault: str) -> None:
    """A restore streams a pack group by group (open_range): a body that breaks off is read on
    from the first byte not yet handed on, and the caller gets exactly the range's bytes."""
    faulty_s3.put("packs/bb/streamed", LARGE)
    proxy.reset()
    proxy.add("range_get", fault, count=1, skip=0)
    stream = faulty_s3.open_range("packs/bb/streamed", 1000, 5 * MiB)
    first, second = bytearray(2 * MiB), bytearray(3 * MiB - 300)
    try:
        stream.readinto(memoryview(first))
        stream.skip(300)  # a gap nobody needs
        stream.readinto(memoryview(second))
    finally:
        stream.close()
    assert bytes(first) == LARGE[1000:1000 + 2 * MiB]
    assert bytes(second) == LARGE[1000 + 2 * MiB + 300:1000 + 5 * MiB]
    assert [f for _k, f, _w in proxy.injected] == [fault]
    assert 2 <= proxy.count("range_get") <= 3  # the faulted request and its resumption (500: botocore's retry)


def test_a_streamed_range_that_keeps_failing_raises_transient(faulty_s3: S3Backend, proxy: FaultProxy) -> None:
    faulty_s3.put("packs/bb/broken", LARGE)
    proxy.reset()
    proxy.add("range_get", "truncate", count=0)
    stream = faulty_s3.open_range("packs/bb/broken", 0, 4 * MiB)
    with pytest.raises(TransientBackendError, match="kept failing"):
        stream.readinto(memoryview(bytearray(4 * MiB)))
    stream.close()
    assert proxy.count("range_get") == FAST["read_attempts"]
