"""Hashes and random tokens without OpenSSL's libcrypto: what a backup needs while it reads data.

``import hashlib`` (and ``hmac``, which ``secrets`` imports) loads ``_hashlib``,
i.e. the system's ``libcrypto.so.3``, and initialises OpenSSL's providers:
3.6 MiB of RSS (3.1 MiB of library pages, 0.5 MiB of heap) held through the
whole nightly backup, whose peak RSS is issue 21's target.  drtool's own
encryption does not use that library (``cryptography`` links its own OpenSSL
statically; blob ids are BLAKE3).  What the backup path hashes with
``hashlib`` is BLAKE2b and SHA-256, and CPython builds both into modules of its
own (``_blake2``, ``_sha256``; ``hashlib.blake2b`` *is* ``_blake2.blake2b``),
so they are taken from there; where an interpreter lacks them (``_sha2`` since
3.12) ``hashlib`` is the fallback, with the same digests.  Anything else
(``--content-hash sha1``, MD5 for S3) imports ``hashlib`` where it is used.
"""
from __future__ import annotations

import os
from typing import Any, Callable

blake2b: Callable[..., Any]
sha256: Callable[..., Any]
try:
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - every CPython build has it
    from hashlib import blake2b
try:
    from _sha256 import sha256  # CPython <= 3.11
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        from _sha2 import sha256  # type: ignore[no-redef]  # CPython >= 3.12
    except ImportError:
        from hashlib import sha256


#: what ``content_hash`` / ``--content-hash`` may name (sha1: what MediaWiki records for uploads)
CONTENT_HASHES = ("sha256", "sha1")


def token_hex(nbytes: int) -> str:
    """``secrets.token_hex`` (which is ``os.urandom(n).hex()``) without importing ``hmac``."""
    return os.urandom(nbytes).hex()


def random_bits(bits: int) -> int:
    """``secrets.randbits``: ``bits`` random bits from the OS's generator."""
    return int.from_bytes(os.urandom((bits + 7) // 8), "big") >> (-bits % 8)


def new_hash(name: str, data: bytes | memoryview = b"") -> Any:
    """``hashlib.new(name, data)``, importing ``hashlib`` (and so libcrypto) only when called:
    only ``--content-hash`` backups record a SHA-256 or SHA-1 of every file."""
    import hashlib
    return hashlib.new(name, data)
