"""Reading a stream snapshot ahead in a thread keeps order, errors and early stops intact."""
from __future__ import annotations

import threading
from typing import Iterator

import pytest

from drtool.errors import IntegrityError
from drtool.snapshot.store import prefetched


def test_order_is_kept_and_errors_arrive_where_they_happened() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"a"
        yield b"b"
        raise IntegrityError("blob 3 is damaged")
    got = []
    with pytest.raises(IntegrityError, match="blob 3 is damaged"):
        for chunk in prefetched(chunks(), depth=1):
            got.append(chunk)
    assert got == [b"a", b"b"]


def test_a_consumer_that_stops_early_leaves_no_reader_thread_behind() -> None:
    produced = []

    def chunks() -> Iterator[bytes]:
        for i in range(10_000):
            produced.append(i)
            yield bytes([i % 256]) * 10
    before = threading.active_count()
    stream = prefetched(chunks(), depth=2)
    assert next(stream) == b"\0" * 10
    stream.close()  # the consumer failed (a broken pipe, say)
    assert threading.active_count() == before
    assert len(produced) < 100  # it stopped reading, it did not drain the snapshot


# ----- read_stream: windows opened by workers, handed out in order --------------------------------
def _stream_data(size: int) -> bytes:
    """Stream snapshots always use text chunks and 16 MiB text groups, whatever the content."""
    import os
    return os.urandom(size // 2).hex().encode()


def test_read_stream_gives_the_stream_back_in_order_across_windows(repo_env) -> None:  # type: ignore[no-untyped-def]
    import io

    from drtool.backup.run import backup_stream, backup_streams
    from drtool.snapshot.streamread import read_stream
    night1 = _stream_data(40 * 1024 * 1024)
    edited = bytearray(night1)
    for at in range(0, len(edited), 3 * 1024 * 1024):  # scattered edits: old and new groups alternate
        edited[at:at + 100] = b"X" * 100
    with repo_env.session() as session:
        first = backup_stream(session, io.BytesIO(night1), "s", "one.bin").snapshot
        second = backup_streams(session, iter([("a.tar", io.BytesIO(bytes(edited))), ("b.tar", io.BytesIO(b"tail"))]),
                                "s").snapshot
        session.repo.load_index()
        assert b"".join(bytes(view) for view in read_stream(session.repo, first)) == night1
        views = [bytes(view) for view in read_stream(session.repo, second, "a.tar", workers=3)]
        assert len(views) > 2 and b"".join(views) == bytes(edited)
        assert b"".join(bytes(v) for v in read_stream(session.repo, second, "b.tar")) == b"tail"
        with pytest.raises(IntegrityError, match="not a single-file stream"):
            list(read_stream(session.repo, second))


def test_read_stream_reports_a_damaged_pack_in_order(repo_env) -> None:  # type: ignore[no-untyped-def]
    import io

    from drtool.backup.run import backup_stream
    from drtool.snapshot.streamread import read_stream
    data = _stream_data(24 * 1024 * 1024)
    with repo_env.session() as session:
        snap = backup_stream(session, io.BytesIO(data), "s", "one.bin").snapshot
    packs = sorted((p for p in (repo_env.repo / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    damaged = packs[-1]
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    got = 0
    with repo_env.session() as session:
        session.repo.load_index()
        with pytest.raises(IntegrityError):
            for view in read_stream(session.repo, snap):
                assert bytes(view) == data[got:got + len(view)]  # what came before the damage is right
                got += len(view)
    assert got < len(data)


def test_binary_streams_compress_without_long_matching_and_only_for_their_run(repo_env) -> None:  # type: ignore[no-untyped-def]
    import io

    from drtool.backup.run import backup_stream
    from drtool.backup.streams import binary_streams
    from drtool.snapshot.streamread import read_stream
    data = _stream_data(3 * 1024 * 1024)
    with repo_env.session() as session:
        envelope = session.repo.envelope
        with pytest.raises(RuntimeError), binary_streams(session):
            assert envelope.text_ldm is False
            raise RuntimeError("the dump program failed")
        assert envelope.text_ldm is True
        with binary_streams(session):
            snap = backup_stream(session, io.BytesIO(data), "phys", "backup.mbstream").snapshot
        assert envelope.text_ldm is True
        session.repo.load_index()
        assert b"".join(bytes(v) for v in read_stream(session.repo, snap)) == data
        assert snap.summary["bytes_added"] < len(data)  # compressed all the same (hex: about half)
