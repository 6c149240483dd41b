"""``drtool dump``: one file as it is, a directory as a tar stream, a dump snapshot as the dump.

Nothing touches the disk: ``drtool dump latest --name db/wiki | mariadb wiki``
loads a dump without a temporary copy.  Every blob is authenticated before a
byte of it is written (``Repository.read_blobs``), so a damaged blob stops the
stream with an error instead of passing on wrong data.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import BinaryIO, Iterator

from drtool.browse.listing import resolve
from drtool.browse.trees import normal_path
from drtool.repository.repo import Repository
from drtool.snapshot.model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node, Snapshot
from drtool.snapshot.store import load_tree_checked, walk_tree
from drtool.snapshot.streamread import read_blobs_windowed
from drtool.errors import DrtoolError

BLOBS_PER_READ = 64   # blob ids located and fetched together (ranged reads merge neighbours)
WINDOWED_BYTES = 8 << 20  # files this big are read by the stream reader's worker pool

_TAR_TYPES = {DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE, FIFO: tarfile.FIFOTYPE,
              CHARDEV: tarfile.CHRTYPE, BLOCKDEV: tarfile.BLKTYPE, FILE: tarfile.REGTYPE}


def file_chunks(repo: Repository, node: Node) -> Iterator[memoryview]:
    """A file's content, blob by blob, verified."""
    ids = [bytes.fromhex(c) for c in node.content]
    for start in range(0, len(ids), BLOBS_PER_READ):
        yield from repo.read_blobs(ids[start:start + BLOBS_PER_READ])


def is_stream(snap: Snapshot) -> bool:
    return snap.kind != "files"


def dump(repo: Repository, snap: Snapshot, path: str | None, out: BinaryIO) -> int:
    """Write ``path`` of ``snap`` to ``out``; return the bytes of file data written.

    ``path`` None: a stream snapshot's single file (its dump), or a files
    snapshot as a tar stream of everything.
    """
    if isinstance(out, io.RawIOBase):  # tarfile, like most writers, ignores short write counts
        out = io.BufferedWriter(out, buffer_size=1 << 20)  # type: ignore[assignment]
    if path is None and is_stream(snap):
        nodes = list(_top_files(repo, snap))
        if len(nodes) != 1:
            raise DrtoolError(f"snapshot {snap.short_id} holds {len(nodes)} files, not one dump",
                              hint="name the file: drtool dump SNAPSHOT PATH")
        node, base = nodes[0], nodes[0].name
    else:
        base = normal_path(path or "")
        node = resolve(repo, snap, base)
    if node.type == FILE:
        written = 0
        # A big file (a dump, a media master) is read by the stream reader's worker pool, as a
        # restore of it would be; small ones blob by blob (a pool per file costs more than it saves).
        chunks = (read_blobs_windowed(repo, [bytes.fromhex(c) for c in node.content])
                  if node.size >= WINDOWED_BYTES else file_chunks(repo, node))
        for chunk in chunks:
            write_all(out, chunk)
            written += len(chunk)
        out.flush()
        return written
    return _tar(repo, node, base, out)


def write_all(out: BinaryIO, data: memoryview | bytes) -> None:
    """Write all of ``data``: an unbuffered stream (``sys.stdout.buffer`` under
    ``PYTHONUNBUFFERED=1`` or ``python -u``, as systemd units and containers often set) is a raw
    ``FileIO`` whose ``write`` makes one system call and may take only part of it -- a pipe
    whose reader is slow or gone.  Ignoring the count would drop the rest and exit 0."""
    view = memoryview(data).cast("B")
    while len(view):
        count = out.write(view)
        if count is None:  # a non-blocking stream that is full: not what dump is given
            raise BlockingIOError(0, "the output stream would block")
        view = view[count:]


def _top_files(repo: Repository, snap: Snapshot) -> Iterator[Node]:
    return (n for n in load_tree_checked(repo, snap.tree) if n.type == FILE)


def _tar(repo: Repository, top: Node, base: str, out: BinaryIO) -> int:
    """A POSIX (pax) tar stream of ``top`` and everything below it; names relative to its parent."""
    written = 0
    strip = base.rsplit("/", 1)[0] + "/" if "/" in base else ""
    entries: Iterator[tuple[str, Node]] = iter([(base, top)] if base else [])
    below = walk_tree(repo, top.subtree, base) if top.type == DIR and top.subtree else iter(())
    links: dict[str, str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for path, node in (*entries, *below):
            info = _info(path[len(strip):], node)
            if node.type == FILE and node.link_key:
                first = links.setdefault(node.link_key, info.name)
                if first != info.name:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
            if info.type == tarfile.REGTYPE:
                archive.addfile(info, _Reader(file_chunks(repo, node)))
                written += node.size
            else:
                archive.addfile(info)
    out.flush()
    return written


def _info(name: str, node: Node) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name + ("/" if node.type == DIR else ""))
    if node.type not in _TAR_TYPES:
        raise DrtoolError(f"{name}: a {node.type} cannot be put into a tar stream",
                          hint="restore it with 'drtool restore --include' instead")
    info.type = _TAR_TYPES[node.type]
    info.mode, info.uid, info.gid = node.mode, node.uid, node.gid
    info.mtime = node.mtime_ns / 1e9
    info.size = node.size if node.type == FILE else 0
    if node.type == SYMLINK:
        info.linkname = node.target or ""
    if node.type in (CHARDEV, BLOCKDEV):
        info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
    return info


class _Reader(io.RawIOBase):
    """Blobs as a sequential file object for ``tarfile.addfile``."""

    def __init__(self, chunks: Iterator[memoryview]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not len(self._buf):
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
