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
    recycled = first.buf
    seal_open_group(envelope, DATA_BLOB, first)
    assert first.buf is not recycled  # a sealed group lets go of its buffer
    second = OpenGroup(1 << 20, pool)
    assert second.buf is recycled  # the same buffer came back from the pool
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


def test_a_dropped_size_is_not_kept_when_given_back_until_taken_again() -> None:
    pool = BufferPool(keep=1, idle=3600)
    late = pool.take(1 << 20)  # a group of that size still being sealed when its stream ended
    pool.drop(1 << 20)
    assert pool.give(late) is False  # not kept: the caller lets go of it
    assert pool.kept_bytes() == 0
    again = pool.take(1 << 20)  # groups of that size again: buffers are recycled as before
    assert pool.give(again) is True
    assert pool.take(1 << 20) is again


def test_a_group_sealed_after_its_size_was_dropped_leaves_nothing_in_the_pool() -> None:
    repo = _repo()
    pool = BufferPool(keep=1, idle=3600)
    group = OpenGroup(1 << 20, pool)
    group.add(b"c" * 32, b"text " * 1000)
    pool.drop(1 << 20)
    sealed = seal_open_group(repo.envelope, DATA_BLOB, group)
    assert pool.kept_bytes() == 0 and len(group.buf) == 0
    assert bytes(open_group(repo.envelope, DATA_BLOB, sealed.sealed)) == b"text " * 1000


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
        got: list[object] = []
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


def test_a_physical_stream_may_have_more_segments_out_and_frees_them_afterwards() -> None:
    """A physical backup's program reads ahead while both workers compress (deeper_segments);
    afterwards the reader is held to the usual depth again and the extra buffers are freed,
    whether they came back during the stream or after it."""
    import threading

    from drtool.backup import pipeline as pipeline_module
    from drtool.backup.pipeline import ChunkPipeline
    usual, deep = pipeline_module.SEGMENT_BUFFERS, pipeline_module.PHYSICAL_SEGMENT_BUFFERS
    assert deep > usual
    pipeline = ChunkPipeline(_repo(), segment_idle=3600)

    def take(count: int, wait: float = 5) -> tuple[list[object], threading.Thread]:
        """Up to ``count`` buffers taken on a helper thread within ``wait`` seconds (so a wrong
        limit fails the test rather than hanging it); the thread, to collect a late one."""
        got: list[object] = []
        taker = threading.Thread(target=lambda: got.extend(pipeline.take_buffer() for _ in range(count)),
                                 daemon=True)
        taker.start()
        taker.join(wait)
        return got, taker

    try:
        for give_back_during_stream in (True, False):
            with pipeline.deeper_segments():
                held, _ = take(deep)
                assert len(held) == deep, "the reader waited with fewer than the deeper limit out"
                late, taker = take(1, wait=0.3)
                assert not late  # the deeper limit holds too
                pipeline.give_buffer(held.pop())
                taker.join(5)
                held += late  # the waiting reader got the one given back
                assert len(held) == deep
                if give_back_during_stream:
                    for buf in held:
                        pipeline.give_buffer(buf)
                    held = []
            for buf in held:
                pipeline.give_buffer(buf)
            assert len(pipeline._free_segments) <= usual  # those past the usual depth were freed
            taken, taker = take(usual + 1, wait=0.5)
            assert len(taken) == usual, "the usual depth is not back after the stream"
            for buf in list(taken):
                pipeline.give_buffer(buf)
            taker.join(5)
            pipeline.give_buffer(taken[-1])  # the taker's last one, once one came back
    finally:
        pipeline.close()


def test_pipeline_keeps_no_buffer_once_reading_is_done_until_it_reads_again() -> None:
    from drtool.backup.pipeline import ChunkPipeline
    pipeline = ChunkPipeline(_repo(), segment_idle=3600)
    try:
        idle, busy = pipeline.take_buffer(), pipeline.take_buffer()
        pipeline.give_buffer(idle)
        pipeline.reading_done()  # the walk's last segment is handed over; one is still being cut
        assert not pipeline._free_segments  # the idle one is freed at once
        pipeline.give_buffer(busy)
        assert not pipeline._free_segments  # and the busy one as it comes back
        again = pipeline.take_buffer()  # reading again (another stream): recycled as before
        pipeline.give_buffer(again)
        assert pipeline.take_buffer() is again
    finally:
        pipeline.close()


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


def _text(size: int, seed: int = 1) -> bytes:
    """Compressible, dump-like bytes (words from a small vocabulary), not a repeated pattern."""
    import random
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"etaoinshrdlu", k=rng.randint(2, 9))) for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=64)) + b".\n"
    return bytes(out[:size])


def _groups_by_blob(repo: Repository) -> dict[bytes, tuple[bytes, int, int]]:
    """blob id -> (pack id, group offset, group plaintext size), read back from the packs' trailers."""
    from drtool.repository.packinspect import iter_pack_names, read_pack_entries
    found: dict[bytes, tuple[bytes, int, int]] = {}
    for name in iter_pack_names(repo.backend):
        pack_id = bytes.fromhex(name.rsplit("/", 1)[1])
        entries = read_pack_entries(repo, pack_id)
        plain: dict[int, int] = {}
        for e in entries:
            plain[e.offset] = max(plain.get(e.offset, 0), e.inner + e.raw_length)
        for e in entries:
            found[e.blob_id] = (pack_id, e.offset, plain[e.offset])
    return found


def test_text_files_shorter_than_a_long_group_get_short_text_groups_of_their_own() -> None:
    from drtool.backup.pipeline import ChunkPipeline, resolve
    from drtool.repository.repo import SHORT_TEXT_GROUP_TARGET_SIZE, TEXT_GROUP_TARGET_SIZE
    repo = _repo()
    pipeline = ChunkPipeline(repo)
    svg, noise = _text(3 << 20), os.urandom(3 << 20)
    try:
        assert pipeline.chunker_for(svg, len(svg)) is pipeline.short_text_chunker
        assert pipeline.chunker_for(svg, TEXT_GROUP_TARGET_SIZE) is pipeline.text_chunker
        assert pipeline.chunker_for(svg) is pipeline.text_chunker  # size unknown: a stream
        assert pipeline.chunker_for(noise, len(noise)) is pipeline.file_chunker
        refs = [pipeline.add_segment(noise[:1 << 20], pipeline.file_chunker)]
        refs += [pipeline.add_segment(svg[i:i + (1 << 20)], pipeline.short_text_chunker)
                 for i in range(0, len(svg), 1 << 20)]
        refs.append(pipeline.add_segment(noise[1 << 20:], pipeline.file_chunker))
        per_ref = [[bytes.fromhex(i) for i in resolve([ref])] for ref in refs]
    finally:
        pipeline.close()
    repo.flush()
    groups = _groups_by_blob(repo)
    ids = [blob_id for found in per_ref for blob_id in found]
    noise_ids = set(per_ref[0]) | set(per_ref[-1])
    for blob_id in ids:
        pack_id, offset, plain = groups[blob_id]
        if blob_id in noise_ids:
            continue
        assert plain <= SHORT_TEXT_GROUP_TARGET_SIZE + 4 * repo.config.stream_chunk_avg
        sharing = {b for b, g in groups.items() if g[:2] == (pack_id, offset)}
        assert not sharing & noise_ids  # a mixed group whose sample is noise would be stored raw
    assert b"".join(bytes(b) for b in repo.read_blobs(ids)) == noise[:1 << 20] + svg + noise[1 << 20:]


def test_the_end_of_a_dump_seals_its_long_group_and_frees_its_buffers() -> None:
    from drtool.backup.pipeline import ChunkPipeline, resolve
    from drtool.repository.repo import TEXT_GROUP_TARGET_SIZE
    repo = _repo()
    pipeline = ChunkPipeline(repo)
    dump = _text(TEXT_GROUP_TARGET_SIZE + (6 << 20))
    try:
        refs = []
        for start in range(0, len(dump), 8 << 20):
            part = dump[start:start + (8 << 20)]
            buf = pipeline.take_buffer()
            buf[:len(part)] = part
            refs.append(pipeline.add_buffer_segment(buf, len(part), pipeline.text_chunker))
        ids = resolve(refs)  # every segment stored: one long group sealed, the second still open
        assert repo.group_buffer_bytes() >= 1 << repo.envelope.stream_window_log  # its context
        pipeline.end_of_text_file()
        assert repo.group_buffer_bytes() == 0  # no open long group, no context or spare kept
        refs = [pipeline.add_segment(_text(1 << 20, seed=2), pipeline.short_text_chunker)]
        resolve(refs)
        assert repo.group_buffer_bytes() < TEXT_GROUP_TARGET_SIZE // 2
    finally:
        pipeline.close()
    repo.flush()
    assert b"".join(bytes(b) for b in repo.read_blobs([bytes.fromhex(i) for i in ids])) == dump


def test_the_end_of_a_dump_waits_for_its_segments_and_then_seals_its_long_groups() -> None:
    import threading

    from drtool.backup.pipeline import ChunkPipeline, resolve
    repo = _repo()
    pipeline = ChunkPipeline(repo, workers=2)
    dump = _text(10 << 20, seed=3)
    try:
        gate = threading.Event()
        pipeline._pool.submit(gate.wait)  # both workers held: the dump's segments queue behind them
        pipeline._pool.submit(gate.wait)
        buf = pipeline.take_buffer()
        buf[:len(dump) - (8 << 20)] = dump[8 << 20:]
        first = pipeline.take_buffer()
        first[:8 << 20] = dump[:8 << 20]
        refs = [pipeline.add_buffer_segment(first, 8 << 20, pipeline.text_chunker),
                pipeline.add_buffer_segment(buf, len(dump) - (8 << 20), pipeline.text_chunker)]
        walk = threading.Thread(target=pipeline.end_of_text_file)
        walk.start()
        walk.join(0.3)
        assert walk.is_alive()  # nothing stored yet: the walk does not read on
        gate.set()
        walk.join(30)
        assert not walk.is_alive()
        assert repo.group_buffer_bytes() == 0  # stored, sealed, contexts freed before the walk goes on
        ids = resolve(refs)
    finally:
        pipeline.close()
    repo.flush()
    assert b"".join(bytes(b) for b in repo.read_blobs([bytes.fromhex(i) for i in ids])) == dump


def _resident_kib(buf: object) -> int:
    """KiB of ``buf``'s own pages that are resident (/proc/self/pagemap's present bit)."""
    import ctypes
    import mmap
    import struct
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))  # type: ignore[arg-type]
    pages = len(buf) // mmap.PAGESIZE  # type: ignore[arg-type]
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(address // mmap.PAGESIZE * 8)
        entries = struct.unpack(f"<{pages}Q", pagemap.read(pages * 8))
    return sum(1 for entry in entries if entry >> 63) * mmap.PAGESIZE // 1024


def test_a_segment_buffer_hands_back_the_tail_a_short_read_did_not_reach() -> None:
    """A dump's full segment keeps its 8 MiB resident for the next one; a media file's short read
    leaves at most SEGMENT_KEEP_RESIDENT of it (night 1's media phase held both buffers whole)."""
    import sys

    import pytest
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/smaps")
    from drtool.backup import pipeline as pipeline_module
    from drtool.backup.pipeline import ChunkPipeline, resolve
    repo = _repo()
    pipeline = ChunkPipeline(repo)
    size = pipeline_module.SEGMENT_BYTES
    try:
        buf = pipeline.take_buffer()
        assert _resident_kib(buf) < size // 1024 // 2  # a new buffer is not resident before reading
        data = os.urandom(size)
        buf[:] = data
        resolve([pipeline.add_buffer_segment(buf, size, pipeline.file_chunker)])
        buf = pipeline.take_buffer()
        assert _resident_kib(buf) >= size // 1024 - 64  # a full segment's pages stay for the next
        buf[:300_000] = data[:300_000]
        resolve([pipeline.add_buffer_segment(buf, 300_000, pipeline.file_chunker)])
        buf = pipeline.take_buffer()
        assert _resident_kib(buf) <= pipeline_module.SEGMENT_KEEP_RESIDENT // 1024 + 64
        assert bytes(buf[:300_000]) == data[:300_000]  # what is kept is kept
        pipeline.give_buffer(buf)
    finally:
        pipeline.close()
