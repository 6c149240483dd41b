"""The one envelope every stored byte goes through: compress, then AEAD.

Compression happens before encryption (ciphertext does not compress) and is
skipped when it does not pay: a cheap trial on a sample detects JPEG-like
data so incompressible media costs one small zstd call, not a full one.
The associated data is ``kind + id``, which is what makes swapping,
relabelling and replaying objects detectable.
"""
from __future__ import annotations

import threading
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Protocol

import zstandard

from drtool.crypto.aead import OVERHEAD, STREAM_CHUNK, Aead, AuthenticationFailed, plaintext_size

if TYPE_CHECKING:
    from drtool.repository.compressinto import FrameStream, IntoCompressor, OutputArea

RAW = 0
ZSTD = 1
SAMPLE_SIZE = 16 * 1024
SAMPLE_MIN_SAVING = 0.03
KEEP_RAW_RATIO = 0.97
LDM_MIN_MATCH = 64
LDM_HASH_RATE_LOG = 6
# Objects compressed into the thread's reused output area (compressinto): groups, and every
# long-window object, however small (a thread that sealed a dump's short last group with
# ZstdCompressor held a second LDM context, ~7 MiB resident).  Small objects of other kinds
# (locks, snapshots, trees) keep ZstdCompressor: a restore seals only its lock, and need not
# load the cffi backend for it.
INTO_MIN = 1024 * 1024
# The window of a long group compressed as it fills (``frame_stream``): the context keeps a
# window-sized buffer resident per worker, so 8 MiB rather than the group's 16 MiB; the bench
# dump stores ~3.7 % larger than with a 16 MiB window, for ~9 MiB less per worker
# ("Nightly backup peak RSS, 6 December night" in docs/performance.md).
STREAM_WINDOW_LOG = 23
# Physical backups' data-file pages (``run_groups``), groups sealed in one shot: zstd's fast
# strategy at level -3 (it skips ahead where it finds no match) with the literals still
# Huffman-coded, which negative levels otherwise turn off.  On a mariabackup stream of sysbench
# tables, one shot on 8 MiB segments: 1.06 s of CPU per GiB at 0.384 of the input against level
# 1's 1.33 s at 0.381 (plain level -3: 0.64 s at 0.611); a whole full (redo log, system
# tablespace, indexes) stored 2.2-2.5 % more.  Pages that compress much better lose with it
# (pgbench's: level 1 0.67 s per GiB at 0.065, level -3 0.60 s at 0.096), so a group whose
# middle sample level 1 shrinks below BINARY_MIN_SAMPLE_RATIO keeps level 1 (pgbench's samples:
# 0.04-0.22; sysbench's: median 0.39).  docs/performance.md, 6 December, physcpu2.  The frames
# are ordinary zstd frames.  Only through libzstd's own calls (``compressinto``).
BINARY_LEVEL = -3
BINARY_MIN_SAMPLE_RATIO = 0.25


_compressinto: ModuleType | None = None


def _into_module() -> ModuleType:
    """``compressinto``, imported when a first group is sealed: restores and finds seal none,
    and its cffi backend costs ~5 ms and ~0.8 MiB at start-up."""
    global _compressinto
    if _compressinto is None:
        from drtool.repository import compressinto
        _compressinto = compressinto
    return _compressinto


def _zstd_size_worth_keeping(data: bytes | memoryview,
                             compressed_size: Callable[[bytes | memoryview], int]) -> int | None:
    """The compressed size of ``data`` when zstd saves enough to keep it, else None (store RAW).

    One decision for both ways of compressing (a fresh result, or into a reused area):
    a large object's middle sample must save 3 % first, so incompressible media cost one
    16 KiB compression, not a whole one; the whole must then save 3 %.  The last call of
    ``compressed_size`` is the whole object's.
    """
    size = len(data)
    if size > 4 * SAMPLE_SIZE:
        middle = size // 2
        if compressed_size(data[middle:middle + SAMPLE_SIZE]) > SAMPLE_SIZE * (1 - SAMPLE_MIN_SAVING):
            return None
    packed = compressed_size(data)
    return packed if packed < size * KEEP_RAW_RATIO else None


class EnvelopeError(Exception):
    """Authentication or decompression failed: the object is damaged or forged."""


class BufferSource(Protocol):
    """Where :meth:`Envelope.open_recycled` takes its buffers from (and they go back to)."""

    def take(self, size: int) -> bytearray: ...

    def give(self, buf: bytearray) -> None: ...


class PendingSeal:
    """An object compressed (or not) and not encrypted yet: sealed as it is written out
    (:meth:`write_to`), or whole (:meth:`sealed`).

    ``payload`` is a view into a buffer its maker reuses (a group buffer, a
    thread's output area, a stream's mapping), so it is valid until the one who
    stores it says it is done (``SealedGroup.done``).  A backup used to seal every
    2-4 MiB group into a fresh buffer before writing it into its pack: a second
    copy of each group, and the heap's holes they left (night 1's peak RSS).
    """

    __slots__ = ("_envelope", "payload", "context", "flags")

    def __init__(self, envelope: "Envelope", payload: memoryview, context: bytes, flags: int) -> None:
        self._envelope = envelope
        self.payload = payload
        self.context = context
        self.flags = flags

    def __len__(self) -> int:
        """The sealed length."""
        return OVERHEAD + len(self.payload)

    def write_to(self, write: Callable[[memoryview], None]) -> None:
        """Encrypt into ``write``, a piece at a time (each a view valid during its call)."""
        self._envelope._aead.seal_to(self.payload, self.context, write, self._envelope._seal_scratch(), self.flags)

    def sealed(self) -> bytearray:
        """The whole sealed object, in a buffer of its own."""
        return self._envelope._aead.seal(self.payload, self.context, flags=self.flags)

    def release(self) -> None:
        self.payload.release()


class Envelope:
    def __init__(self, encryption_key: bytes, level: int = 3, text_level: int = 1) -> None:
        self._aead = Aead(encryption_key)
        self.level = level
        self.text_level = text_level
        # Long-distance matching finds a dump's rows repeated far apart; in the data files of a
        # physical backup (InnoDB, PostgreSQL pages: 378 MB of a mariabackup stream) it found
        # nothing (ratio 0.257 with and without) at half the speed (263 vs 560 MB/s), so those
        # backups turn it off for their run (``backup.streams.binary_streams``).
        self.text_ldm = True
        # Physical backups: long runs of new blobs are groups compressed in one shot (longgroups).
        self.run_groups = False
        self.stream_window_log = STREAM_WINDOW_LOG
        self._local = threading.local()

    def _compressor(self, long: bool = False) -> zstandard.ZstdCompressor:
        """Per-thread compressors; ``long`` is the profile for text groups (dumps).

        Text groups are 16 MiB; rows and sentences of a dump repeat far apart,
        and long-distance matching (LDM) over a 16 MiB window finds them.  The
        profile was chosen by measurement on the bench dump (256 MiB, 16 MiB
        groups, one core): level 3 + default LDM 187 MB/s at 0.221 of the
        input; level 1 + LDM with 64-byte minimum matches and every 64th
        position hashed (``ldm_hash_rate_log=6``) 268 MB/s at 0.248; plain
        level 3 255 MB/s at 0.263; plain level 1 393 MB/s at 0.381.  Night 1
        of the bench is bound by this compression, so the faster profile
        wins there while the repository stays well under the size target.
        """
        attr = ("long" if self.text_ldm else "text") if long else "comp"
        comp = getattr(self._local, attr, None)
        if comp is None:
            level, params = self._profile(attr)
            comp = (zstandard.ZstdCompressor(compression_params=params) if params is not None
                    else zstandard.ZstdCompressor(level=level))
            setattr(self._local, attr, comp)
        return comp

    def _profile(self, attr: str) -> tuple[int, zstandard.ZstdCompressionParameters | None]:
        """(level, parameters) of a compressor: ``long`` (LDM), ``text`` or ``comp``."""
        if attr == "long":
            return self.text_level, zstandard.ZstdCompressionParameters.from_level(
                self.text_level, window_log=24, enable_ldm=True,
                ldm_min_match=LDM_MIN_MATCH, ldm_hash_rate_log=LDM_HASH_RATE_LOG)
        return (self.text_level if attr == "text" else self.level), None

    def _into(self, long: bool, binary: bool = False) -> IntoCompressor:
        """This thread's compressor into its output area, with the profile of :meth:`_compressor`;
        ``binary``: :data:`BINARY_LEVEL` with Huffman-coded literals (:meth:`_binary_pays`)."""
        attr = "binary" if binary else ("long" if self.text_ldm else "text") if long else "comp"
        comp = getattr(self._local, "into_" + attr, None)
        if comp is None:
            if binary:
                comp = _into_module().IntoCompressor(BINARY_LEVEL, huffman_literals=True)
            else:
                comp = _into_module().IntoCompressor(*self._profile(attr))
            setattr(self._local, "into_" + attr, comp)
        return comp

    def _binary_pays(self, data: bytes | memoryview) -> bool:
        """Whether a physical stream's group is compressed at :data:`BINARY_LEVEL`: its middle
        sample does not shrink below :data:`BINARY_MIN_SAMPLE_RATIO` at level 1 (one 16 KiB
        compression per group; pages that compress much better lose more size than time there)."""
        middle = len(data) // 2
        sample = data[middle:middle + SAMPLE_SIZE]
        return len(self._compressor(long=True).compress(sample)) >= len(sample) * BINARY_MIN_SAMPLE_RATIO

    def streaming_available(self) -> bool:
        """Whether long groups can be compressed as they fill (:meth:`frame_stream`)."""
        return bool(_into_module().available())

    def stream_profile(self) -> str:
        """The profile a long group's stream is made with now (``text_ldm`` may change per run)."""
        return "long" if self.text_ldm else "text"

    def frame_stream(self, expected: int) -> FrameStream:
        """A new stream compressing one long group at a time as it fills, with the profile of
        long groups (:meth:`_compressor`); ``expected``: the group's usual size."""
        level, params = self._profile(self.stream_profile())
        if params is not None:  # the long profile, over the stream's window
            params = zstandard.ZstdCompressionParameters.from_level(
                self.text_level, window_log=self.stream_window_log, enable_ldm=True,
                ldm_min_match=LDM_MIN_MATCH, ldm_hash_rate_log=LDM_HASH_RATE_LOG)
        stream = _into_module().FrameStream(level, params, expected)
        stream.profile = self.stream_profile()
        return stream

    def sample_compresses(self, data: bytes | memoryview) -> bool:
        """Whether the middle 16 KiB of ``data`` saves 3 %: the first test of every compressed
        object (``_zstd_size_worth_keeping``), made before blobs go to a long group compressed as
        it fills, which keeps no plaintext to store raw (a compressed stream's segments go to a
        buffered group and are stored raw, as before)."""
        middle = len(data) // 2
        sample = data[middle:middle + SAMPLE_SIZE]
        if len(sample) < 64:
            return True
        return len(self._compressor().compress(sample)) <= len(sample) * (1 - SAMPLE_MIN_SAVING)

    def pending_frame(self, kind: bytes, object_id: bytes, frame: memoryview) -> PendingSeal:
        """:meth:`seal_frame`, sealed when written out (:class:`PendingSeal`)."""
        return PendingSeal(self, frame, _context(kind, object_id), ZSTD)

    def pending_seal(self, kind: bytes, object_id: bytes, data: memoryview,
                     long: bool = False) -> PendingSeal | bytearray:
        """:meth:`seal`, sealed when written out: ``data`` compressed into this thread's output
        area, or kept as it is when stored raw (:class:`PendingSeal`; the area is reused by this
        thread's next compression, so it is written out first).  Objects :meth:`seal` compresses
        into a fresh result (small ones) are sealed at once."""
        if len(data) < (64 if long else INTO_MIN) or not _into_module().available():
            return self.seal(kind, object_id, data, long=long)
        into = self._into(long)
        area = self._area().take(_into_module().bound(len(data)))
        with memoryview(area) as out:
            packed = _zstd_size_worth_keeping(data, lambda view: into.compress_into(view, out))
        if packed is None:
            return PendingSeal(self, data[:], _context(kind, object_id), RAW)
        return PendingSeal(self, memoryview(area)[:packed], _context(kind, object_id), ZSTD)

    def _seal_scratch(self) -> bytearray:
        scratch = getattr(self._local, "seal_scratch", None)
        if scratch is None:
            scratch = self._local.seal_scratch = bytearray(STREAM_CHUNK + 15)
        return scratch

    def seal_frame(self, kind: bytes, object_id: bytes, frame: bytes | memoryview) -> bytearray:
        """Seal an already compressed zstd frame (a streamed long group) as a ZSTD object.

        Kept compressed whatever it saved: the plaintext is gone by then (what goes there passed
        :meth:`sample_compresses`, and zstd stores a block it cannot shrink as a raw block, 3
        bytes per 128 KiB)."""
        return self._aead.seal(frame, _context(kind, object_id), flags=ZSTD)

    def _area(self) -> OutputArea:
        area = getattr(self._local, "area", None)
        if area is None:
            area = self._local.area = _into_module().OutputArea()
        return area

    def release_output(self) -> None:
        """Hand back the pages of this thread's output area (its last group is sealed)."""
        area = getattr(self._local, "area", None)
        if area is not None:
            area.release()

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decomp = getattr(self._local, "decomp", None)
        if decomp is None:
            decomp = self._local.decomp = zstandard.ZstdDecompressor()
        return decomp

    def compress(self, data: bytes | memoryview, long: bool = False) -> tuple[int, bytes | memoryview]:
        """Return (mode, payload); RAW when zstd would not save at least 3 %."""
        size = len(data)
        if size < 64:
            return RAW, data
        comp = self._compressor(long)
        last: list[bytes] = []

        def compressed_size(view: bytes | memoryview) -> int:
            last[:] = [comp.compress(view)]
            return len(last[0])
        return (RAW, data) if _zstd_size_worth_keeping(data, compressed_size) is None else (ZSTD, last[0])

    def seal(self, kind: bytes, object_id: bytes, data: bytes | memoryview,
             compress: bool = True, long: bool = False) -> bytearray:
        if compress and len(data) >= (64 if long else INTO_MIN) and _into_module().available():
            return self._seal_compressed_into(_context(kind, object_id), data, long)
        mode, payload = self.compress(data, long) if compress else (RAW, data)
        return self._aead.seal(payload, _context(kind, object_id), flags=mode)

    def _seal_compressed_into(self, context: bytes, data: bytes | memoryview, long: bool) -> bytearray:
        """:meth:`seal` with the same decisions as :meth:`compress`, but zstd writes into this
        thread's reused output area (see ``compressinto``), and only the sealed copy is new."""
        into = self._into(long, binary=long and self.run_groups and self._binary_pays(data))
        with memoryview(self._area().take(_into_module().bound(len(data)))) as out:
            packed = _zstd_size_worth_keeping(data, lambda view: into.compress_into(view, out))
            if packed is None:
                return self._aead.seal(data, context, flags=RAW)
            return self._aead.seal(out[:packed], context, flags=ZSTD)

    def open(self, kind: bytes, object_id: bytes, sealed: bytes | bytearray | memoryview) -> bytes | bytearray:
        try:
            mode, payload = self._aead.open(sealed, _context(kind, object_id))
        except AuthenticationFailed as exc:
            raise EnvelopeError(str(exc)) from None
        if mode == RAW:
            return payload
        if mode == ZSTD:
            try:
                return self._decompressor().decompress(payload)
            except zstandard.ZstdError as exc:
                raise EnvelopeError(f"decompression failed: {exc}") from None
        raise EnvelopeError(f"unknown compression mode {mode}")

    def open_recycled(self, kind: bytes, object_id: bytes, sealed: bytes | bytearray | memoryview,
                      buffers: BufferSource, into: memoryview | None = None) -> tuple[memoryview, list[bytearray]]:
        """Like :meth:`open`, but decrypting and decompressing into recycled buffers.

        Returns the plaintext (a view into one of them) and the buffers to
        give back once the plaintext is no longer used.  zstd decodes a whole
        frame straight into the buffer when it knows the content size (which
        every frame drtool writes records): no fresh pages, no second copy.
        ``into``: where a compressed plaintext of exactly its length is decoded
        instead (a restore's window, when the group fills that part of it whole:
        no copy out of a group buffer); then ``into`` itself is returned.
        """
        cipher_size = plaintext_size(sealed)
        first = buffers.take(cipher_size)
        try:
            mode = self._aead.open_into(sealed, _context(kind, object_id), first)
        except AuthenticationFailed as exc:
            buffers.give(first)
            raise EnvelopeError(str(exc)) from None
        payload = memoryview(first)[:cipher_size]
        if mode == RAW:
            return payload, [first]
        if mode != ZSTD:
            buffers.give(first)
            raise EnvelopeError(f"unknown compression mode {mode}")
        try:
            plain, held = self._decompress_recycled(payload, buffers, into)
        finally:
            payload.release()
            buffers.give(first)
        return plain, held

    def _decompress_recycled(self, payload: memoryview, buffers: BufferSource,
                             into: memoryview | None = None) -> tuple[memoryview, list[bytearray]]:
        try:
            size = zstandard.frame_content_size(payload)
            if size < 0:  # not written by drtool's compressor: the allocating path
                return memoryview(self._decompressor().decompress(payload)), []
        except zstandard.ZstdError as exc:
            raise EnvelopeError(f"decompression failed: {exc}") from None
        if into is not None and len(into) == size:
            self._decompress_into(payload, into)
            return into, []
        out = buffers.take(size)
        try:
            with memoryview(out) as target:
                self._decompress_into(payload, target[:size])
        except EnvelopeError:
            buffers.give(out)
            raise
        return memoryview(out)[:size], [out]

    def _decompress_into(self, payload: memoryview, target: memoryview) -> None:
        """The whole frame into ``target``, exactly its length (its recorded content size)."""
        try:
            done = self._decompressor().stream_reader(payload).readinto(target)
        except zstandard.ZstdError as exc:
            raise EnvelopeError(f"decompression failed: {exc}") from None
        if done != len(target):
            raise EnvelopeError(f"decompression failed: {done} of {len(target)} bytes")


def _context(kind: bytes, object_id: bytes) -> bytes:
    return b"drtool/v1\0" + kind + b"\0" + object_id + b"\0"
