"""The storage interface every repository lives on.

A backend is a flat namespace of immutable named objects ("packs/ab/abcd…").
It knows nothing of encryption, snapshots or packs; it only has to make a put
atomic (an object is either absent or complete) and report honestly.  The
interface is shaped by S3: no rename, no append, ranged reads, listing that
may lag writes.  Callers must never treat ``list`` as proof of existence.
"""
from __future__ import annotations

import abc
import datetime as dt
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

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class StagedObject(abc.ABC):
    """An object written piece by piece before its name is known (a pack named by its hash).

    Nothing is visible under any name until ``commit``; ``abort`` (or a
    crash) leaves at most a temporary file that listing ignores.
    """

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
    """Object store.  Names use '/' separators and never start with '/'."""

    url: str = ""
    stats: RequestStats

    def __init__(self) -> None:
        self.stats = RequestStats()

    @abc.abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` atomically under ``name``, replacing any old object."""

    def get_range_view(self, name: str, offset: int, length: int) -> memoryview:
        """``get_range`` as a read-only view; backends may map the bytes instead of copying them."""
        return memoryview(self.get_range(name, offset, length))

    def get_range_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        """The range as a view, read into ``buf`` (at least ``length`` bytes) where that saves work.

        Backends that download into fresh memory anyway (S3) may ignore ``buf``.
        """
        return memoryview(self.get_range(name, offset, length))

    def remove_abandoned_temporaries(self, older_than_seconds: float) -> int:
        """Delete what killed writers left half-written, if untouched for this long; return how many.

        Only backends whose puts go through temporary objects have any (the
        local one: ``.tmp-*`` files, including packs a killed backup was
        streaming).  Call it under the exclusive lock.
        """
        return 0

    def stage(self, prefix: str) -> StagedObject | None:
        """Start an object under ``prefix`` that is streamed out as it is produced.

        ``None`` (the default) means the backend cannot, and callers keep the
        object in memory for ``put_parts``.  The local backend streams packs
        into a temporary file, so a backup does not hold whole packs in RAM.
        """
        return None

    def put_parts(self, name: str, parts: list[bytes | bytearray]) -> None:
        """Store the concatenation of ``parts`` atomically.

        The default joins them; backends that can stream parts override it
        to avoid holding a second copy of a 16 MiB pack.
        """
        self.put(name, b"".join(parts))

    @abc.abstractmethod
    def get(self, name: str) -> bytes:
        """Return the whole object; raise ObjectMissing if it does not exist."""

    @abc.abstractmethod
    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset``; ObjectMissing if absent.

        Implementations must return exactly ``length`` bytes or raise.
        """

    @abc.abstractmethod
    def stat(self, name: str) -> ObjectInfo | None:
        """Size of the object, or None if it does not exist."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose names start with ``prefix`` (any order)."""

    def exists(self) -> bool:
        """True when the repository location holds a drtool config object."""
        return self.stat("config") is not None

    def create_location(self) -> None:
        """Prepare an empty location (mkdir, bucket check).  Default: nothing."""

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Store only if no object of that name exists; True when stored.

        The default is check-then-put, which is racy; backends that support a
        conditional create override it.
        """
        if self.stat(name) is not None:
            return False
        self.put(name, data)
        return True

    def server_time(self) -> dt.datetime | None:
        """The store's clock, when it has one (S3: the HTTP Date header); None otherwise.

        Used to detect clock skew, which breaks request signing, lock
        staleness and Object Lock dates.
        """
        return None

    def close(self) -> None:
        """Release connections and pools."""
