"""mariabackup's incremental files: ``X.delta`` (changed pages) and ``X.meta`` (their page size).

A ``.delta`` file is a run of clusters of ``page_size / 4`` pages: a header
page (``xtra``, or ``XTRA`` for the last cluster, then big-endian page
numbers, ended by ``0xFFFFFFFF`` when the cluster is not full) followed by
the pages it names.  ``mariabackup --prepare --incremental-dir`` writes each
page at ``page_no * page_size`` of the tablespace.  drtool parses the file as
it streams past (:class:`DeltaParser`) to store the pages in sub-page form,
and finds pages in rebuilt files (:func:`page_offset`, :func:`page_numbers`)
to rebuild the next member's.
"""
from __future__ import annotations

import re
import struct
from array import array
from dataclasses import dataclass
from typing import Iterator

from drtool.errors import SourceError

MORE = b"xtra"
LAST = b"XTRA"
END = 0xFFFFFFFF
DELTA_SUFFIX = b".delta"
META_SUFFIX = b".meta"
_META_RE = re.compile(rb"^\s*(page_size|zip_size|space_id)\s*=\s*(\d+)\s*$", re.M)


@dataclass(frozen=True)
class DeltaMeta:
    """What ``X.meta`` says; ``zip_size`` is non-zero for ROW_FORMAT=COMPRESSED tables."""

    page_size: int
    zip_size: int
    space_id: int

    @classmethod
    def parse(cls, text: bytes) -> "DeltaMeta | None":
        found = {k.decode(): int(v) for k, v in _META_RE.findall(text)}
        if "page_size" not in found or found["page_size"] < 1024 or found["page_size"] & (found["page_size"] - 1):
            return None
        return cls(found["page_size"], found.get("zip_size", 0), found.get("space_id", 0))


def per_cluster(page_size: int) -> int:
    """Data pages a cluster's header page can name (its first four bytes are the magic)."""
    return page_size // 4 - 1


def page_offset(index: int, page_size: int) -> int:
    """Where the ``index``-th data page of a ``.delta`` file starts (header pages interleave)."""
    cluster, within = divmod(index, per_cluster(page_size))
    return (cluster * (page_size // 4) + 1 + within) * page_size


def header_numbers(header: bytes, page_size: int) -> tuple[list[int], bool]:
    """The page numbers a header page names, and whether it is the last cluster's."""
    magic = header[:4]
    if magic not in (MORE, LAST):
        raise SourceError("an incremental .delta file is damaged: a cluster does not start with xtra/XTRA")
    numbers = []
    for (number,) in struct.iter_unpack(">I", header[4:page_size]):
        if number == END:
            break
        numbers.append(number)
    if magic == MORE and len(numbers) != per_cluster(page_size):
        raise SourceError("an incremental .delta file is damaged: a cluster other than the last is not full")
    return numbers, magic == LAST


class DeltaParser:
    """Cuts a ``.delta`` file arriving in pieces into ('header', bytes) and ('page', number, bytes)."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._carry = bytearray()
        self._pending: list[int] = []
        self._next = 0
        self._ended = False
        self._fed = False

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[str, int, bytes]]:
        """Items for the whole pages ``data`` completes; the rest is kept for the next piece."""
        size = self.page_size
        view = memoryview(data)
        self._fed = self._fed or bool(view)
        start = 0
        if self._carry:
            need = size - len(self._carry)
            self._carry += view[:need]
            start = need
            if len(self._carry) < size:
                return
            yield self._item(bytes(self._carry))
            self._carry.clear()
        whole_end = start + (len(view) - start) // size * size
        for pos in range(start, whole_end, size):
            yield self._item(bytes(view[pos:pos + size]))
        self._carry += view[whole_end:]

    def _item(self, page: bytes) -> tuple[str, int, bytes]:
        if self._next < len(self._pending):
            self._next += 1
            return "page", self._pending[self._next - 1], page
        if self._ended:
            raise SourceError("an incremental .delta file is damaged: pages follow its last cluster")
        self._pending, self._ended = header_numbers(page, self.page_size)
        self._next = 0
        return "header", -1, page

    def finish(self) -> None:
        if not self._fed and not self._carry:
            return  # an empty .delta: nothing to rebuild either
        if self._carry or self._next < len(self._pending) or not self._ended:
            raise SourceError("an incremental .delta file ends in the middle of a cluster: the stream was cut")


def page_numbers(path: str, page_size: int) -> array:
    """The page numbers of a ``.delta`` file in file order (4 bytes each: a chain of big tables stays small)."""
    numbers = array("I")
    with open(path, "rb") as handle:
        cluster = 0
        while True:
            handle.seek(cluster * (page_size // 4) * page_size)
            header = handle.read(page_size)
            if len(header) < page_size:
                raise SourceError(f"{path} is damaged: it ends before its last cluster")
            found, last = header_numbers(header, page_size)
            numbers.extend(found)
            if last:
                return numbers
            cluster += 1
