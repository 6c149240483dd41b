"""Restore an object-store snapshot into a bucket: ``restore --source NAME --to-bucket s3://b/prefix``.

The snapshot's files are objects again: path -> key under the destination
prefix, with the content type and user metadata kept in each node's
``xmeta`` (folder markers come back as zero-byte ``dir/`` keys).  Blobs are
read and authenticated in listing order on this thread (the repository's
group cache is not shared between threads); uploads of small objects run
on ``connections`` threads with a bounded window, large ones (> 8 MiB) are
streamed without being held whole.  A restore into a directory is the
ordinary file restore (objects are files there).
"""
from __future__ import annotations

import io
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlparse

from drtool.backends.s3_source import S3SourceClient
from drtool.core.session import Session
from drtool.errors import DrtoolError, UsageError
from drtool.restore.run import normalize_includes, selected
from drtool.snapshot.model import DIR, FILE, Node, Snapshot
from drtool.snapshot.store import StreamReader, walk_tree

BUFFERED_OBJECT = 8 * 1024 * 1024  # larger objects are streamed on this thread
WINDOW_PER_CONNECTION = 2


@dataclass
class BucketRestoreResult:
    snapshot: Snapshot
    url: str
    objects: int = 0
    bytes: int = 0
    markers: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot.id, "to_bucket": self.url, "objects": self.objects,
                "bytes": self.bytes, "folder_markers": self.markers, "failed": self.failed}


def parse_bucket_url(url: str, scheme: str = "s3") -> tuple[str, str]:
    """``s3://bucket/prefix`` (``swift://container/prefix``) -> (bucket, "prefix/"); the prefix may be empty."""
    parsed = urlparse(url)
    if parsed.scheme != scheme or not parsed.netloc or parsed.query or parsed.fragment:
        raise UsageError(f"--to-bucket {url!r} is not an {scheme}://BUCKET[/PREFIX] URL",
                         hint=f"e.g. --to-bucket {scheme}://media-restored/2024")
    prefix = parsed.path.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise UsageError(f"--to-bucket {url!r}: the prefix has an empty, '.' or '..' part")
    return parsed.netloc, f"{prefix}/" if prefix else ""


def _blob_stream(session: Session, node: Node) -> Iterator[bytes]:
    for blob_id in node.content:
        yield session.repo.read_blob(bytes.fromhex(blob_id))


def restore_to_bucket(session: Session, snap: Snapshot, client: S3SourceClient, prefix: str,
                      includes: list[str]) -> BucketRestoreResult:
    """Put every selected file of ``snap`` as an object under ``prefix`` of the client's bucket."""
    client.check_bucket()
    with session.lock("restore", read_only_ok=True):
        session.repo.load_index()
        return _restore_locked(session, snap, client, prefix, includes)


def _restore_locked(session: Session, snap: Snapshot, client: S3SourceClient, prefix: str,
                    includes: list[str]) -> BucketRestoreResult:
    result = BucketRestoreResult(snap, f"{client.scheme}://{client.bucket}/{prefix}")
    wanted = normalize_includes(session.repo, snap, includes)
    window: deque[tuple[str, Future[None]]] = deque()
    limit = client.connections * WINDOW_PER_CONNECTION
    pool = ThreadPoolExecutor(max_workers=client.connections, thread_name_prefix="put")
    try:
        for path, node in walk_tree(session.repo, snap.tree):
            if not selected(path, wanted) or not _wanted_here(path, node, wanted):
                continue
            if node.type == DIR and node.xmeta and node.xmeta.get("marker"):
                window.append((path, pool.submit(client.put_object, f"{prefix}{path}/", io.BytesIO(b""),
                                                 None, {})))
                result.markers += 1
            elif node.type == FILE:
                _put_file(session, client, prefix, path, node, pool, window)
                result.objects += 1
                result.bytes += node.size
            while len(window) > limit:
                _collect(window.popleft(), result)
        while window:
            _collect(window.popleft(), result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return result


def _wanted_here(path: str, node: Node, wanted: list[str]) -> bool:
    """``selected`` also passes the directories leading to an include; only entries inside count."""
    return not wanted or any(path == inc or path.startswith(inc + "/") for inc in wanted)


def _put_file(session: Session, client: S3SourceClient, prefix: str, path: str, node: Node,
              pool: ThreadPoolExecutor, window: deque[tuple[str, Future[None]]]) -> None:
    meta = node.xmeta or {}
    content_type = meta.get("content_type") or None
    user = {str(k): str(v) for k, v in (meta.get("user") or {}).items()}
    key = f"{prefix}{path}"
    if node.size > BUFFERED_OBJECT:
        done: Future[None] = Future()
        try:
            client.put_object(key, StreamReader(_blob_stream(session, node)), content_type, user)
            done.set_result(None)
        except DrtoolError as exc:
            done.set_exception(exc)
        window.append((path, done))
        return
    body = b"".join(_blob_stream(session, node))
    window.append((path, pool.submit(client.put_object, key, io.BytesIO(body), content_type, user)))


def _collect(item: tuple[str, Future[None]], result: BucketRestoreResult) -> None:
    path, future = item
    try:
        future.result()
    except DrtoolError as exc:
        result.failed.append(f"{path}: {exc.one_line()}")
