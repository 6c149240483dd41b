"""Walk source trees into tree blobs without waiting on the worker pool.

Directories are finished in post-order from a queue: a directory is sealed
as soon as all its files' chunk futures are done, so the walking thread
keeps feeding workers instead of draining the pipeline at every directory.
Unchanged files (size, mtime, ctime, inode equal to the parent snapshot's
node, all blobs present) are taken over without being read.

The walk keeps its own stack instead of recursing, so a tree may be as deep
as paths allow (PATH_MAX), not as deep as Python's recursion limit.  Entries
that vanish while the backup runs are left out with a warning (the snapshot
shows the tree as found); entries that cannot be read make the run exit 3.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from drtool.errors import DrtoolError
from drtool.ops.pipeline import SEGMENT_BYTES, Batch, ChunkPipeline, ChunkRef, resolve
from drtool.repository.chunker import Chunker
from drtool.repository.repo import Repository
from drtool.snapshot.model import DIR, FILE, Node
from drtool.snapshot.store import load_tree, store_tree
from drtool.sources import files as fs

SMALL_FILE = 256 * 1024
log = logging.getLogger("drtool")


@dataclass
class WalkStats:
    files: int = 0
    dirs: int = 0
    size: int = 0
    files_read: int = 0
    files_unchanged: int = 0
    unreadable: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)


@dataclass
class DirJob:
    nodes: list[Node] = field(default_factory=list)
    pending: list[tuple[Node, list[ChunkRef]]] = field(default_factory=list)
    children: list[tuple[Node, "DirJob"]] = field(default_factory=list)
    batches: deque[Batch] = field(default_factory=deque)
    tree_id: str | None = None

    def track(self, refs: list[ChunkRef]) -> None:
        """Remember each distinct batch once (a 660 MiB dump has 40k refs but ~700 batches)."""
        last = self.batches[-1] if self.batches else None
        for batch, _index in refs:
            if batch is not last:
                self.batches.append(batch)
                last = batch

    def ready(self) -> bool:
        """Amortised O(1): finished batches are dropped from the front."""
        while self.batches and self.batches[0].done():
            self.batches.popleft()
        return not self.batches


ProgressFn = Callable[[WalkStats], None]
Frame = tuple[DirJob, Iterator[tuple[fs.Entry, Node | None]]]


class TreeWalker:
    def __init__(self, repo: Repository, pipeline: ChunkPipeline,
                 progress: ProgressFn | None = None) -> None:
        self.repo = repo
        self.pipeline = pipeline
        self.stats = WalkStats()
        self.progress = progress
        self._queue: deque[DirJob] = deque()
        self._links: dict[str, list[ChunkRef] | list[str]] = {}
        self._zeros: dict[Chunker, ChunkRef] = {}

    def backup_roots(self, roots: list[str], parent_tree: str | None) -> str:
        """Store the given paths as one root tree; return its id."""
        old_root = self._old_nodes(parent_tree)
        root = DirJob()
        seen: set[str] = set()
        for name, path in fs.iter_paths(roots):
            if name in seen:
                raise DrtoolError(f"two backup paths share the name {name!r}",
                                  hint="back them up under separate --name values")
            seen.add(name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise DrtoolError(f"backup path {os.fsdecode(path)} cannot be read: {exc.strerror}",
                                  hint="check the path exists and is readable") from None
            frame = self._add_entry(root, fs.Entry(path, name, st), old_root.get(name))
            if frame is not None:
                self._walk(frame)
        self._queue.append(root)
        self._drain(block=True)
        assert root.tree_id is not None
        return root.tree_id

    def _old_nodes(self, tree_id: str | None) -> dict[str, Node]:
        if not tree_id:
            return {}
        try:
            return {n.name: n for n in load_tree(self.repo, tree_id)}
        except DrtoolError:
            return {}  # a damaged parent only costs re-reading, never correctness

    def _problem(self, exc: fs.Unreadable) -> None:
        if isinstance(exc, fs.Vanished):
            self.stats.vanished.append(str(exc))
            log.warning("%s; not in this snapshot", exc)
        else:
            self.stats.unreadable.append(str(exc))

    def _scan(self, path: bytes, old_tree: str | None) -> Frame:
        """Read one directory; raises Unreadable (Vanished) if it cannot be listed."""
        old = self._old_nodes(old_tree)
        entries, problems = fs.scan_dir(path)
        for problem in problems:
            self._problem(problem)
        return DirJob(), ((entry, old.get(entry.name)) for entry in entries)

    def _walk(self, top: Frame) -> None:
        """Depth first with an explicit stack; a directory is queued after its subdirectories."""
        stack = [top]
        while stack:
            job, entries = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                self._queue.append(job)
                self._drain(block=False)
                continue
            frame = self._add_entry(job, *item)
            if frame is not None:
                stack.append(frame)

    def _add_entry(self, job: DirJob, entry: fs.Entry, old: Node | None) -> Frame | None:
        """Record one entry in ``job``; for a directory return its frame to walk next."""
        try:
            node = fs.node_from_stat(entry.name, entry.path, entry.st)
        except fs.Unreadable as exc:
            self._problem(exc)
            return None
        frame: Frame | None = None
        if node.type == DIR:
            try:
                frame = self._scan(entry.path, old.subtree if old and old.type == DIR else None)
            except fs.Vanished as exc:
                self._problem(exc)
                return None
            except fs.Unreadable as exc:
                self._problem(exc)  # an unreadable directory is kept, empty
                frame = (DirJob(), iter(()))
        if frame is not None:
            self.stats.dirs += 1
            job.children.append((node, frame[0]))
        elif node.type == FILE:
            futures = self._file_content(node, entry, old)
            if futures is None:
                return None
            if futures:
                job.pending.append((node, futures))
                job.track(futures)
            self.stats.files += 1
            self.stats.size += node.size
        job.nodes.append(node)
        return frame

    def _file_content(self, node: Node, entry: fs.Entry, old: Node | None) -> list[ChunkRef] | None:
        """References to the file's chunk ids, [] if content was reused, None if unreadable."""
        if node.link_key and node.link_key in self._links:
            shared = self._links[node.link_key]
            if shared and isinstance(shared[0], str):
                node.content = list(shared)  # type: ignore[arg-type]
                return []
            return list(shared)  # type: ignore[arg-type]
        if fs.unchanged(node, old) and old is not None and self._all_stored(old.content):
            node.content = list(old.content)
            self.stats.files_unchanged += 1
            if node.link_key:
                self._links[node.link_key] = list(old.content)
            return []
        try:
            futures = self._read_file(node, entry)
        except fs.Unreadable as exc:
            self._problem(exc)
            return None
        if node.link_key:
            self._links[node.link_key] = futures
        return futures

    def _all_stored(self, content: list[str]) -> bool:
        index = self.repo.index
        return all(bytes.fromhex(c) in index for c in content)

    def _read_file(self, node: Node, entry: fs.Entry) -> list[ChunkRef]:
        fd = fs.open_for_backup(entry.path)
        try:
            read = fs.reader(fd, entry.path)
            # ask for what stat promised (+1 to see growth): a 4 KiB file must not
            # cost a 256 KiB buffer, 200,000 times over
            want = min(SMALL_FILE, node.size + 1)
            first = read(want)
            if len(first) == want < SMALL_FILE:  # it grew since stat: read on
                first += read(SMALL_FILE - want)
                want = SMALL_FILE
            if len(first) < want:
                futures = [self.pipeline.add(first)] if first else []
                total = len(first)
            else:
                futures, total = self._submit_segments(fd, entry.path, first)
            if total != node.size or fs.changed_since(fd, entry.st):
                node.changed = True
                node.size = total
                self.stats.changed.append(os.fsdecode(entry.path))
        finally:
            os.close(fd)
        self.stats.files_read += 1
        if self.progress:
            self.progress(self.stats)
        return futures

    def _submit_segments(self, fd: int, path: bytes, first: bytes) -> tuple[list[ChunkRef], int]:
        """Segments of a large file; whole segments in a hole are not read.

        Segments are cut independently, so a segment of zeros always yields
        the same chunks: holes reuse one zero segment's result (same ids as
        reading the zeros, at the cost of an lseek).
        """
        chunker = self.pipeline.chunker_for(first)
        refs: list[ChunkRef] = []
        total = 0
        buf = self.pipeline.take_buffer()
        try:
            buf[:len(first)] = first
            with memoryview(buf) as view:
                length = len(first) + fs.read_into(fd, path, view[len(first):])
            while length:
                total += length
                refs.append(self.pipeline.add_buffer_segment(buf, length, chunker))
                buf = None
                if length < SEGMENT_BYTES:
                    break
                holes = fs.whole_holes(fd, total, SEGMENT_BYTES)
                if holes:
                    refs.extend([self._zero_segment(chunker)] * holes)
                    total += holes * SEGMENT_BYTES
                buf = self.pipeline.take_buffer()
                with memoryview(buf) as view:
                    length = fs.read_into(fd, path, view)
        finally:
            if buf is not None:
                self.pipeline.give_buffer(buf)
        return refs, total

    def _zero_segment(self, chunker: Chunker) -> ChunkRef:
        ref = self._zeros.get(chunker)
        if ref is None:
            ref = self._zeros[chunker] = self.pipeline.add_segment(bytes(SEGMENT_BYTES), chunker)
        return ref

    def _drain(self, block: bool) -> None:
        self.repo.checkpoint()
        if block:
            self.pipeline.submit_batch()
        while self._queue and (block or self._queue[0].ready()):
            self._finish(self._queue.popleft())

    def _finish(self, job: DirJob) -> None:
        for node, futures in job.pending:
            node.content = resolve(futures)
        for node, child in job.children:
            node.subtree = child.tree_id
        job.tree_id = store_tree(self.repo, job.nodes)
        job.pending.clear()
        job.children.clear()
        job.nodes = []

