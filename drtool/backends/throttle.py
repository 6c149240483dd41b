"""Bandwidth limits (``--limit-upload`` / ``--limit-download``): one token bucket per direction.

A backup to a remote site must not fill the office uplink, and a restore
of everything at once must not starve the site's other traffic.  Every
thread of a process takes its bytes from the same bucket before sending or
receiving them, so the limit holds for the process, however many
connections are open.  The bucket holds at most a quarter second of
tokens; a request larger than that runs into debt, and whoever takes next
waits for it, so over any window the bytes moved stay below
``rate * seconds + burst`` (within 1 % of the rate over 30 s).  Clock and
sleep are injected so that tests can check the arithmetic without waiting.
"""
from __future__ import annotations

import bisect
import threading
import time
from typing import Callable, Sequence

from drtool.errors import UsageError

MIN_BURST = 64 * 1024
CHUNK = 256 * 1024  # bytes taken per step while a body streams
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2,
         "mib": 1024 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


def parse_rate(value: object, what: str) -> int | None:
    """Bytes per second from ``12500000``, ``"12.5MB"``, ``"10MiB"``; None/""/0 mean no limit."""
    if value is None or value == "" or value == 0:
        return None
    text = str(value).strip().lower().removesuffix("/s")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):].strip()
    try:
        rate = float(number) * UNITS[unit]
    except (ValueError, KeyError):
        raise UsageError(f"{what} {value!r} is not a rate in bytes per second",
                         hint="give a number of bytes per second, optionally with a unit: "
                              "500000, 800KiB, 12.5MB, 1GiB") from None
    if rate == 0:
        return None
    if rate < 1024:
        raise UsageError(f"{what} {value!r} is below 1 KiB per second",
                         hint="give bytes per second, e.g. 10MiB; 0 means no limit")
    return int(rate)


class TokenBucket:
    """Bytes per second shared by every thread; ``take`` blocks until the bytes may move."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 account: Callable[[float], None] = lambda _seconds: None) -> None:
        """``account`` is told every wait (the backend adds it to its request statistics)."""
        self.rate = float(rate)
        self.burst = max(self.rate / 4, MIN_BURST)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()
        self._account = account

    def take(self, amount: int) -> None:
        if amount <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._account(wait)
            self._sleep(wait)


class PartsBody:
    """A request body given as parts (a pack's groups, trailer and footer), read in sequence
    without joining them: no second 16 MiB copy of every pack on its way up.  Reads go through
    a token bucket when there is one.  Seekable, so botocore can resend it on a retry."""

    def __init__(self, parts: Sequence[bytes | bytearray | memoryview], bucket: TokenBucket | None = None) -> None:
        self._parts = [memoryview(p).cast("B") for p in parts if len(p)]
        self._starts = []
        total = 0
        for part in self._parts:
            self._starts.append(total)
            total += len(part)
        self._size = total
        self._pos = 0
        self.bucket = bucket

    def __len__(self) -> int:
        return self._size

    def md5(self) -> bytes:
        import hashlib  # here: libcrypto stays unloaded for a local backup (drtool/digests.py)
        digest = hashlib.md5(usedforsecurity=False)
        for part in self._parts:
            digest.update(part)
        return digest.digest()

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        pieces = []
        index = bisect.bisect_right(self._starts, self._pos) - 1 if self._parts else 0
        while self._pos < end:
            part, start = self._parts[index], self._starts[index]
            piece = part[self._pos - start:min(len(part), end - start)]
            pieces.append(piece)
            self._pos += len(piece)
            index += 1
        if self.bucket is not None:
            self.bucket.take(sum(len(p) for p in pieces))
        return b"".join(pieces)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def throttled(data: bytes | bytearray | memoryview, bucket: TokenBucket) -> PartsBody:
    """``data`` as a body whose reads wait for ``bucket``."""
    return PartsBody([data], bucket)
