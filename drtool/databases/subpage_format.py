"""The sub-page form of an incremental's ``.delta`` file: only the 512-byte blocks that changed.

A row update rewrites a few hundred bytes of a 16 KiB page (and its header
and trailer), yet mariabackup's incremental stores the whole page; with 1 %
of rows updated at random, two thirds of the pages change and night 2 stores
~26 % of the data (docs/performance.md, "MariaDB night 2").  Stored as the
blocks that differ from the page's previous version — found by comparing
block fingerprints with the local map of the previous chain member
(:mod:`drtool.databases.blockmap`), never by reading the old page back from
the repository — the same night stores ~5 %.

``X.delta`` is stored as ``X.delta.drtool-subpage``: a file header, then one
record per page of the delta in its order.  Header pages and pages without a
known previous version are stored whole; a changed page as its number, a
BLAKE3 digest of the whole new page, a bit mask of changed blocks and those
blocks.  A restore rebuilds ``X.delta`` byte for byte from the previous
member's pages (:mod:`drtool.databases.subpage_restore`) and checks each
rebuilt page against its digest, so a fingerprint collision or a wrong base
fails the restore loudly instead of restoring a wrong page.
"""
from __future__ import annotations

import functools
import struct
import sys
from array import array
from itertools import compress, repeat
from operator import ne
from types import ModuleType
from typing import IO, Iterator

import blake3
import xxhash

from drtool.errors import RestoreChainError

SUFFIX = b".drtool-subpage"
FILE_MAGIC = b"DRSUBPG1"
FORMAT = 1  # recorded in the snapshot's meta (``subpage``); a restore refuses a newer one
BLOCK = 512
DIGEST = 16
HEADER, WHOLE, BLOCKS = 0, 1, 2
_FILE_HEAD = struct.Struct("<8sII")  # magic, page size, block size
_PAGE_NO = struct.Struct("<BI")      # record kind, page number
FINGERPRINT_STEP = 1024 * 1024       # a full's payloads are fingerprinted in pieces of this size


def fingerprints(page: bytes | memoryview, seed: int, compiled: bool = True) -> array:
    """One 64-bit fingerprint per block (never 0: the map's "not known").

    xxh3 with a seed drawn per chain: a fingerprint only has to tell a block
    from its own previous version, and a miss is caught by the page digest
    at restore.  ``_fingerprint.c`` computes them with the GIL released
    (a 2.5 GiB full: ~0.2 s of CPU); without it (``compiled=False``, or where it
    was not built) one xxhash call per block (~1 s), :func:`fingerprints_in_python`.
    """
    native = _NATIVE if compiled else None
    if native is None:
        return fingerprints_in_python(page, seed)
    found = array("Q")
    found.frombytes(native.fingerprints(page, seed))
    return found


def fingerprints_in_python(page: bytes | memoryview, seed: int) -> array:
    """:func:`fingerprints` with the xxhash module.  The digests are joined as bytes and read
    as one array (byte-swapped to the values ``xxh3_64_intdigest`` gives, which maps already
    written hold): 20 % less CPU than an int per block, and a full's payloads go in 1 MiB
    steps whose slices are made once."""
    view = memoryview(page)
    digests = []
    for start in range(0, len(view), FINGERPRINT_STEP):
        piece = view[start:start + FINGERPRINT_STEP]
        digests.append(b"".join(map(xxhash.xxh3_64_digest, map(piece.__getitem__, _slices(len(piece))),
                                    repeat(seed))))
    found = array("Q")
    found.frombytes(b"".join(digests))
    if sys.byteorder == "little":  # the digest is big-endian (xxhash's canonical form)
        found.byteswap()
    if 0 in found:  # one block in 2**64: made 1, so it cannot pass for "not known"
        found = array("Q", (fp or 1 for fp in found))
    return found


def _load_native() -> ModuleType | None:
    try:
        from drtool.databases import _fingerprint  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _fingerprint  # type: ignore[no-any-return]


_NATIVE = _load_native()


@functools.lru_cache(maxsize=8)
def _slices(size: int) -> tuple[slice, ...]:
    """The blocks of a page of ``size`` bytes, made once (the per-block loop stays in C)."""
    return tuple(slice(pos, pos + BLOCK) for pos in range(0, size, BLOCK))


def file_header(page_size: int) -> bytes:
    return _FILE_HEAD.pack(FILE_MAGIC, page_size, BLOCK)


def header_record(page: bytes) -> bytes:
    return bytes((HEADER,)) + page


def whole_record(page_no: int, page: bytes) -> bytes:
    return _PAGE_NO.pack(WHOLE, page_no) + page


def blocks_record(page_no: int, page: bytes, changed: list[int]) -> bytes:
    """A page as the blocks listed in ``changed`` (block indexes, ascending) plus its digest."""
    mask = 0
    for index in changed:
        mask |= 1 << index
    parts = [_PAGE_NO.pack(BLOCKS, page_no), blake3.blake3(page).digest(DIGEST),
             mask.to_bytes(len(page) // BLOCK // 8 or 1, "little")]
    slices = _slices(len(page))
    view = memoryview(page)
    parts.extend(view[slices[index]] for index in changed)
    return b"".join(parts)


def encode_page(page_no: int, page: bytes, new_fps: array, old_fps: array | None) -> tuple[bytes, int]:
    """The record for one delta page, and how many blocks it stores (all of them when whole)."""
    count = len(new_fps)
    if old_fps is None or len(old_fps) != count or 0 in old_fps:
        return whole_record(page_no, page), count
    changed = list(compress(range(count), map(ne, new_fps, old_fps)))
    if len(changed) * BLOCK + DIGEST + count // 8 >= len(page):
        return whole_record(page_no, page), count
    return blocks_record(page_no, page, changed), len(changed)


def read_records(handle: IO[bytes], name: str) -> Iterator[tuple[int, int, bytes, bytes, int]]:
    """(kind, page_no, digest, data, mask) per record of an opened sub-page file; ``data`` is the
    whole page for HEADER/WHOLE and the stored blocks for BLOCKS."""
    head = handle.read(_FILE_HEAD.size)
    if len(head) != _FILE_HEAD.size or head[:8] != FILE_MAGIC:
        raise RestoreChainError(f"{name} is not a drtool sub-page file (damaged, or from a newer drtool)")
    _magic, page_size, block = _FILE_HEAD.unpack(head)
    if block != BLOCK or page_size % BLOCK:
        raise RestoreChainError(f"{name}: unsupported block size {block} / page size {page_size}")
    mask_len = page_size // BLOCK // 8 or 1
    while True:
        kind_raw = handle.read(1)
        if not kind_raw:
            return
        kind = kind_raw[0]
        if kind == HEADER:
            yield kind, -1, b"", _exact(handle, page_size, name), 0
            continue
        (page_no,) = struct.unpack("<I", _exact(handle, 4, name))
        if kind == WHOLE:
            yield kind, page_no, b"", _exact(handle, page_size, name), 0
        elif kind == BLOCKS:
            digest = _exact(handle, DIGEST, name)
            mask = int.from_bytes(_exact(handle, mask_len, name), "little")
            yield kind, page_no, digest, _exact(handle, bin(mask).count("1") * BLOCK, name), mask
        else:
            raise RestoreChainError(f"{name} is damaged: unknown record kind {kind}")


def page_size_of(handle: IO[bytes], name: str) -> int:
    """The page size a sub-page file was written with (its header), leaving the file at its start."""
    head = handle.read(_FILE_HEAD.size)
    handle.seek(0)
    if len(head) != _FILE_HEAD.size or head[:8] != FILE_MAGIC:
        raise RestoreChainError(f"{name} is not a drtool sub-page file (damaged, or from a newer drtool)")
    return int(_FILE_HEAD.unpack(head)[1])


def rebuild_page_in(page: memoryview, mask: int, blocks: bytes, digest: bytes, where: str) -> None:
    """Lay the stored blocks over ``page`` (its previous version, rebuilt in place) and check the
    result against its digest.  Only the set bits of ``mask`` are visited (a row update changes a
    few of a page's 32 blocks)."""
    view = memoryview(blocks)
    taken = 0
    while mask:
        low = mask & -mask
        start = (low.bit_length() - 1) * BLOCK
        page[start:start + BLOCK] = view[taken:taken + BLOCK]
        taken += BLOCK
        mask ^= low
    if blake3.blake3(page).digest(DIGEST) != digest:
        raise RestoreChainError(f"{where}: the rebuilt page does not match the digest stored at backup time "
                                f"(its previous version in the chain is not the one the backup compared "
                                f"against); nothing was restored",
                                hint="restore the chain's full backup alone (an earlier --point-in-time), or "
                                     "check the repository: drtool check --read-data")


def _exact(handle: IO[bytes], size: int, name: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise RestoreChainError(f"{name} ends in the middle of a record: the stored stream is damaged")
    return data


def check_readable(recorded: object, snapshot: str) -> None:
    """Refuse, before anything is written, a member stored in a sub-page format newer than this drtool's."""
    if isinstance(recorded, dict) and int(recorded.get("format", 0)) > FORMAT:
        raise RestoreChainError(f"snapshot {snapshot} stores its pages in sub-page format "
                                f"{recorded.get('format')}, newer than this drtool reads ({FORMAT})",
                                hint="restore with the drtool version that took the backup, or a newer one")
