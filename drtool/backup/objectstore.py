"""``drtool backup --source NAME`` for an object-store source: a bucket as a file tree.

The listing is streamed in key order, and keys sharing a prefix ``a/`` are
contiguous in it, so the tree is built with a stack of open directories
like a depth-first walk: a directory is finished as soon as the listing
moves past its prefix.  Memory is bounded by the deepest path and the
largest single directory, never by the number of objects.

Incremental by listing (like the file-tree walker's stat rule): an object
whose ETag, size and Last-Modified equal the parent snapshot's node, with
all its blobs stored, keeps the parent's content ids and metadata and is
not fetched.  Others are fetched by ``connections`` threads at once; at
most ``4 x connections`` fetches are in flight, and their bodies go
through the same chunk pipeline as files (bounded in bytes).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from drtool.backends.s3_source import FetchedObject, ListedObject, S3SourceClient
from drtool.backup.pipeline import SEGMENT_BYTES, ChunkPipeline, ChunkRef, resolve
from drtool.backup.run import (BackupResult, _backup_frame, _commit, _record_in_catalog, _snapshot,
                               check_labels)
from drtool.backup.treewalk import SMALL_FILE, WalkStats
from drtool.core.session import Session
from drtool.digests import new_hash
from drtool.errors import DrtoolError, SourceError, TransientBackendError
from drtool.repository.repo import Repository
from drtool.snapshot.model import DIR, Node
from drtool.snapshot.store import load_tree, store_tree
from drtool.sources import objectstore as obj

log = logging.getLogger("drtool")
WINDOW_PER_CONNECTION = 4
FETCH_ATTEMPTS = 3

ClientFactory = Callable[[obj.ObjectStoreSource], S3SourceClient]
# a GET's result: the object, its body (small) or chunk refs (large), its content_hash digest
Fetched = tuple[FetchedObject, bytes | list[ChunkRef], str | None]


def make_client(src: obj.ObjectStoreSource) -> S3SourceClient:
    """The S3 client, or for ``type = "swift"`` the native Swift one (the same interface)."""
    if src.type == "swift":
        from drtool.backends.swift_source import SwiftSourceClient  # python-swiftclient only when used
        assert src.auth_url is not None and src.user is not None
        return SwiftSourceClient(src.bucket, auth_url=src.auth_url, user=src.user,  # type: ignore[return-value]
                                 auth_version=src.auth_version, os_options=src.keystone,
                                 connections=src.connections)
    return S3SourceClient(src.endpoint, src.bucket, region=src.region, profile=src.profile,
                          connections=src.connections, addressing_style=src.addressing_style)


@dataclass
class OpenDir:
    """One directory of the tree being built; ``node`` is its entry in the parent (None: root)."""

    node: Node | None
    old_tree: str | None
    old: dict[str, Node]
    nodes: list[Node] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    fetches: int = 0  # files of this directory still being fetched
    pending: list[tuple[Node, list[ChunkRef]]] = field(default_factory=list)
    tree_id: str | None = None


@dataclass
class Fetch:
    directory: OpenDir
    listed: ListedObject
    name: str
    future: Future[Fetched | None]


class ObjectTreeBuilder:
    def __init__(self, repo: Repository, pipeline: ChunkPipeline, client: S3SourceClient,
                 prefix: str, listing: Callable[[str], Iterator[ListedObject]] | None = None,
                 content_hash: str | None = None) -> None:
        """``listing``: the objects to take, in key order (default: all under ``prefix``; a shard's
        worker passes its shard's listing, ``drtool.backup.shards``).  ``content_hash``: "sha256"
        or "sha1" of each fetched body is recorded (``drtool find --hash``); else the ETag."""
        self.repo, self.pipeline, self.client, self.prefix = repo, pipeline, client, prefix
        self.content_hash = content_hash
        self.listing = listing or client.iter_objects
        self.stats = WalkStats()
        self._pool = ThreadPoolExecutor(max_workers=client.connections, thread_name_prefix="get")
        self._window: deque[Fetch] = deque()
        self._window_max = client.connections * WINDOW_PER_CONNECTION
        self._closed: deque[OpenDir] = deque()  # post-order: children before their parents
        self._probe_lock = threading.Lock()

    def build(self, parent_tree: str | None) -> str:
        root = OpenDir(None, parent_tree, self._old_nodes(parent_tree))
        stack: list[tuple[str, OpenDir]] = [("", root)]
        last = ""
        try:
            for listed in self.listing(self.prefix):
                if listed.key <= last:
                    raise SourceError(f"the listing of {self._where(self.prefix)} is not in key order "
                                      f"({listed.key!r} after {last!r}); no snapshot was written",
                                      hint="the store must list keys in UTF-8 byte order, as S3 and Swift do")
                last = listed.key
                self._add(stack, listed)
            while len(stack) > 1:
                self._close(stack.pop()[1])
            self._close(root)
            while self._window:
                self._harvest(block=True)
            self._seal(block=True)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        assert root.tree_id is not None
        return root.tree_id

    def _where(self, key: str) -> str:
        return f"{self.client.scheme}://{self.client.bucket}/{key}"

    def _old_nodes(self, tree_id: str | None) -> dict[str, Node]:
        if not tree_id:
            return {}
        try:
            return {n.name: n for n in load_tree(self.repo, tree_id)}
        except DrtoolError:
            return {}  # a damaged parent only costs fetching again, never correctness

    def _add(self, stack: list[tuple[str, OpenDir]], listed: ListedObject) -> None:
        try:
            parts, marker = obj.key_parts(listed.key, self.prefix)
        except obj.KeyProblem as exc:
            self.stats.unreadable.append(f"{self._where(listed.key)}: key {exc}")
            return
        dirs = parts if marker else parts[:-1]
        depth = 0
        while depth < len(dirs) and depth + 1 < len(stack) and stack[depth + 1][0] == dirs[depth]:
            depth += 1
        while len(stack) > depth + 1:
            self._close(stack.pop()[1])
        for name in dirs[depth:]:
            opened = self._open_dir(stack[-1][1], name)
            if opened is None:
                self.stats.unreadable.append(f"{self._where(listed.key)}: '{name}' is "
                                             f"also an object; the key cannot be a path")
                return
            stack.append((name, opened))
        if marker:
            node = stack[-1][1].node
            if node is not None:  # the prefix's own marker is the root, which has no node
                node.xmeta = obj.marker_meta(listed.etag, listed.mtime_ns)
            return
        self._add_object(stack[-1][1], parts[-1], listed)
        self._harvest(block=False)
        self._seal(block=False)

    def _open_dir(self, parent: OpenDir, name: str) -> OpenDir | None:
        if name in parent.names:
            return None
        parent.names.add(name)
        node = obj.dir_node(name)
        parent.nodes.append(node)
        old = parent.old.get(name)
        old_tree = old.subtree if old is not None and old.type == DIR else None
        self.stats.dirs += 1
        return OpenDir(node, old_tree, self._old_nodes(old_tree))

    def _close(self, directory: OpenDir) -> None:
        self._closed.append(directory)
        self._seal(block=False)

    def _add_object(self, directory: OpenDir, name: str, listed: ListedObject) -> None:
        if name in directory.names:
            self.stats.unreadable.append(f"{self._where(listed.key)}: '{name}' is also "
                                         f"a directory; the key cannot be a path")
            return
        directory.names.add(name)
        self.stats.files += 1
        old = directory.old.get(name)
        if obj.unchanged(old, listed.size, listed.etag, listed.mtime_ns) and old is not None \
                and not obj.hash_missing(old, self.content_hash) and self.repo.index.has_all(old.content):
            node = Node.from_dict(old.to_dict())
            node.hash = node.hash or obj.etag_hash(listed.etag)  # a parent made before hashes were kept
            directory.nodes.append(node)
            self.stats.files_unchanged += 1
            self.stats.size += node.size
            return
        while len(self._window) >= self._window_max:
            self._harvest(block=True)
        directory.fetches += 1
        self._window.append(Fetch(directory, listed, name, self._pool.submit(self._fetch, listed.key)))

    def _fetch(self, key: str) -> Fetched | None:
        """GET with a few attempts: botocore retries failed requests, not bodies cut off mid-read.

        A large object's blobs from a failed attempt stay unreferenced
        (``prune`` removes them); the node only ever names a whole body.
        """
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                return self._fetch_once(key)
            except TransientBackendError:
                if attempt == FETCH_ATTEMPTS:
                    raise
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def _fetch_once(self, key: str) -> Fetched | None:
        """On a GET thread: the whole body of a small object, or chunk refs of a large one, and
        the body's ``content_hash`` digest (``"sha1:HEX"``) if the source records one."""
        fetched = self.client.open_object(key)
        if fetched is None:
            return None
        digest = new_hash(self.content_hash) if self.content_hash else None
        try:
            head = _read_exactly(fetched, min(SMALL_FILE, fetched.size + 1))
            if len(head) < SMALL_FILE:
                if len(head) != fetched.size:
                    raise TransientBackendError(f"reading object {key} gave {len(head)} of "
                                                f"{fetched.size} bytes")
                if digest is not None:
                    digest.update(head)
                return fetched, head, _digest_text(self.content_hash, digest)
            with self._probe_lock:
                chunker = self.pipeline.chunker_for(head)
            refs: list[ChunkRef] = []
            segment = head + _read_exactly(fetched, SEGMENT_BYTES - len(head))
            total = 0
            while segment:
                total += len(segment)
                if digest is not None:
                    digest.update(segment)
                refs.append(self.pipeline.add_segment(segment, chunker))
                if len(segment) < SEGMENT_BYTES:
                    break
                segment = _read_exactly(fetched, SEGMENT_BYTES)
            if total != fetched.size:
                raise TransientBackendError(f"reading object {key} gave {total} of {fetched.size} bytes")
            return fetched, refs, _digest_text(self.content_hash, digest)
        finally:
            fetched.close()

    def _harvest(self, block: bool) -> None:
        """Take finished fetches in listing order; small bodies go into the pipeline here (one thread)."""
        while self._window and (block or self._window[0].future.done()):
            fetch = self._window.popleft()
            fetch.directory.fetches -= 1
            try:
                result = fetch.future.result()
            except DrtoolError as exc:
                self.stats.unreadable.append(f"{self._where(fetch.listed.key)}: {exc.one_line()}")
                continue
            if result is None:
                self.stats.vanished.append(self._where(fetch.listed.key))
                log.warning("%s was deleted during the backup; not in this snapshot",
                            self._where(fetch.listed.key))
                continue
            fetched, body, digest = result
            refs = ([self.pipeline.add(body)] if body else []) if isinstance(body, bytes) else body
            size = len(body) if isinstance(body, bytes) else fetched.size
            # The listing's Last-Modified, which the next run compares with (a GET's header may be
            # rounded differently, as Swift's S3 API does); the GET's if the object was replaced.
            as_listed = fetched.etag == fetch.listed.etag
            node = obj.object_node(fetch.name, size, fetch.listed.mtime_ns if as_listed else fetched.mtime_ns,
                                   fetched.etag, fetched.content_type, fetched.metadata, digest)
            if not as_listed:
                self.stats.changed.append(f"{self._where(fetch.listed.key)}")
            fetch.directory.nodes.append(node)
            if refs:
                fetch.directory.pending.append((node, refs))
            self.stats.files_read += 1
            self.stats.size += size
            if block:
                return

    def _seal(self, block: bool) -> None:
        """Store closed directories whose fetches are all in (children first)."""
        self.repo.checkpoint()
        while self._closed and (self._closed[0].fetches == 0 or block):
            directory = self._closed[0]
            while directory.fetches:
                self._harvest(block=True)
            if not block and not all(b.done() for _n, refs in directory.pending for b, _i in refs):
                self.pipeline.submit_batch()
                return
            self.pipeline.submit_batch()
            self._closed.popleft()
            for node, refs in directory.pending:
                node.content = resolve(refs)
            nodes = sorted(directory.nodes, key=lambda n: n.name)
            same = directory.old_tree and [n.to_dict() for n in nodes] == \
                [directory.old[k].to_dict() for k in sorted(directory.old)]
            directory.tree_id = directory.old_tree if same else store_tree(self.repo, nodes)
            if directory.node is not None:
                directory.node.subtree = directory.tree_id
            directory.nodes, directory.pending, directory.old = [], [], {}


def _digest_text(content_hash: str | None, digest: Any) -> str | None:
    return f"{content_hash}:{digest.hexdigest()}" if digest is not None else None


def _read_exactly(fetched: FetchedObject, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the body)."""
    parts, got = [], 0
    while got < size:
        piece = fetched.read(size - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def backup_object_store(session: Session, src: obj.ObjectStoreSource, tags: list[str] | None = None,
                        client_factory: ClientFactory = make_client,
                        clock: Callable[[], datetime] | None = None) -> BackupResult:
    """One snapshot named after the source: the objects under its prefix as a file tree."""
    check_labels(session, src.name, tags)
    started = time.monotonic()
    when = clock() if clock else datetime.now(timezone.utc)
    client = client_factory(src)
    try:
        client.check_bucket()
        with _backup_frame(session, src.name) as (lock, parent, pipeline):
            builder = ObjectTreeBuilder(session.repo, pipeline, client, src.prefix,
                                        content_hash=src.content_hash)
            tree_id = builder.build(parent.tree if parent else None)
            meta: dict[str, Any] = {"source": src.name, "source_type": src.type, "bucket": src.bucket,
                                    "prefix": src.prefix, "endpoint": src.endpoint or "",
                                    "requests": client.stats.as_dict()}
            snap = _snapshot(session, src.name, when, tree_id, "objects", parent, tags, builder.stats,
                             started, paths=[src.url], meta=meta)
            _commit(session, lock, snap)
    finally:
        client.close()
    _record_in_catalog(session, snap)
    requests = session.repo.backend.stats.as_dict()
    requests.update({f"source_{k}": v for k, v in client.stats.as_dict().items()})
    return BackupResult(snap, builder.stats.unreadable, builder.stats.changed, requests,
                        builder.stats.vanished)

