"""One ranged GET read front to back, group by group (capability StreamedReads).

A restore that needs most of a pack reads it with one request, as restic
does; buffering that whole response would cost ``connections`` x ~20 MiB
and make the decrypting threads wait for the last byte of a pack before
the first group can be opened.  Reading the body in order instead hands
each group on as soon as its bytes are in, into a buffer of the group's
size: memory is bounded by the groups in flight, not by the request size.

A body that breaks off (reset, truncation, a stalled read, a 200 carrying
an S3 error document) is resumed with a new ranged GET from the first byte
not yet read, up to ``read_attempts`` times per stream; the bytes already
handed on are never read twice.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from drtool.backends.s3_errors import BODY_ERRORS
from drtool.backends.throttle import CHUNK
from drtool.errors import TransientBackendError

if TYPE_CHECKING:
    from drtool.backends.s3 import S3Backend


class S3RangeStream:
    """Bytes ``offset .. offset + length`` of one object, read in order with :meth:`readinto`."""

    def __init__(self, backend: "S3Backend", name: str, offset: int, length: int) -> None:
        self.backend = backend
        self.name = name
        self.pos = offset
        self.end = offset + length
        self._body: Any = None
        self._failures = 0
        self._last = ""

    def readinto(self, view: memoryview) -> None:
        """Fill ``view`` exactly with the next ``len(view)`` bytes of the range (or raise)."""
        if self.pos + len(view) > self.end:
            raise ValueError(f"read past the requested range of {self.name}")
        got = 0
        limit = self.backend.download_limit
        while got < len(view):
            if self._body is None:
                self._open()
                continue
            step = min(CHUNK, len(view) - got)
            if limit is not None:
                limit.take(step)
            try:
                n = self._body.readinto(view[got:got + step])
            except BODY_ERRORS as exc:
                self._broken(type(exc).__name__)
                continue
            if not n:
                self._broken(f"short body, {self.end - self.pos} bytes missing")
                continue
            got += n
            self.pos += n
            self.backend._add_stat("bytes_down", n)

    def skip(self, amount: int) -> None:
        """Read past ``amount`` bytes nobody needs (a small gap between two wanted groups)."""
        scratch = bytearray(min(CHUNK, amount))
        while amount:
            step = min(len(scratch), amount)
            self.readinto(memoryview(scratch)[:step])
            amount -= step

    def close(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except BODY_ERRORS:
                pass
            self._body = None

    def _open(self) -> None:
        """A ranged GET of what is still to be read; a reply that is not that range counts as a failure."""
        backend = self.backend
        if self._failures:
            backend._add_stat("retries", 1)
            backend._backoff(self._failures - 1)
        resp = backend.call("reading", self.name, backend.client.get_object, Bucket=backend.bucket,
                            Key=backend._key(self.name), Range=f"bytes={self.pos}-{self.end - 1}")
        problem = _range_problem(resp, self.pos, self.end)
        if problem == "whole object":  # the store ignored Range: read along to where we are
            self._body = resp["Body"]
            self._discard(self.pos)
            return
        if problem:
            resp["Body"].close()
            self._broken(problem)
            return
        self._body = resp["Body"]

    def _discard(self, amount: int) -> None:
        """Read ``amount`` bytes of a fresh body without moving :attr:`pos` (a reply from byte 0)."""
        scratch = bytearray(min(CHUNK, max(amount, 1)))
        while amount and self._body is not None:
            try:
                n = self._body.readinto(memoryview(scratch)[:min(len(scratch), amount)])
            except BODY_ERRORS as exc:
                self._broken(type(exc).__name__)
                return
            if not n:
                self._broken("short body")
                return
            amount -= n

    def _broken(self, why: str) -> None:

        self.close()
        self._failures += 1
        self._last = why
        if self._failures >= self.backend.opts["read_attempts"]:
            raise TransientBackendError(f"S3 reading {self.name} from {self.backend.errors.where} "
                                        f"kept failing: {why}")


def _range_problem(resp: Mapping[str, Any], start: int, end: int) -> str:
    """"" when the reply is exactly bytes ``start .. end``; "whole object" when Range was ignored."""
    length = int(resp.get("ContentLength", -1))
    content_range = str(resp.get("ContentRange") or "")
    if content_range.startswith(f"bytes {start}-") and length == end - start:
        return ""
    if not content_range and resp.get("ETag") and length >= end:
        return "whole object"
    if not resp.get("ETag"):
        return "a reply without an ETag (an S3 error document?) came back for a ranged read"
    return f"asked for bytes {start}-{end - 1}, got {content_range or 'no range'} of {length} bytes"
