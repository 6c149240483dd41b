"""The restore's data path: each compression group opened once, its blobs written where they go.

A restored file is a list of blobs; the blobs live in compression groups of
up to 16 MiB, and one group feeds many files (small files) or many places in
one file (a dump restored after scattered edits alternates between old and
new groups).  Reading blob by blob re-opens groups or keeps a large cache of
them.  Instead the walking thread *plans*: every blob reference goes to the
list of its group (:class:`GroupPlanner`), and a group is handed to the
workers (:class:`GroupWriter`) once the walk has moved on from it.  A worker
decrypts and decompresses the group into recycled buffers, checks each
planned blob against its id, and writes runs of neighbouring blobs with one
``pwritev`` per file.

Memory is bounded by the planner (pending references and how far behind the
walk a group may lag) and by the writer's in-flight slots, never by the size
of the snapshot.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from drtool.backends import capabilities
from drtool.errors import IntegrityError
from drtool.repository.index import Location
from drtool.repository.reading import ScratchPool
from drtool.repository.repo import Repository
from drtool.restore.fetch import RangeFetcher
from drtool.snapshot.model import Node

MiB = 1024 * 1024
LAG_BYTES = 64 * MiB       # a group the walk has not touched for this much file data is handed out
CROWDED_LAG_BYTES = 8 * MiB  # ... or this much, while many files wait for their groups
MAX_PENDING_REFS = 65536   # blob references held by the planner at most (~100 bytes each)
WRITE_BATCH = 512          # buffers per pwritev (IOV_MAX is 1024)


class FileJob:
    """A file being restored: its temporary, and how many blob references are still to be written."""

    __slots__ = ("path", "node", "fd", "tmp", "remaining", "error", "lock", "write_lock", "parent", "name")

    def __init__(self, path: str, node: Node, fd: int, tmp: str, remaining: int,
                 parent: Any = None, name: str = "") -> None:
        """``parent``: the target directory's handle (``restore_target.DirHandle``), in which the
        temporary ``tmp`` is renamed to ``name``; ``path`` is for messages only."""
        self.path, self.node, self.fd, self.tmp = path, node, fd, tmp
        self.parent, self.name = parent, name
        self.remaining = remaining
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        # One writer per file at a time: ext4 serialises buffered writes to an
        # inode anyway, and a second writer spins on the inode lock (perf:
        # ~5 % of restore CPU) where a Python lock lets it sleep.
        self.write_lock = threading.Lock()


# (file, offset in the file, offset in the group's plaintext, length, blob id)
BlobRef = tuple[FileJob, int, int, int, bytes]


class Aborted(Exception):
    """The restore stopped on another error before this file could be written."""


class GroupPlanner:
    """Collects blob references per group and hands a group out once the walk has left it.

    Used by the walking thread only.  A group that the walk comes back to
    after handing it out is simply opened again; ``lag_bytes`` makes that
    rare for files that interleave a few groups (a dump's old and new rows).
    """

    def __init__(self, dispatch: Callable[[Location, list[BlobRef]], None], *,
                 lag_bytes: int = LAG_BYTES, max_refs: int = MAX_PENDING_REFS,
                 crowded: Callable[[], bool] = lambda: False,
                 crowded_lag_bytes: int = CROWDED_LAG_BYTES,
                 after_flush: Callable[[], None] = lambda: None) -> None:
        """``crowded`` says when many files are open and waiting for their groups.

        Small files reach the open-file limit long before the walk has moved
        64 MiB on; with the long lag alone, groups then went out only in
        bursts when the limit forced a flush, and the workers idled between
        bursts (a 3,400-file restore: ~1.4 of 2 workers busy).  Crowded, the
        planner hands out groups the walk left ``crowded_lag_bytes`` ago:
        small files are restored in walk order, so those are rarely needed
        again.
        """
        self._dispatch = dispatch
        self._after_flush = after_flush  # the writer may hold groups back to read them together
        self.lag_bytes = lag_bytes
        self.max_refs = max_refs
        self._crowded = crowded
        self.crowded_lag_bytes = crowded_lag_bytes
        # group → [a location in it, its references, walk position when last touched]
        self._pending: OrderedDict[tuple[bytes, int], list] = OrderedDict()
        self._position = 0
        self._refs = 0

    def add(self, loc: Location, ref: BlobRef) -> None:
        key = (loc.pack_id, loc.offset)
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = [loc, [], 0]
        else:
            self._pending.move_to_end(key)
        entry[1].append(ref)
        entry[2] = self._position
        self._position += loc.raw_length
        self._refs += 1
        self._hand_out(everything=False)

    def flush(self) -> None:
        """Hand out every pending group (end of the walk, or before waiting for files to finish)."""
        self._hand_out(everything=True)
        self._after_flush()

    def _hand_out(self, everything: bool) -> None:
        lag = self.lag_bytes
        while self._pending:
            key, (loc, refs, touched) = next(iter(self._pending.items()))
            if not everything and self._refs <= self.max_refs and self._position - touched < lag:
                if lag == self.crowded_lag_bytes or not self._crowded():
                    return
                lag = self.crowded_lag_bytes
                continue
            del self._pending[key]
            self._refs -= len(refs)
            self._dispatch(loc, refs)


class GroupWriter:
    """Worker threads that open planned groups and write their blobs into the files.

    Decryption, decompression, BLAKE3 and ``pwritev`` all run without the
    GIL; the Python left per blob is cutting a view, comparing its id and
    extending a write run.  (Letting one worker check blobs at a time, so
    that BLAKE3's per-blob GIL hand-offs meet no contention, measured the
    same on the bench restore and was dropped.)
    """

    def __init__(self, repo: Repository, workers: int, *, on_file_done: Callable[[FileJob], None],
                 progress: Callable[[int], None] | None = None) -> None:
        self.repo = repo
        self.on_file_done = on_file_done
        self.progress = progress
        self.aborted = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore")
        self._slots = threading.BoundedSemaphore(2 * workers + 1)
        self._buffers = ScratchPool(keep=3 * workers + 2)
        self._futures: list[Future[None]] = []
        self._futures_lock = threading.Lock()
        self._zero_blobs: set[bytes] = set()
        # Remote stores: groups are read ahead, coalesced, on the fetcher's own threads.
        shape = capabilities.read_concurrency(repo.backend)
        self.fetcher = (RangeFetcher(repo, shape[0], shape[1], self._submit_fetched,
                                     capabilities.range_opener(repo.backend)) if shape else None)
        if self.fetcher is not None:
            # Sealed bytes arrive in the fetcher's ring: a worker holds only its plaintext and
            # zstd's input, so fewer spare buffers do (each may be a 16 MiB text group).  Keeping
            # four, capped at 32 MiB by dropping the largest, was tried: it mapped a fresh
            # 16 MiB buffer for most text groups (restore system time +0.9 s, 2026-12-04).
            self._buffers.keep = workers

    def submit(self, loc: Location, refs: list[BlobRef]) -> None:
        if self._zero_blobs:
            refs = self._skip_known_zeros(refs)
            if not refs:
                return
        if self.fetcher is not None:
            self.fetcher.add(loc, refs)
        else:
            self._submit(self._run, loc, refs)

    def _skip_known_zeros(self, refs: list[BlobRef]) -> list[BlobRef]:
        """Settle the references to blobs already checked and found all zero: they are holes in
        files cut to size, so their group need not be read again (one zero blob is shared by
        every sparse region of every file: the walk hands its group out again and again)."""
        zero_blobs = self._zero_blobs
        keep = [ref for ref in refs if ref[4] not in zero_blobs]
        if len(keep) < len(refs):
            counts: dict[FileJob, int] = {}
            for ref in refs:
                if ref[4] in zero_blobs:
                    counts[ref[0]] = counts.get(ref[0], 0) + 1
            for job, count in counts.items():
                self.settle(job, count)
        return keep

    def flush(self) -> None:
        """Groups held back to be read together go out now (files are waiting for them)."""
        if self.fetcher is not None:
            self.fetcher.flush()

    def _submit_fetched(self, loc: Location, refs: list[BlobRef], sealed: memoryview | None,
                        error: BaseException | None, done: Callable[[], None]) -> None:
        """A fetched group is queued whatever the queue's length: its bytes are already counted
        in the fetcher's window, and a fetcher waiting here for a slot held its connection idle
        (py-spy, S3 restore: a fifth of the fetch threads' time) while the window had room."""
        self._submit(self._run, loc, refs, sealed, error, done, slot=False)

    def _submit(self, fn: Callable[..., None], *args: Any, slot: bool = True) -> None:
        if slot:
            self._slots.acquire()
        future = self._pool.submit(fn, *args)
        if slot:
            future.add_done_callback(lambda _f: self._slots.release())
        with self._futures_lock:
            self._futures.append(future)
            if len(self._futures) > 256:
                self._futures = [f for f in self._futures if not f.done()]

    def settle(self, job: FileJob, count: int) -> None:
        """``count`` references of ``job`` are done (written, failed or never planned)."""
        with job.lock:
            job.remaining -= count
            done = job.remaining == 0
        if done:
            self.on_file_done(job)

    def wait(self) -> None:
        if self.fetcher is not None:
            self.fetcher.wait()  # every fetched group is submitted to the workers by then
        with self._futures_lock:
            futures, self._futures = self._futures, []
        for future in futures:
            future.result()  # _run records every error on its files; this surfaces bugs only

    def shutdown(self) -> None:
        if self.fetcher is not None:
            self.fetcher.shutdown()
        self._pool.shutdown(wait=True)

    def _run(self, loc: Location, refs: list[BlobRef], sealed: memoryview | None = None,
             error: BaseException | None = None, done: Callable[[], None] | None = None) -> None:
        """Open, check and write one group; ``sealed``/``error``: what the fetcher read for it."""
        counts: dict[FileJob, int] = {}
        for ref in refs:
            counts[ref[0]] = counts.get(ref[0], 0) + 1
        try:
            if error is not None:
                raise error
            self._open_check_write(loc, refs, sealed)
            if self.progress:
                self.progress(sum(ref[3] for ref in refs))
        except BaseException as exc:  # recorded on every file of the group; decided on per file
            for job in counts:
                job.error = job.error or exc
        finally:
            if done is not None:
                done()
        for job, count in counts.items():
            self.settle(job, count)

    def _open_check_write(self, loc: Location, refs: list[BlobRef], sealed: memoryview | None) -> None:
        if self.aborted:
            raise Aborted("restore aborted")
        opened = (self.repo.open_group_recycled(loc, self._buffers) if sealed is None
                  else self.repo.open_group_sealed(loc, sealed, self._buffers))
        try:
            runs, bad = self._checked_runs(opened.plain, refs)
            for job, blob_id in bad:
                job.error = job.error or IntegrityError(
                    f"blob {blob_id.hex()[:16]} in pack {loc.pack_id.hex()[:16]} does not match its id")
            for job, offset, views in runs:
                if job.error is None:
                    try:
                        _write_locked(job, views, offset)
                    except OSError as exc:
                        job.error = exc
        finally:
            opened.release()

    def _checked_runs(self, plain: memoryview, refs: list[BlobRef]
                      ) -> tuple[list[tuple[FileJob, int, list[memoryview]]], list[tuple[FileJob, bytes]]]:
        """Verified blobs as write runs: (file, offset, views), neighbours merged; zero blobs skipped."""
        runs: list[tuple[FileJob, int, list[memoryview]]] = []
        bad: list[tuple[FileJob, bytes]] = []
        cut, zero_blobs = self.repo.cut_blob, self._zero_blobs
        views: list[memoryview] = []
        run_job: FileJob | None = None
        file_end = view_start = view_end = -1
        for job, offset, inner, length, blob_id in refs:
            if job.error is not None:
                continue
            data = cut(blob_id, inner, length, plain)
            if data is None:
                bad.append((job, blob_id))
                continue
            if blob_id in zero_blobs or _all_zero(data):
                zero_blobs.add(blob_id)  # leave a hole: the file stays sparse
                file_end = -1
                continue
            if job is run_job and offset == file_end and len(views) < WRITE_BATCH:
                if inner == view_end:  # next to the previous blob in the group as well: one view
                    views[-1] = plain[view_start:inner + length]
                else:
                    views.append(data)
                    view_start = inner
            else:
                views = [data]
                runs.append((job, offset, views))
                run_job, view_start = job, inner
            file_end, view_end = offset + length, inner + length
        return runs, bad


def _all_zero(data: memoryview) -> bool:
    """Cheap reject on the ends first: random data almost never starts and ends with 0."""
    if not len(data) or data[0] or data[-1]:
        return not len(data)
    return data == bytes(len(data))


def _write_locked(job: FileJob, buffers: list[memoryview], offset: int) -> None:
    with job.write_lock:
        _pwritev_all(job.fd, buffers, offset)


def _pwritev_all(fd: int, buffers: list[memoryview], offset: int) -> None:
    """pwritev until everything is written (short writes happen on some file systems)."""
    while buffers:
        written = os.pwritev(fd, buffers, offset)
        offset += written
        while buffers and written >= len(buffers[0]):
            written -= len(buffers[0])
            buffers = buffers[1:]
        if buffers and written:
            buffers = [buffers[0][written:], *buffers[1:]]
