"""The storage contract every repository lives on: five operations, nothing else.

A backend is a flat namespace of immutable named objects (``packs/ab/abcd…``).
It knows nothing of encryption, snapshots or packs; it only has to make a put
atomic (an object is either absent or complete) and report honestly.  The
contract is shaped by S3, as restic's backend interface and kopia's
``blob.Storage`` are: no rename, no append, ranged reads, and listings that
may lag writes.  Callers must never treat ``list`` as proof of existence (or
of absence): ``stat`` and ``get`` are the truth.

The abstract core is exactly ``get_range``, ``put``, ``list``, ``delete`` and
``stat``.  What some stores can do better (stream a pack, map a range, create
an object only if absent, lock objects, tell the time) are optional
capabilities in :mod:`drtool.backends.capabilities`, each with one shared
fallback, so a new backend is correct as soon as it implements the core and
:func:`drtool.testing.verify_backend` passes.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


@dataclass
class RequestStats:
    """Counts of backend requests, reported in --json summaries (cost awareness)."""

    puts: int = 0
    gets: int = 0
    lists: int = 0
    deletes: int = 0
    heads: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    retries: int = 0
    limit_upload: int = 0  # bytes per second, 0 = none (--limit-upload)
    limit_download: int = 0
    throttled_seconds: float = 0.0  # time spent waiting for a bandwidth limit

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class StagedObject(abc.ABC):
    """An object written piece by piece before its name is known (a pack named by its hash).

    Nothing is visible under any name until ``commit``; ``abort`` (or a
    crash) leaves at most a temporary that listing ignores.  Backends that
    can stream have the ``StagedWrites`` capability.
    """

    #: Whether ``write`` may keep (a view of) the bytes it is given after it returns, e.g. to
    #: upload them from another thread.  Then the caller hands it bytes of their own; a sink
    #: that copies or writes them out before returning says False, and the backup writes to it
    #: straight from buffers it reuses for the next group.
    retains_data: bool = True

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``."""

    @abc.abstractmethod
    def commit(self, name: str) -> None:
        """Make everything written durable and visible as ``name``."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard what was written (idempotent, never raises)."""


class Backend(abc.ABC):
    """Object store.  Names use '/' separators and never start with '/'.

    Errors are drtool's: ``ObjectMissing`` for an absent object (or a range
    past its end), ``TransientBackendError`` for what a retry may cure,
    ``BackendError`` for the rest.  ``stats`` counts requests.
    """

    url: str = ""
    stats: RequestStats

    def __init__(self) -> None:
        self.stats = RequestStats()

    @abc.abstractmethod
    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes at ``offset`` (``None``: to the end); ObjectMissing if absent.

        Exactly ``length`` bytes or an error: a range past the end raises
        ObjectMissing (a truncated object), never returns fewer bytes.  With
        ``length=None`` an ``offset`` beyond the end raises too; at the end
        it returns ``b""``.
        """

    @abc.abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` atomically under ``name``, replacing any old object."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose names start with ``prefix`` (any order; may lag puts and deletes)."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    @abc.abstractmethod
    def stat(self, name: str) -> ObjectInfo | None:
        """Size of the object, or None if it does not exist (never lags a put or delete)."""

    def get(self, name: str) -> bytes:
        """The whole object; ObjectMissing if absent.  Backends may override it for speed."""
        return self.get_range(name)

    def close(self) -> None:
        """Release connections and pools."""
