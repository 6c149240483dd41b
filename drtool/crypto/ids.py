"""Keyed content ids.

A blob id is a keyed BLAKE3 MAC of the plaintext, never a bare hash: with a
bare hash anyone holding the bucket could test whether a known file (a leaked
document, a known image) is stored.  The key lives only in the master key.
"""
from __future__ import annotations

import blake3

ID_SIZE = 32


class IdMaker:
    def __init__(self, mac_key: bytes) -> None:
        if len(mac_key) != 32:
            raise ValueError("the id key must be 32 bytes")
        self._key = mac_key

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._key).digest()

    def object_id(self, kind: str, data: bytes | memoryview) -> bytes:
        """Id of a whole object (snapshot, index); kind is mixed in to separate domains."""
        hasher = blake3.blake3(key=self._key)
        hasher.update(kind.encode() + b"\0")
        hasher.update(data)
        return hasher.digest()


def content_hash(data: bytes | memoryview) -> bytes:
    """Unkeyed hash of ciphertext (pack names): safe because it reveals nothing of plaintext."""
    return blake3.blake3(data).digest()
