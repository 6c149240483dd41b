"""The opened groups of one stream read, planned: each opened once where the budget allows.

A stored mariabackup stream does not read its groups in order: pages that
deduplicate against earlier ones (zero pages above all) send the reader
back to old groups all along the stream (bench, a 400 MiB stream: 226 runs
of blobs over 19 groups).  An LRU cache of opened groups (128 MiB) opened
them 30 times, and a night-2 stream's 33 groups 53 times (decompression is
half of a stream read's CPU).  The reader knows every run of blobs it will
read before it starts, so here a group stays open exactly while a later run
still needs it, and when the budget is full the group needed furthest ahead
goes first (Belady's rule, optimal for a known sequence): 19 and 33
openings with 192 MiB (38-40 with 128 MiB).  Groups are decrypted and
decompressed into recycled buffers (a fresh 16 MiB buffer is faulted in
page by page), and a blob already checked against its id in a group that
is still open is not hashed again (a run of zero pages is one 64 KiB blob
repeated thousands of times).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Iterable

from drtool.fdio import copy_into
from drtool.repository.index import Location
from drtool.repository.reading import OpenedGroup, ScratchPool
from drtool.repository.repo import GROUP_TARGET_SIZE, Repository

GroupKey = tuple[bytes, int, int]  # pack id, blob type, offset: Location[:3]


def group_key(loc: Location) -> GroupKey:
    return (loc.pack_id, loc.blob_type, loc.offset)


class _Open:
    """One resident group: its plaintext, who is reading it now, which of its blobs were checked."""

    __slots__ = ("opened", "pins", "checked")

    def __init__(self, opened: OpenedGroup) -> None:
        self.opened = opened
        self.pins = 0
        self.checked: set[tuple[int, int, bytes]] = set()


class PlannedGroups:
    """Opened groups shared by the workers of one stream read (``streamread``).

    ``uses`` maps each group to the runs of neighbouring blobs (numbered in
    stream order, :func:`plan_runs`) read from it.  A worker pins the group
    of a run (:meth:`pin`), cuts its blobs (:meth:`blob`), and calls
    :meth:`done`: a group no later run needs is released at once.  A pinned
    group is never evicted (one per worker: the budget may be passed by that
    much for a moment).
    """

    def __init__(self, repo: Repository, uses: dict[GroupKey, list[int]], budget: int, workers: int) -> None:
        """``uses``: for each group, the runs that read it, ascending."""
        self.repo = repo
        self.budget = budget
        self._uses = {key: deque(runs) for key, runs in uses.items()}
        self._resident: dict[GroupKey, _Open] = {}
        self._loading: dict[GroupKey, threading.Event] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        # as many buffers as the budget's groups (the smallest ones) and the workers' in flight: a
        # group released gives its buffers to the next one opened, not to the allocator (a fresh
        # 16 MiB bytearray is zeroed with the GIL held: py-spy --gil, ~15 % of a full restore's GIL
        # time when only workers + 2 were kept).  Never more than were in use at once.
        self._pool = ScratchPool(keep=2 * (workers + 2) + budget // GROUP_TARGET_SIZE)

    def pin(self, loc: Location) -> _Open:
        """The group of ``loc``, opened if it is not, pinned until :meth:`done`."""
        key = group_key(loc)
        while True:
            with self._lock:
                group = self._resident.get(key)
                if group is not None:
                    group.pins += 1
                    return group
                loading = self._loading.get(key)
                if loading is None:
                    loading = self._loading[key] = threading.Event()
                    break
            loading.wait()  # another worker is opening it; then look again (or open it here if that failed)
        try:
            opened = self.repo.open_group_recycled(loc, self._pool)
            with self._lock:
                group = self._resident[key] = _Open(opened)
                group.pins = 1
                self._bytes += len(opened.plain)
                self._evict_locked()
            return group
        finally:
            with self._lock:
                del self._loading[key]
            loading.set()

    def blob(self, group: _Open, blob_id: bytes, loc: Location) -> memoryview:
        """A verified blob of a pinned group; one checked before in this opening is not hashed again
        (the same bytes of the same buffer, unchanged while the group stays open)."""
        mark = (loc.inner, loc.raw_length, blob_id)
        if mark in group.checked:
            return group.opened.plain[loc.inner:loc.inner + loc.raw_length]
        data = self.repo.blob_from_group(blob_id, loc, group.opened.plain)  # IntegrityError if not it
        group.checked.add(mark)
        return data

    def read_whole(self, ids: list[bytes], locs: list[Location], target: memoryview) -> None:
        """The run of ``locs`` is the only one of its group and its blobs lie in the group back to back from
        its start (:func:`whole_group_run`): the group is decoded straight into ``target`` (the run's
        part of a window, no copy out of a group buffer) and each blob checked there.  A group
        holding more than the run is decoded into a buffer of the pool and the run copied out."""
        opened = self.repo.open_group_recycled(locs[0], self._pool, into=target)
        try:
            for blob_id, loc in zip(ids, locs):
                data = self.repo.blob_from_group(blob_id, loc, opened.plain)  # IntegrityError if not it
                if opened.plain is not target:
                    copy_into(target, data, loc.inner)
        finally:
            opened.release()
        with self._lock:
            self._uses.pop(group_key(locs[0]), None)  # this run was its only use

    def done(self, group: _Open, key: GroupKey, run: int) -> None:
        """Run ``run`` (numbered in stream order, see :func:`plan_runs`) of ``group`` is copied out:
        unpin it, and release it if no later run needs it."""
        with self._lock:
            group.pins -= 1
            uses = self._uses[key]
            if uses and uses[0] == run:
                uses.popleft()  # the usual case: runs finish in stream order
            elif run in uses:
                uses.remove(run)
            if not uses:
                self._drop_locked(key)

    def close(self) -> None:
        """Release every resident group (the read ended or stopped early; no worker is running)."""
        with self._lock:
            for key in list(self._resident):
                self._drop_locked(key)

    def _evict_locked(self) -> None:
        """Over budget: release unpinned groups, the one needed furthest ahead first."""
        while self._bytes > self.budget:
            idle = [key for key, group in self._resident.items() if group.pins == 0]
            if not idle:
                return
            self._drop_locked(max(idle, key=self._next_use_locked))

    def _next_use_locked(self, key: GroupKey) -> float:
        uses = self._uses[key]
        return uses[0] if uses else float("inf")

    def _drop_locked(self, key: GroupKey) -> None:
        group = self._resident.get(key)
        if group is None or group.pins:
            return
        del self._resident[key]
        self._bytes -= len(group.opened.plain)
        group.opened.release()


Run = tuple[int, int, int]  # number in stream order, first blob, end


def whole_group_run(locs: list[Location], uses: dict[GroupKey, list[int]]) -> bool:
    """Whether a run's blobs (``locs``) are its group's only use and lie in it back to back from its
    start: the group can then be decoded straight into the run's place (:meth:`PlannedGroups.read_whole`;
    a full backup's stream is mostly such runs, a night 2's repeats and old pages are not)."""
    if len(uses.get(group_key(locs[0]), ())) != 1 or locs[0].inner != 0:
        return False
    end = 0
    for loc in locs:
        if loc.inner != end:
            return False
        end += loc.raw_length
    return True


def plan_runs(locs: list[Location],
              windows: list[tuple[int, int, int]]) -> tuple[list[list[Run]], dict[GroupKey, list[int]]]:
    """Each window's runs of neighbouring blobs of one group, and for each group the runs that read
    it: the sequence :class:`PlannedGroups` looks ahead in."""
    per_window: list[list[Run]] = []
    uses: dict[GroupKey, list[int]] = {}
    number = 0
    for start, end, _size in windows:
        runs: list[Run] = []
        first = start
        for index in range(start, end):
            if index + 1 == end or group_key(locs[index + 1]) != group_key(locs[index]):
                runs.append((number, first, index + 1))
                uses.setdefault(group_key(locs[first]), []).append(number)
                number, first = number + 1, index + 1
        per_window.append(runs)
    return per_window, uses
