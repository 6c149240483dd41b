"""Reading a stream snapshot back fast: windows of blobs opened by a pool of workers, in order.

A physical restore pipes a stored stream (an mbstream, a base backup's tar)
into an extractor.  Read blob by blob on one thread, decrypting,
decompressing and checking every 16 KiB blob against its id was the
restore's bottleneck (bench: the extractor waited on the reader for half
of a PostgreSQL restore).  Here the blobs are cut into windows of ~8 MiB
that end where a compression group ends when they can, so each group is
opened once; workers (AES-GCM, zstd and BLAKE3 release the GIL) fill
recycled window buffers; the caller gets them in stream order.  Groups
shared by several windows (a night-2 snapshot alternates between old and
new groups; zero pages all along a mariabackup stream are one old blob)
stay open while a later window needs them and the budget allows
(``streamgroups``), opened once even when two workers want them at the
same time.
"""
from __future__ import annotations

import os
from bisect import bisect_left
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

from drtool.fdio import copy_into
from drtool.repository.index import Location
from drtool.repository.repo import Repository
from drtool.snapshot.model import Snapshot
from drtool.snapshot.store import stream_ids
from drtool.snapshot.streamgroups import PlannedGroups, group_key, plan_runs, whole_group_run

MiB = 1024 * 1024
WINDOW_BYTES = 8 * MiB       # a window ends at the first group change past this ...
WINDOW_MAX = 32 * MiB        # ... or here
BUFFER_BYTES = 18 * MiB      # a window of one whole 16 MiB text group fits
GROUP_BUDGET_BYTES = 192 * MiB  # groups kept open for later runs, all workers (streamgroups)
READ_AHEAD_BYTES = 64 * MiB     # stored bytes asked for ahead of the windows being filled (ReadAhead)


def windows(locs: list[Location]) -> list[tuple[int, int, int]]:
    """(start, end, bytes) runs of blobs, cut where a compression group ends if one is near."""
    out: list[tuple[int, int, int]] = []
    start, size = 0, 0
    for index, loc in enumerate(locs):
        size += loc.raw_length
        last = index + 1 == len(locs)
        group_ends = last or locs[index + 1][:3] != loc[:3]
        if last or (size >= WINDOW_BYTES and group_ends) or size >= WINDOW_MAX:
            out.append((start, index + 1, size))
            start, size = index + 1, 0
    return out


class _ReadAhead:
    """Asks the backend to read each group's stored bytes up to ``lead`` bytes before a worker
    opens it (``capabilities.ReadAhead``; a no-op elsewhere).

    Why: a cold restore (the repository not in the page cache, as at 3 a.m.)
    read a group only when a worker reached it, so at most one read per
    worker was in flight and the workers waited for each.  The reader knows
    every group it will open, in order, before it starts.
    """

    def __init__(self, repo: Repository, window_runs: list[list[tuple[int, int, int]]],
                 locs: list[Location], lead: int) -> None:
        self.repo, self.lead = repo, lead
        self.reads: list[Location] = []
        self.windows: list[int] = []
        self.before = [0]  # stored bytes of the reads before each
        seen: set[tuple[bytes, int, int]] = set()
        for index, per in enumerate(window_runs):
            for _run, start, _end in per:
                key = group_key(locs[start])
                if key not in seen:
                    seen.add(key)
                    self.reads.append(locs[start])
                    self.windows.append(index)
                    self.before.append(self.before[-1] + locs[start].length)
        self.cursor = 0

    def through(self, index: int) -> None:
        """Window ``index`` is about to be filled: its groups and those of the next
        ``lead`` bytes are asked for (each once)."""
        limit = self.before[bisect_left(self.windows, index)] + self.lead
        while self.cursor < len(self.reads) and (self.windows[self.cursor] <= index
                                                 or self.before[self.cursor] < limit):
            self.repo.read_group_ahead(self.reads[self.cursor])
            self.cursor += 1


def read_stream(repo: Repository, snap: Snapshot, filename: str | None = None,
                workers: int | None = None, hold: int = 0) -> Iterator[memoryview]:
    """The verified plaintext of a stream snapshot in windows of several MiB.

    Each view is valid until ``hold + 1`` more have been asked for (its buffer
    is then reused): consumers write it out (a pipe, a file) or copy it first.
    ``hold``: how many windows a consumer may still be writing while it takes
    the next ones (the mbstream writer keeps its writes in flight across
    windows; each held window is one more buffer of memory).
    """
    yield from read_blobs_windowed(repo, stream_ids(repo, snap, filename), workers, hold=hold)


def read_blobs_windowed(repo: Repository, ids: list[bytes], workers: int | None = None, *,
                        budget: int = GROUP_BUDGET_BYTES, hold: int = 0,
                        read_ahead: int = READ_AHEAD_BYTES) -> Iterator[memoryview]:
    """The verified plaintext of the blobs ``ids`` (one big file's content), in order, read by
    a pool of workers in windows of several MiB: the same contract as :func:`read_stream`.
    ``budget``: bytes of opened groups kept for later runs (:class:`PlannedGroups`);
    ``read_ahead``: stored bytes asked for ahead of the windows being filled (:class:`_ReadAhead`)."""
    locs = [repo.locate(blob_id) for blob_id in ids]
    runs = windows(locs)
    workers = workers or max(2, os.cpu_count() or 2)
    window_runs, uses = plan_runs(locs, runs)
    whole = {run: whole_group_run(locs[start:end], uses) for per in window_runs for run, start, end in per}
    groups = PlannedGroups(repo, uses, budget, workers)
    ahead = _ReadAhead(repo, window_runs, locs, read_ahead)
    free: list[bytearray] = []

    def fill(index: int, buf: bytearray) -> bytearray:
        pos = 0
        for run, start, end in window_runs[index]:
            if whole[run]:
                size = sum(loc.raw_length for loc in locs[start:end])
                groups.read_whole(ids[start:end], locs[start:end], memoryview(buf)[pos:pos + size])
                pos += size
                continue
            group = groups.pin(locs[start])
            try:
                for blob_id, loc in zip(ids[start:end], locs[start:end]):
                    copy_into(buf, groups.blob(group, blob_id, loc), pos)  # without the GIL
                    pos += loc.raw_length
            finally:
                groups.done(group, group_key(locs[start]), run)
        return buf

    def buffer(size: int) -> bytearray:
        """A recycled window buffer: a fresh one is zeroed and faulted in page by page."""
        fits = [b for b in free if len(b) >= size]
        if fits:
            free.remove(fits[0])
            return fits[0]
        return bytearray(max(size, BUFFER_BYTES))

    pending: deque[tuple[Future[bytearray], int]] = deque()
    held: deque[bytearray] = deque()  # yielded, still the consumer's (hold)
    queued = iter(enumerate(runs))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stream-read") as pool:
            try:
                while True:
                    while len(pending) < workers + 1:
                        item = next(queued, None)
                        if item is None:
                            break
                        index, (_start, _end, size) = item
                        ahead.through(index)
                        pending.append((pool.submit(fill, index, buffer(size)), size))
                    if not pending:
                        return
                    future, size = pending.popleft()
                    buf = future.result()
                    yield memoryview(buf)[:size]
                    held.append(buf)  # the consumer asked for the next window: done with the oldest held
                    if len(held) > hold:
                        free.append(held.popleft())
            finally:
                for future, _size in pending:
                    future.cancel()
    finally:
        groups.close()  # after the pool: no worker still reads a group

