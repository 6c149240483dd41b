"""Long groups compressed as they fill (repository/longgroups.py, compressinto.FrameStream)."""
from __future__ import annotations

import os
import threading

import pytest
import zstandard

from drtool.repository import compressinto
from treegen import dump_like_text
from drtool.repository.envelope import ZSTD, Envelope
from drtool.repository.objects import pack_name
from drtool.repository.packfile import DATA_BLOB, open_group
from drtool.repository.reading import ScratchPool
from drtool.repository.repo import LONG_TEXT, TEXT_GROUP_TARGET_SIZE, RepoConfig, Repository
from drtool.testing import MemoryBackend

pytestmark = pytest.mark.skipif(not compressinto.available(), reason="zstd's cffi backend is not installed")


def test_a_streamed_frame_carries_its_content_size_and_opens_with_today_s_readers() -> None:
    envelope = Envelope(os.urandom(32))
    data = dump_like_text(5 * 1024 * 1024 + 4321)
    stream = envelope.frame_stream(TEXT_GROUP_TARGET_SIZE)
    for start in range(0, len(data), 16 * 1024):
        stream.feed(data[start:start + 16 * 1024])
    with stream.finish() as frame:
        assert zstandard.get_frame_parameters(frame).content_size == len(data)
        sealed = envelope.seal_frame(b"group-data", b"", frame)
    stream.close()
    assert sealed[1] == ZSTD
    assert bytes(envelope.open(b"group-data", b"", sealed)) == data  # decompress() needs the size
    plain, held = envelope.open_recycled(b"group-data", b"", sealed, ScratchPool(keep=2))
    assert bytes(plain) == data  # decoded straight into a buffer of the recorded size
    assert len(held) == 1


def test_a_streamed_long_group_is_the_frame_one_shot_compression_writes() -> None:
    """Past the window (16 MiB groups) the frame is byte for byte the one-shot one; smaller
    frames differ only where one-shot compression tunes itself to a known size."""
    envelope = Envelope(os.urandom(32))
    envelope.stream_window_log = 24  # the one-shot profile's window
    data = dump_like_text(TEXT_GROUP_TARGET_SIZE + 12345, seed=2)
    stream = envelope.frame_stream(TEXT_GROUP_TARGET_SIZE)
    with memoryview(data) as view:
        for start in range(0, len(data), 1 << 20):
            stream.feed(view[start:start + (1 << 20)])
    one_shot = bytearray(compressinto.bound(len(data)))
    size = envelope._into(True).compress_into(data, one_shot)
    with stream.finish() as frame:
        assert bytes(frame) == bytes(one_shot[:size])
    stream.close()


def test_a_stream_reuses_its_context_and_grows_its_output_for_an_oversized_frame() -> None:
    envelope = Envelope(os.urandom(32))
    stream = envelope.frame_stream(64 * 1024)  # room for a small frame: the big one must grow it
    big, small = os.urandom(3 << 20) + dump_like_text(2 << 20, seed=3), dump_like_text(100_000, seed=4)
    for data in (big, small, big):
        for start in range(0, len(data), 300_000):
            stream.feed(data[start:start + 300_000])
        with stream.finish() as frame:
            assert zstandard.ZstdDecompressor().decompress(frame) == data
    stream.close()


def test_a_stream_holds_its_window_not_its_group() -> None:
    """What a long group keeps resident is bounded by the context's window, not by the group:
    feeding 16 MiB through an 8 MiB window leaves a context of about 8 MiB plus its tables."""
    envelope = Envelope(os.urandom(32))
    stream = envelope.frame_stream(TEXT_GROUP_TARGET_SIZE)
    data = dump_like_text(TEXT_GROUP_TARGET_SIZE, seed=5)
    with memoryview(data) as view:
        for start in range(0, len(data), 1 << 20):
            stream.feed(view[start:start + (1 << 20)])
    context = stream.resident() - stream._pos[0]
    window = 1 << envelope.stream_window_log
    assert window <= TEXT_GROUP_TARGET_SIZE // 2
    assert window <= context < window + (4 << 20)
    with stream.finish() as frame:
        assert zstandard.ZstdDecompressor().decompress(frame) == data
    stream.close()


def _repo() -> Repository:
    return Repository.init(MemoryBackend(), b"pw", config=RepoConfig(repo_id="long", stream_chunk_avg=4096))


def _runs(data: bytes, blob_size: int, repo: Repository) -> list[tuple[bytes, int, int]]:
    return [(repo.ids.blob_id(data[start:start + blob_size]), start, len(data[start:start + blob_size]))
            for start in range(0, len(data), blob_size)]


def test_each_thread_fills_a_long_group_of_its_own_and_every_blob_reads_back() -> None:
    repo = _repo()
    parts = [dump_like_text(12 << 20, seed=10 + n) for n in range(3)]
    blobs = [_runs(part, 16 * 1024, repo) for part in parts]

    def add(n: int) -> None:
        with memoryview(parts[n]) as view:
            for start in range(0, len(blobs[n]), 200):  # segment by segment, as the pipeline does
                repo.add_long_blobs(DATA_BLOB, view, blobs[n][start:start + 200])

    threads = [threading.Thread(target=add, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert repo._long is not None and len(repo._long._open) == 3  # one open group per thread
    repo.flush()
    assert repo.group_buffer_bytes() == 0  # sealed, and the idle contexts freed
    for part, found in zip(parts, blobs):
        ids = [blob_id for blob_id, _, _ in found]
        assert b"".join(bytes(b) for b in repo.read_blobs(ids)) == part
        groups = {repo.locate(blob_id)[:3] for blob_id in ids}
        assert all(repo.locate(blob_id).blob_type == DATA_BLOB for blob_id in ids)
        assert len(groups) <= 2  # 12 MiB of one thread: one full 16 MiB group at most, and a rest
    assert repo.new_blobs == sum(len(found) for found in blobs)


def test_a_long_group_is_sealed_at_its_target_and_repeats_are_stored_once() -> None:
    repo = _repo()
    data = dump_like_text(TEXT_GROUP_TARGET_SIZE + (3 << 20), seed=20)
    blobs = _runs(data, 64 * 1024, repo)
    with memoryview(data) as view:
        assert repo.add_long_blobs(DATA_BLOB, view, blobs + blobs[:5]) == len(blobs)
        assert repo.add_long_blobs(DATA_BLOB, view, blobs[:5]) == 0
    assert not repo.add_blob(DATA_BLOB, blobs[0][0], data[:64 * 1024], LONG_TEXT)
    repo.flush()
    offsets = sorted({repo.locate(blob_id).offset for blob_id, _, _ in blobs})
    assert len(offsets) == 2  # the full group, sealed as it reached its target, and the rest
    pack = repo.locate(blobs[0][0])
    sealed = repo.backend.get(pack_name(pack.pack_id))[pack.offset:pack.offset + pack.length]
    plain = open_group(repo.envelope, DATA_BLOB, sealed)
    assert TEXT_GROUP_TARGET_SIZE <= len(plain) < TEXT_GROUP_TARGET_SIZE + 64 * 1024
    assert b"".join(bytes(b) for b in repo.read_blobs([b[0] for b in blobs])) == data


def test_sealing_the_long_groups_now_frees_every_context() -> None:
    repo = _repo()
    data = dump_like_text(3 << 20, seed=30)
    with memoryview(data) as view:
        repo.add_long_blobs(DATA_BLOB, view, _runs(data, 16 * 1024, repo))
    assert repo.group_buffer_bytes() >= 1 << repo.envelope.stream_window_log  # a context is held
    repo.seal_group_now(DATA_BLOB, LONG_TEXT)
    assert repo.group_buffer_bytes() == 0
    repo.flush()
    assert b"".join(bytes(b) for b in repo.read_blobs([b[0] for b in _runs(data, 16 * 1024, repo)])) == data


def test_a_profile_change_between_groups_makes_a_new_context() -> None:
    """Physical backups turn long-distance matching off for their run (``text_ldm``): a stream
    made with the other profile is not reused for the next group."""
    repo = _repo()
    data = dump_like_text(2 << 20, seed=40)
    with memoryview(data) as view:
        repo.add_long_blobs(DATA_BLOB, view, _runs(data[:1 << 20], 16 * 1024, repo))
        repo.flush()
        repo.envelope.text_ldm = False
        try:
            second = [(b, o + (1 << 20), n) for b, o, n in _runs(data[1 << 20:], 16 * 1024, repo)]
            repo.add_long_blobs(DATA_BLOB, view, second)
            assert repo._long is not None
            assert [g.stream.profile for g in repo._long._open.values()] == ["text"]
            repo.flush()
        finally:
            repo.envelope.text_ldm = True
    assert b"".join(bytes(b) for b in repo.read_blobs([b[0] for b in _runs(data, 16 * 1024, repo)])) == data


def test_incompressible_long_blobs_go_to_a_buffered_group_stored_raw() -> None:
    """A compressed stream (``pg_dump -Fc`` through ``--from-command``) is cut as text: its
    segments fail the middle-sample test and are stored raw as before, not zstd-framed."""
    from drtool.repository.envelope import RAW
    repo = _repo()
    noise, text = os.urandom(5 << 20), dump_like_text(5 << 20, seed=50)
    for data in (noise, text):
        with memoryview(data) as view:
            repo.add_long_blobs(DATA_BLOB, view, _runs(data, 16 * 1024, repo))
    assert repo._long is not None and len(repo._long._open) == 1  # only the text is streamed
    repo.flush()
    for data, mode in ((noise, RAW), (text, ZSTD)):
        ids = [b[0] for b in _runs(data, 16 * 1024, repo)]
        loc = repo.locate(ids[0])
        sealed = repo.backend.get(pack_name(loc.pack_id))[loc.offset:loc.offset + loc.length]
        assert sealed[1] == mode
        assert {repo.locate(blob_id)[:3] for blob_id in ids} == {loc[:3]}  # one group each
        assert b"".join(bytes(b) for b in repo.read_blobs(ids)) == data


def test_physical_streams_seal_long_runs_of_new_blobs_in_one_shot() -> None:
    """``run_groups`` (a physical backup's run): a segment's 8 MiB of new neighbouring blobs is one
    group compressed in one shot, with no streaming context made; a run cut short by repeats
    (under RUN_GROUP_MIN) still goes to the streamed group; every blob reads back."""
    from drtool.repository.longgroups import RUN_GROUP_MIN
    repo = _repo()
    data = dump_like_text(8 << 20, seed=60)
    blobs = _runs(data, 16 * 1024, repo)
    repo.envelope.text_ldm, repo.envelope.run_groups = False, True
    try:
        with memoryview(data) as view:
            repo.add_long_blobs(DATA_BLOB, view, blobs[:100])  # 1.6 MiB: a group of its own
            assert repo.group_buffer_bytes() == 0  # no context: sealed in one shot
            # repeats of the first run split what follows: 2 new blobs (32 KiB) then 300
            mixed = blobs[102:104] + blobs[:10] + blobs[110:410]
            repo.add_long_blobs(DATA_BLOB, view, mixed)
            assert repo._long is not None and len(repo._long._open) == 1  # the short run streams
            assert 32 * 1024 < RUN_GROUP_MIN <= 300 * 16 * 1024
        repo.flush()
    finally:
        repo.envelope.text_ldm, repo.envelope.run_groups = True, False
    stored = [b for b in blobs[:104] + blobs[110:410] if b not in blobs[100:102]]
    groups = {}
    for blob_id, _, _ in stored:
        groups.setdefault(repo.locate(blob_id)[:3], []).append(blob_id)
    assert sorted(len(ids) for ids in groups.values()) == [2, 100, 300]
    first = repo.locate(blobs[0][0])
    sealed = repo.backend.get(pack_name(first.pack_id))[first.offset:first.offset + first.length]
    assert sealed[1] == ZSTD
    assert bytes(open_group(repo.envelope, DATA_BLOB, sealed)) == data[:blobs[100][1]]
    ids = [b[0] for b in stored]
    assert b"".join(bytes(b) for b in repo.read_blobs(ids)) == b"".join(data[o:o + n] for _, o, n in stored)


def _libzstd_frame(data: bytes, settings: list[tuple[str, int]]) -> bytes:
    """The frame libzstd writes for ``data`` with these parameters (plus content size, no checksum,
    no dictionary id), set here through its own calls: what drtool's frames are compared with."""
    lib, ffi = compressinto._lib, compressinto._ffi
    cctx = ffi.gc(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx)
    for name, value in settings + [("ZSTD_c_contentSizeFlag", 1), ("ZSTD_c_checksumFlag", 0),
                                   ("ZSTD_c_dictIDFlag", 0)]:
        assert not lib.ZSTD_isError(lib.ZSTD_CCtx_setParameter(cctx, getattr(lib, name), value))
    out = bytearray(compressinto.bound(len(data)))
    with ffi.from_buffer(out, require_writable=True) as dst:
        size = lib.ZSTD_compress2(cctx, dst, len(dst), data, len(data))
    assert not lib.ZSTD_isError(size)
    return bytes(out[:size])


def _pgbench_like(size: int) -> bytes:
    """Rows padded with blanks, as pgbench's accounts: level 1 shrinks them to a few per cent."""
    rows = b"".join(b"%08d|%04d|%08d|" % (i, i // 100000, 0) + b" " * 84 + b"\n" for i in range(size // 112 + 1))
    return rows[:size]


def test_physical_streams_compress_at_a_negative_level_with_huffman_coded_literals() -> None:
    """``run_groups`` (a physical backup): a group sealed in one shot is a level -3 frame whose
    literals are still Huffman-coded (a negative level alone leaves them raw: on data-file pages
    0.61 of the input instead of 0.38), unless its sample compresses far better at level 1
    (pgbench-like pages: level 1's frame, which -3 would store half as large again); both read back."""
    from drtool.repository.envelope import BINARY_LEVEL, _context
    envelope = Envelope(os.urandom(32))
    envelope.text_ldm, envelope.run_groups = False, True
    pages, dense = dump_like_text(3 << 20, seed=70), _pgbench_like(3 << 20)
    assert BINARY_LEVEL == -3
    binary = [("ZSTD_c_compressionLevel", -3), ("ZSTD_c_literalCompressionMode", 1)]
    level_1 = [("ZSTD_c_compressionLevel", 1)]
    assert len(_libzstd_frame(pages, binary)) < 0.8 * len(_libzstd_frame(pages, [("ZSTD_c_compressionLevel", -3)]))
    assert len(_libzstd_frame(dense, level_1)) < 0.8 * len(_libzstd_frame(dense, binary))
    for data, settings in ((pages, binary), (dense, level_1)):
        sealed = envelope.seal(b"group-data", b"", data, long=True)
        mode, frame = envelope._aead.open(sealed, _context(b"group-data", b""))
        assert mode == ZSTD and bytes(frame) == _libzstd_frame(data, settings)
        assert bytes(envelope.open(b"group-data", b"", sealed)) == data
