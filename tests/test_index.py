"""The in-memory blob index: packed entries load exactly like decoded ones."""
from __future__ import annotations

import os

import pytest

from drtool.repository.index import MemoryIndex, PackRecord
from drtool.repository.packfile import DATA_BLOB, TREE_BLOB, BlobEntry, pack_entries


def _entries(n: int) -> list[BlobEntry]:
    return [BlobEntry(DATA_BLOB if i % 3 else TREE_BLOB, os.urandom(32), i * 100, 100, i, 7 + i)
            for i in range(n)]


def test_add_packed_matches_add_pack() -> None:
    pack_a, pack_b = os.urandom(32), os.urandom(32)
    entries_a, entries_b = _entries(50), _entries(20)
    entries_b.append(entries_a[0])  # a duplicate blob keeps its first location
    decoded, packed = MemoryIndex(), MemoryIndex()
    for pack_id, entries in ((pack_a, entries_a), (pack_b, entries_b)):
        decoded.add_pack(PackRecord(pack_id, entries))
        packed.add_packed(pack_id, pack_entries(entries))
    assert dict(decoded.items()) == dict(packed.items())
    assert decoded.packs == packed.packs == {pack_a: 50, pack_b: 21}
    assert packed.get(entries_a[0].blob_id).pack_id == pack_a


def test_add_packed_rejects_a_partial_entry() -> None:
    with pytest.raises(ValueError):
        MemoryIndex().add_packed(os.urandom(32), pack_entries(_entries(2))[:-1])
