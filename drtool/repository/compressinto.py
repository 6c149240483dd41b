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


class IntoCompressor:
    """One libzstd context (one thread's; not thread-safe) compressing into given buffers.

    Either ``level`` or ``params`` (a ``ZstdCompressionParameters``, as the
    long-window profile is built).  Frames carry the content size and no
    checksum, as ``ZstdCompressor``'s do by default.
    """

    def __init__(self, level: int = 3, params: zstandard.ZstdCompressionParameters | None = None) -> None:
        if _lib is None:
            raise RuntimeError("zstd's cffi backend is not available")
        self._cctx = _ffi.gc(_lib.ZSTD_createCCtx(), _lib.ZSTD_freeCCtx)
        if self._cctx == _ffi.NULL:
            raise MemoryError("cannot create a zstd context")
        settings = _parameters(params) if params is not None else [(_lib.ZSTD_c_compressionLevel, level)]
        settings += [(_lib.ZSTD_c_contentSizeFlag, 1), (_lib.ZSTD_c_checksumFlag, 0),
                     (_lib.ZSTD_c_dictIDFlag, 0)]
        for name, value in settings:
            self._check(_lib.ZSTD_CCtx_setParameter(self._cctx, name, value))

    @staticmethod
    def _check(result: int) -> int:
        if _lib.ZSTD_isError(result):
            raise zstandard.ZstdError(_ffi.string(_lib.ZSTD_getErrorName(result)).decode())
        return result

    def compress_into(self, data: bytes | bytearray | memoryview, out: Any) -> int:
        """Compress ``data`` as one frame into the writable buffer ``out``; the frame's length.

        ``out`` must hold :func:`bound` (``len(data)``) bytes: the call cannot fail for room.
        """
        # released on return, not when collected: the caller may release its views at once
        with _ffi.from_buffer(data) as src, _ffi.from_buffer(out, require_writable=True) as dst:
            if len(dst) < bound(len(src)):
                raise ValueError("output buffer smaller than zstd's bound")
            self._check(_lib.ZSTD_CCtx_reset(self._cctx, _lib.ZSTD_reset_session_only))
            return self._check(_lib.ZSTD_compress2(self._cctx, dst, len(dst), src, len(src)))


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
