"""Content-defined chunking with a compiled FastCDC, keyed by the repository.

The gear table is perturbed by a per-repository secret seed, so chunk
boundaries cannot be used to fingerprint known files as easily as with a
public table.  The backup pipeline cuts large files in independent 8 MiB
segments on worker threads (``cut``); ``split`` carries the tail of each
block into the next for callers that need fully content-defined cuts.
"""
from __future__ import annotations

from typing import Callable, Iterator

from pyfastcdc import FastCDC

READ_BLOCK = 8 * 1024 * 1024


class Chunker:
    def __init__(self, avg_size: int, seed: int, min_size: int | None = None) -> None:
        """``min_size``: a quarter of the average unless given; the cut scans from there, so a
        larger minimum scans less of the data (physical streams: ``ChunkPipeline``)."""
        self.avg_size = avg_size
        self._cdc = FastCDC(avg_size, min_size=min_size or max(64, avg_size // 4),
                            max_size=min(16 * 1024 * 1024, avg_size * 4), seed=seed)

    def cut(self, data: bytes | memoryview) -> Iterator[memoryview]:
        """Chunks of one buffer, the last one ending at its end."""
        view = memoryview(data)
        for cut in self._cdc.cut_buf(view):
            yield view[cut.offset:cut.offset + cut.length]

    def split(self, read: Callable[[int], bytes], first: bytes = b"") -> Iterator[memoryview]:
        """Yield chunks of everything ``read`` returns until it returns b''."""
        carry = first
        while True:
            block = read(READ_BLOCK)
            if not block:
                if carry:
                    view = memoryview(carry)
                    for cut in self._cdc.cut_buf(view):
                        yield view[cut.offset:cut.offset + cut.length]
                return
            buf = carry + block if carry else block
            view = memoryview(buf)
            cuts = list(self._cdc.cut_buf(view))
            for cut in cuts[:-1]:
                yield view[cut.offset:cut.offset + cut.length]
            carry = bytes(view[cuts[-1].offset:])
