"""Backup use cases: file trees and command output streams.

The write order is enforced here: every blob (data, then trees) goes to
packs, ``repo.flush()`` stores the packs and then the index, and only then
is the snapshot written.  Anything that fails before the snapshot write
leaves unreferenced packs at worst, never a snapshot that lies.
"""
from __future__ import annotations

import logging
import mmap
import os
import subprocess
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Callable, Iterator

from drtool import __version__
from drtool.childenv import child_environment
from drtool.errors import CatalogError, DrtoolError, SourceError, UsageError
from drtool.core.heap import collector_paused
from drtool.backup.pipeline import SEGMENT_BYTES, ChunkPipeline, resolve
from drtool.core.session import Session
from drtool.backup.readers import Reading
from drtool.browse.trees import WalkedChanges
from drtool.backup.treewalk import ProgressFn, TreeWalker, WalkStats
from drtool.digests import CONTENT_HASHES
from drtool.repository.cacheenv import CACHE_ERRORS
from drtool.repository.locks import Lock
from drtool.snapshot.model import FILE, Node, Snapshot
from drtool.snapshot.names import display, entry_name_problem, label_problem
from drtool.snapshot.store import save_snapshot, store_tree
from drtool.testing_hooks import crash_point

BACKUP_GROUP_CACHE = 24 * 1024 * 1024 # parent trees, read in walk order (Repository.limit_group_cache)

STDERR_TAIL = 2000
log = logging.getLogger("drtool")


@dataclass
class BackupResult:
    snapshot: Snapshot
    unreadable: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    vanished: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = self.snapshot.listing()
        data.update(unreadable=self.unreadable, changed=self.changed, vanished=self.vanished,
                    requests=self.requests)
        return data


@contextmanager
def _backup_frame(session: Session, name: str) -> Iterator[tuple[Lock, Snapshot | None, ChunkPipeline]]:
    """Shared lock, fresh index, the parent snapshot of the series, and a pipeline."""
    with session.lock("backup") as lock:
        session.repo.load_index()
        session.repo.limit_group_cache(BACKUP_GROUP_CACHE)
        parents = session.snapshots(name)
        pipeline = ChunkPipeline(session.repo)
        try:
            with collector_paused():
                yield lock, (parents[-1] if parents else None), pipeline
        finally:
            pipeline.close()


def check_labels(session: Session, name: str, tags: list[str] | None, filename: str | None = None) -> None:
    """Refuse names a restore or a listing could not handle, before anything is run or written.

    ``filename`` (a stream's file name) becomes a path under ``--target`` on
    restore: one plain component only, never absolute, never ``..``.
    """
    checks = [("snapshot name", name, label_problem(name, series=True)),
              ("host name", session.host, label_problem(session.host))]
    checks += [("tag", tag, label_problem(tag, tag=True)) for tag in tags or []]
    if filename is not None:
        checks.append(("--filename", filename, entry_name_problem(filename)))
    for what, value, problem in checks:
        if problem is not None:
            shown = display(value) if isinstance(value, str) else repr(value)
            hint = ("give a plain file name such as wiki.sql (no '/', not '..')" if what == "--filename"
                    else "use printable UTF-8 without control characters or backslashes (DRTOOL_HOST "
                         "sets the host name)" if what == "host name"
                    else "use printable UTF-8 without control characters or backslashes")
            raise UsageError(f"{what} '{shown}' {problem}; nothing was backed up", hint=hint)


def check_content_hash(content_hash: str | None) -> None:
    if content_hash is not None and content_hash not in CONTENT_HASHES:
        raise UsageError(f"content hash {content_hash!r} is not one drtool computes; nothing was backed up",
                         hint=f"use one of: {', '.join(CONTENT_HASHES)}")


def _record_in_catalog(session: Session, snap: Snapshot, walked: WalkedChanges | None = None) -> None:
    """The snapshot is committed to the repository by now; say so if the catalog fails.

    The per-file index (``drtool find``) is brought up to date here; if that
    fails the backup still succeeds: ``find`` indexes what is missing when next run.
    ``walked``: what the walk found changed against the parent, so the index reads no tree back.
    """
    try:
        session.catalog.add_snapshots([snap])
    except CatalogError as exc:
        raise CatalogError(f"snapshot {snap.short_id} is saved in the repository, but {exc}") from None
    from drtool.browse.index import index_new_snapshot  # imports SQLAlchemy: not at start-up
    try:
        index_new_snapshot(session, snap, walked)
    except DrtoolError as exc:
        log.warning("snapshot %s is saved, but the file index was not updated (%s); "
                    "'drtool find' will index it when next run", snap.short_id, exc)


def _commit(session: Session, lock: Lock, snap: Snapshot) -> None:
    """Packs and index first, then the snapshot: the write order that makes crashes harmless."""
    crash_point("backup-before-flush")
    repo = session.repo
    # A deferred catalog opens only now, beside the flush: not while the data is read, where
    # SQLAlchemy and the catalog added ~19 MiB to the nightly backup's peak RSS.  Errors are
    # reported once the snapshot is saved (_record_in_catalog).
    session.warm_catalog()
    repo.flush()
    # groups (16 MiB for text) are sealed by flush: only now are the stored byte counts final
    snap.summary.update(blobs_added=repo.new_blobs, bytes_added=repo.new_bytes_stored,
                        bytes_added_raw=repo.new_bytes_raw)
    crash_point("backup-before-snapshot")
    lock.ensure_held()
    save_snapshot(session.repo, snap)
    crash_point("backup-after-snapshot")
    try:  # open before the lock goes: a prune may replace this run's index objects after it
        session.catalog  # noqa: B018
    except CatalogError:
        pass  # reported once the snapshot is saved (_record_in_catalog)


def backup_paths(session: Session, paths: list[str], name: str, tags: list[str] | None = None,
                 progress: ProgressFn | None = None,
                 clock: Callable[[], datetime] | None = None,
                 content_hash: str | None = None, kind: str = "files",
                 meta: dict[str, Any] | None = None, reading: Reading | None = None) -> BackupResult:
    """``clock`` gives the snapshot time (injected by tests that need old snapshots);
    ``content_hash`` ('sha256', 'sha1') records each file's hash for ``drtool find --hash``;
    ``kind`` and ``meta``: a tree a database tool wrote (``mariadb-mydumper``: one file per table);
    ``reading``: reader threads and file operations (tests inject counting or faulty ones)."""
    check_labels(session, name, tags)
    check_content_hash(content_hash)
    started = time.monotonic()
    when = clock() if clock else datetime.now(timezone.utc)
    with _backup_frame(session, name) as (lock, parent, pipeline):
        index = session.repo.index
        since = index.removals_token()  # before any look-up: a removal after it voids the mark
        complete = parent is not None and since is not None and index.is_complete(parent.tree)
        walker = TreeWalker(session.repo, pipeline, progress, content_hash, reading)
        try:
            tree_id = walker.backup_roots(paths, parent.tree if parent else None, complete)
        finally:
            walker.close()
        pipeline.close()  # its buffers are freed before the last groups are sealed
        snap = _snapshot(session, name, when, tree_id, kind, parent, tags, walker.stats,
                         started, paths=[os.path.abspath(p) for p in paths], meta=meta)
        _commit(session, lock, snap)
        if since is not None:
            _mark_complete(session, tree_id, since, walker.listings)
    _record_in_catalog(session, snap, walker.walked)
    return BackupResult(snap, walker.stats.unreadable, walker.stats.changed,
                        session.repo.backend.stats.as_dict(), walker.stats.vanished)


def _mark_complete(session: Session, tree_id: str, since: bytes, listings: dict[str, bytes]) -> None:
    """Every blob the committed tree reads is indexed: it was stored or looked up in this run, or
    taken over under its parent's mark (``repository.completeness``); and the listings its new
    trees were built from (``backup.listings``).  Only a speed-up for the next run: failing to
    record them fails nothing."""
    try:
        session.repo.index.record_listings(listings)
        session.repo.index.mark_complete(tree_id, since)
    except CACHE_ERRORS as exc:  # an LMDB error, a full disk: the next run looks every blob up
        log.info("index cache: no completeness mark for tree %s (%s)", tree_id[:8], exc)


def backup_stream(session: Session, stream: IO[bytes], name: str, filename: str,
                  tags: list[str] | None = None, kind: str = "stream",
                  meta: dict[str, Any] | None = None, verify: Any = None,
                  clock: Callable[[], datetime] | None = None) -> BackupResult:
    """Store one byte stream as a single file; ``verify()`` may raise to veto the commit."""
    check_labels(session, name, tags, filename)
    return backup_streams(session, iter([(filename, stream)]), name, tags, kind, meta, verify, clock)


def backup_streams(session: Session, streams: Iterator[tuple[str, IO[bytes]]], name: str,
                   tags: list[str] | None = None, kind: str = "stream",
                   meta: dict[str, Any] | None = None, verify: Any = None,
                   clock: Callable[[], datetime] | None = None) -> BackupResult:
    """Store streams that arrive one after another as the files of one snapshot.

    A program that writes several archives in turn (pg_basebackup with
    tablespaces: one tar per tablespace) is stored as it writes, each
    ``(filename, stream)`` read to its end before the next is taken;
    ``verify()`` may raise to veto the commit.
    """
    check_labels(session, name, tags)
    started = time.monotonic()
    when = clock() if clock else datetime.now(timezone.utc)
    with _backup_frame(session, name) as (lock, parent, pipeline):
        nodes: list[Node] = []
        # a physical backup's program reads its files ahead while the workers compress
        with pipeline.deeper_segments() if session.repo.envelope.run_groups else nullcontext():
            for filename, stream in streams:
                check_labels(session, name, tags, filename)
                if any(node.name == filename for node in nodes):
                    raise SourceError(f"the backup of {name} wrote {filename} twice; no snapshot was written")
                nodes.append(_store_stream(pipeline, stream, filename))
        pipeline.close()  # every segment is stored: its buffers are freed before the commit
        if verify is not None:
            verify()
        nodes.sort(key=lambda node: node.name)
        tree_id = store_tree(session.repo, nodes)
        stats = WalkStats(files=len(nodes), size=sum(node.size for node in nodes), files_read=len(nodes))
        snap = _snapshot(session, name, when, tree_id, kind, parent, tags, stats, started,
                         paths=[node.name for node in nodes], meta=meta)
        _commit(session, lock, snap)
    _record_in_catalog(session, snap)
    return BackupResult(snap, requests=session.repo.backend.stats.as_dict())


def _store_stream(pipeline: ChunkPipeline, stream: IO[bytes], filename: str) -> Node:
    """Cut one stream into 8 MiB segments for the workers; its node once all are stored.

    Segments are read straight into the pipeline's recycled buffers: a fresh
    8 MiB ``bytes`` per segment (appended piece by piece, then copied) cost
    an allocation, page faults and two copies per byte of a 2 GiB base backup.
    The log says which side set the pace (issue 19): time spent reading the
    source (waiting for its bytes), waiting for a free buffer (the workers were
    behind; the source was held up once its pipe was full), and for the last
    segments after the end of the stream.
    """
    refs, size = [], 0
    started, reading, waiting = time.monotonic(), 0.0, 0.0
    readinto = getattr(stream, "readinto1", None) or getattr(stream, "readinto", None)
    boundaries = getattr(stream, "boundaries", None)  # where the stream's structure cuts it (a full's mbstream)
    if readinto is None:  # a plain reader: segments as bytes
        read = _reader(stream)
        for segment in iter(lambda: read(SEGMENT_BYTES), b""):
            size += len(segment)
            refs.append(pipeline.add_segment(segment, pipeline.text_chunker))
    else:
        while True:
            mark = time.monotonic()
            buf = pipeline.take_buffer()
            filling = time.monotonic()
            waiting += filling - mark
            try:
                length = _fill(readinto, buf)
            except BaseException:
                pipeline.give_buffer(buf)
                raise
            reading += time.monotonic() - filling
            if not length:
                pipeline.give_buffer(buf)
                break
            cuts = boundaries(size + length) if boundaries is not None else None
            refs.append(pipeline.add_buffer_segment(buf, length, pipeline.text_chunker,
                                                    None if cuts is None else [cut - size for cut in cuts]))
            size += length
            if length < len(buf):
                break
    ended = time.monotonic()
    node = Node(name=filename, type=FILE, mode=0o600, mtime_ns=time.time_ns(), size=size)
    node.content = resolve(refs)
    log.info("stream %s: %.0f MB in %.1fs: reading the source %.1fs, waiting for the workers %.1fs, "
             "for the last segments %.1fs", display(filename), size / 1e6, time.monotonic() - started,
             reading, waiting, time.monotonic() - ended)
    return node


def _fill(readinto: Callable[[memoryview], int | None], buf: mmap.mmap) -> int:
    """Read into ``buf`` until it is full or the stream ends; how many bytes came."""
    filled = 0
    with memoryview(buf) as view:
        while filled < len(view):
            count = readinto(view[filled:])
            if not count:
                break
            filled += count
    return filled


def _reader(stream: IO[bytes]):  # type: ignore[no-untyped-def]
    read = getattr(stream, "read1", stream.read)

    def read_some(size: int) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            piece = read(size - len(buf))
            if not piece:
                break
            buf += piece
        return bytes(buf)
    return read_some


def backup_command(session: Session, command: list[str] | str, name: str, filename: str,
                   tags: list[str] | None = None, env: dict[str, str] | None = None,
                   kind: str = "stream", meta: dict[str, Any] | None = None) -> BackupResult:
    """Back up a command's stdout; a non-zero exit means no snapshot (exit 1, stderr tail)."""
    check_labels(session, name, tags, filename)
    shell = isinstance(command, str)
    try:
        proc = subprocess.Popen(command, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=child_environment(base=env))
    except OSError as exc:
        raise SourceError(f"cannot start the dump command: {exc.strerror}",
                          hint="check the command and PATH") from None
    tail = _StderrTail(proc.stderr)  # type: ignore[arg-type]

    def verify() -> None:
        code = proc.wait()
        tail.join()
        if code != 0:
            raise SourceError(f"the dump command exited with status {code}; no snapshot was "
                              f"written. stderr: {tail.text() or '(empty)'}",
                              hint="fix the command; the repository is unchanged")
    try:
        return backup_stream(session, proc.stdout, name, filename, tags, kind, meta,  # type: ignore[arg-type]
                             verify=verify)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _StderrTail(threading.Thread):
    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.buf = b""
        self.start()

    def run(self) -> None:
        for piece in iter(lambda: self.stream.read(4096), b""):
            self.buf = (self.buf + piece)[-STDERR_TAIL:]

    def text(self) -> str:
        return " | ".join(self.buf.decode(errors="replace").strip().splitlines()[-5:])


def _snapshot(session: Session, name: str, when: datetime, tree_id: str, kind: str,
              parent: Snapshot | None, tags: list[str] | None, stats: WalkStats, started: float,
              paths: list[str], meta: dict[str, Any] | None = None) -> Snapshot:
    repo = session.repo
    summary = {"files": stats.files, "dirs": stats.dirs, "size": stats.size,
               "files_read": stats.files_read, "files_unchanged": stats.files_unchanged,
               "files_known_present": stats.files_known_present,
               "dirs_listed_as_before": stats.dirs_listed_as_before,
               "blobs_added": repo.new_blobs, "bytes_added": repo.new_bytes_stored,
               "bytes_added_raw": repo.new_bytes_raw, "unreadable": len(stats.unreadable),
               "changed_during_backup": len(stats.changed), "vanished": len(stats.vanished),
               "duration": round(time.monotonic() - started, 3)}
    return Snapshot(name=name, host=session.host, time=when, tree=tree_id, kind=kind, paths=paths,
                    parent=parent.id if parent else None, tags=sorted(set(tags or [])),
                    summary=summary, meta=meta or {}, program_version=__version__)
