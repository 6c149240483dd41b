"""Reading stored packs for maintenance: their entries, without going through the index.

Prune and ``catalog rebuild`` ask a pack itself what it holds (the index may
be what they are rebuilding or cleaning up); ``check`` authenticates a whole
pack with :func:`verify_pack`.  Split from :mod:`repository.repo`,
which keeps writing and reading blobs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from drtool.errors import IntegrityError
from drtool.repository.envelope import EnvelopeError
from drtool.repository.index import Location
from drtool.repository.objects import PACKS, pack_name
from drtool.repository.packfile import (FOOTER, BlobEntry, PackFormatError, groups_of, parse_trailer,
                                        read_trailer, trailer_span)

if TYPE_CHECKING:
    from drtool.backends.base import Backend
    from drtool.repository.repo import Repository


def iter_pack_names(backend: Backend) -> Iterable[str]:
    return (info.name for info in backend.list(f"{PACKS}/"))


def read_pack_entries(repo: Repository, pack_id: bytes) -> list[BlobEntry]:
    """A pack's entries from its trailer, the whole pack downloaded."""
    data = repo.backend.get(pack_name(pack_id))
    try:
        return read_trailer(repo.envelope, data)
    except (PackFormatError, EnvelopeError) as exc:
        raise IntegrityError(f"pack {pack_id.hex()} is damaged: {exc}") from None


def read_pack_trailer(repo: Repository, pack_id: bytes, size: int) -> list[BlobEntry]:
    """A pack's entries from its footer and trailer alone: two ranged reads, no groups.

    ``size``: the pack's size (from a listing).  ObjectMissing when the pack
    is gone; IntegrityError, with what is wrong, when it is damaged or forged.
    """
    name = pack_name(pack_id)
    if size < FOOTER.size:
        raise IntegrityError("pack is shorter than its footer")
    try:
        start, length = trailer_span(repo.backend.get_range(name, size - FOOTER.size, FOOTER.size), size)
        return parse_trailer(repo.envelope, repo.backend.get_range(name, start, length), start)
    except (PackFormatError, EnvelopeError) as exc:
        raise IntegrityError(str(exc)) from None


def verify_pack(repo: Repository, pack_id: bytes, data: bytes) -> tuple[list[BlobEntry], list[str]]:
    """Authenticate every group and blob of a whole pack (``data``); return (entries, problems)."""
    try:
        entries = read_trailer(repo.envelope, data)
    except (PackFormatError, EnvelopeError) as exc:
        return [], [f"damaged trailer ({exc})"]
    problems: list[str] = []
    view = memoryview(data)
    for members in groups_of(entries):
        first = members[0]
        loc = Location(pack_id, first.blob_type, first.offset, first.length, 0, 0)
        try:
            plain = repo.open_group_plain(loc, view[first.offset:first.offset + first.length])
            for e in members:
                repo.blob_from_group(e.blob_id, loc._replace(inner=e.inner, raw_length=e.raw_length), plain)
        except IntegrityError as exc:
            problems.append(str(exc))
    return entries, problems
