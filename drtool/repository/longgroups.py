"""Long groups compressed as they fill: one open per worker thread, no plaintext copy kept.

A dump's 16 MiB long-window groups used to be filled into a 16 MiB buffer
and compressed in one shot when full, on the worker whose blob filled it.
Compression is most of a dump's CPU, so both workers were usually sealing
while a third group filled: three 16 MiB buffers, plus each compression's
output and sealed copy, were night 1's peak ("Nightly backup peak RSS" in
docs/performance.md).  Here each worker thread has a group of its own and
feeds its blobs to a streaming zstd context as it adds them
(``compressinto.FrameStream``): what a group holds is the context's
window-sized buffer and the output so far, and sealing a full group only
ends its frame and encrypts it.  The frames are what one-shot compression
of the same bytes writes (16 MiB groups: byte for byte), so readers see no
difference.  Which blobs share a group changes: a worker's group holds the
segments that worker cut, not consecutive ones.

Physical backups' streams (``Envelope.run_groups``, set by
``backup.streams.binary_streams``) skip the streaming context for runs of
new blobs of 1 MiB or more: such a run (a full's whole 8 MiB segment) is
compressed in one shot from the segment buffer as a group of its own.
libzstd's streaming calls copy every input byte into the context's window
and, once it wraps, match in its slower two-segment mode: on a mariabackup
stream one shot cost 17-25 % less zstd CPU at the same ratio (level 1's
window is 512 KiB either way).  The frames are the ones buffered groups get,
so readers see no difference.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from drtool.repository.packfile import SealedGroup, group_kind

RUN_GROUP_MIN = 1024 * 1024  # a run of new blobs this long is a group of its own (``run_groups``)

if TYPE_CHECKING:
    from drtool.repository.compressinto import FrameStream
    from drtool.repository.envelope import Envelope


class StreamGroup:
    """One worker's open long group: its members, and the frame its bytes went into.

    ``lock`` is held while a blob is fed and while the group is sealed, so a
    group taken away by another thread (a dump's end, the flush) is sealed
    only after the feed in progress.
    """

    __slots__ = ("stream", "members", "size", "lock")

    def __init__(self, stream: FrameStream) -> None:
        self.stream = stream
        self.members: list[tuple[bytes, int, int]] = []  # (blob id, inner offset, raw length)
        self.size = 0
        self.lock = threading.Lock()

    def add(self, blobs: list[tuple[bytes, int, int]], view: memoryview) -> None:
        """Feed blobs given as (blob id, offset, length) in ``view``; neighbouring ones in one call
        (a dump's 16 KiB chunks one call each cost ~5 % more CPU than 1 MiB runs)."""
        run_start = run_end = -1
        for blob_id, offset, length in blobs:
            if offset != run_end:
                if run_start >= 0:
                    self.stream.feed(view[run_start:run_end])
                run_start = offset
            run_end = offset + length
            self.members.append((blob_id, self.size, length))
            self.size += length
        if run_start >= 0:
            self.stream.feed(view[run_start:run_end])

    def __len__(self) -> int:
        return self.size


class LongGroups:
    """The open long groups of one repository, by (blob type, thread), and idle streams to reuse.

    Not locked itself: :meth:`enter` and :meth:`detach` run under the
    repository's lock; :meth:`seal` and :meth:`close_idle` take their own.
    """

    def __init__(self, envelope: Envelope, expected: int) -> None:
        """``expected``: a group's size; one is sealed once it holds that much."""
        self._envelope = envelope
        self._expected = expected
        self._open: dict[tuple[int, int], StreamGroup] = {}
        self._idle: list[FrameStream] = []
        self._idle_lock = threading.Lock()

    def add(self, blob_type: int, view: memoryview, blobs: list[tuple[bytes, int, int]],
            lock: threading.Lock, store: Callable[[SealedGroup], None]) -> None:
        """Feed new blobs (blob id, offset, length in ``view``) to this thread's groups, outside
        the repository's ``lock``; a group that reaches its size is sealed and handed to ``store``
        (its last blob may pass the size: there is no buffer to overflow)."""
        if self._envelope.run_groups:
            blobs = self._seal_runs(blob_type, view, blobs, store)
        while blobs:
            with lock:
                group = self.enter(blob_type)
            try:
                take, size = 0, len(group)
                while take < len(blobs) and size < self._expected:
                    size += blobs[take][2]
                    take += 1
                group.add(blobs[:take], view)
            finally:
                group.lock.release()
            blobs = blobs[take:]
            if len(group) >= self._expected:
                with lock:
                    full = self.detach(blob_type, group)
                if full:
                    store(self.seal(blob_type, group))

    def _seal_runs(self, blob_type: int, view: memoryview, blobs: list[tuple[bytes, int, int]],
                   store: Callable[[SealedGroup], None]) -> list[tuple[bytes, int, int]]:
        """Seal each run of neighbouring blobs of RUN_GROUP_MIN or more as one group, compressed in
        one shot on this thread; the blobs of shorter runs are returned for the streamed groups."""
        rest: list[tuple[bytes, int, int]] = []
        for run in _runs(blobs):
            start, end = run[0][1], run[-1][1] + run[-1][2]
            if end - start < RUN_GROUP_MIN:
                rest.extend(run)
                continue
            with view[start:end] as plain:
                sealed = self._envelope.seal(group_kind(blob_type), b"", plain, long=True)
            store(SealedGroup(blob_type, [(blob_id, offset - start, length) for blob_id, offset, length in run],
                              sealed, end - start))
        return rest

    def seal_detached(self, groups: list[tuple[int, StreamGroup]], store: Callable[[SealedGroup], None]) -> None:
        """Seal groups taken out of the open ones (a dump ended; the flush) into ``store``, and free
        the idle streams' contexts: the next long group, if any, makes a new one."""
        for blob_type, group in groups:
            if len(group.members):
                store(self.seal(blob_type, group))
            else:
                group.stream.close()
        self.close_idle()

    def enter(self, blob_type: int) -> StreamGroup:
        """This thread's open group of ``blob_type`` (made when there is none), its lock taken:
        the caller feeds it, then releases the lock (call under the repository's lock)."""
        key = (blob_type, threading.get_ident())
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = StreamGroup(self._take_stream())
        group.lock.acquire()  # free: only this thread feeds it, and a sealer detaches first
        return group

    def detach(self, blob_type: int, group: StreamGroup) -> bool:
        """Take this thread's full ``group`` out of the open ones; False when another thread
        took it already (and seals it)."""
        key = (blob_type, threading.get_ident())
        if self._open.get(key) is group:
            del self._open[key]
            return True
        return False

    def detach_all(self, blob_type: int | None = None) -> list[tuple[int, StreamGroup]]:
        """Every open group (of ``blob_type``, or all) taken out, to be sealed as it is."""
        taken = [(key, group) for key, group in self._open.items() if blob_type in (None, key[0])]
        for key, _group in taken:
            del self._open[key]
        return [(key[0], group) for key, group in taken]

    def seal(self, blob_type: int, group: StreamGroup) -> SealedGroup:
        """End a detached group's frame, to be encrypted as it is written into its pack (a sealed
        copy of each 4 MiB frame was the heap's largest churn in a dump); its stream goes back to
        the idle ones once the group is written out (:meth:`SealedGroup.done`)."""
        stream = group.stream
        with group.lock:
            try:
                frame = stream.finish()
            except BaseException:
                stream.close()  # a frame ended halfway is not reused
                raise
        pending = self._envelope.pending_frame(group_kind(blob_type), b"", frame)

        def release() -> None:
            pending.release()
            frame.release()
            with self._idle_lock:
                self._idle.append(stream)
        return SealedGroup(blob_type, group.members, pending, group.size, release)

    def _take_stream(self) -> FrameStream:
        profile = self._envelope.stream_profile()
        with self._idle_lock:
            while self._idle:
                stream = self._idle.pop()
                if stream.profile == profile:
                    return stream
                stream.close()
        return self._envelope.frame_stream(self._expected)

    def close_idle(self) -> None:
        """Free the idle streams' contexts and output pages now: no long group is expected soon
        (a dump ended, or the data path is done), and each holds ~19 MiB at window log 24."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for stream in idle:
            stream.close()

    def held_bytes(self) -> int:
        """Bytes the open groups and idle streams may hold resident."""
        with self._idle_lock:
            idle = sum(stream.resident() for stream in self._idle)
        return idle + sum(group.stream.resident() for group in list(self._open.values()))


def _runs(blobs: list[tuple[bytes, int, int]]) -> list[list[tuple[bytes, int, int]]]:
    """``blobs`` (blob id, offset, length) split where one does not start where the previous ended."""
    runs: list[list[tuple[bytes, int, int]]] = []
    end = -1
    for blob in blobs:
        if blob[1] != end:
            runs.append([])
        runs[-1].append(blob)
        end = blob[1] + blob[2]
    return runs
