"""Key slots and the first look at a location: unlock, new slots, interrupted inits, foreign repositories.

Kept apart from :mod:`drtool.repository.repo` because none of it touches
blobs or packs: it decides whether a passphrase opens this location at all,
and says clearly when the location is not a drtool repository.
"""
from __future__ import annotations

import json

from drtool.backends.base import Backend
from drtool.crypto.keys import (
    AuthenticationFailed,
    KdfParams,
    KeyDerivationFailed,
    KeySlot,
    MasterKey,
    unwrap_master_key,
    wrap_master_key,
)
from drtool.errors import (
    BackendError,
    DrtoolError,
    IntegrityError,
    KeyDerivationError,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
    WrongPassword,
)
from drtool.repository.objects import CONFIG, INDEX, KEYS, LOCKS, PACKS, SNAPSHOTS, key_name


def clear_interrupted_init(backend: Backend) -> None:
    """An init killed between its key slot and its config leaves only ``keys/``.

    Nothing was ever encrypted with that master key (the config is written
    last and nothing else exists), so the orphan slots are removed and init
    starts over; any other object means a real repository and is refused.
    """
    slots = [info.name for info in backend.list(f"{KEYS}/")]
    if not slots:
        return
    for prefix in (SNAPSHOTS, INDEX, PACKS, LOCKS):
        if any(True for _ in backend.list(f"{prefix}/")):
            raise RepositoryExists(f"{backend.url} holds repository data but no config",
                                   hint="restore the config object from a copy; do not re-init")
    for name in slots:
        backend.delete(name)


def wrap_slot(master: MasterKey, passphrase: bytes, kdf: KdfParams | None, label: str) -> KeySlot:
    if not passphrase:
        raise UsageError("an empty passphrase is refused for a new key slot",
                         hint="choose a real passphrase: without it nobody can read the backups, "
                              "with an empty one everybody can")
    try:
        return wrap_master_key(master, passphrase, params=kdf, label=label)
    except KeyDerivationFailed as exc:
        raise KeyDerivationError(f"cannot derive a key for the new slot: {exc}") from None


def list_slots(backend: Backend) -> list[KeySlot]:
    """Every key slot, oldest first; one that does not parse is listed as ``<damaged>``."""
    slots = []
    for info in backend.list(f"{KEYS}/"):
        slot_id = info.name.split("/", 1)[1]
        try:
            slots.append(KeySlot.from_bytes(slot_id, backend.get(info.name)))
        except ValueError:
            slots.append(KeySlot(slot_id, b"", KdfParams(), b"", "", label="<damaged>"))
    return sorted(slots, key=lambda s: s.created)


def remove_slot(backend: Backend, slot_id: str) -> None:
    """Delete one key slot; never the last one (the repository would be unreadable)."""
    ids = [s.slot_id for s in list_slots(backend)]
    if slot_id not in ids:
        raise DrtoolError(f"no key slot {slot_id}", hint="see 'drtool key list'")
    if len(ids) == 1:
        raise DrtoolError("refusing to remove the last key slot",
                          hint="add another key first, or the repository becomes unreadable")
    backend.delete(key_name(slot_id))


def foreign_format(backend: Backend) -> str | None:
    """The backup tool whose repository this is, when it is recognisably not drtool's.

    restic keeps scrypt key files in ``keys/`` beside an encrypted
    ``config``; borg a plain-text ``config`` starting with ``[repository]``.
    Telling the operator so beats "every key slot is damaged".
    """
    try:
        if backend.get(CONFIG).startswith(b"[repository]"):  # the other tools' names happen to match ours
            return "borg"
        for info in list(backend.list(f"{KEYS}/"))[:4]:
            try:
                data = json.loads(backend.get(info.name))
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("kdf") == "scrypt" and "data" in data:
                return "restic"
    except DrtoolError:
        return None
    return None


def refuseforeign_format(backend: Backend) -> None:
    kind = foreign_format(backend)
    if kind is not None:
        raise RepositoryNotFound(f"{backend.url} is a {kind} repository, not a drtool one",
                                 hint=f"read it with {kind}; check --repo / DRTOOL_REPOSITORY")


def unlock_master(backend: Backend, passphrase: bytes) -> tuple[MasterKey, str]:
    damaged: list[str] = []
    unreadable: list[BackendError] = []  # a slot this user may not read is not a damaged one
    slots = list(backend.list(f"{KEYS}/"))
    if not slots:
        refuseforeign_format(backend)
        raise IntegrityError(f"the repository at {backend.url} has no key slots",
                             hint="restore keys/ from a copy of the repository")
    for info in slots:
        slot_id = info.name.split("/", 1)[1]
        try:
            slot = KeySlot.from_bytes(slot_id, backend.get(info.name))
        except ValueError:
            damaged.append(slot_id)
            continue
        except BackendError as exc:
            unreadable.append(exc)
            continue
        try:
            return unwrap_master_key(slot, passphrase), slot_id
        except AuthenticationFailed:
            continue
        except KeyDerivationFailed as exc:
            raise KeyDerivationError(f"cannot derive the key of slot {slot_id}: {exc}") from None
        except (ValueError, KeyError):
            damaged.append(slot_id)
    if unreadable:
        raise unreadable[0]
    if damaged and len(damaged) == len(slots):
        refuseforeign_format(backend)
        raise IntegrityError(f"every key slot is damaged ({', '.join(damaged)})",
                             hint="restore keys/ from a copy of the repository")
    raise WrongPassword("wrong passphrase: it opens none of the repository's key slots"
                        + (f" (damaged slots: {', '.join(damaged)})" if damaged else ""))
