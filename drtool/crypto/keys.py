"""Master key and passphrase-wrapped key slots.

The master key is random; each key slot stores it wrapped by a key derived
from one passphrase with Argon2id (memory-hard, parameters and salt stored in
the slot so they can be raised later without breaking old slots).  Changing
a passphrase re-wraps one slot; the data never needs re-encryption.
"""
from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from drtool.crypto.aead import Aead, AuthenticationFailed
from drtool.digests import blake2b, random_bits, sha256, token_hex


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost.  The default follows RFC 9106's second recommendation."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    @classmethod
    def fast_for_tests(cls) -> "KdfParams":
        return cls(memory_kib=1024, iterations=1, lanes=1)


@dataclass(frozen=True)
class MasterKey:
    encryption_key: bytes
    id_key: bytes
    chunker_seed: int

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(os.urandom(32), os.urandom(32), random_bits(63) or 1)

    def to_json(self) -> bytes:
        return json.dumps({
            "encryption_key": _b64(self.encryption_key),
            "id_key": _b64(self.id_key),
            "chunker_seed": self.chunker_seed,
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "MasterKey":
        data = json.loads(raw)
        return cls(_unb64(data["encryption_key"]), _unb64(data["id_key"]), int(data["chunker_seed"]))


@dataclass
class KeySlot:
    """One passphrase's wrapping of the master key, stored as ``keys/<slot_id>``."""

    slot_id: str
    salt: bytes
    params: KdfParams
    wrapped: bytes
    created: str
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "version": 1,
            "kdf": "argon2id",
            "salt": _b64(self.salt),
            "memory_kib": self.params.memory_kib,
            "iterations": self.params.iterations,
            "lanes": self.params.lanes,
            "created": self.created,
            "label": self.label,
            "wrapped": _b64(self.wrapped),
        }, indent=1).encode()

    @classmethod
    def from_bytes(cls, slot_id: str, raw: bytes) -> "KeySlot":
        """Parse; raise ValueError when the slot is not a well-formed key file."""
        try:
            data = json.loads(raw)
            if data.get("kdf") != "argon2id" or data.get("version") != 1:
                raise ValueError("unknown key format")
            params = KdfParams(int(data["memory_kib"]), int(data["iterations"]), int(data["lanes"]))
            return cls(slot_id, _unb64(data["salt"]), params, _unb64(data["wrapped"]),
                       str(data.get("created", "")), str(data.get("label", "")))
        except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"malformed key slot: {exc}") from None


class KeyDerivationFailed(Exception):
    """Argon2id could not run (memory, thread or library failure): not a wrong passphrase."""


# One derivation at a time per process.  Two concurrent multi-lane Argon2id
# derivations in one process deadlock (or fail with "Not enough memory to
# derive key") in the OpenSSL 3.2+ that cryptography's wheels ship: both
# threads block inside OpenSSL's Argon2 thread pool.  The CLI derives the key
# early on a thread while it imports a command; any second derivation of the
# same (passphrase, salt, parameters) then reuses that result instead of
# deriving again, so a command never pays twice and never races.
_KDF_LOCK = threading.Lock()
_DERIVED: dict[bytes, bytes] = {}


def _derivation_key(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    """A private memo key: the passphrase itself is never held as a dictionary key."""
    context = f"{params.memory_kib}/{params.iterations}/{params.lanes}".encode()
    return blake2b(passphrase, key=salt[:64], person=b"drtool-kdf-memo",
                   digest_size=32).digest() + sha256(context).digest()


def derive_wrapping_key(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    """Argon2id, serialised per process and remembered for the life of the process.

    Raises KeyDerivationFailed (never MemoryError or a library error) so the
    caller reports one clear line instead of an internal error.
    """
    memo = _derivation_key(passphrase, salt, params)
    with _KDF_LOCK:
        cached = _DERIVED.get(memo)
        if cached is not None:
            return cached
        try:
            kdf = Argon2id(salt=salt, length=32, iterations=params.iterations, lanes=params.lanes,
                           memory_cost=params.memory_kib)
            derived = kdf.derive(passphrase)
        except (MemoryError, ValueError, OSError, RuntimeError) as exc:
            raise KeyDerivationFailed(
                f"Argon2id ({params.memory_kib} KiB, {params.iterations} passes, {params.lanes} lanes) "
                f"failed: {exc}") from None
        except Exception as exc:  # cryptography's InternalError and friends
            raise KeyDerivationFailed(f"Argon2id failed: {type(exc).__name__}: {exc}") from None
        _DERIVED[memo] = derived
        return derived


def wrap_master_key(master: MasterKey, passphrase: bytes, *, params: KdfParams | None = None,
                    label: str = "") -> KeySlot:
    params = params or KdfParams()
    slot_id = token_hex(16)
    salt = os.urandom(16)
    kek = derive_wrapping_key(passphrase, salt, params)
    wrapped = bytes(Aead(kek).seal(master.to_json(), _slot_context(slot_id)))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return KeySlot(slot_id, salt, params, wrapped, created, label)


def unwrap_master_key(slot: KeySlot, passphrase: bytes) -> MasterKey:
    """Raise AuthenticationFailed when the passphrase does not open this slot."""
    kek = derive_wrapping_key(passphrase, slot.salt, slot.params)
    _flags, plaintext = Aead(kek).open(slot.wrapped, _slot_context(slot.slot_id))
    return MasterKey.from_json(bytes(plaintext))


def _slot_context(slot_id: str) -> bytes:
    return b"drtool/key-slot\0" + slot_id.encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


__all__ = ["AuthenticationFailed", "KdfParams", "KeyDerivationFailed", "KeySlot", "MasterKey", "unwrap_master_key",
           "wrap_master_key"]
