"""Marks in the disk index cache: "every blob this snapshot tree reads is in the index".

An unchanged re-run takes each unchanged file over from the parent snapshot
and used to look up every one of its blobs first (``has_all``): a million
look-ups on a million tiny files, ~15 % of the walking thread's time, and on
a cold cache the reads of the id table's pages.  The look-up is what lets a
backup heal a repository that lost data: a file whose blob is no longer in
the index is read and stored again.

What may remove a referenced blob from the index: not ``prune`` (it removes
only blobs no snapshot reads, under the exclusive lock), but a lost or
deleted pack or index object (``catalog rebuild`` then indexes what is
left).  Every such removal reaches this cache the same way: an index object
the repository no longer lists is dropped (``DiskIndex.drop``), an
interrupted move is undone, or the cache is built afresh; all three go
through :func:`removed` (``keyranges.forget_pack``, ``buildruns.bulk_build``),
which gives the cache a new ``removals`` token and forgets every mark.

So a mark says: at ``removals`` token T, every blob of tree ``tree`` (and its
subtrees) was in the index, the blobs of this run's own index objects
``pending`` included.  A later backup trusts it while the cache's token is
still T and each pending index object has reached the cache (one that never
did, deleted before the next load read it in, leaves no trace of a removal
here, so it must be seen arriving).  Between the two only additions happened,
so the parent's blobs are all still indexed.  Entries are only ever added
from index objects the repository lists (``diskindex``), as before.

The cache is local and never trusted over the repository (it is rebuilt
from the index objects when in doubt); a mark is trusted exactly as far as
the cache's own answers to ``has_all`` were.  Cache format 3: a drtool that
did not know about marks must not share the cache (its drops would not
renew the token), so format-2 caches are rebuilt.
"""
from __future__ import annotations

import os
from typing import Any

import lmdb

REMOVALS = b"removals"  # meta: a random token, new whenever entries leave the cache
MARK = b"complete:"  # meta: MARK + tree id -> removals token + pending index ids ("," separated)
LISTING = b"listing:"  # meta: LISTING + tree id -> digest of the listing it was built from (backup.listings)
TOKEN_SIZE = 16


def removed(txn: lmdb.Transaction, meta: Any) -> None:
    """Entries are leaving the cache in ``txn``: a new token, and every mark is forgotten (and
    the listing digests: facts about trees, never wrong, but forgotten here so that they do not
    pile up between prunes; the next run records them again)."""
    txn.put(REMOVALS, os.urandom(TOKEN_SIZE), db=meta)
    cursor = txn.cursor(db=meta)
    for prefix in (LISTING, MARK):
        found = cursor.set_range(prefix)
        while found and bytes(cursor.key()).startswith(prefix):
            found = cursor.delete()  # moves to the next key


def listing(txn: lmdb.Transaction, meta: Any, tree_id: str) -> bytes | None:
    """The digest of the listing ``tree_id`` was built from, if recorded."""
    try:
        found = txn.get(LISTING + bytes.fromhex(tree_id), db=meta)
    except ValueError:
        return None
    return bytes(found) if found is not None else None


def record_listings(txn: lmdb.Transaction, meta: Any, digests: dict[str, bytes]) -> None:
    for tree_id, digest in digests.items():
        txn.put(LISTING + bytes.fromhex(tree_id), digest, db=meta)


def token(txn: lmdb.Transaction, meta: Any) -> bytes | None:
    found = txn.get(REMOVALS, db=meta)
    return bytes(found) if found is not None else None


def mark(txn: lmdb.Transaction, meta: Any, tree_id: str, since: bytes, pending: list[str]) -> bool:
    """Mark ``tree_id`` complete unless entries left the cache since token ``since`` was read."""
    if len(since) != TOKEN_SIZE or token(txn, meta) != since:
        return False
    txn.put(MARK + bytes.fromhex(tree_id), since + ",".join(pending).encode(), db=meta)
    return True


def is_complete(txn: lmdb.Transaction, meta: Any, indexes: Any, tree_id: str) -> bool:
    """Whether ``tree_id`` holds a mark still valid: same token, its pending index objects cached."""
    try:
        raw = txn.get(MARK + bytes.fromhex(tree_id), db=meta)
    except ValueError:
        return False
    if raw is None:
        return False
    raw = bytes(raw)
    if raw[:TOKEN_SIZE] != token(txn, meta):
        return False
    pending = raw[TOKEN_SIZE:].split(b",") if len(raw) > TOKEN_SIZE else []
    return all(txn.get(index_id, db=indexes) is not None for index_id in pending)
