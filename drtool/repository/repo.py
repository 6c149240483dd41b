"""The repository: keys, config, blobs in packs, index, sealed objects.

Everything above this layer speaks in blobs and objects; everything below in
bytes and names.  This is where the write order lives: :meth:`flush` stores
every pending pack and then the index object that names them, and only after
``flush`` returns may a caller commit a snapshot that references new blobs.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterator

from drtool.backends import capabilities
from drtool.backends.base import Backend
from drtool.crypto.ids import IdMaker
from drtool.crypto.keys import KdfParams, KeySlot, MasterKey
from drtool.digests import token_hex
from drtool.errors import (DrtoolError, IntegrityError, ObjectMissing, RepositoryExists, RepositoryFull,
                           RepositoryNotFound)
from drtool.repository.envelope import Envelope, EnvelopeError
from drtool.repository.index import (IndexCache, Location, MemoryIndex, PackRecord, decode_index,
                                     decode_index_packed, encode_index)
from drtool.repository.layered import LayeredIndex
from drtool.repository.longgroups import LongGroups
from drtool.repository.keyslots import clear_interrupted_init, list_slots, remove_slot, unlock_master, wrap_slot
from drtool.repository.objects import (CONFIG, CONFIG_KIND, INDEX, INDEX_KIND, PACKS,
                                       RepoConfig, key_name, object_name, pack_name)
from drtool.repository.packfile import (ENTRY, BlobEntry, BufferPool, OpenGroup, PackBuilder,
                                        SealedGroup, group_kind, open_group,
                                        seal_open_group, trim_heap)
from drtool.repository.reading import GroupCache, OpenedGroup, ScratchPool

if TYPE_CHECKING:
    from drtool.repository.diskindex import DiskIndex

log = logging.getLogger("drtool")

PACK_TARGET_SIZE = 16 * 1024 * 1024
INDEX_EVERY_PACKS = 4  # bounds the trailer entries held in memory (53 B per blob, packed)
MAX_PENDING_UPLOADS = 2
INDEX_SLICE = 256  # entries indexed per hold of the repository lock
# Groups of other data: 2 MiB.  Every group in flight costs its buffer and zstd's
# output (and, until groups were sealed as written, a sealed copy); at 4 MiB those
# were ~20 MiB of the 200,000-file backup's peak (memray), for no measurable gain in size.
GROUP_TARGET_SIZE = 2 * 1024 * 1024
TEXT_GROUP_TARGET_SIZE = 16 * 1024 * 1024
# What a blob's group holds (``add_blob``'s ``text``): other data; dumps, in long-window
# groups; text-like files too short to fill one of those (bench media: 84 SVGs of
# 0.25-8 MiB), kept apart from incompressible data (a group whose middle sample does not
# compress is stored raw) in groups that do not hold a 16 MiB buffer for a few files.
OTHER, LONG_TEXT, SHORT_TEXT = 0, 1, 2
SHORT_TEXT_GROUP_TARGET_SIZE = 4 * 1024 * 1024
_GROUP_TARGETS = {OTHER: GROUP_TARGET_SIZE, LONG_TEXT: TEXT_GROUP_TARGET_SIZE,
                  SHORT_TEXT: SHORT_TEXT_GROUP_TARGET_SIZE}
RUN_BYTES = 16 * 1024 * 1024


class Repository:
    def __init__(self, backend: Backend, master: MasterKey, config: RepoConfig,
                 slot_id: str, cache: IndexCache | None = None) -> None:
        self.backend = backend
        self.master = master
        self.config = config
        self.slot_id = slot_id
        self.envelope = Envelope(master.encryption_key, config.compression_level)
        self.ids = IdMaker(master.id_key)
        self.index = MemoryIndex()
        self.cache = cache
        self.uncached_index_ids: list[str] = []  # index objects this run wrote while no cache was set
        self._disk: DiskIndex | None = None
        self._disk_tried = False
        self._lock = threading.Lock()
        self._builders: dict[int, PackBuilder] = {}
        self._groups: dict[tuple[int, int], OpenGroup] = {}
        # One spare buffer per group size: a second one, kept 5 s, was an idle 16 MiB
        # at night 1's peak (a dump's buffer while the media were read).
        self._group_buffers = BufferPool(keep=1)
        # Long groups are compressed as they fill, one per worker (longgroups), where libzstd's
        # streaming calls are at hand; otherwise they are filled into a buffer as other groups.
        self._long = (LongGroups(self.envelope, TEXT_GROUP_TARGET_SIZE)
                      if self.envelope.streaming_available() else None)
        self._pending: set[bytes] = set()
        self._group_cache = GroupCache()
        self._uploads: list[Future[PackRecord]] = []
        self._unindexed: list[PackRecord] = []
        self._uploader = ThreadPoolExecutor(max_workers=MAX_PENDING_UPLOADS, thread_name_prefix="upload")
        self._upload_slots = threading.BoundedSemaphore(MAX_PENDING_UPLOADS)
        self.new_blobs = 0
        self.new_bytes_stored = 0
        self.new_bytes_raw = 0

    # ----- creation and opening -------------------------------------------------
    @classmethod
    def init(cls, backend: Backend, passphrase: bytes, *, kdf: KdfParams | None = None,
             config: RepoConfig | None = None, group: str | None = None) -> "Repository":
        """``group``: an OS group that may read and write it too (the database's OS user runs
        ``archive_command`` into the backup user's repository); local directories only."""
        capabilities.create_location(backend)
        if repository_exists(backend):
            raise RepositoryExists(f"a repository already exists at {backend.url}")
        clear_interrupted_init(backend)
        if group is not None:
            capabilities.share_with_group(backend, group)
        master = MasterKey.generate()
        config = config or RepoConfig(repo_id=token_hex(16))
        slot = wrap_slot(master, passphrase, kdf, "initial")
        backend.put(key_name(slot.slot_id), slot.to_bytes())
        envelope = Envelope(master.encryption_key)
        backend.put(CONFIG, bytes(envelope.seal(CONFIG_KIND, b"", config.to_json(), compress=False)))
        return cls(backend, master, config, slot.slot_id)

    @classmethod
    def open(cls, backend: Backend, passphrase: bytes, cache: IndexCache | None = None) -> "Repository":
        if not repository_exists(backend):
            raise RepositoryNotFound(f"no drtool repository at {backend.url}")
        master, slot_id = unlock_master(backend, passphrase)
        envelope = Envelope(master.encryption_key)
        try:
            config = RepoConfig.from_json(bytes(envelope.open(CONFIG_KIND, b"", backend.get(CONFIG))))
        except EnvelopeError:
            raise IntegrityError("the repository config object is damaged or was replaced") from None
        return cls(backend, master, config, slot_id, cache)

    # ----- key slots --------------------------------------------------------------
    def list_key_slots(self) -> list[KeySlot]:
        return list_slots(self.backend)

    def add_key_slot(self, passphrase: bytes, *, kdf: KdfParams | None = None, label: str = "") -> KeySlot:
        slot = wrap_slot(self.master, passphrase, kdf, label)
        self.backend.put(key_name(slot.slot_id), slot.to_bytes())
        return slot

    def remove_key_slot(self, slot_id: str) -> None:
        remove_slot(self.backend, slot_id)

    # ----- index ------------------------------------------------------------------
    def load_index(self, trees_only: bool = False, read_only: bool = False) -> None:
        """Bring the blob index up to date with the repository's index objects (``indexload``):
        the local disk cache where one can be used, else in memory.

        ``trees_only``: where the index is held in memory, load only tree blobs, for
        commands that read nothing else (``ls``, ``diff``: on 200,000 small files, 3,200
        trees among 256,000 blobs); never for one that writes (it would not deduplicate
        against the data).  The next ``load_index()`` loads everything.  The disk cache
        is brought up to date whole either way (lookups there cost no memory).
        ``read_only`` (restores): a few index objects the disk cache lacks are held in
        memory for this run rather than written into the cache (``indexload``).
        """
        from drtool.repository.indexload import load_index
        load_index(self, trees_only=trees_only, read_only=read_only)

    def disk_index(self) -> "DiskIndex | None":
        """The local on-disk index cache, opened on first use (None: the index stays in memory)."""
        if not self._disk_tried:
            from drtool.repository.indexload import open_disk_index
            self._disk_tried = True
            self._disk = open_disk_index(self.config.repo_id)
        return self._disk

    def read_index_packed(self, index_id: str) -> list[tuple[bytes, bytes]]:
        """(pack id, packed trailer entries) of an index object, without a BlobEntry per blob."""
        raw = self.get_object(INDEX, INDEX_KIND, index_id)
        try:
            return decode_index_packed(raw)
        except ValueError as exc:
            raise IntegrityError(f"index object index/{index_id} is malformed: {exc}") from None

    def read_index_object(self, index_id: str) -> list[PackRecord]:
        raw = self.get_object(INDEX, INDEX_KIND, index_id)
        try:
            return decode_index(raw)
        except ValueError as exc:
            raise IntegrityError(f"index object index/{index_id} is malformed: {exc}") from None

    def write_index(self, packs: list[PackRecord]) -> str:
        plaintext = encode_index(packs)
        index_id = self.put_object(INDEX, INDEX_KIND, plaintext)
        if self.cache:
            self.cache.store_index(index_id, packs)
        else:  # a catalog opened later caches it then (Session.catalog)
            self.uncached_index_ids.append(index_id)
        index = self.index
        if isinstance(index, LayeredIndex):
            cached = index.written(index_id, self.read_index_packed)
            if cached:  # in the disk cache now: out of this run's memory
                with self._lock:
                    index.indexed(cached)
        return index_id

    # ----- blobs --------------------------------------------------------------------
    def has_blob(self, blob_id: bytes) -> bool:
        return blob_id in self.index

    def is_known(self, blob_id: bytes) -> bool:
        """Stored or queued in this run (a cheap pre-check before sealing work)."""
        return blob_id in self.index or blob_id in self._pending

    def add_blob(self, blob_type: int, blob_id: bytes, data: bytes | memoryview,
                 text: int = OTHER) -> bool:
        """Queue a blob for its compression group; False when it is a duplicate.

        Thread-safe.  The caller whose blob fills a group seals it, so
        compression and encryption run on the worker threads in parallel.
        ``text``: LONG_TEXT (or True) blobs (dump-like data) go to 16 MiB
        long-window groups, SHORT_TEXT ones to 4 MiB groups of their own.
        """
        if text == LONG_TEXT and self._long is not None:
            return self.add_long_blobs(blob_type, memoryview(data), [(blob_id, 0, len(data))]) > 0
        return self._add_buffered(blob_type, blob_id, data, text)

    def _add_buffered(self, blob_type: int, blob_id: bytes, data: bytes | memoryview, text: int) -> bool:
        """:meth:`add_blob` into a group buffer, sealed in one shot by the worker that fills it."""
        key = (blob_type, text)
        full: list[OpenGroup] = []
        with self._lock:
            if blob_id in self.index or blob_id in self._pending:
                return False
            self._pending.add(blob_id)
            group = self._groups.get(key)
            if group is not None and len(group) + len(data) > group.capacity:
                full.append(self._groups.pop(key))  # sealed as it is: its buffer never grows
                group = None
            if group is None:
                group = self._groups[key] = OpenGroup(self._group_capacity(text), self._group_buffers)
            group.add(blob_id, data)  # the one copy out of the (recycled) read buffer
            self.new_blobs += 1
            self.new_bytes_raw += len(data)
            if len(group) >= _GROUP_TARGETS[int(text)]:
                full.append(self._groups.pop(key))
        for group in full:
            self._pack_group(key, group)
        return True

    def add_long_blobs(self, blob_type: int, view: memoryview, blobs: list[tuple[bytes, int, int]]) -> int:
        """Queue blobs (blob id, offset, length in ``view``) for this thread's long groups
        (``longgroups``), duplicates left out; how many were new.  Where streaming is missing, or
        the middle of ``view`` does not compress, they go to a buffered long group (stored raw)."""
        if self._long is None or not self.envelope.sample_compresses(view):
            return sum(self._add_buffered(blob_type, blob_id, view[offset:offset + length], LONG_TEXT)
                       for blob_id, offset, length in blobs)
        with self._lock:
            fresh = []
            for blob in blobs:
                if blob[0] not in self.index and blob[0] not in self._pending:
                    self._pending.add(blob[0])  # also a repeat within ``blobs`` is queued once
                    fresh.append(blob)
            queued = len(fresh)
            self.new_blobs += len(fresh)
            self.new_bytes_raw += sum(blob[2] for blob in fresh)
        self._long.add(blob_type, view, fresh, self._lock, self._store_sealed)
        return queued

    def seal_group_now(self, blob_type: int, text: int) -> None:
        """Seal the open group of that kind as it is, and free the spare buffer of its size
        with the heap's free pages: a dump ended, and its last long-window group and spare
        would otherwise hold 32 MiB through the rest of the walk (night 1's peak, with the
        media's buffers on top)."""
        key = (blob_type, text)
        with self._lock:
            group = self._groups.pop(key, None)
            long = self._long.detach_all(blob_type) if self._long is not None and text == LONG_TEXT else []
        if group is not None:
            self._pack_group(key, group)
        if long:
            self._long.seal_detached(long, self._store_sealed)
        self._group_buffers.drop(self._group_capacity(text))
        trim_heap()

    def group_buffer_bytes(self) -> int:
        """Bytes of group buffers held now: the open groups' and the spares kept for re-use."""
        with self._lock:
            held = sum(group.capacity for group in self._groups.values())
            held += self._long.held_bytes() if self._long is not None else 0
        return held + self._group_buffers.kept_bytes()

    def _group_capacity(self, text: int) -> int:
        """A full group plus one average chunk; a blob that does not fit starts the next group."""
        return _GROUP_TARGETS[int(text)] + (4 * self.config.stream_chunk_avg if text else self.config.file_chunk_avg)

    def store_blob(self, blob_type: int, data: bytes | memoryview) -> bytes:
        blob_id = self.ids.blob_id(data)
        self.add_blob(blob_type, blob_id, data)
        return blob_id

    def _pack_group(self, key: tuple[int, int], open_group_: OpenGroup) -> None:
        blob_type, text = key
        self._store_sealed(seal_open_group(self.envelope, blob_type, open_group_, long=text == LONG_TEXT))

    def _store_sealed(self, group: SealedGroup) -> None:
        """Add a sealed group to its type's pack (written out as it comes), and hand a full
        pack to the uploaders."""
        blob_type, stored = group.blob_type, len(group.sealed)
        try:
            while True:
                with self._lock:
                    builder = self._builders.get(blob_type)
                    if builder is None:
                        builder = self._builders[blob_type] = PackBuilder(capabilities.stage(self.backend, PACKS))
                with builder.lock:  # writing a streamed group must not hold up add_blob
                    if builder.closed:
                        continue  # another thread just retired it: take the next one
                    builder.add(group)
                    full = builder.closed = builder.size >= PACK_TARGET_SIZE
                break
        finally:  # written out or copied: its buffer may be reused
            group.done()
        with self._lock:
            self.new_bytes_stored += stored
            if full and self._builders.get(blob_type) is builder:
                del self._builders[blob_type]
        if full:
            self._submit_pack(builder)

    def _submit_pack(self, builder: PackBuilder) -> None:
        self._upload_slots.acquire()
        future = self._uploader.submit(self._upload_pack, builder)
        future.add_done_callback(lambda _f: self._upload_slots.release())
        with self._lock:
            self._uploads.append(future)

    def _upload_pack(self, builder: PackBuilder) -> PackRecord:
        if builder.streaming:
            pack_id = builder.commit_staged(self.envelope)
        else:
            pack_id, parts = builder.finish_parts(self.envelope)
            capabilities.put_parts(self.backend, pack_name(pack_id), parts)
        packed, step = builder.packed_entries(), INDEX_SLICE * ENTRY.size
        # In slices, releasing the lock in between: indexing a pack of 5,000 small files at
        # once held up every add_blob (and the walking thread's tree blobs) for ~10 ms.
        for start in range(0, len(packed), step):
            part = [BlobEntry(*fields) for fields in ENTRY.iter_unpack(packed[start:start + step])]
            with self._lock:
                self.index.add_entries(pack_id, part)
                for entry in part:
                    self._pending.discard(entry.blob_id)
        return PackRecord(pack_id, packed=packed)  # packed until its index object is written

    def flush(self) -> None:
        """Store all pending groups and packs, then the index naming them (the write-order barrier)."""
        with self._lock:
            groups = list(self._groups.items())
            self._groups.clear()
            long = self._long.detach_all() if self._long is not None else []
        for key, group in groups:
            if len(group.members):
                self._pack_group(key, group)
        if self._long is not None:
            self._long.seal_detached(long, self._store_sealed)
        self._group_buffers.clear()  # every group is sealed: the next one (if any) takes a fresh buffer
        self.envelope.release_output()  # this thread's compressed output pages (the last groups)
        with self._lock:
            builders = list(self._builders.values())
            self._builders.clear()
        for builder in builders:
            with builder.lock:
                builder.closed = True
            if len(builder):
                self._submit_pack(builder)
            else:
                builder.abort()
        self._collect_uploads(final=True)

    def checkpoint(self) -> None:
        """Index packs already uploaded, every INDEX_EVERY_PACKS of them (call from one thread).

        Keeps memory bounded on long backups (their trailer entries are
        dropped once indexed) and lets an interrupted backup's stored data be
        reused by the next run without a rebuild.
        """
        with self._lock:
            done = [f for f in self._uploads if f.done()]
        if len(done) + len(self._unindexed) >= INDEX_EVERY_PACKS:
            self._collect_uploads(final=False, only_done=True)

    def _collect_uploads(self, final: bool, only_done: bool = False) -> None:
        with self._lock:
            if only_done:
                uploads = [f for f in self._uploads if f.done()]
                self._uploads = [f for f in self._uploads if not f.done()]
            else:
                uploads, self._uploads = self._uploads, []
        error: BaseException | None = None
        for future in uploads:
            try:
                self._unindexed.append(future.result())
            except BaseException as exc:  # keep waiting for the rest before re-raising
                error = error or exc
        if error is not None:
            if isinstance(error, RepositoryFull):
                self._remove_unindexed()
            raise error
        if self._unindexed and (final or len(self._unindexed) >= INDEX_EVERY_PACKS):
            self.write_index(self._unindexed)
            self._unindexed = []

    def _remove_unindexed(self) -> None:
        """Full disk: this run's packs that no index names (e.g. the tree pack stored beside the
        failed one) are of use to no run and hold the space the user must free."""
        for record in self._unindexed:
            with contextlib.suppress(DrtoolError):
                self.backend.delete(pack_name(record.pack_id))
        self._unindexed = []

    def with_index(self, index: Any) -> "Repository":
        """This repository (same backend, keys and caches) looking blobs up in ``index``: a question
        asked of another index (the local cache as it stands) without swapping this one's."""
        view = copy.copy(self)
        view.index = index
        return view

    def locate(self, blob_id: bytes) -> Location:
        loc = self.index.get(blob_id)
        if loc is None:
            raise ObjectMissing(f"blob {blob_id.hex()[:16]} is not in any pack of the index")
        return loc

    def limit_group_cache(self, max_bytes: int) -> None:
        """How much opened-group plaintext to keep for re-use.

        A restore wants room for eight 16 MiB text groups: a night-2 dump
        alternates between old groups holding unchanged rows and a new one
        holding the edits, which both workers need at once (bench: 80 MiB
        re-opened 32 of 187 groups, 128 MiB 6).  A backup reads only parent
        trees, in walk order, and a few MiB do (a 128 MiB cache was 48 MiB of
        the 200,000-file re-run's peak memory, tracemalloc).
        """
        self._group_cache.resize(max_bytes)

    def read_blob(self, blob_id: bytes) -> bytes:
        return bytes(next(self.read_blobs([blob_id])))

    def read_blobs(self, blob_ids: list[bytes],
                   locations: list[Location] | None = None) -> Iterator[memoryview]:
        """Verified blobs in order, as views into their group (valid while referenced).

        Blobs whose group was opened recently come from the cache; other
        neighbouring groups of one pack come with one ranged read.  Callers
        that already located the blobs pass ``locations``.
        """
        locs = locations if locations is not None else [self.locate(b) for b in blob_ids]
        start = 0
        while start < len(locs):
            first = locs[start]
            cached = self._group_cache.get((first.pack_id, first.offset))
            if cached is not None:
                while start < len(locs) and locs[start][:3] == first[:3]:
                    yield self.blob_from_group(blob_ids[start], locs[start], cached)
                    start += 1
                continue
            end = self._run_end(locs, start)
            lo = first.offset
            hi = max(loc.offset + loc.length for loc in locs[start:end])
            yield from self._read_run(blob_ids[start:end], locs[start:end], lo, hi)
            start = end

    def _run_end(self, locs: list[Location], start: int) -> int:
        """End of the run of blobs one ranged read should fetch (same pack, contiguous, bounded)."""
        first = locs[start]
        lo, hi = first.offset, first.offset + first.length
        end = start + 1
        while end < len(locs):
            loc = locs[end]
            if loc.pack_id != first.pack_id or not (lo <= loc.offset <= hi):
                break
            if max(hi, loc.offset + loc.length) - lo > RUN_BYTES:
                break
            if loc.offset != locs[end - 1].offset and self._group_cache.get((loc.pack_id, loc.offset)):
                break  # the next group is cached: do not download it again
            hi = max(hi, loc.offset + loc.length)
            end += 1
        return end

    def _read_run(self, blob_ids: list[bytes], locs: list[Location], lo: int,
                  hi: int) -> Iterator[memoryview]:
        pack_id = locs[0].pack_id
        raw = capabilities.read_view(self.backend, pack_name(pack_id), lo, hi - lo)
        opened: dict[int, bytes | bytearray] = {}
        for blob_id, loc in zip(blob_ids, locs):
            plain = opened.get(loc.offset)
            if plain is None:
                sealed = raw[loc.offset - lo:loc.offset - lo + loc.length]
                plain = opened[loc.offset] = self._group_cache.get_or_load(
                    (pack_id, loc.offset), lambda: self.open_group_plain(loc, sealed))
            yield self.blob_from_group(blob_id, loc, plain)

    def open_group_plain(self, loc: Location, sealed: bytes | memoryview) -> bytes | bytearray:
        """The plaintext of the sealed group at ``loc`` (a damaged one is an IntegrityError naming the pack)."""
        try:
            return open_group(self.envelope, loc.blob_type, sealed)
        except EnvelopeError as exc:
            raise IntegrityError(f"pack {loc.pack_id.hex()[:16]} is damaged at offset {loc.offset} "
                                 f"({exc})") from None

    def blob_from_group(self, blob_id: bytes, loc: Location,
                        plain: bytes | bytearray | memoryview) -> memoryview:
        """Cut one blob out of its group (no copy) and check it is the one asked for."""
        data = self.cut_blob(blob_id, loc.inner, loc.raw_length, memoryview(plain))
        if data is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} in pack {loc.pack_id.hex()[:16]} "
                                 f"does not match its id")
        return data

    def cut_blob(self, blob_id: bytes, inner: int, raw_length: int, plain: memoryview) -> memoryview | None:
        """The blob at ``inner`` of an opened group, or None when it is not the one named."""
        data = plain[inner:inner + raw_length]
        if len(data) != raw_length or self.ids.blob_id(data) != blob_id:
            return None
        return data

    def open_group_recycled(self, loc: Location, buffers: ScratchPool,
                            into: memoryview | None = None) -> OpenedGroup:
        """The plaintext of the group at ``loc``, decrypted and decompressed into pooled buffers.

        A restore opens each group it needs once (it plans which of its
        blobs go where first), so it neither caches groups nor allocates a
        fresh buffer per group.  Blobs still have to be checked against
        their ids (:meth:`cut_blob`): the group's AEAD proves it was written
        with this key, not that it is the group the index points at.
        ``into``: see :meth:`Envelope.open_recycled` (``plain`` is then ``into``).
        """
        raw = buffers.take(loc.length)
        try:
            sealed = capabilities.read_into(self.backend, pack_name(loc.pack_id), loc.offset, loc.length, raw)
            return self.open_group_sealed(loc, sealed, buffers, into)
        finally:
            buffers.give(raw)  # decrypted into another buffer: the sealed bytes are done with

    def read_group_ahead(self, loc: Location) -> None:
        """Start reading the group at ``loc`` in the background where the backend can (a restore
        that knows which groups come next: ``snapshot.streamread``)."""
        capabilities.read_ahead(self.backend, pack_name(loc.pack_id), loc.offset, loc.length)

    def read_pack_range_into(self, pack_id: bytes, offset: int, length: int, buf: bytearray) -> memoryview:
        """Sealed bytes of a pack (several neighbouring groups) read into ``buf`` where the backend
        can, for :meth:`open_group_sealed`."""
        return capabilities.read_into(self.backend, pack_name(pack_id), offset, length, buf)

    def open_group_sealed(self, loc: Location, sealed: bytes | memoryview, buffers: ScratchPool,
                          into: memoryview | None = None) -> OpenedGroup:
        """Like :meth:`open_group_recycled` for a group the caller already read (a restore
        from S3 fetches several neighbouring groups with one ranged read)."""
        if len(sealed) != loc.length:
            raise IntegrityError(f"pack {loc.pack_id.hex()[:16]} is shorter than the index says "
                                 f"(group at offset {loc.offset})")
        try:
            plain, held = self.envelope.open_recycled(group_kind(loc.blob_type), b"", sealed, buffers, into)
        except EnvelopeError as exc:
            raise IntegrityError(f"pack {loc.pack_id.hex()[:16]} is damaged at offset {loc.offset} "
                                 f"({exc})") from None
        return OpenedGroup(plain, held, buffers)

    # ----- sealed whole objects (snapshots, index, rehearsals, log segments) ----------
    def put_object(self, prefix: str, kind: bytes, plaintext: bytes, object_id: str | None = None) -> str:
        object_id = object_id or self.ids.object_id(kind.decode(), plaintext).hex()
        sealed = self.envelope.seal(kind, object_id.encode(), plaintext)
        self.backend.put(object_name(prefix, object_id), bytes(sealed))
        return object_id

    def get_object(self, prefix: str, kind: bytes, object_id: str) -> bytes:
        sealed = self.backend.get(object_name(prefix, object_id))
        try:
            return bytes(self.envelope.open(kind, object_id.encode(), sealed))
        except EnvelopeError:
            raise IntegrityError(f"object {prefix}/{object_id} is damaged, forged, or "
                                 f"stored under another name") from None

    def list_objects(self, prefix: str) -> list[str]:
        return sorted(info.name.split("/", 1)[1] for info in self.backend.list(prefix + "/"))

    def close(self) -> None:
        """Wait for uploads; discard packs still being streamed (a failed run: nothing refers to them)."""
        self._uploader.shutdown(wait=True)
        with self._lock:
            builders = list(self._builders.values())
            self._builders.clear()
        for builder in builders:
            builder.abort()
        if self._disk is not None:
            self._disk.close()
            self._disk, self._disk_tried = None, False
            self.index = MemoryIndex()


def repository_exists(backend: Backend) -> bool:
    """True when the location holds a drtool config object (``stat``, never a listing)."""
    return backend.stat(CONFIG) is not None
