"""Authenticated encryption with associated data (AES-256-GCM).

Every object drtool stores is sealed here.  The associated data binds a
ciphertext to its object kind and id, so an attacker with write access to the
bucket cannot swap objects, relabel a pack blob as a snapshot, or replay one
object under another name: opening it with the wrong context fails.
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE


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

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return bytes([FORMAT_VERSION]) + nonce + self._cipher.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes | memoryview, associated: bytes) -> bytes:
        if len(sealed) < OVERHEAD or sealed[0] != FORMAT_VERSION:
            raise AuthenticationFailed("not a drtool ciphertext or unknown format version")
        nonce = bytes(sealed[1:1 + NONCE_SIZE])
        try:
            return self._cipher.decrypt(nonce, bytes(sealed[1 + NONCE_SIZE:]), associated)
        except InvalidTag:
            raise AuthenticationFailed("authentication tag mismatch") from None
