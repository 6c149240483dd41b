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
    pool = BufferPool(keep=1, idle=3600)  # however slow this machine, the buffer is still kept
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


def test_pool_frees_buffers_left_idle_and_keeps_the_ones_in_use() -> None:
    now = [100.0]
    pool = BufferPool(keep=2, idle=0.5, clock=lambda: now[0])
    old, recent = pool.take(4096), pool.take(4096)
    pool.give(old)
    now[0] += 0.4
    pool.give(recent)
    now[0] += 0.2  # old: idle 0.6 s, freed; recent: 0.2 s, kept
    assert pool.take(4096) is recent
    fresh = pool.take(4096)
    assert fresh is not old and fresh is not recent  # nothing left: a fresh buffer
    big = pool.take(16 << 20)
    pool.give(big)
    now[0] += 1.0
    pool.give(pool.take(4096))  # any use of the pool frees what went idle, of every size
    assert pool.take(16 << 20) is not big
    pool.give(recent)
    pool.clear()
    assert pool.take(4096) is not recent


def test_pipeline_segments_are_bounded_recycled_and_freed_when_idle(tmp_path) -> None:
    import threading
    import time

    from drtool.backup import pipeline as pipeline_module
    from drtool.backup.pipeline import ChunkPipeline
    pipeline = ChunkPipeline(_repo(), segment_idle=0.3)
    try:
        held = [pipeline.take_buffer() for _ in range(pipeline_module.SEGMENT_BUFFERS)]
        got: list[bytearray] = []
        waiter = threading.Thread(target=lambda: got.append(pipeline.take_buffer()))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and not got  # all in flight: the next one waits
        pipeline.give_buffer(held[0])
        waiter.join(5)
        assert got and got[0] is held[0]  # the one given back, not a new one
        for buf in [got[0], *held[1:]]:
            pipeline.give_buffer(buf)
        again = pipeline.take_buffer()
        assert any(again is buf for buf in held)  # recycled while in use
        pipeline.give_buffer(again)
        time.sleep(0.5)
        fresh = pipeline.take_buffer()
        assert all(fresh is not buf for buf in held)  # the idle ones were freed
        pipeline.give_buffer(fresh)
    finally:
        pipeline.close()
    assert not pipeline._free_segments


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


def test_packs_of_tiny_blobs_are_indexed_before_four_of_them_fill() -> None:
    """An index object moves into the disk cache in one write transaction (a dirty page per
    entry, kept by LMDB): a 16 MiB pack of tiny files holds ~5,500 entries, so an object is
    written once INDEX_EVERY_ENTRIES are waiting, not only every INDEX_EVERY_PACKS packs."""
    import time

    from drtool.repository.index import decode_index
    from drtool.repository.objects import INDEX, INDEX_KIND
    from drtool.repository.repo import INDEX_EVERY_ENTRIES, INDEX_EVERY_PACKS, PACK_TARGET_SIZE
    repo = _repo()
    blob_size = 900
    count = (PACK_TARGET_SIZE // blob_size) * 2  # two packs of incompressible tiny blobs
    assert PACK_TARGET_SIZE // blob_size > INDEX_EVERY_ENTRIES and INDEX_EVERY_PACKS > 2
    for number in range(count):
        repo.store_blob(DATA_BLOB, os.urandom(blob_size))
        if number % 1000 == 0:
            repo.checkpoint()
    deadline = time.monotonic() + 60
    while not repo.list_objects(INDEX) and time.monotonic() < deadline:
        repo.checkpoint()  # the first pack's upload finishes: its index object is due
        time.sleep(0.02)
    repo.flush()
    objects = [decode_index(repo.get_object(INDEX, INDEX_KIND, name)) for name in repo.list_objects(INDEX)]
    assert len(objects) >= 2, "the first full pack was not indexed on its own"
    assert sum(len(record.entries) for packs in objects for record in packs) == count
