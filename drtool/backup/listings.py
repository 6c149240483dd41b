"""A directory of regular files whose listing is what its parent tree was built from: reused whole.

The unchanged re-run of a million tiny files decoded every parent tree
into ``Node`` objects and compared each file's ``lstat`` with its node,
one Python call after another (after the blob look-ups went,
``repository.completeness``, this was most of the walk's time per file).
A tree is a function of its nodes, and what the "as is" rule compares
(``sources.files.unchanged_as_is``) is a function of the listing: so a
digest of a directory's listing, recorded beside the tree id it produced
(in the index cache: ``DiskIndex.record_listings``), lets the next run
that lists the same digest take the tree id over without reading the tree.

Only directories that hold regular files, each of one link and recorded
as read without change (no hard links, symlinks, devices, subdirectories,
torn reads, object metadata): for those the digest of the recorded nodes
and the digest of a listing are equal exactly when every entry passes
``unchanged_as_is`` against its node and no entry appeared or went.
Used only when the parent tree's blobs are known present (the same
completeness mark that lets a single file be taken over without a look-up)
and no content hash is asked for.
"""
from __future__ import annotations

import stat
from typing import Iterable

from drtool.digests import blake2b
from drtool.snapshot.model import FILE, Node
from drtool.sources.files import Entry

_REG = stat.S_IFREG


def _digest(rows: list[tuple[object, ...]]) -> bytes:
    # repr escapes what is not printable (lone surrogates of non-UTF-8 names included): one
    # text per listing, in name order, with every field the "as is" rule compares.
    return blake2b(repr(rows).encode(), digest_size=16).digest()


def listing_digest(entries: Iterable[Entry]) -> bytes | None:
    """The digest of a listing (``scan_dir``'s entries, in name order); None unless every
    entry is a regular file."""
    rows: list[tuple[object, ...]] = []
    for entry in entries:
        st = entry.st
        if not stat.S_ISREG(st.st_mode):
            return None
        rows.append((entry.name, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns,
                     st.st_ino, st.st_size, st.st_nlink))
    return _digest(rows)


def nodes_digest(nodes: list[Node]) -> bytes | None:
    """The digest a listing has when each of these nodes is what the walk would record for its
    entry as is (same fields, same order); None if one of them could not be taken over as is."""
    rows: list[tuple[object, ...]] = []
    for node in nodes:
        if (node.type != FILE or node.links != 1 or node.link_key is not None or node.changed
                or node.subtree is not None or node.target is not None or node.rdev or node.xmeta is not None):
            return None
        rows.append((node.name, _REG | node.mode, node.uid, node.gid, node.mtime_ns, node.ctime_ns,
                     node.inode, node.size, 1))
    rows.sort()  # names are unique in a directory: name order, as scan_dir lists
    return _digest(rows)
