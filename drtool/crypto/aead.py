"""Authenticated encryption with associated data (AES-256-GCM).

Every object drtool stores is sealed here.  The associated data binds a
ciphertext to its object kind and id, so an attacker with write access to the
bucket cannot swap objects, relabel a pack group as a snapshot, or replay one
object under another name: opening it with the wrong context fails.

Layout: ``version (1) ‖ flags (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)``.
The flags byte (the envelope's compression mode) is authenticated as part of
the associated data.  Encryption and decryption write into preallocated
buffers: multi-MiB groups would otherwise be copied twice more.
"""
from __future__ import annotations

import os
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = 2 + NONCE_SIZE
OVERHEAD = HEADER_SIZE + TAG_SIZE
STREAM_CHUNK = 256 * 1024  # what :meth:`Aead.seal_to` encrypts at a time


class AuthenticationFailed(Exception):
    """Ciphertext, key or associated data do not match (tampering or wrong key)."""


class Aead:
    """AES-256-GCM with random 96-bit nonces.

    Random nonces are safe here: even a repository with 2**32 objects per key
    stays within NIST's bound for one key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._cipher = AESGCM(key)
        self._key = key

    def seal(self, plaintext: bytes | memoryview, associated: bytes, flags: int = 0) -> bytearray:
        nonce = os.urandom(NONCE_SIZE)
        out = bytearray(OVERHEAD + len(plaintext))
        out[0] = FORMAT_VERSION
        out[1] = flags
        out[2:HEADER_SIZE] = nonce
        self._cipher.encrypt_into(nonce, plaintext, associated + bytes([flags]),
                                  memoryview(out)[HEADER_SIZE:])
        return out

    def seal_to(self, plaintext: bytes | memoryview, associated: bytes, write: Callable[[memoryview], None],
                scratch: bytearray, flags: int = 0) -> None:
        """Pass the message :meth:`seal` makes to ``write`` piece by piece, encrypted through
        ``scratch`` (``STREAM_CHUNK + 15`` bytes; each piece is a view valid during its call).

        The same bytes as :meth:`seal` (GCM's ciphertext is the plaintext's length, the tag
        follows), without a sealed copy of a whole multi-MiB group beside its plaintext: a
        backup writes each group into its pack this way (``PackBuilder.add``).
        """
        nonce = os.urandom(NONCE_SIZE)
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(associated + bytes([flags]))
        write(memoryview(bytes([FORMAT_VERSION, flags]) + nonce))
        with memoryview(plaintext) as plain, memoryview(scratch) as out:
            for start in range(0, len(plain), STREAM_CHUNK):
                with plain[start:start + STREAM_CHUNK] as piece, out[:encryptor.update_into(piece, out)] as done:
                    write(done)
        encryptor.finalize()
        write(memoryview(encryptor.tag))

    def open(self, sealed: bytes | bytearray | memoryview, associated: bytes) -> tuple[int, bytearray]:
        """Return (flags, plaintext)."""
        out = bytearray(plaintext_size(sealed))
        return self.open_into(sealed, associated, out), out

    def open_into(self, sealed: bytes | bytearray | memoryview, associated: bytes,
                  out: bytearray | memoryview) -> int:
        """Decrypt into the first ``plaintext_size(sealed)`` bytes of ``out``; return the flags.

        Restores open thousands of multi-MiB groups: a fresh buffer for each
        is faulted in, zeroed and unmapped again (perf: ~10 % of a restore's
        CPU), where a recycled one costs nothing.
        """
        view = memoryview(sealed)
        if len(view) < OVERHEAD or view[0] != FORMAT_VERSION:
            raise AuthenticationFailed("not a drtool ciphertext or unknown format version")
        flags = view[1]
        size = len(view) - OVERHEAD
        if len(out) < size:
            raise ValueError("output buffer too small for the plaintext")
        try:
            with memoryview(out) as target:
                self._cipher.decrypt_into(view[2:HEADER_SIZE], view[HEADER_SIZE:],
                                          associated + bytes([flags]), target[:size])
        except InvalidTag:
            raise AuthenticationFailed("authentication tag mismatch") from None
        return flags


def plaintext_size(sealed: bytes | bytearray | memoryview) -> int:
    return max(len(sealed) - OVERHEAD, 0)
