"""A store whose listings lag puts and deletes, as S3-compatible stores may.

The storage contract lets ``list`` lag: a new object may be missing from the
next listings and a deleted one may still appear, while ``get`` and ``stat``
already tell the truth (AWS S3 has listed consistently since 2020; other
S3-compatible stores, caches and replicated gateways need not).  Code that
must not trust listings -- prune's stat of indexed packs, its grace period
between mark and sweep, a backup that deduplicates only against what it can
read -- is tested against :class:`LaggingListings`.

The lag is counted in listings, so tests are deterministic: every put or
delete stays invisible to the next ``lag`` listings whose prefix covers it
and shows from the one after (``lag=0`` is a consistent store).  Only names
under ``prefixes`` lag (default: all).  All writes must go through the
wrapper: it keeps its own view of what listings show, seeded from one
listing of the inner backend when it is created.

It has the inner backend's mapped and buffered reads, Object Lock, server
clock, location setup and temporaries cleanup, and atomic conditional create
when the inner backend has it; it has no staged or part writes, whose
objects would appear without passing through the lag.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator

from drtool.backends import capabilities
from drtool.backends.base import Backend, ObjectInfo
from drtool.backends.capabilities import (BufferedReads, ConcurrentReads, GroupSharing, LocationSetup, ObjectLock,
                                          ReadAhead, ServerClock, TemporaryCleanup, ViewReads)
from drtool.testing.memory import MemoryBackend
from drtool.testing.mirror import mirrored_class


@dataclass
class _Change:
    name: str
    size: int | None  # None: deleted
    missed: int = 0   # listings that covered the name without showing the change


class LaggingListings(Backend):
    """Wraps ``inner`` (default: a fresh :class:`MemoryBackend`); only its listings lag."""

    MIRRORED = (ViewReads, BufferedReads, ReadAhead, ConcurrentReads, ObjectLock, ServerClock, LocationSetup,
                TemporaryCleanup, GroupSharing)

    def __new__(cls, inner: Backend | None = None, *args: Any, **kwargs: Any) -> "LaggingListings":
        return super().__new__(mirrored_class(cls, inner, cls.MIRRORED))  # type: ignore[no-any-return]

    def __init__(self, inner: Backend | None = None, *, lag: int = 1,
                 prefixes: tuple[str, ...] = ("",)) -> None:
        super().__init__()
        if lag < 0:
            raise ValueError("lag must not be negative")
        self.inner = inner if inner is not None else MemoryBackend()
        self.url = self.inner.url
        self.stats = self.inner.stats
        self.lag = lag
        self.prefixes = prefixes
        self._lock = threading.Lock()
        self._listed = {info.name: info.size for info in self.inner.list("")}
        self._pending: list[_Change] = []

    def pending(self) -> list[str]:
        """Names whose latest put or delete listings do not show yet."""
        with self._lock:
            return [change.name for change in self._pending]

    def settle(self) -> None:
        """Let listings catch up: show every change now (as a store does after a while)."""
        with self._lock:
            for change in self._pending:
                self._apply(change)
            self._pending = []

    def _changed(self, name: str, size: int | None) -> None:
        with self._lock:
            if self.lag and name.startswith(self.prefixes):
                self._pending.append(_Change(name, size))
            else:
                self._apply(_Change(name, size))

    def _apply(self, change: _Change) -> None:
        if change.size is None:
            self._listed.pop(change.name, None)
        else:
            self._listed[change.name] = change.size

    # -- the contract ------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        self.inner.put(name, data)
        self._changed(name, len(data))

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Atomic when the inner backend's is; a new object lags like any put."""
        stored = capabilities.put_if_absent(self.inner, name, data)
        if stored:
            self._changed(name, len(data))
        return stored

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get_range(name, offset, length)

    def stat(self, name: str) -> ObjectInfo | None:
        return self.inner.stat(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)
        self._changed(name, None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """What the store showed ``lag`` listings ago, for names under ``prefix``.

        Changes are applied in the order they were made: an older change to
        a name has been passed over by at least as many listings as a newer one.
        """
        with self._lock:
            self.stats.lists += 1
            waiting = []
            for change in self._pending:
                if not change.name.startswith(prefix):
                    waiting.append(change)
                elif change.missed >= self.lag:
                    self._apply(change)
                else:
                    change.missed += 1
                    waiting.append(change)
            self._pending = waiting
            items = [ObjectInfo(name, size) for name, size in self._listed.items() if name.startswith(prefix)]
        return iter(items)

    def close(self) -> None:
        self.inner.close()
