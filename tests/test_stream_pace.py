"""A stored stream's log line says which side set its pace (issue 19: is drtool or the dump
program the bottleneck of a physical backup?): time spent reading the source, waiting for the
workers, and for the last segments."""
from __future__ import annotations

import logging
import os
import re
import time

MiB = 1024 * 1024


class TricklingSource:
    """A dump program that is slow to write: every read waits ``pause`` seconds first."""

    def __init__(self, data: bytes, piece: int, pause: float) -> None:
        self.data, self.piece, self.pause, self.offset = data, piece, pause, 0

    def readinto1(self, buffer: memoryview) -> int:
        time.sleep(self.pause)
        count = min(len(buffer), self.piece, len(self.data) - self.offset)
        buffer[:count] = self.data[self.offset:self.offset + count]
        self.offset += count
        return count


def test_a_slow_source_shows_as_time_spent_reading_it(repo_env, caplog) -> None:  # type: ignore[no-untyped-def]
    from drtool.backup.run import backup_stream
    data = os.urandom(3 * MiB).hex().encode()  # 6 MiB: one segment, twelve reads
    source = TricklingSource(data, MiB // 2, 0.05)
    with caplog.at_level(logging.INFO, logger="drtool"), repo_env.session() as session:
        snap = backup_stream(session, source, "pace", "backup.mbstream").snapshot  # type: ignore[arg-type]
    assert snap.summary["size"] == len(data)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream backup.mbstream")]
    assert len(lines) == 1, lines
    found = re.search(r": (\d+) MB in ([\d.]+)s: reading the source ([\d.]+)s, waiting for the workers "
                      r"([\d.]+)s, for the last segments ([\d.]+)s$", lines[0])
    assert found, lines[0]
    megabytes, total, reading, waiting, last = (float(value) for value in found.groups())
    assert megabytes == round(len(data) / 1e6)
    assert reading >= 0.5  # 13 reads (the last one empty) of 0.05 s each, rounded to 0.1 s
    assert reading + waiting + last <= total + 0.2
