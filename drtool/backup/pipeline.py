"""Parallel chunk processing: id → compress → encrypt → pack, bounded in bytes.

The walking thread cuts data into chunks and hands each to a worker pool.
BLAKE3, zstd and AES-GCM all release the GIL, so workers run on every core.
A byte budget bounds the chunks in flight, so memory depends on the pipeline
depth, never on the size of the data set.
"""
from __future__ import annotations

import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import zstandard

from drtool.repository.chunker import Chunker
from drtool.repository.packfile import DATA_BLOB, trim_heap
from drtool.repository.repo import LONG_TEXT, OTHER, SHORT_TEXT, TEXT_GROUP_TARGET_SIZE, Repository

DEFAULT_INFLIGHT_BYTES = 16 * 1024 * 1024
BATCH_BYTES = 1024 * 1024
BATCH_BUFFER = BATCH_BYTES + 256 * 1024  # a batch closes past 1 MiB; a small file is < 256 KiB
BATCH_BUFFERS_KEPT = 6
SEGMENT_BYTES = 8 * 1024 * 1024
SEGMENT_BUFFERS = 2  # two workers cutting and one being read into (4 cost 8 MiB of peak RSS for no speed)
# A physical backup's program (mariabackup, pg_basebackup) reads its files synchronously and
# stalls on a full pipe: with two buffers both at the workers it stood idle ~1.5 s of a 6 s
# full-size night 1, its disk reads and the workers' zstd taking turns.  Four let it run ahead
# (night 1 -8 % wall; six and eight gained nothing more).  ``ChunkPipeline.deeper_segments``.
PHYSICAL_SEGMENT_BUFFERS = 4
# A segment buffer given back after a short read (a media file) keeps at most this much of
# what earlier reads made resident: a dump's full segments stay, the tail a 500 KiB image
# did not reach is handed back (night 1's media phase held both buffers' 8 MiB).
SEGMENT_KEEP_RESIDENT = 2 * 1024 * 1024
SEGMENT_IDLE_SECONDS = 5.0  # a segment buffer unused this long is freed (take_buffer)
TEXT_PROBE = 32 * 1024
TEXT_RATIO = 0.6


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> None:
        amount = min(amount, self.limit)
        with self._cond:
            while self.used and self.used + amount > self.limit:
                self._cond.wait()
            self.used += amount

    def release(self, amount: int) -> None:
        amount = min(amount, self.limit)
        with self._cond:
            self.used -= amount
            self._cond.notify_all()


class Batch:
    """Chunks handed to a worker together: one task per ~1 MiB, not per chunk,
    so 200,000 small files or 40,000 dump chunks cost few Python-level tasks.

    Small files are copied into the batch's recycled buffer (``spans`` are
    their places in it) rather than kept as one ``bytes`` object each:
    200,000 short-lived heap allocations of 0.5-8 KiB, interleaved with the
    index's long-lived buckets, fragmented the heap of the small-files
    backup by tens of MiB.
    """

    __slots__ = ("spans", "size", "future", "buf")

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []
        self.size = 0
        self.future: Future[list[bytes]] | None = None
        self.buf: mmap.mmap | None = None

    def done(self) -> bool:
        return self.future is not None and self.future.done()


ChunkRef = tuple[Batch, int]
WHOLE_BATCH = -1


def resolve(refs: list[ChunkRef]) -> list[str]:
    """Hex blob ids in file order; WHOLE_BATCH stands for every id of a segment batch."""
    ids: list[str] = []
    for batch, index in refs:
        result = batch.future.result()  # type: ignore[union-attr]
        if index == WHOLE_BATCH:
            ids.extend(blob_id.hex() for blob_id in result)
        else:
            ids.append(result[index].hex())
    return ids


class ChunkPipeline:
    def __init__(self, repo: Repository, workers: int | None = None,
                 inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
                 segment_idle: float = SEGMENT_IDLE_SECONDS) -> None:
        self.repo = repo
        self._segment_idle = segment_idle
        self.workers = workers or max(2, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="chunk")
        self._budget = ByteBudget(inflight_bytes)
        seed = repo.master.chunker_seed
        self.file_chunker = Chunker(repo.config.file_chunk_avg, seed)
        self.text_chunker = Chunker(repo.config.stream_chunk_avg, seed)
        self.short_text_chunker = Chunker(repo.config.stream_chunk_avg, seed)  # cuts the same; other groups
        # physical streams (``run_groups``): large chunks, scanned from 3/4 of the average on
        # (FastCDC 0.47 s against 0.73 s on an 880 MiB mariabackup stream; _process_long)
        self.physical_chunker = Chunker(repo.config.file_chunk_avg, seed, repo.config.file_chunk_avg * 3 // 4)
        self._text_segments = 0  # long-text segments handed to the workers and not done yet
        self._probe = zstandard.ZstdCompressor(level=1)
        self._batch = Batch()
        self._free_segments: list[tuple[mmap.mmap, float]] = []  # LIFO; (buffer, when it came back)
        self._buffers_lock = threading.Lock()
        self._segment_depth = SEGMENT_BUFFERS  # segment buffers that may be out at once
        self._segments_out = 0
        self._segment_returned = threading.Condition(self._buffers_lock)
        self._text_idle = threading.Condition(self._buffers_lock)
        self._batch_buffers: list[mmap.mmap] = []
        self._reading_done = False  # set by reading_done(): buffers coming back are not kept

    def add(self, chunk: memoryview | bytes) -> ChunkRef:
        """Copy one small file's content into the open batch; the buffer may be reused at once."""
        batch = self._batch
        if batch.buf is not None and batch.size + len(chunk) > len(batch.buf):
            self.submit_batch()
            batch = self._batch
        if batch.buf is None:
            batch.buf = self._take_batch_buffer(len(chunk))
        end = batch.size + len(chunk)
        batch.buf[batch.size:end] = chunk
        batch.spans.append((batch.size, end))
        batch.size = end
        ref = (batch, len(batch.spans) - 1)
        if batch.size >= BATCH_BYTES:
            self.submit_batch()
        return ref

    def submit_batch(self) -> None:
        """Hand the open batch to the workers (also called before waiting on results)."""
        batch = self._batch
        if not batch.spans:
            return
        self._batch = Batch()
        size = batch.size
        self._budget.acquire(size)
        spans, batch.spans = batch.spans, []
        buf, batch.buf = batch.buf, None
        batch.future = self._pool.submit(self._process_spans, buf, spans)
        batch.future.add_done_callback(lambda _f: self._budget.release(size))

    def _take_batch_buffer(self, at_least: int) -> mmap.mmap:
        """A recycled batch buffer: an anonymous mapping, as the segments are, so that batches
        made and freed while the media of night 1 are read leave no holes in the heap."""
        if self._free_segments:  # small files now: large ones' segments may have gone idle
            self._expire_segments()
        with self._buffers_lock:
            if self._batch_buffers and at_least <= BATCH_BUFFER:
                return self._batch_buffers.pop()
        return mmap.mmap(-1, max(at_least, BATCH_BUFFER), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def _process_spans(self, buf: mmap.mmap, spans: list[tuple[int, int]]) -> list[bytes]:
        try:
            with memoryview(buf) as view:
                return self._process_batch([view[start:end] for start, end in spans])
        finally:
            with self._buffers_lock:
                if (len(buf) == BATCH_BUFFER and len(self._batch_buffers) < BATCH_BUFFERS_KEPT
                        and not self._reading_done):
                    self._batch_buffers.append(buf)

    def add_segment(self, data: bytes, chunker: Chunker) -> ChunkRef:
        """Cut and store one 8 MiB segment of a large file on a worker thread.

        Segments are cut independently, so a boundary is forced every 8 MiB;
        after it content-defined cut points resync within a chunk or two
        (~0.4 % extra data on shifted dumps), and the walking thread never
        holds the GIL for per-chunk cutting.
        """
        batch = Batch()
        size = len(data)
        self._budget.acquire(size)
        batch.future = self._pool.submit(self._process_segment, data, chunker)
        batch.future.add_done_callback(lambda _f: self._budget.release(size))
        return (batch, WHOLE_BATCH)

    def _process_segment(self, data: bytes | memoryview, chunker: Chunker) -> list[bytes]:
        if chunker is self.text_chunker:
            return self._process_long(data)
        text = SHORT_TEXT if chunker is self.short_text_chunker else OTHER
        return self._process_batch(list(chunker.cut(data)), text)

    def _process_long(self, data: bytes | memoryview, cuts: list[int] | None = None) -> list[bytes]:
        """A long text segment: its chunks go to this worker's long group in one call, so that
        neighbouring new chunks are compressed as one run (``Repository.add_long_blobs``).

        A physical backup's stream (``run_groups``) is cut in chunks of ~1.6 MiB: 16 KiB ones
        dedup a dump's edited rows, but a full's pages change under every scattered update (a
        night-2 full stored 894 of night 1's ~915 MiB with them), and each blob costs its id
        lookups, index and trailer entries at backup and a copy call at restore.  ``cuts``: the
        chunks' starts, given by the stream (``add_buffer_segment``)."""
        chunker = self.physical_chunker if self.repo.envelope.run_groups else self.text_chunker
        with memoryview(data) as view:
            blobs, offset, make_id = [], 0, self.repo.ids.blob_id
            for chunk in (chunker.cut(view) if cuts is None else _pieces(view, cuts)):
                blobs.append((make_id(chunk), offset, len(chunk)))
                offset += len(chunk)
            self.repo.add_long_blobs(DATA_BLOB, view, blobs)
        return [blob[0] for blob in blobs]

    def take_buffer(self) -> mmap.mmap:
        """A recycled 8 MiB segment buffer (blocks while all SEGMENT_BUFFERS are in flight).

        Reading into a few reused buffers instead of fresh 8 MiB objects
        avoids ~1.3 GB of page-faulted allocations per night of the bench.
        They are made on first need (small-file trees never pay for them)
        and freed after ``segment_idle`` seconds unused (a dump followed by
        a long walk of small files need not keep its 32 MiB of segments;
        not less than a few seconds, or a loaded machine's stalls would
        have them freed and faulted in again in the middle of a dump).
        They are anonymous mappings, not bytearrays (which are zeroed, so
        wholly resident, at once): only the pages reads reach are resident,
        and a short read hands back the tail past ``SEGMENT_KEEP_RESIDENT``.
        """
        with self._segment_returned:
            while self._segments_out >= self._segment_depth:
                self._segment_returned.wait()
            self._segments_out += 1
        self._expire_segments()
        with self._buffers_lock:
            self._reading_done = False
            if self._free_segments:
                return self._free_segments.pop()[0]
        return mmap.mmap(-1, SEGMENT_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def give_buffer(self, buf: mmap.mmap) -> None:
        with self._segment_returned:
            if not self._reading_done and len(self._free_segments) < self._segment_depth:
                self._free_segments.append((buf, time.monotonic()))
            self._segments_out -= 1
            self._segment_returned.notify()

    @contextmanager
    def deeper_segments(self, buffers: int = PHYSICAL_SEGMENT_BUFFERS) -> Iterator[None]:
        """Let the reader have ``buffers`` segments out at once while a program's stream is read
        (a physical backup's: the program keeps reading its files while the workers compress),
        then go back to the usual depth: buffers past it are freed as they come back, so a
        walk of files after the stream holds no more than before."""
        with self._buffers_lock:
            before, self._segment_depth = self._segment_depth, max(buffers, self._segment_depth)
        try:
            yield
        finally:
            with self._buffers_lock:
                self._segment_depth = before
                del self._free_segments[:-before]

    def reading_done(self) -> None:
        """The walk has read and handed over everything: free the idle segment and batch buffers
        now, and the others as the workers give them back, rather than at :meth:`close`.

        The walk ends waiting for the last groups to be sealed; the recycled
        buffers nothing will read into again were still held then (night 2 of
        the bench, whose dump is read last, peaked there with two idle 8 MiB
        segments).  Taking a segment buffer again undoes this.
        """
        with self._buffers_lock:
            self._reading_done = True
            self._free_segments.clear()
            self._batch_buffers.clear()
        trim_heap()

    def _expire_segments(self) -> None:
        limit, dropped = time.monotonic() - self._segment_idle, 0
        with self._buffers_lock:
            while self._free_segments and self._free_segments[0][1] < limit:
                del self._free_segments[0]
                dropped += 1
        if dropped:
            trim_heap()

    def add_buffer_segment(self, buf: mmap.mmap, length: int, chunker: Chunker,
                           cuts: list[int] | None = None) -> ChunkRef:
        """Like add_segment for a pooled buffer, which returns to the pool once processed
        (every new blob is copied into its compression group by then).  ``cuts``: where a long
        text segment's chunks start (offsets in it, ascending), given by the stream's own
        structure (a full's mbstream); None: ``chunker`` finds them."""
        batch = Batch()
        if chunker is self.text_chunker:
            with self._buffers_lock:
                self._text_segments += 1
        batch.future = self._pool.submit(self._process_buffer, buf, length, chunker, cuts)
        return (batch, WHOLE_BATCH)

    def _process_buffer(self, buf: mmap.mmap, length: int, chunker: Chunker,
                        cuts: list[int] | None = None) -> list[bytes]:
        try:
            with memoryview(buf) as view:
                if cuts is not None and chunker is self.text_chunker:
                    return self._process_long(view[:length], cuts)
                return self._process_segment(view[:length], chunker)
        finally:
            _release_tail(buf, length)
            self.give_buffer(buf)
            if chunker is self.text_chunker:
                with self._text_idle:
                    self._text_segments -= 1
                    if not self._text_segments:
                        self._text_idle.notify_all()

    def end_of_text_file(self) -> None:
        """A long text file (a dump) is all handed over: wait until its segments are stored, then
        seal its last long groups and free their zstd contexts, before the walk reads on.

        The walk used to go on at once: the dump's last segments were stored while the next
        files were read, so the long groups (and their contexts) and the media's first buffers
        were resident together, night 1's peak (+18-20 MiB for ~0.2 s).  The wait is the time
        the workers take for the dump's last one or two segments (text-like files too short
        for long groups do not come here)."""
        with self._text_idle:
            while self._text_segments:
                self._text_idle.wait()
        self.repo.seal_group_now(DATA_BLOB, LONG_TEXT)

    def _process_batch(self, chunks: list[memoryview | bytes], text: int = OTHER) -> list[bytes]:
        ids = []
        repo = self.repo
        for chunk in chunks:
            blob_id = repo.ids.blob_id(chunk)
            repo.add_blob(DATA_BLOB, blob_id, chunk, text)
            ids.append(blob_id)
        return ids

    def chunker_for(self, first_block: bytes, size: int | None = None) -> Chunker:
        """Small chunks for compressible (dump-like) data, large ones otherwise.

        Scattered row edits in a SQL dump touch nearly every 1 MiB chunk, so
        text-like data gets ~16 KiB chunks and stores only the edited
        neighbourhoods again (compression still sees 16 MiB groups); media
        keeps 1 MiB chunks, which keeps the index small.  A text-like file
        of known ``size`` under one 16 MiB group is cut the same way but goes
        to 4 MiB text groups (``short_text_chunker``).
        """
        probe = first_block[:TEXT_PROBE]
        if len(probe) < TEXT_PROBE:
            return self.file_chunker
        ratio = len(self._probe.compress(probe)) / len(probe)
        if ratio >= TEXT_RATIO:
            return self.file_chunker
        short = size is not None and size < TEXT_GROUP_TARGET_SIZE
        return self.short_text_chunker if short else self.text_chunker

    def close(self) -> None:
        """Wait for the workers, then free the recycled buffers (32 MiB of segments, the batches)
        and hand the heap's free pages back: the commit and the catalog step that follow a
        backup's data path need none of it (idempotent)."""
        self._pool.shutdown(wait=True)
        with self._buffers_lock:
            self._batch_buffers.clear()
            self._free_segments.clear()
        trim_heap()


def _pieces(view: memoryview, cuts: list[int]) -> list[memoryview]:
    """``view`` cut at ``cuts`` (offsets in it, ascending; those outside it are ignored)."""
    starts = [0, *(cut for cut in cuts if 0 < cut < len(view)), len(view)]
    return [view[start:end] for start, end in zip(starts, starts[1:]) if end > start]


def _release_tail(buf: mmap.mmap, used: int) -> None:
    """Hand back the pages of a segment buffer past ``max(used, SEGMENT_KEEP_RESIDENT)``: a short
    read (the end of a file, a media file) does not need what an earlier 8 MiB read made resident.
    Full segments (a dump's) skip the call; at most a few thousand short ones fault the pages in
    again (files of more than 2 MiB and less than 8)."""
    start = -(-max(used, SEGMENT_KEEP_RESIDENT) // mmap.PAGESIZE) * mmap.PAGESIZE
    if start < len(buf):
        buf.madvise(mmap.MADV_DONTNEED, start, len(buf) - start)
