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
