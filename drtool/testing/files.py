"""File operations for a file-tree backup that count or misbehave, on real files.

Handed to a backup as ``api.Reading(readers=N, ops=...)``: the walk lists,
opens and reads through them, so a test can see how many files were open at
once, or make one chosen file vanish, grow or be replaced just before it is
opened (or, through the compiled helper, just before its batch is read), with
everything else real (the file system, the reader threads, the pipeline, the
repository).
"""
from __future__ import annotations

import mmap
import os
import threading
import time
from typing import Callable

from drtool.backup.readers import FileOps
from drtool.sources.files import Unreadable


class CountingFileOps(FileOps):
    """Counts files open at once (``peak``) and in all (``opened``).

    ``hold`` seconds of sleep after each open make reads overlap as a
    cold disk would, so a bound that is not enforced shows up as a peak
    above it.
    """

    def __init__(self, hold: float = 0.0) -> None:
        super().__init__(compiled=False)  # counts each open: files are opened one by one in Python
        self.hold = hold
        self.open_now = 0
        self.peak = 0
        self.opened = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def open(self, path: bytes, check_regular: bool) -> int:
        fd = super().open(path, check_regular)
        with self._lock:
            self.open_now += 1
            self.opened += 1
            self.peak = max(self.peak, self.open_now)
            self.threads.add(threading.current_thread().name)
        if self.hold:
            time.sleep(self.hold)
        return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self.open_now -= 1
        super().close(fd)


class FaultyFileOps(FileOps):
    """Runs ``before[name](path)`` just before the file called ``name`` is opened (once);
    with the compiled helper (``compiled``), just before the batch holding it is read.

    The action changes the real file system: unlink the file (it vanished
    between the scan and the read), append to it (it grew), replace it by
    a FIFO, or take its permissions away.
    """

    def __init__(self, before: dict[str, Callable[[bytes], None]], compiled: bool | None = None) -> None:
        super().__init__(compiled)
        self.before = dict(before)
        self._lock = threading.Lock()

    def _act(self, path: bytes) -> None:
        with self._lock:
            action = self.before.pop(os.fsdecode(os.path.basename(path)), None)
        if action is not None:
            action(path)

    def open(self, path: bytes, check_regular: bool) -> int:
        self._act(path)
        return super().open(path, check_regular)

    def read_batch(self, paths: list[bytes], wants: list[int], buf: mmap.mmap | bytearray) -> list[tuple[int, ...]]:
        for path in paths:
            self._act(path)
        return super().read_batch(paths, wants, buf)


class FailingFileOps(CountingFileOps):
    """Opening a file called one of ``fail``'s names raises ``Unreadable`` with that reason
    (an I/O error or a permission a root test run cannot otherwise be refused), once
    per name; every other file is opened and counted as by :class:`CountingFileOps`."""

    def __init__(self, fail: dict[str, str]) -> None:
        super().__init__()
        self.fail = dict(fail)

    def open(self, path: bytes, check_regular: bool) -> int:
        with self._lock:
            reason = self.fail.pop(os.fsdecode(os.path.basename(path)), None)
        if reason is not None:
            raise Unreadable(path, reason)
        return super().open(path, check_regular)
