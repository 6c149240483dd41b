"""Groups sealed as they are written into their pack: no sealed copy of a whole group, and no
reused buffer ever reaches a sink that keeps what it is given (issue 21, branch nightrss2)."""
from __future__ import annotations

import ctypes
import os
import random
import struct
from pathlib import Path

from drtool.backends.base import StagedObject
from drtool.backends.local import LocalBackend
from drtool.backup.pipeline import ChunkPipeline
from drtool.backup.readers import TASK_BUFFER, FileRead, ReadAhead, Reading
from drtool.crypto.aead import STREAM_CHUNK
from drtool.repository.index import PackRecord, encode_index
from drtool.repository.packfile import DATA_BLOB, BufferPool, pack_entries
from drtool.repository.repo import LONG_TEXT, OTHER, Repository
from drtool.testing import MemoryBackend

MIB = 1024 * 1024


class KeepingStaged(StagedObject):
    """A sink that keeps what ``write`` is given, uncopied, until ``commit`` (as an upload queued
    for another thread would), with a copy taken at write time to tell whether it changed."""

    def __init__(self, backend: "StagingBackend", prefix: str) -> None:
        self.backend, self.prefix = backend, prefix
        self.kept: list[tuple[object, bytes]] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.kept.append((data, bytes(data)))
        self.backend.sizes.append(len(data))

    def commit(self, name: str) -> None:
        self.backend.changed += sum(bytes(data) != copy for data, copy in self.kept)  # type: ignore[call-overload]
        self.backend.put(name, b"".join(copy for _data, copy in self.kept))

    def abort(self) -> None:
        self.kept = []


class CopyingStaged(KeepingStaged):
    """A sink done with what it is given once ``write`` returns (it keeps a copy only)."""

    retains_data = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.kept.append((b"", bytes(data)))
        self.backend.sizes.append(len(data))

    def commit(self, name: str) -> None:
        self.backend.put(name, b"".join(copy for _data, copy in self.kept))


class StagingBackend(MemoryBackend):
    """The in-memory backend with the ``StagedWrites`` capability, its staged objects of ``kind``."""

    def __init__(self, kind: type[KeepingStaged]) -> None:
        super().__init__()
        self.kind = kind
        self.sizes: list[int] = []
        self.changed = 0

    def stage(self, prefix: str) -> StagedObject:
        return self.kind(self, prefix)


def _backup(backend: StagingBackend) -> tuple[Repository, dict[bytes, bytes]]:
    """Store media-like (incompressible, stored raw), text-like and dump-like (long-window) blobs
    of several groups each with the default parameters; (repository, blob id -> bytes)."""
    repo = Repository.init(backend, b"pw")
    rng = random.Random(5)
    words = [bytes(rng.choice(b"etaoinshrdlu") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    blobs: dict[bytes, bytes] = {}

    def add(data: bytes, text: int) -> None:
        blob_id = repo.ids.blob_id(data)
        repo.add_blob(DATA_BLOB, blob_id, data, text)
        blobs[blob_id] = data
    for _ in range(10):  # five 2 MiB groups stored raw
        add(os.urandom(MIB), OTHER)
    for _ in range(6):  # compressed groups
        add(b" ".join(rng.choice(words) for _ in range(180_000))[:MIB], OTHER)
    for _ in range(40):  # two long groups and an open one: the dump's path
        add(b" ".join(rng.choice(words) for _ in range(180_000))[:MIB], LONG_TEXT)
    repo.flush()
    return repo, blobs


def test_a_sink_that_keeps_what_it_is_given_never_sees_its_bytes_change() -> None:
    backend = StagingBackend(KeepingStaged)
    repo, blobs = _backup(backend)
    assert backend.changed == 0  # nothing it holds was a buffer handed out again
    ids = list(blobs)
    assert [bytes(b) for b in repo.read_blobs(ids)] == [blobs[i] for i in ids]


def test_a_sink_done_with_what_it_is_given_gets_each_group_in_pieces() -> None:
    backend = StagingBackend(CopyingStaged)
    repo, blobs = _backup(backend)
    # groups of 2-4 MiB went in, none as one sealed copy: pieces of the stream encryption
    assert max(backend.sizes) <= STREAM_CHUNK and sum(backend.sizes) > 20 * MIB
    ids = list(blobs)
    assert [bytes(b) for b in repo.read_blobs(ids)] == [blobs[i] for i in ids]


def test_the_local_sink_is_done_with_what_it_is_given_when_write_returns(tmp_path: Path) -> None:
    """``retains_data = False`` is a promise: a buffer changed after ``write`` changes no pack."""
    (tmp_path / "repo").mkdir()
    for direct in (True, False):
        backend = LocalBackend(tmp_path / "repo", direct_io=direct)
        staged = backend.stage("packs")
        assert staged.retains_data is False
        buf = bytearray(os.urandom(3 * MIB + 123))
        expected = bytes(buf)
        staged.write(memoryview(buf))
        buf[:] = bytes(len(buf))  # the backup's next group, in the same buffer
        staged.commit(f"packs/{int(direct)}")
        assert backend.get(f"packs/{int(direct)}") == expected


def resident(buf: object, start: int = 0, length: int | None = None) -> int:
    """Bytes of ``buf[start:start + length]`` in memory now, page by page (``/proc/self/pagemap``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    view = memoryview(buf)  # type: ignore[arg-type]
    length = len(view) - start if length is None else length
    address = ctypes.addressof(ctypes.c_char.from_buffer(view)) + start
    first, last = address // page, (address + length - 1) // page
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        raw = pagemap.read((last - first + 1) * 8)
    return page * sum(1 for (entry,) in struct.iter_unpack("<Q", raw) if entry >> 63)


def test_a_fresh_group_buffer_is_resident_only_where_written() -> None:
    """A group buffer from the pool is an anonymous mapping: a tree group holding a few KiB
    does not make its whole capacity resident (zero-filled heap buffers did, and left holes)."""
    pool = BufferPool(keep=1, idle=3600)
    buf = pool.take(16 * MIB)
    buf[:MIB] = os.urandom(MIB)
    assert resident(buf) <= MIB + 8192
    assert len(buf) == 16 * MIB and bytes(buf[MIB:MIB + 4096]) == bytes(4096)


def test_batch_and_read_buffers_are_resident_only_where_written(tmp_path: Path) -> None:
    """The pipeline's batch buffers and the readers' task buffers are anonymous mappings too:
    a batch of one small file, a read task of a few, hold the pages they reached."""
    pipeline = ChunkPipeline(Repository.init(MemoryBackend(), b"pw"))
    try:
        batch, _index = pipeline.add(os.urandom(3000))
        assert batch.buf is not None and len(batch.buf) >= MIB
        assert resident(batch.buf) <= 8192
        pipeline.submit_batch()
    finally:
        pipeline.close()
    paths = []
    for i in range(4):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(2000))
        paths.append(path)
    seen: list[tuple[int, int]] = []

    def handle(item: int, read: FileRead, data: memoryview) -> None:
        if item == 0:  # the first file starts its task's buffer
            seen.append((resident(data, 0, TASK_BUFFER), len(data)))
    ahead: ReadAhead[int] = ReadAhead(Reading(readers=2), handle)
    try:
        for i, path in enumerate(paths):
            ahead.add(i, os.fsencode(path), path.lstat())
        ahead.submit()
        while ahead.take(block=True):
            pass
    finally:
        ahead.close()
    assert seen and seen[0][1] == 2000 and seen[0][0] <= 4 * 8192


def test_pack_records_keep_entries_packed_and_write_the_same_index() -> None:
    backend = StagingBackend(CopyingStaged)
    repo, _blobs = _backup(backend)
    records = [PackRecord(pack_id, entries) for pack_id, entries in
               ((p.pack_id, p.entries) for index_id in repo.list_objects("index")
                for p in repo.read_index_object(index_id))]
    assert records
    for record in records:
        packed = PackRecord(record.pack_id, packed=pack_entries(record.entries))
        assert packed == record and packed.entries == record.entries
        assert encode_index([packed]) == encode_index([record])
