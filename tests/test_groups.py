"""Compression groups: recycled buffers, oversized blobs, and what lands in the pack."""
from __future__ import annotations

import os

from drtool.repository.packfile import DATA_BLOB, BufferPool, OpenGroup, open_group, seal_open_group
from drtool.repository.repo import GROUP_TARGET_SIZE, RepoConfig, Repository
from drtool.testing import MemoryBackend


def _repo() -> Repository:
    config = RepoConfig(repo_id="groups", file_chunk_avg=64 * 1024, stream_chunk_avg=4096)
    return Repository.init(MemoryBackend(), b"pw", config=config)


def test_a_blob_larger_than_the_group_buffer_grows_it_and_reads_back() -> None:
    repo = _repo()
    small, huge = os.urandom(1000), os.urandom(GROUP_TARGET_SIZE * 3)  # far beyond capacity
    ids = [repo.store_blob(DATA_BLOB, small), repo.store_blob(DATA_BLOB, huge)]
    repo.flush()
    assert [bytes(b) for b in repo.read_blobs(ids)] == [small, huge]


def test_recycled_buffers_never_leak_old_bytes_into_a_new_group() -> None:
    repo = _repo()
    envelope = repo.envelope
    pool = BufferPool(keep=1)
    first = OpenGroup(1 << 20, pool)
    first.add(b"a" * 32, b"\xff" * 700_000)
    seal_open_group(envelope, DATA_BLOB, first)
    second = OpenGroup(1 << 20, pool)
    assert second.buf is first.buf  # the same buffer came back from the pool
    second.add(b"b" * 32, b"short")
    sealed = seal_open_group(envelope, DATA_BLOB, second)
    assert bytes(open_group(envelope, DATA_BLOB, sealed.sealed)) == b"short"
    assert sealed.raw_size == 5


def test_pool_keeps_at_most_its_limit() -> None:
    pool = BufferPool(keep=2)
    buffers = [pool.take(4096) for _ in range(5)]
    for buf in buffers:
        pool.give(buf)
    kept = {id(pool.take(4096)) for _ in range(3)}
    assert len(kept & {id(b) for b in buffers}) == 2


def test_group_cache_loads_a_group_once_for_concurrent_readers() -> None:
    import threading
    import time

    from drtool.repository.reading import GroupCache
    cache = GroupCache(max_bytes=1 << 20)
    calls: list[int] = []
    started = threading.Event()

    def slow_load() -> bytes:
        calls.append(1)
        started.set()
        time.sleep(0.2)  # the second reader arrives while this one is still loading
        return b"group"

    results: list[bytes | bytearray] = []
    first = threading.Thread(target=lambda: results.append(cache.get_or_load((b"p", 0), slow_load)))
    first.start()
    started.wait()
    results.append(cache.get_or_load((b"p", 0), slow_load))
    first.join()
    assert results == [b"group", b"group"] and len(calls) == 1


def test_group_cache_failed_load_is_retried_by_the_waiting_reader() -> None:
    import threading
    import time

    import pytest

    from drtool.repository.reading import GroupCache
    cache = GroupCache(max_bytes=1 << 20)
    started = threading.Event()

    def failing_load() -> bytes:
        started.set()
        time.sleep(0.2)
        raise ValueError("damaged")

    errors: list[BaseException] = []

    def first_reader() -> None:
        try:
            cache.get_or_load((b"p", 0), failing_load)
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=first_reader)
    thread.start()
    started.wait()
    assert cache.get_or_load((b"p", 0), lambda: b"good") == b"good"
    thread.join()
    assert len(errors) == 1
    with pytest.raises(ValueError):
        cache.get_or_load((b"q", 0), failing_load)
    assert cache.get_or_load((b"q", 0), lambda: b"later") == b"later"  # nothing left marked as loading


def test_group_cache_resize_evicts_down_to_the_new_limit() -> None:
    from drtool.repository.reading import GroupCache
    cache = GroupCache(max_bytes=100)
    for n in range(4):
        cache.put((b"p", n), bytes(20))
    cache.resize(50)
    kept = [n for n in range(4) if cache.get((b"p", n)) is not None]
    assert kept == [2, 3]  # the oldest went first
    cache.put((b"p", 9), bytes(20))  # a group larger than a quarter of the limit is not kept
    assert cache.get((b"p", 9)) is None
