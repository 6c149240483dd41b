"""Restore from a remote store: neighbouring groups in one ranged read, several reads in flight.

On S3 every read pays a round trip, and a group is often small (2 MiB of
media), so reading group by group on the decrypting threads left the link
idle most of the time (bench: drtool 2.3x slower than restic, 7x its GETs).
Here the groups the planner hands out are coalesced into *spans*: runs of
groups of one pack, in ascending order, at most ``request_bytes`` long and
with gaps small enough that fetching them costs less than another request
(restic's restorer and kopia's "fetch whole pack when most of it is needed"
do the same).  ``connections`` spans are fetched at once on their own threads
while the writer's workers decrypt and write what already arrived.

Where the store streams a ranged read (capability StreamedReads: S3), a
span is a whole run of one pack, usually the whole pack (requests of up to
64 MiB), read with one request and handed on group by group as the bytes
arrive: the decrypting threads start on a pack's first group while the rest
is still on the wire, and each group sits in a buffer of its own size.
Memory is then bounded by ``window`` bytes of sealed groups read and not yet
decrypted, whatever the number of connections and the request size: the
groups are read into slices of one ring buffer of that size (``ring.py``),
allocated once, so no group's pages are faulted in again.
Otherwise (stores that only read whole ranges) a span is read into one
buffer, and the budget is ``connections * request_bytes``.  Either way a
byte budget is taken before bytes are read and given back once their group
is decrypted, however many packs the snapshot has.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from drtool.backends.capabilities import RangeStream
from drtool.repository.index import Location
from drtool.repository.objects import pack_name
from drtool.repository.reading import ScratchPool
from drtool.repository.repo import Repository
from drtool.restore.ring import Ring

MiB = 1024 * 1024
MAX_GAP = 256 * 1024  # unneeded bytes between two groups that one read may carry along
# Sealed bytes read and not yet decrypted, streamed reads (the ring's size): two workers'
# queues of ~2-4 MiB groups and a group arriving on each connection.  32 MiB gave a restore
# peak of 202-210 MiB, 24 MiB 195-202, 16 MiB 194 (side lab, 2026-12-04); a group bigger
# than the ring still goes, alone.
STREAM_WINDOW = 16 * MiB
STREAM_HOLD = 32 * MiB  # references held back per pack before a streamed pack is read (no data)
Opener = Callable[[str, int, int], RangeStream]
# Streamed restores: buffers from 1 MiB up are mmap'ed and unmapped when freed.  Under glibc's
# dynamic threshold a freed 16 MiB plaintext buffer raised it to 16 MiB, and group buffers of
# every size then fragmented the threads' heaps: peak RSS 277 MiB, against 206 MiB pinned.
STREAM_MMAP_THRESHOLD = 1 * MiB

# (location, the group's sealed bytes or None, the read's error or None, call when done with them)
Deliver = Callable[[Location, list, "memoryview | None", "BaseException | None", Callable[[], None]], None]


class ByteBudget:
    """Bytes in flight; a request larger than the whole budget still goes, alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> None:
        with self._cond:
            while self.used and self.used + amount > self.limit:
                self._cond.wait()
            self.used += amount
            self.peak = max(self.peak, self.used)

    def release(self, amount: int) -> None:
        with self._cond:
            self.used -= amount
            self._cond.notify_all()


class Span:
    """Neighbouring groups of one pack, read with one request."""

    __slots__ = ("pack_id", "lo", "hi", "groups")

    def __init__(self, loc: Location, refs: list) -> None:
        self.pack_id = loc.pack_id
        self.lo = loc.offset
        self.hi = loc.offset + loc.length
        self.groups: list[tuple[Location, list]] = [(loc, refs)]

    def takes(self, loc: Location, request_bytes: int) -> bool:
        """Whether ``loc`` extends this span without a backwards jump, a big gap or a long read."""
        return (loc.pack_id == self.pack_id and self.hi <= loc.offset <= self.hi + MAX_GAP
                and loc.offset + loc.length - self.lo <= request_bytes)

    def add(self, loc: Location, refs: list) -> None:
        self.groups.append((loc, refs))
        self.hi = loc.offset + loc.length


class RangeFetcher:
    """Coalesces planned groups into spans and fetches ``connections`` of them at a time.

    Groups arrive in the order the walk leaves them, which is close to, not
    exactly, their order in the packs (a backup's workers seal groups side
    by side), so they are held per pack until a request's worth of one pack
    is pending (or ``hold_bytes`` of all packs), then sorted and cut into
    spans.  Only references are held back, never data.
    """

    def __init__(self, repo: Repository, connections: int, request_bytes: int, deliver: Deliver,
                 opener: Opener | None = None, window: int = STREAM_WINDOW) -> None:
        """``opener``: the store's ``open_range`` when it streams (then ``window`` bounds memory)."""
        self.repo = repo
        self.request_bytes = request_bytes
        # References held back per pack (never data): longer holds merge more of a pack into one
        # request, but keep more files open waiting (at the open-file limit every new file
        # flushes, and a flush sends each pack's few groups as a request of its own).
        self.hold_bytes = STREAM_HOLD if opener is not None else 2 * request_bytes
        self.deliver = deliver
        self.opener = opener
        self.budget = ByteBudget(connections * request_bytes)  # whole-range reads
        self.ring = Ring(window) if opener is not None else None  # streamed reads
        self.requests = 0
        # Streamed: no bytes are taken before a request starts, so the walk is held back here
        # instead (else it runs ahead, opens files until their limit forces a flush per file,
        # and every flush sends a group or two as a request of its own).
        self._requests_in_flight = threading.BoundedSemaphore(connections)
        self._buffers = ScratchPool(keep=connections)  # whole-range reads
        if opener is not None:
            _pin_mmap_threshold(STREAM_MMAP_THRESHOLD)
        self._pool = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="fetch")
        self._pending: OrderedDict[bytes, list[tuple[Location, list]]] = OrderedDict()
        self._pending_bytes: dict[bytes, int] = {}
        self._held = 0
        self._futures: list[Future[None]] = []

    def add(self, loc: Location, refs: list) -> None:
        """Called by the planning thread for every group it hands out, in hand-out order."""
        pack = loc.pack_id
        self._pending.setdefault(pack, []).append((loc, refs))
        self._pending_bytes[pack] = self._pending_bytes.get(pack, 0) + loc.length
        self._held += loc.length
        if self._pending_bytes[pack] >= self.request_bytes:
            self._send_pack(pack)
        while self._held > self.hold_bytes:
            self._send_pack(next(iter(self._pending)))

    def flush(self) -> None:
        """Send everything held back (the planner flushed: files wait for these groups)."""
        while self._pending:
            self._send_pack(next(iter(self._pending)))

    def _send_pack(self, pack: bytes) -> None:
        """Send the groups held for ``pack`` as spans; a group handed out again while held (the
        walk came back to it: blobs shared by many files) is read and opened once."""
        merged: dict[int, tuple[Location, list]] = {}
        for loc, refs in self._pending.pop(pack):
            if loc.offset in merged:
                merged[loc.offset][1].extend(refs)
            else:
                merged[loc.offset] = (loc, list(refs))
        self._held -= self._pending_bytes.pop(pack)
        groups = sorted(merged.values(), key=lambda g: g[0].offset)
        span = Span(*groups[0])
        for loc, refs in groups[1:]:
            if span.takes(loc, self.request_bytes):
                span.add(loc, refs)
            else:
                self._send(span)
                span = Span(loc, refs)
        self._send(span)

    def _send(self, span: Span) -> None:
        size = span.hi - span.lo
        self.requests += 1
        if self.opener is not None:  # ring space is taken group by group as the body arrives
            self._requests_in_flight.acquire()
            self._futures.append(self._pool.submit(self._stream, span))
        else:  # buffers are whole requests, recycled: the budget counts what they hold, used or not
            self.budget.acquire(max(size, self.request_bytes))
            self._futures.append(self._pool.submit(self._fetch, span, size))
        if len(self._futures) > 256:
            self._futures = [f for f in self._futures if not f.done()]

    def wait(self) -> None:
        """Every span sent is fetched and handed on (not necessarily decrypted yet)."""
        self.flush()
        for future in self._futures:
            future.result()
        self._futures = []

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    def _fetch(self, span: Span, size: int) -> None:
        data: memoryview | None = None
        error: BaseException | None = None
        buf = self._buffers.take(max(size, self.request_bytes))
        try:
            data = self.repo.read_pack_range_into(span.pack_id, span.lo, size, buf)
        except BaseException as exc:  # every group of the span fails with it, file by file
            error = exc
        left = [len(span.groups)]
        lock = threading.Lock()

        def done() -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._buffers.give(buf)
                self.budget.release(max(size, self.request_bytes))

        for loc, refs in span.groups:
            start = loc.offset - span.lo
            sealed = data[start:start + loc.length] if data is not None else None
            self.deliver(loc, refs, sealed, error, done)

    def _stream(self, span: Span) -> None:
        """Read the span in order; hand each group on as soon as its bytes are in."""
        assert self.opener is not None
        stream: RangeStream | None = None
        pos, sent = span.lo, 0
        try:
            stream = self.opener(pack_name(span.pack_id), span.lo, span.hi - span.lo)
            for loc, refs in span.groups:
                if loc.offset > pos:
                    stream.skip(loc.offset - pos)
                view, done = self._read_group(stream, loc.length)
                pos = loc.offset + loc.length
                sent += 1
                self.deliver(loc, refs, view, None, done)
        except BaseException as exc:  # the groups not yet handed on fail with it, file by file
            for loc, refs in span.groups[sent:]:
                self.deliver(loc, refs, None, exc, lambda: None)
        finally:
            if stream is not None:
                stream.close()
            self._requests_in_flight.release()

    def _read_group(self, stream: RangeStream, length: int) -> tuple[memoryview, Callable[[], None]]:
        """The next ``length`` bytes of ``stream`` in a slice of the ring, and how to give it back."""
        assert self.ring is not None
        view, done = self.ring.take(length)
        try:
            stream.readinto(view)
        except BaseException:
            done()
            raise
        return view, done


def _pin_mmap_threshold(threshold: int) -> None:
    """mallopt(M_MMAP_THRESHOLD) where the C library is glibc; DRTOOL_MMAP_THRESHOLD=0 leaves it."""
    if os.environ.get("DRTOOL_MMAP_THRESHOLD") == "0":
        return
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to pin
