"""Walk source trees into tree blobs without waiting on the worker pool.

Directories are finished in post-order from a queue: a directory is sealed
as soon as all its files' chunk futures are done, so the walking thread
keeps feeding workers instead of draining the pipeline at every directory.
Unchanged files (size, mtime, ctime, inode equal to the parent snapshot's
node, all blobs present) are taken over without being read.
Small files are read on reader threads and directories listed ahead on
scan threads (``readers``); their results come back in walk order, so the
snapshot does not depend on how many threads read it.

The walk keeps its own stack instead of recursing, so a tree may be as deep
as paths allow (PATH_MAX), not as deep as Python's recursion limit.  Entries
that vanish while the backup runs are left out with a warning (the snapshot
shows the tree as found); entries that cannot be read make the run exit 3.
"""
from __future__ import annotations

import logging
import os
import stat
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable, Iterator

from drtool.digests import CONTENT_HASHES, new_hash
from drtool.errors import DrtoolError, SourceError
from drtool.backup.listings import listing_digest, nodes_digest
from drtool.backup.pipeline import SEGMENT_BYTES, Batch, ChunkPipeline, ChunkRef, resolve
from drtool.backup.readers import SMALL_FILE, FileRead, ReadAhead, Reading, ScanAhead
from drtool.browse.trees import WalkedChanges, level_changes
from drtool.repository.chunker import Chunker
from drtool.repository.repo import Repository
from drtool.snapshot.model import DIR, FILE, Node
from drtool.snapshot.store import load_tree, store_tree
from drtool.sources import files as fs

WALKED_CHANGES = 20_000  # changes kept for the file index; beyond that it compares the trees itself
log = logging.getLogger("drtool")


@dataclass
class WalkStats:
    files: int = 0
    dirs: int = 0
    size: int = 0
    files_read: int = 0
    files_unchanged: int = 0
    files_known_present: int = 0  # unchanged files taken over on the parent's completeness mark
    dirs_listed_as_before: int = 0  # directories taken over whole on their listing (listings)
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
    path: str = ""  # in the snapshot ('/'-separated, '' for the root)
    old_tree: str | None = None  # this directory's tree in the parent snapshot
    old_nodes: list[Node] = field(default_factory=list)
    reads: int = 0  # small files of this directory queued on the readers, not yet taken back
    subdirs: deque[tuple[bytes, str | None]] = field(default_factory=deque)  # not yet listed ahead
    listing_known: bool = False  # its listing's digest is recorded for ``old_tree`` (taken over whole)

    def track(self, refs: list[ChunkRef]) -> None:
        """Remember each distinct batch once (a 660 MiB dump has 40k refs but ~700 batches)."""
        last = self.batches[-1] if self.batches else None
        for batch, _index in refs:
            if batch is not last:
                self.batches.append(batch)
                last = batch

    def ready(self) -> bool:
        """Amortised O(1): finished batches are dropped from the front."""
        if self.reads:
            return False
        while self.batches and self.batches[0].done():
            self.batches.popleft()
        return not self.batches


ProgressFn = Callable[[WalkStats], None]
Frame = tuple[DirJob, Iterator[tuple[fs.Entry, Node | None]]]
QueuedRead = tuple[DirJob, Node, fs.Entry]
DEFERRED: list[ChunkRef] = []  # the file's read is queued: its chunk references come later
REUSED: list[Node] = []  # a directory's listing is the one its parent tree was built from (listings)


class TreeWalker:
    def __init__(self, repo: Repository, pipeline: ChunkPipeline,
                 progress: ProgressFn | None = None, content_hash: str | None = None,
                 reading: Reading | None = None) -> None:
        """``content_hash``: also record each file's sha256/sha1 (for ``drtool find --hash``),
        computed from the buffers read anyway (hashlib drops the GIL).  ``reading``: how many
        small files are read at once, and through what (default: 2 reader threads; 1 reads
        each file on the walking thread when the walk reaches it)."""
        if content_hash is not None and content_hash not in CONTENT_HASHES:
            raise ValueError(f"unknown content hash {content_hash!r}")
        self.content_hash = content_hash
        self._link_hashes: dict[str, str | None] = {}
        self.repo = repo
        self.pipeline = pipeline
        self.stats = WalkStats()
        self.progress = progress
        self._queue: deque[DirJob] = deque()
        self._links: dict[str, list[ChunkRef] | list[str]] = {}
        self._zeros: dict[Chunker, ChunkRef] = {}
        self._scratch = memoryview(bytearray(SMALL_FILE))  # small files and the head of large ones
        # What changed against the parent, for the file index (``browse.trees.WalkedChanges``);
        # None once it would exceed WALKED_CHANGES (a first backup of many files) or a
        # parent tree could not be read: the index then compares the trees itself.
        self.walked: WalkedChanges | None = None
        self.reading = reading or Reading()
        self.ops = self.reading.ops
        self.parent_complete = False
        self._whole_dirs = False  # directories may be taken over whole on their listing (listings)
        # tree id -> digest of the listing it was built from, for the index cache (listings)
        self.listings: dict[str, bytes] = {}
        self._reads: ReadAhead[QueuedRead] | None = None
        self._scans: ScanAhead | None = None
        if self.reading.readers > 1:
            self._reads = ReadAhead(self.reading, self._took, content_hash)
            self._scans = ScanAhead(self.reading.scanners, self._old_for, self.ops)

    def close(self) -> None:
        """Stop the reader and scanner threads (idle once a walk is over)."""
        if self._reads is not None:
            self._reads.close()
        if self._scans is not None:
            self._scans.close()

    def backup_roots(self, roots: list[str], parent_tree: str | None, parent_complete: bool = False) -> str:
        """Store the given paths as one root tree; return its id.

        ``parent_complete``: the index holds every blob of ``parent_tree``
        (``repository.completeness``), so an unchanged file's blobs are not
        looked up one by one before it is taken over.
        """
        self.parent_complete = parent_complete and parent_tree is not None
        self._whole_dirs = self.parent_complete and self.content_hash is None
        self.walked = WalkedChanges(parent_tree)
        root = DirJob(old_tree=parent_tree, old_nodes=self._old_nodes(parent_tree))
        old_root = {n.name: n for n in root.old_nodes}
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
            self._root_still_there(path, st)
        self._queue.append(root)
        self._drain(block=True)
        assert root.tree_id is not None
        if self.walked is not None:
            self.walked.tree = root.tree_id
        return root.tree_id

    def _root_still_there(self, path: bytes, before: os.stat_result) -> None:
        """A backup path deleted (or unmounted, or replaced) while it was walked is no snapshot.

        Entries vanishing under a live tree are normal and only warned
        about; the root itself vanishing means what was walked is a fragment
        of a tree that no longer exists (an ``rm -rf`` racing the backup: 7
        of ~3,060 files), and committing it would look like success.
        """
        try:
            now = os.lstat(path)
            gone = (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)
        except OSError:
            gone = True
        if gone:
            raise SourceError(f"backup path {os.fsdecode(path)} vanished during the backup (deleted, "
                              f"unmounted or replaced; {len(self.stats.vanished)} entries vanished with it); "
                              f"no snapshot was written",
                              hint="re-run once the path is back")

    def _old_nodes(self, tree_id: str | None) -> list[Node]:
        if not tree_id:
            return []
        try:
            return load_tree(self.repo, tree_id)
        except DrtoolError:
            self.walked = None  # [] is not what the tree holds: the index must not take it as such
            return []  # a damaged parent only costs re-reading, never correctness

    def _old_for(self, tree_id: str | None, entries: list[fs.Entry]) -> list[Node]:
        """The parent's nodes for a directory just listed, or REUSED when the listing is the
        one ``tree_id`` was built from (``listings``): then nothing of it is read.  Runs on the
        scan threads."""
        if self._whole_dirs and tree_id:
            known = self.repo.index.listing_digest(tree_id)
            if known is not None and known == listing_digest(entries):
                return REUSED
        return self._old_nodes(tree_id)

    def _problem(self, exc: fs.Unreadable) -> None:
        if isinstance(exc, fs.Vanished):
            self.stats.vanished.append(str(exc))
            log.warning("%s; not in this snapshot", exc)
        else:
            self.stats.unreadable.append(str(exc))

    def _scan(self, path: bytes, old_tree: str | None) -> Frame:
        """Read one directory; raises Unreadable (Vanished) if it cannot be listed."""
        if self._scans is None:
            entries, problems = self.ops.scan(path)
            old_nodes = self._old_for(old_tree, entries)
        else:
            entries, problems, old_nodes = self._scans.scan(path, old_tree)
        for problem in problems:
            self._problem(problem)
        if old_nodes is REUSED:  # regular files only, each as the parent recorded it
            stats = self.stats
            stats.files += len(entries)
            stats.files_unchanged += len(entries)
            stats.files_known_present += len(entries)
            stats.size += sum(entry.st.st_size for entry in entries)
            stats.dirs_listed_as_before += 1
            return DirJob(old_tree=old_tree, listing_known=True), iter(())
        job = DirJob(old_tree=old_tree, old_nodes=old_nodes)
        old = {n.name: n for n in job.old_nodes}
        if self._scans is not None:
            job.subdirs.extend((e.path, _subtree(old.get(e.name)))
                               for e in entries if stat.S_ISDIR(e.st.st_mode))
            for _ in range(min(ScanAhead.AHEAD, len(job.subdirs))):
                self._scans.ahead(*job.subdirs.popleft())
        return job, ((entry, old.get(entry.name)) for entry in entries)

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
                if job.subdirs and self._scans is not None:  # entered one: list one more ahead
                    self._scans.ahead(*job.subdirs.popleft())
                stack.append(frame)

    def _add_entry(self, job: DirJob, entry: fs.Entry, old: Node | None) -> Frame | None:
        """Record one entry in ``job``; for a directory return its frame to walk next."""
        if old is not None and fs.unchanged_as_is(old, entry.st) and self._reusable(old):
            job.nodes.append(old)
            self.stats.files += 1
            self.stats.files_unchanged += 1
            self.stats.size += old.size
            return None
        try:
            node = fs.node_from_stat(entry.name, entry.path, entry.st)
        except fs.Unreadable as exc:
            self._problem(exc)
            return None
        frame: Frame | None = None
        if node.type == DIR:
            try:
                frame = self._scan(entry.path, _subtree(old))
            except fs.Vanished as exc:
                self._problem(exc)
                return None
            except fs.Unreadable as exc:
                self._problem(exc)  # an unreadable directory is kept, empty
                frame = (DirJob(), iter(()))
        if frame is not None:
            self.stats.dirs += 1
            frame[0].path = f"{job.path}/{node.name}" if job.path else node.name
            job.children.append((node, frame[0]))
        elif node.type == FILE:
            futures = self._file_content(job, node, entry, old)
            if futures is None:
                return None
            if futures is DEFERRED:
                job.nodes.append(node)  # counted when its read is taken back (_took)
                return None
            if futures:
                job.pending.append((node, futures))
                job.track(futures)
            self.stats.files += 1
            self.stats.size += node.size
        job.nodes.append(node)
        return frame

    def _file_content(self, job: DirJob, node: Node, entry: fs.Entry,
                      old: Node | None) -> list[ChunkRef] | None:
        """References to the file's chunk ids, [] if content was reused, None if unreadable,
        DEFERRED if a reader thread reads it (hard links are read here: later links need the refs)."""
        if node.link_key and node.link_key in self._links:
            shared = self._links[node.link_key]
            node.hash = self._link_hashes.get(node.link_key)
            if shared and isinstance(shared[0], str):
                node.content = list(shared)  # type: ignore[arg-type]
                return []
            return list(shared)  # type: ignore[arg-type]
        if fs.unchanged(node, old) and old is not None and self._reusable(old):
            node.content = list(old.content)
            node.hash = old.hash
            self.stats.files_unchanged += 1
            if node.link_key:
                self._links[node.link_key] = list(old.content)
            return []
        if self._reads is not None and node.size < SMALL_FILE and not node.link_key:
            job.reads += 1
            self._reads.add((job, node, entry), entry.path, entry.st)
            return DEFERRED
        try:
            futures = self._read_file(node, entry)
        except fs.Unreadable as exc:
            self._problem(exc)
            return None
        if node.link_key:
            self._links[node.link_key] = futures
            self._link_hashes[node.link_key] = node.hash
        return futures

    def _reusable(self, old: Node) -> bool:
        """The parent's content of an unchanged file may be taken over without reading it:
        its blobs are indexed (known for the whole parent tree, or looked up)."""
        if not self._hash_known(old):
            return False
        if self.parent_complete:
            self.stats.files_known_present += 1
            return True
        return self._all_stored(old.content)

    def _hash_known(self, old: Node) -> bool:
        """An unchanged file is read once more if its hash is asked for and not yet recorded."""
        return self.content_hash is None or (old.hash or "").startswith(self.content_hash + ":")

    def _all_stored(self, content: list[str]) -> bool:
        return self.repo.index.has_all(content)

    def _read_file(self, node: Node, entry: fs.Entry) -> list[ChunkRef]:
        # A small file is read at most SMALL_FILE bytes before its one fstat
        # (changed_since) shows whether it still is a regular file; anything
        # read further is checked first.
        small = node.size < SMALL_FILE
        fd = self.ops.open(entry.path, not small)
        digest = new_hash(self.content_hash) if self.content_hash else None
        try:
            futures, total = self._read_content(fd, entry.path, node.size, small, digest)
            changed = fs.changed_since(fd, entry.path, entry.st)  # first: it raises if not regular
            if changed or total != node.size:
                node.changed = True
                node.size = total
                self.stats.changed.append(os.fsdecode(entry.path))
        finally:
            self.ops.close(fd)
        if digest is not None:
            node.hash = f"{self.content_hash}:{digest.hexdigest()}"
        self.stats.files_read += 1
        if self.progress:
            self.progress(self.stats)
        return futures

    def _read_content(self, fd: int, path: bytes, size: int, small: bool,
                      digest: Any = None) -> tuple[list[ChunkRef], int]:
        """Chunk references and bytes read; small files in one read into one reused buffer."""
        want = min(SMALL_FILE, size + 1)  # what stat promised, +1 to see growth
        try:
            got = fs.read_some(fd, path, self._scratch[:want])
            if got == want < SMALL_FILE:  # it grew since stat: read on
                got += fs.read_some(fd, path, self._scratch[want:])
                want = SMALL_FILE
        except fs.Unreadable:
            if small:  # reading a FIFO, device or directory that took the name fails: vanished
                fs.ensure_regular(fd, path)
            raise
        if got < want:
            if digest is not None:
                digest.update(self._scratch[:got])
            return ([self.pipeline.add(self._scratch[:got])] if got else []), got
        if small:
            fs.ensure_regular(fd, path)  # before reading on without bound
        return self._submit_segments(fd, path, self._scratch[:got], digest, size)

    def _submit_segments(self, fd: int, path: bytes, first: memoryview, digest: Any = None,
                         size: int | None = None) -> tuple[list[ChunkRef], int]:
        """Segments of a large file; whole segments in a hole are not read.

        Segments are cut independently, so a segment of zeros always yields
        the same chunks: holes reuse one zero segment's result (same ids as
        reading the zeros, at the cost of an lseek).
        """
        chunker = self.pipeline.chunker_for(first, size)
        refs: list[ChunkRef] = []
        total = 0
        buf = self.pipeline.take_buffer()
        try:
            buf[:len(first)] = first
            with memoryview(buf) as view:
                length = len(first) + fs.read_into(fd, path, view[len(first):])
            while length:
                total += length
                if digest is not None:  # before the buffer is handed to a worker
                    with memoryview(buf) as view:
                        digest.update(view[:length])
                refs.append(self.pipeline.add_buffer_segment(buf, length, chunker))
                buf = None
                if length < SEGMENT_BYTES:
                    break
                holes = fs.whole_holes(fd, total, SEGMENT_BYTES)
                if holes:
                    refs.extend([self._zero_segment(chunker)] * holes)
                    for _ in range(holes if digest is not None else 0):
                        digest.update(_zeros())
                    total += holes * SEGMENT_BYTES
                buf = self.pipeline.take_buffer()
                with memoryview(buf) as view:
                    length = fs.read_into(fd, path, view)
        finally:
            if buf is not None:
                self.pipeline.give_buffer(buf)
            if chunker is self.pipeline.text_chunker:
                self.pipeline.end_of_text_file()
        return refs, total

    def _zero_segment(self, chunker: Chunker) -> ChunkRef:
        ref = self._zeros.get(chunker)
        if ref is None:
            ref = self._zeros[chunker] = self.pipeline.add_segment(bytes(SEGMENT_BYTES), chunker)
        return ref

    def _took(self, item: QueuedRead, read: FileRead, data: memoryview) -> None:
        """A small file's read, taken back in walk order: into the pipeline, or reported."""
        job, node, entry = item
        job.reads -= 1
        if read.grew:  # grew past its lstat size: read it here, following the growth
            try:
                futures = self._read_file(node, entry)
            except fs.Unreadable as exc:
                self._problem(exc)
                _drop(job.nodes, node)
                return
        elif read.error is not None:
            self._problem(read.error)
            _drop(job.nodes, node)
            return
        else:
            futures = [self.pipeline.add(data)] if len(data) else []
            node.hash = read.hash
            if read.changed:
                node.changed = True
                node.size = len(data)
                self.stats.changed.append(os.fsdecode(entry.path))
            self.stats.files_read += 1
            if self.progress:
                self.progress(self.stats)
        if futures:
            job.pending.append((node, futures))
            job.track(futures)
        self.stats.files += 1
        self.stats.size += node.size

    def _drain(self, block: bool) -> None:
        self.repo.checkpoint()
        if self._reads is not None:
            if block:
                self._reads.take_all()
            else:
                self._reads.take_done()
        if block:
            self.pipeline.submit_batch()
            self.pipeline.reading_done()
        while self._queue and (block or self._queue[0].ready()):
            self._finish(self._queue.popleft())

    def _finish(self, job: DirJob) -> None:
        for node, futures in job.pending:
            node.content = resolve(futures)
        for node, child in job.children:
            node.subtree = child.tree_id
        job.tree_id = self._unchanged_tree(job) or store_tree(self.repo, job.nodes)
        if job.tree_id != job.old_tree and self.walked is not None:
            self._walked_changes(job, self.walked)
        if not job.listing_known and job.tree_id not in self.listings:
            digest = nodes_digest(job.nodes)
            if digest is not None:
                self.listings[job.tree_id] = digest
        job.pending.clear()
        job.children.clear()
        job.subdirs.clear()
        job.nodes = job.old_nodes = []

    def _walked_changes(self, job: DirJob, walked: WalkedChanges) -> None:
        """This directory's changes against the parent's (the comparison ``tree_changes`` makes).

        Subdirectories that changed were compared when they were finished
        (post-order, against the parent's tree of the same name); one that is
        gone, is no longer a directory, or could not be read (walked empty,
        without its old tree) has its old tree read by the index instead.
        """
        changes, below = level_changes(job.path, job.old_nodes, job.nodes, with_hashes=True)
        walked.changes.extend(changes)
        walked_from = {node.name: child.old_tree for node, child in job.children}
        for path, old_sub, new_sub in below:
            if old_sub is not None and (new_sub is None or walked_from.get(path.rsplit("/", 1)[-1]) != old_sub):
                walked.removed.append((path, old_sub))
        if len(walked.changes) > WALKED_CHANGES:
            self.walked = None

    def _unchanged_tree(self, job: DirJob) -> str | None:
        """The parent snapshot's tree id when every entry is as it was: nothing to encode.

        Equal nodes encode to equal bytes, so the id is the same either way;
        re-encoding every tree was ~20 % of the walking thread on the
        unchanged 200,000-file re-run (py-spy: ``json`` encoder, ``to_dict``).
        The old tree was just read through the index, so it is stored.
        """
        if job.old_tree is None or len(job.old_nodes) != len(job.nodes):
            return None
        if sorted(job.nodes, key=lambda n: n.name) != job.old_nodes:
            return None
        return job.old_tree



def _subtree(old: Node | None) -> str | None:
    return old.subtree if old is not None and old.type == DIR else None


def _drop(nodes: list[Node], node: Node) -> None:
    """Remove ``node`` itself (not an equal one) from its directory; it is near the end."""
    for i in range(len(nodes) - 1, -1, -1):
        if nodes[i] is node:
            del nodes[i]
            return


@cache
def _zeros() -> bytes:
    """One segment of zeros, for hashing the holes of sparse files that are not read."""
    return bytes(SEGMENT_BYTES)
