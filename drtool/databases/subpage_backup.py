"""mariabackup's stream on its way into the repository: fingerprinted (full), delta pages cut to blocks.

:func:`rewritten_stream` puts one of two readers between mariabackup's
stdout and the backup's reader: :class:`FullPassage` for a full,
:class:`SubpageStream` for an incremental.  Every chunk passes through as it
came except:

* in a full, tablespace files (``*.ibd``, ``ibdataN``, ``undoN``) are
  fingerprinted into tonight's block map on their way past;
* in an incremental, each ``X.delta`` becomes ``X.delta.drtool-subpage``
  (:mod:`drtool.databases.subpage_format`): pages whose previous version the
  map knows are stored as their changed 512-byte blocks; the map learns the
  new pages' fingerprints.  ``xtrabackup_checkpoints`` is renamed too, so a
  drtool from before sub-page members fails ``--prepare`` loudly (no
  checkpoints) instead of applying an incremental without its pages.

A ``.delta`` that cannot be cut (its ``.meta`` did not come first, or a
ROW_FORMAT=COMPRESSED table) is stored as it came and dropped from the map,
so the next night stores that file's pages whole.
"""
from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

from drtool.databases import innodb_delta as delta
from drtool.databases import subpage_format as fmt
from drtool.databases.blockmap import BlockMap, BlockMapStore
from drtool.errors import SourceError
from drtool.sources import mbstream
from drtool.sources.mbstream import Chunk

log = logging.getLogger("drtool")
TABLESPACE = re.compile(rb"(?:^|/)(?:ibdata\d+|undo\d+)$|\.ibd$")
CHECKPOINTS = b"xtrabackup_checkpoints"
# A full's stream is cut where its files are: at the header of every payload of this size or more
# and at each multiple of it in the file the payload is from (``FullPassage.boundaries``).
PIECE = 1024 * 1024


@dataclass
class SubpageStats:
    """What a night's rewrite did; recorded in the snapshot's meta (``subpage``)."""

    pages: int = 0
    pages_as_blocks: int = 0
    delta_bytes: int = 0
    stored_bytes: int = 0
    files_as_came: list[str] = field(default_factory=list)  # the first 20 named
    count_as_came: int = 0
    _seen: set[bytes] = field(default_factory=set)

    def note_as_came(self, path: bytes) -> None:
        if path not in self._seen:
            self._seen.add(path)
            self.count_as_came += 1
            if len(self.files_as_came) < 20:
                self.files_as_came.append(path.decode("utf-8", "replace"))

    def meta(self) -> dict[str, Any]:
        return {"format": fmt.FORMAT, "pages": self.pages, "pages_as_blocks": self.pages_as_blocks,
                "delta_bytes": self.delta_bytes, "stored_bytes": self.stored_bytes,
                "files_as_came": self.files_as_came, "count_as_came": self.count_as_came}


class _DeltaCut:
    """One ``.delta`` file being cut: its parser and where its sub-page file has got to."""

    def __init__(self, path: bytes, page_size: int) -> None:
        self.path, self.page_size = path, page_size
        self.parser = delta.DeltaParser(page_size)
        self.written = 0
        self.blocks_per_page = page_size // fmt.BLOCK


class FullPassage:
    """A full's stream passed through as it came, its payloads read straight into the reader's
    buffer (the backup's segment) and fingerprinted there.

    Reading each 10 MiB payload into a fresh ``bytes`` first and copying it on cost a
    page-faulted allocation and a copy per byte of the full (about 0.5 s of CPU per GiB
    with the parsing, measured on an 880 MiB stream).  A payload split across two reads
    keeps the part of a 512-byte block it ended in (``carry``) for the next.

    It also says where the stream's pieces (the repository's blobs) should start
    (:meth:`boundaries`): at each large payload's header and at every :data:`PIECE`
    of the file's own offsets, so a piece holds the same pages of the same file
    whatever came before it in the stream (a file that grew, one added), and the
    backup need not search for cut points (FastCDC: ~0.12 s of CPU per GiB).
    Small files' chunks run together up to a header :data:`PIECE` past the last cut."""

    def __init__(self, source: IO[bytes], blockmap: BlockMap) -> None:
        self._source, self._map = source, blockmap
        self._pos = 0                 # stream offset of the next byte handed over
        self._cuts: list[int] = []    # stream offsets where a piece should start, ascending
        self._last_cut = 0
        self._head = memoryview(b"")  # header bytes not yet handed over
        self._left = 0                # payload bytes of the current chunk not yet read
        self._path: bytes | None = None  # the tablespace being fingerprinted, or None
        self._block = 0               # its block the next fingerprint is of
        self._carry = bytearray()
        self.cut_short = False
        self.ended = False

    def read1(self, size: int = -1) -> bytes:
        buffer = bytearray(size if size > 0 else 1 << 20)
        return bytes(buffer[:self.readinto(memoryview(buffer))])

    read = read1

    def readinto(self, buffer: memoryview) -> int:
        filled = 0
        while filled < len(buffer) and not self.ended:
            if self._head:
                take = min(len(buffer) - filled, len(self._head))
                buffer[filled:filled + take] = self._head[:take]
                self._head = self._head[take:]
            elif self._left:
                take = self._payload(buffer[filled:filled + min(len(buffer) - filled, self._left)])
            else:
                self._next_chunk()
                continue
            filled += take
            self._pos += take
        return filled

    def boundaries(self, upto: int) -> list[int]:
        """The stream offsets below ``upto`` where a piece should start (taken: each is given once)."""
        count = 0
        while count < len(self._cuts) and self._cuts[count] < upto:
            count += 1
        taken, self._cuts = self._cuts[:count], self._cuts[count:]
        return taken

    def _cut(self, offset: int) -> None:
        if offset > self._last_cut:
            self._cuts.append(offset)
            self._last_cut = offset

    def _note_cuts(self, head: mbstream.ChunkHead) -> None:
        """Where this chunk's pieces start (its header is at ``_pos``): see the class docstring."""
        large = head.kind == mbstream.PAYLOAD and head.length >= PIECE
        if large or self._pos - self._last_cut >= PIECE:
            self._cut(self._pos)
        if large:
            start = self._pos + len(head.head) - head.offset  # where file offset 0 would be
            for file_offset in range(-(-head.offset // PIECE) * PIECE, head.offset + head.length, PIECE):
                self._cut(start + file_offset)

    def check_whole(self, source: str) -> None:
        """After mariabackup exited 0: the stream must have ended between chunks."""
        if self.cut_short:
            raise _cut_short(source)

    def _next_chunk(self) -> None:
        try:
            head = mbstream.read_head(self._source)
        except mbstream.StreamCut:
            head, self.cut_short = None, True  # mariabackup died mid-chunk: its exit status is the message
        if head is None:
            self.ended = True
            return
        self._note_cuts(head)
        self._head, self._left, self._path, self._carry = memoryview(head.head), head.length, None, bytearray()
        if head.kind == mbstream.PAYLOAD and head.length and TABLESPACE.search(head.path):
            if head.offset % fmt.BLOCK or head.length % fmt.BLOCK:
                self._map.forget(head.path)  # not block-aligned: not a tablespace copy this map can follow
            else:
                self._path, self._block = head.path, head.offset // fmt.BLOCK

    def _payload(self, into: memoryview) -> int:
        count = 0
        while count < len(into):  # one call on a buffered pipe; a raw one may return less
            got = self._source.readinto(into[count:]) or 0
            if not got:  # the stream ended inside a payload
                self.cut_short = self.ended = True
                break
            count += got
        if self._path is not None and count:
            self._fingerprint(into[:count])
        self._left -= count
        return count

    def _fingerprint(self, data: memoryview) -> None:
        used = 0
        if self._carry:
            used = min(fmt.BLOCK - len(self._carry), len(data))
            self._carry += data[:used]
            if len(self._carry) < fmt.BLOCK:
                return
            self._write(memoryview(self._carry))
        whole = (len(data) - used) // fmt.BLOCK * fmt.BLOCK
        if whole:
            self._write(data[used:used + whole])
        self._carry = bytearray(data[used + whole:])

    def _write(self, blocks: memoryview) -> None:
        assert self._path is not None
        self._map.write(self._path, self._block, fmt.fingerprints(blocks, self._map.seed), 0)
        self._block += len(blocks) // fmt.BLOCK


def _cut_short(source: str) -> SourceError:
    return SourceError(f"the mariabackup stream of {source} was cut short (a chunk or a .delta file "
                       f"is incomplete); no snapshot was written")


class SubpageStream:
    """A readable stream (``read1``/``readinto``) of an incremental's mbstream, its deltas rewritten."""

    def __init__(self, source: IO[bytes], blockmap: BlockMap) -> None:
        self._chunks = mbstream.read_chunks(source)
        self._map = blockmap
        self._pieces: deque[memoryview] = deque()
        self._metas: dict[bytes, delta.DeltaMeta] = {}
        self._cuts: dict[bytes, _DeltaCut] = {}
        self._as_came: set[bytes] = set()
        self.stats = SubpageStats()
        self.cut_short = False

    # ----- the reader's side -----------------------------------------------------------------
    def read1(self, size: int = -1) -> bytes:
        if not self._fill():
            return b""
        piece = self._pieces[0]
        take = len(piece) if size < 0 else min(size, len(piece))
        self._consume(take)
        return bytes(piece[:take])

    read = read1

    def readinto(self, buffer: memoryview) -> int:
        """As many pieces as fit, copied once into the caller's buffer (the backup's segments)."""
        filled = 0
        while filled < len(buffer) and self._fill():
            piece = self._pieces[0]
            take = min(len(buffer) - filled, len(piece))
            buffer[filled:filled + take] = piece[:take]
            self._consume(take)
            filled += take
        return filled

    def _fill(self) -> bool:
        """Make a piece ready; False at the end of the stream."""
        while not self._pieces:
            try:
                chunk = next(self._chunks, None)
            except mbstream.StreamCut:
                chunk = None  # mariabackup died mid-chunk: its exit status is the message (``check_whole``)
                self.cut_short = True
            if chunk is None:
                return False
            self._take(chunk)
        return True

    def check_whole(self, source: str) -> None:
        """After mariabackup exited 0: the stream must have ended between chunks, every .delta closed."""
        if self.cut_short or self._cuts:
            raise _cut_short(source)

    def _consume(self, count: int) -> None:
        piece = self._pieces[0]
        if count == len(piece):
            self._pieces.popleft()
        else:
            self._pieces[0] = piece[count:]

    def _emit(self, *parts: bytes) -> None:
        self._pieces.extend(memoryview(part) for part in parts if part)

    # ----- the rewrite -----------------------------------------------------------------------
    def _take(self, chunk: Chunk) -> None:
        path = chunk.path
        if path.endswith(delta.DELTA_SUFFIX):
            self._delta_chunk(chunk)
            return
        if path.endswith(delta.META_SUFFIX) and chunk.kind == mbstream.PAYLOAD:
            meta = delta.DeltaMeta.parse(chunk.payload)
            if meta is not None:
                self._metas[path[:-len(delta.META_SUFFIX)]] = meta
        if path == CHECKPOINTS:
            self._rename(chunk, CHECKPOINTS + fmt.SUFFIX)
            return
        self._emit(chunk.head, chunk.payload)

    def _rename(self, chunk: Chunk, new_path: bytes) -> None:
        if chunk.kind == mbstream.EOF:
            self._emit(mbstream.eof_chunk(new_path, chunk.flags))
        else:
            self._emit(mbstream.payload_chunk(new_path, chunk.offset, chunk.payload, chunk.flags))

    def _delta_chunk(self, chunk: Chunk) -> None:
        target = chunk.path[:-len(delta.DELTA_SUFFIX)]
        cut = self._cuts.get(chunk.path)
        if cut is None:
            meta = self._metas.get(target)
            if meta is None or meta.zip_size or chunk.path in self._as_came:
                self._as_came.add(chunk.path)  # every later chunk of it too, even if its .meta comes now
                self._map.forget(target)
                self.stats.note_as_came(chunk.path)
                self._emit(chunk.head, chunk.payload)
                return
            cut = self._cuts[chunk.path] = _DeltaCut(chunk.path, meta.page_size)
            self._write_cut(cut, fmt.file_header(meta.page_size))
        if chunk.kind == mbstream.EOF:
            cut.parser.finish()
            del self._cuts[chunk.path]
            self._emit(mbstream.eof_chunk(chunk.path + fmt.SUFFIX, chunk.flags))
            return
        self.stats.delta_bytes += len(chunk.payload)
        records = [self._record(cut, target, item) for item in cut.parser.feed(chunk.payload)]
        self._write_cut(cut, b"".join(records))

    def _record(self, cut: _DeltaCut, target: bytes, item: tuple[str, int, bytes]) -> bytes:
        kind, page_no, page = item
        if kind == "header":
            return fmt.header_record(page)
        first = page_no * cut.blocks_per_page
        new_fps = fmt.fingerprints(page, self._map.seed)
        old_fps = (self._map.read(target, first, cut.blocks_per_page)
                   if self._map.page_size(target) in (0, cut.page_size) else None)
        record, stored = fmt.encode_page(page_no, page, new_fps, old_fps)
        self._map.write(target, first, new_fps, cut.page_size)
        self.stats.pages += 1
        if stored < cut.blocks_per_page or record[0] == fmt.BLOCKS:
            self.stats.pages_as_blocks += 1
        return record

    def _write_cut(self, cut: _DeltaCut, data: bytes) -> None:
        if data:
            self._emit(mbstream.payload_chunk(cut.path + fmt.SUFFIX, cut.written, data))
            cut.written += len(data)
            self.stats.stored_bytes += len(data)


def rewritten_stream(source: IO[bytes], blockmap: BlockMap, incremental: bool) -> FullPassage | SubpageStream:
    """The reader a night's stream goes through: an incremental is rewritten, a full only watched."""
    return SubpageStream(source, blockmap) if incremental else FullPassage(source, blockmap)


class SubpageNight:
    """Tonight's block map and stream rewrite for one physical backup: begun before mariabackup
    starts, committed under the snapshot's id once it is stored, thrown away if it is not."""

    def __init__(self, store: BlockMapStore, parent_id: str | None) -> None:
        self.store, self.incremental = store, parent_id is not None
        parent = store.committed(parent_id) if parent_id else None
        self.parent_known = parent is not None
        if parent_id and parent is None:
            log.warning("no block map of snapshot %s on this host (another host took it, or the cache was "
                        "lost): tonight's incremental stores its changed pages whole; the next full starts "
                        "a new map", parent_id[:8])
        self.map = store.begin(parent)
        self.stream: FullPassage | SubpageStream | None = None

    def wrap(self, stdout: IO[bytes]) -> IO[bytes]:
        self.stream = rewritten_stream(stdout, self.map, self.incremental)
        return self.stream  # type: ignore[return-value]

    def finish(self, source: str, meta: dict[str, Any]) -> None:
        """Refuse a cut stream; an incremental records the sub-page format it needs to be restored."""
        assert self.stream is not None
        self.stream.check_whole(source)
        if isinstance(self.stream, SubpageStream):
            meta["subpage"] = {**self.stream.stats.meta(), "map_from_parent": self.parent_known}

    def commit(self, snapshot_id: str) -> bool:
        return self.store.commit(self.map, snapshot_id)

    def abort(self) -> None:
        self.store.abort(self.map)
