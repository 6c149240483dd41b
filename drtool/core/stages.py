"""The stages of a long restore, told to whoever watches them: a terminal's display, or nobody.

A physical restore of a large MariaDB section runs for hours: each member of
a chain extracted, the incrementals' pages rebuilt, ``--prepare``, binlogs
replayed.  With nothing said between the command and its result, the
on-call engineer cannot tell a slow restore from a hung one, nor which
step a failure interrupted.  So the engines name each step here and count
the bytes they feed to extractors and loaders.  The CLI installs a watcher
only when stderr is a terminal (cron and rehearsal logs stay quiet); with
``-v`` each stage's start and duration are logged either way.

One restore runs at a time in a process, so the watcher is process-wide: a
context variable would not reach the threads that feed extractors.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger("drtool.stages")

Chunk = TypeVar("Chunk", bytes, bytearray, memoryview)


class StageWatcher:
    """What a display overrides (any of it; the rest ignores the call).  Every call comes from
    the restoring process, on any of its threads."""

    def begun(self, stage: "Stage") -> None:
        pass

    def advanced(self, stage: "Stage", nbytes: int) -> None:
        pass

    def noted(self, stage: "Stage", detail: str) -> None:
        pass

    def ended(self, stage: "Stage", ok: bool) -> None:
        pass


@dataclass
class Stage:
    """One named step: how many bytes it has moved of how many, and for how long."""

    text: str
    total_bytes: int | None = None
    done_bytes: int = 0
    detail: str = ""
    started: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    _watcher: StageWatcher | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def seconds(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done_bytes += nbytes
        if self._watcher is not None:
            self._watcher.advanced(self, nbytes)

    def note(self, detail: str) -> None:
        """A short line of where the step is now (the binlog being replayed, its last event's time)."""
        self.detail = detail
        if self._watcher is not None:
            self._watcher.noted(self, detail)

    def summary(self, ok: bool) -> str:
        """The one line a finished stage leaves: ``done: TEXT (12.3 s, 1,024.0 MiB, detail)``."""
        moved = f", {self.done_bytes / 2**20:,.1f} MiB" if self.done_bytes else ""
        detail = f", {self.detail}" if self.detail else ""
        return f"{'done' if ok else 'FAILED'}: {self.text} ({self.seconds:.1f} s{moved}{detail})"

    def counted(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """``chunks`` passed through, each one's size added to the stage as it is handed on."""
        for chunk in chunks:
            self.advance(chunk.nbytes if isinstance(chunk, memoryview) else len(chunk))
            yield chunk


_watcher: StageWatcher | None = None


@contextlib.contextmanager
def watching(watcher: StageWatcher | None) -> Iterator[None]:
    """Tell ``watcher`` of every stage begun inside this block (None: nobody watches)."""
    global _watcher
    previous, _watcher = _watcher, watcher
    try:
        yield
    finally:
        _watcher = previous


@contextlib.contextmanager
def stage(text: str, total_bytes: int | None = None) -> Iterator[Stage]:
    """A step of a restore; it ends when the block does, failed if the block raised."""
    current = Stage(text, total_bytes, _watcher=_watcher)
    log.info("%s ...", text)
    if current._watcher is not None:
        current._watcher.begun(current)
    ok = False
    try:
        yield current
        ok = True
    finally:
        current.ended_at = time.monotonic()
        log.info("%s: %s in %.1fs", text, "done" if ok else "failed", current.seconds)
        if current._watcher is not None:
            current._watcher.ended(current, ok)
