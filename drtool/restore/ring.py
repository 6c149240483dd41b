"""One fixed buffer that streamed groups are read into, in arrival order (a ring).

A streamed restore reads a pack's groups one after the other and the
decrypting threads finish them in nearly the same order.  Giving each group
a buffer of its own (rounded up to whole MiB, a few recycled) meant a fresh
mapping, faulted in page by page, whenever the sizes did not match, and
the recycled buffers came on top of the bytes in flight (bench: restore
peak RSS 205-221 MiB against a 200 MiB bound).  Here every group gets a
slice of one buffer allocated once: the memory held for sealed groups is
exactly the ring's size, and after the first lap no page is faulted again.

A slice is taken at the head and given back in any order; the space behind
the oldest slice still in use is reused only once that slice is given back
(a slow group holds the ring up, as it held the byte budget up before).
A group larger than the ring gets a buffer of its own once the ring is
empty, so a repository with bigger groups than expected still restores.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable


class Ring:
    """``size`` bytes handed out as slices at the head, reclaimed from the tail."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf: bytearray | None = None  # allocated on first use: small restores never touch it
        self._slices: deque[list[int]] = deque()  # [start, end, given back?], oldest first
        self._head = 0
        self._cond = threading.Condition()
        self.peak = 0  # bytes held at most (tests, diagnostics)
        self._held = 0

    @property
    def held(self) -> int:
        """Bytes taken and not yet given back."""
        return self._held

    def take(self, length: int) -> tuple[memoryview, Callable[[], None]]:
        """A writable view of ``length`` bytes, and the call that gives it back (once)."""
        if length > self.size:
            return self._oversized(length)
        if length <= 0:
            return memoryview(bytearray(0)), lambda: None
        with self._cond:
            while (start := self._fit(length)) is None:
                self._cond.wait()
            if self._buf is None:
                self._buf = bytearray(self.size)
            entry = [start, start + length, 0]
            self._slices.append(entry)
            self._head = start + length
            self._held += length
            self.peak = max(self.peak, self._held)
            view = memoryview(self._buf)[start:start + length]

        def give() -> None:
            with self._cond:
                if entry[2]:
                    return
                entry[2] = 1
                self._held -= length
                while self._slices and self._slices[0][2]:
                    self._slices.popleft()
                if not self._slices:
                    self._head = 0
                self._cond.notify_all()

        return view, give

    def _fit(self, length: int) -> int | None:
        """Where a slice of ``length`` bytes can start now, or None (wait for the tail).

        Slices are laid in taking order, so the bytes in use run from the
        oldest slice's start (tail) to the newest's end (head), wrapping
        round the end of the buffer once head has come back to 0.
        """
        if not self._slices:
            return 0
        tail, head = self._slices[0][0], self._head
        if head > tail:  # in use: [tail, head); free: [head, size) and [0, tail)
            if self.size - head >= length:
                return head
            return 0 if tail >= length else None
        return head if tail - head >= length else None  # wrapped: free is [head, tail)

    def _oversized(self, length: int) -> tuple[memoryview, Callable[[], None]]:
        """A group bigger than the whole ring: its own buffer, taken once the ring is empty."""
        with self._cond:
            while self._slices:
                self._cond.wait()
            self._held += length
            self.peak = max(self.peak, self._held)
        given = [False]

        def give() -> None:
            with self._cond:
                if not given[0]:
                    given[0] = True
                    self._held -= length
                    self._cond.notify_all()

        return memoryview(bytearray(length)), give
