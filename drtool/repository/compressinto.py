"""zstd compression into a reused output area instead of a fresh worst-case allocation.

``ZstdCompressor.compress`` (python-zstandard's C backend) allocates its
result at zstd's worst-case size -- 16.1 MiB for a 16 MiB dump group -- and
shrinks it to the ~4 MiB actually written.  Under the backup's pinned mmap
threshold that allocation is on the heap; shrunk, it leaves a 12 MiB hole
that the next group's 16.1 MiB does not fit, so the dump's compressions kept
37-60 MiB of free but resident heap (night 1's peak RSS, "Nightly backup
peak RSS" in docs/performance.md).  The C backend has no call that writes
into a caller's buffer, and its streaming calls copy the whole input into a
window-sized buffer of the context (16 MiB resident per worker).

This module calls libzstd's one-shot ``ZSTD_compress2`` through the same
package's cffi backend, writing into an anonymous mapping kept per thread:
untouched pages of the worst-case bound never become resident, the written
ones are reused by the next group, and nothing is left on the heap.  The
frame is what ``ZstdCompressor`` writes with the same parameters (the same
bundled libzstd), so nothing changes for readers.  Without cffi,
:func:`available` is False and callers keep the C backend's ``compress``.
"""
from __future__ import annotations

import mmap
from typing import Any

import zstandard

try:  # shipped with python-zstandard; needs cffi (a dependency of cryptography)
    from zstandard import backend_cffi as _cffi_backend
    _ffi: Any = _cffi_backend.ffi
    _lib: Any = _cffi_backend.lib
except ImportError:  # a zstandard build without its cffi extension, or no cffi (tested in a subprocess)
    _ffi = _lib = None

AREA_ROUND = 1024 * 1024


def available() -> bool:
    return _lib is not None


def bound(size: int) -> int:
    """zstd's worst-case compressed size for ``size`` input bytes."""
    return int(_lib.ZSTD_compressBound(size))


def _parameters(params: zstandard.ZstdCompressionParameters) -> list[tuple[int, int]]:
    """libzstd parameter settings equal to a ZstdCompressionParameters (0 = libzstd's default)."""
    names = [("compression_level", "ZSTD_c_compressionLevel"), ("window_log", "ZSTD_c_windowLog"),
             ("hash_log", "ZSTD_c_hashLog"), ("chain_log", "ZSTD_c_chainLog"),
             ("search_log", "ZSTD_c_searchLog"), ("min_match", "ZSTD_c_minMatch"),
             ("target_length", "ZSTD_c_targetLength"), ("strategy", "ZSTD_c_strategy"),
             ("enable_ldm", "ZSTD_c_enableLongDistanceMatching"), ("ldm_hash_log", "ZSTD_c_ldmHashLog"),
             ("ldm_min_match", "ZSTD_c_ldmMinMatch"), ("ldm_bucket_size_log", "ZSTD_c_ldmBucketSizeLog"),
             ("ldm_hash_rate_log", "ZSTD_c_ldmHashRateLog")]
    settings = [(getattr(_lib, c_name), getattr(params, attr)) for attr, c_name in names]
    return [(name, value) for name, value in settings if value]


def _check(result: int) -> int:
    if _lib.ZSTD_isError(result):
        raise zstandard.ZstdError(_ffi.string(_lib.ZSTD_getErrorName(result)).decode())
    return result


def _new_cctx(level: int, params: zstandard.ZstdCompressionParameters | None,
              huffman_literals: bool = False) -> Any:
    """A libzstd context with ``level`` or ``params``; frames with their content size (when
    known), no checksum, no dictionary id, as ``ZstdCompressor`` writes them by default.
    ``huffman_literals``: literals Huffman-coded even at a negative level (which turns that off
    by default; ``ZstdCompressionParameters`` has no setting for it)."""
    if _lib is None:
        raise RuntimeError("zstd's cffi backend is not available")
    cctx = _lib.ZSTD_createCCtx()
    if cctx == _ffi.NULL:
        raise MemoryError("cannot create a zstd context")
    cctx = _ffi.gc(cctx, _lib.ZSTD_freeCCtx)
    settings = _parameters(params) if params is not None else [(_lib.ZSTD_c_compressionLevel, level)]
    settings += [(_lib.ZSTD_c_contentSizeFlag, 1), (_lib.ZSTD_c_checksumFlag, 0),
                 (_lib.ZSTD_c_dictIDFlag, 0)]
    if huffman_literals:
        settings.append((_lib.ZSTD_c_literalCompressionMode, _lib.ZSTD_ps_enable))
    for name, value in settings:
        _check(_lib.ZSTD_CCtx_setParameter(cctx, name, value))
    return cctx


class IntoCompressor:
    """One libzstd context (one thread's; not thread-safe) compressing into given buffers.

    Either ``level`` or ``params`` (a ``ZstdCompressionParameters``, as the
    long-window profile is built).  Frames carry the content size and no
    checksum, as ``ZstdCompressor``'s do by default.
    """

    def __init__(self, level: int = 3, params: zstandard.ZstdCompressionParameters | None = None,
                 huffman_literals: bool = False) -> None:
        self._cctx = _new_cctx(level, params, huffman_literals)

    def compress_into(self, data: bytes | bytearray | memoryview, out: Any) -> int:
        """Compress ``data`` as one frame into the writable buffer ``out``; the frame's length.

        ``out`` must hold :func:`bound` (``len(data)``) bytes: the call cannot fail for room.
        """
        # released on return, not when collected: the caller may release its views at once
        with _ffi.from_buffer(data) as src, _ffi.from_buffer(out, require_writable=True) as dst:
            if len(dst) < bound(len(src)):
                raise ValueError("output buffer smaller than zstd's bound")
            _check(_lib.ZSTD_CCtx_reset(self._cctx, _lib.ZSTD_reset_session_only))
            return _check(_lib.ZSTD_compress2(self._cctx, dst, len(dst), src, len(src)))


class OutputArea:
    """A thread's reused output: an anonymous mapping, grown when a larger bound is needed.

    Pages are faulted in as zstd writes them and kept for the next frame;
    the worst-case tail a frame does not reach is never resident.
    ``release`` hands the written pages back (the mapping stays).
    """

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None

    def take(self, size: int) -> mmap.mmap:
        if self._map is None or len(self._map) < size:
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(-1, -(-size // AREA_ROUND) * AREA_ROUND,
                                  flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared would be shmem
        return self._map

    def release(self) -> None:
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)


HEADER_ROOM = 8  # room kept before a streamed frame for the content size written at its end
_FCS_FIELD = {4: 2, 8: 3}  # Frame_Content_Size field bytes -> FCS_Field_Size flag (RFC 8878 3.1.1.1.1)


class FrameStream:
    """One zstd frame compressed as its input arrives (libzstd's ``ZSTD_compressStream2``).

    A long group fed blob by blob is compressed as it fills, so no plaintext
    copy of the group is kept beside the context: what stays resident is the
    context (its window-sized input buffer, ~16 MiB at window log 24, and the
    match tables) and the output written so far, in a mapping of its own.
    The frame is the one :class:`IntoCompressor` would write from the same
    bytes, but for its header: the size is not known when the header is
    written, so :meth:`finish` rewrites it with the content size (the readers
    decode a group straight into a buffer of that size).  Reused for the next
    frame after :meth:`finish`; :meth:`close` frees the context at once.
    """

    def __init__(self, level: int = 1, params: zstandard.ZstdCompressionParameters | None = None,
                 expected: int = 0) -> None:
        self._cctx = _new_cctx(level, params)
        self._map = mmap.mmap(-1, _rounded(HEADER_ROOM + bound(expected) + AREA_ROUND),
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._pos = _ffi.new("size_t *", HEADER_ROOM)
        self._in_pos = _ffi.new("size_t *")
        self.fed = 0
        self.profile = ""  # set by its maker: the compression profile it was made with

    def resident(self) -> int:
        """Bytes this stream may hold resident now: the context's (its window buffer and tables,
        which it keeps between frames) and the output written so far."""
        return int(_lib.ZSTD_sizeof_CCtx(self._cctx)) + int(self._pos[0])

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Compress ``data`` as the frame's next bytes (whole blocks are compressed as they fill)."""
        self._room(bound(self.fed + len(data)))
        with _ffi.from_buffer(data) as src, _ffi.from_buffer(self._map, require_writable=True) as dst:
            self._in_pos[0] = 0
            _check(_lib.ZSTD_compressStream2_simpleArgs(self._cctx, dst, len(dst), self._pos, src, len(src),
                                                        self._in_pos, _lib.ZSTD_e_continue))
            if self._in_pos[0] != len(src):  # cannot happen with the bound's room; never lose input
                raise zstandard.ZstdError("zstd did not take the whole input")
        self.fed += len(data)

    def finish(self) -> memoryview:
        """End the frame and return it (a view valid until the next :meth:`feed` or :meth:`close`);
        the stream is ready for a new frame."""
        self._room(bound(self.fed))
        with _ffi.from_buffer(self._map, require_writable=True) as dst:
            self._in_pos[0] = 0
            left = _check(_lib.ZSTD_compressStream2_simpleArgs(self._cctx, dst, len(dst), self._pos, _ffi.NULL,
                                                               0, self._in_pos, _lib.ZSTD_e_end))
        if left:  # cannot happen with the bound's room
            raise zstandard.ZstdError("zstd could not end the frame")
        start, end = self._with_content_size(), self._pos[0]
        self._pos[0], self.fed = HEADER_ROOM, 0
        return memoryview(self._map)[start:end]

    def _with_content_size(self) -> int:
        """Write the content size into the frame's header; the frame's new start."""
        head = HEADER_ROOM
        descriptor = self._map[head + 4]
        if descriptor & 0xE0:  # a content size is there already (a single-segment frame)
            return head
        if descriptor & 0x03:
            raise zstandard.ZstdError("unexpected dictionary id in a streamed frame")
        field = 4 if self.fed < 1 << 32 else 8
        start = head - field
        magic, window = self._map[head:head + 4], self._map[head + 5]
        self._map[start:start + 4] = magic
        self._map[start + 4] = descriptor | _FCS_FIELD[field] << 6
        self._map[start + 5] = window
        self._map[start + 6:start + 6 + field] = self.fed.to_bytes(field, "little")
        return start

    def _room(self, frame_bound: int) -> None:
        need = HEADER_ROOM + frame_bound + 64
        if need > len(self._map):
            grown = mmap.mmap(-1, _rounded(2 * need), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            grown[:self._pos[0]] = self._map[:self._pos[0]]
            self._map.close()
            self._map = grown

    def release_output(self) -> None:
        """Hand back the output's pages (the last frame is sealed; the mapping stays)."""
        self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Free the context (its window buffer) and the output mapping now, not when collected."""
        if self._cctx is not None:
            _ffi.release(self._cctx)
            self._cctx = None
            self._map.close()


def _rounded(size: int) -> int:
    return -(-size // AREA_ROUND) * AREA_ROUND
