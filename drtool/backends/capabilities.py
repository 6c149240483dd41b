"""Optional backend capabilities, and the one fallback each has where a backend lacks it.

The storage contract (:class:`drtool.backends.base.Backend`) is five
operations.  Some stores can do more, and drtool uses it where it matters:
the local backend streams packs to disk as they are sealed and maps or
``preadv``s the ranges a restore reads (docs/performance.md measures both);
S3 creates objects only if absent and locks them against deletion.  Each such
ability is a small :class:`typing.Protocol` here, like restic's optional
backend interfaces and kopia's ``blob.Storage`` extensions.

Callers never probe with ``getattr``: they call the helper function of the
same name (``read_into(backend, ...)``, ``put_if_absent(backend, ...)``), which
uses the capability when the backend has it and the shared fallback
otherwise.  A capability belongs to the backend's *class* (see
:func:`supports`): checking a class is cached, so the helpers cost well under
a microsecond on the data path, where checking an instance against a
protocol costs 10-30 µs.
"""
from __future__ import annotations

import datetime as dt
from typing import Callable, Protocol, Sequence, runtime_checkable

from drtool.backends.base import Backend, StagedObject
from drtool.errors import UsageError


@runtime_checkable
class StagedWrites(Protocol):
    """Write an object as it is produced, naming it at the end (a pack named by its hash).

    The local backend streams packs into a temporary file with ``O_DIRECT``,
    so a backup holds no whole pack in memory.  Fallback: the caller keeps
    the pieces and stores them with :func:`put_parts`.
    """

    def stage(self, prefix: str) -> StagedObject:
        """Start an object under ``prefix``; nothing is visible until it is committed."""


@runtime_checkable
class PartWrites(Protocol):
    """Store the concatenation of parts without joining them first (no second 16 MiB copy).

    Fallback: ``put(name, b"".join(parts))``.
    """

    def put_parts(self, name: str, parts: Sequence[bytes | bytearray]) -> None:
        """Store the parts, in order, atomically as one object."""


@runtime_checkable
class ViewReads(Protocol):
    """A range as a read-only view the backend may map instead of copy (local: ``mmap``).

    Fallback: ``memoryview(get_range(...))``.
    """

    def get_range_view(self, name: str, offset: int, length: int) -> memoryview:
        """Exactly the range, as a view; ObjectMissing like ``get_range``."""


@runtime_checkable
class BufferedReads(Protocol):
    """A range read into the caller's recycled buffer (local: ``preadv``).

    Fallback: ``memoryview(get_range(...))``, ignoring the buffer (S3 downloads
    into fresh memory anyway).
    """

    def get_range_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        """Exactly the range, as a view of ``buf`` (at least ``length`` bytes)."""


@runtime_checkable
class ReadAhead(Protocol):
    """Ask for a range to be read in the background before it is needed (local:
    ``posix_fadvise(WILLNEED)``, which queues the reads and returns).

    A cold physical restore read each group only when a worker reached it:
    two workers, at most two reads in flight, each waited for.  Fallback:
    nothing (each range is read when it is needed).
    """

    def read_ahead(self, name: str, offset: int, length: int) -> None:
        """A hint: never raises for a missing object (the read itself reports it)."""


@runtime_checkable
class ConcurrentReads(Protocol):
    """A store whose every read pays a round trip (S3): keep several large ranged reads in flight.

    A restore then coalesces neighbouring groups of a pack into requests of
    about ``request_bytes`` and keeps ``connections`` of them in flight,
    overlapped with decryption and writing; its memory for downloads is
    bounded by ``connections * request_bytes``.  Fallback (local stores):
    None, and each group is read where it is decrypted.
    """

    def read_concurrency(self) -> tuple[int, int]:
        """(requests to keep in flight, bytes per request)."""


class RangeStream(Protocol):
    """A range of one object, read front to back."""

    def readinto(self, view: memoryview) -> None:
        """Fill ``view`` with the next ``len(view)`` bytes, or raise."""

    def skip(self, amount: int) -> None:
        """Read past ``amount`` bytes."""

    def close(self) -> None:
        """Give the connection back (whatever is left unread is dropped)."""


@runtime_checkable
class StreamedReads(Protocol):
    """A ranged read handed on piece by piece as its bytes arrive (S3: one GET per pack).

    With ConcurrentReads, a restore then reads whole runs of a pack with
    one request and hands each group to the decrypting threads as soon as
    it is in, so its memory is bounded by the groups in flight rather than
    by ``connections * request_bytes``.  Fallback: None, and a request is
    read whole into one buffer before its groups are handed on.
    """

    def open_range(self, name: str, offset: int, length: int) -> RangeStream:
        """A stream of bytes ``offset .. offset + length`` of ``name``."""


@runtime_checkable
class ColdStorage(Protocol):
    """Objects that may sit in an archive tier (S3 GLACIER, DEEP_ARCHIVE) and must be warmed
    (RestoreObject) before they can be read.  Fallback: everything is always readable.
    """

    def cold_state(self, name: str) -> str:
        """``"hot"`` (readable now), ``"cold"`` (must be warmed) or ``"warming"`` (requested);
        ObjectMissing when absent."""

    def request_warm(self, name: str) -> None:
        """Ask the store to make ``name`` readable for a while (its configured days and tier;
        idempotent: a request already under way is fine)."""

    def warm_profile(self) -> tuple[str, str, int]:
        """(archive class of new packs or "", retrieval tier, days kept readable), for estimates."""


@runtime_checkable
class ConditionalCreate(Protocol):
    """Create an object only if no object of that name exists, atomically.

    Local: ``link(2)``; S3: ``If-None-Match: *`` (learning once when a server
    lacks it, then the fallback).  Fallback: :func:`check_then_put`, which
    two writers can both win.
    """

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Store ``data`` unless ``name`` exists; True when stored."""


@runtime_checkable
class ObjectLock(Protocol):
    """Retention dates that forbid deleting or replacing objects (S3 Object Lock).

    Having the capability does not mean objects are locked: ``retention_until``
    says so per object.  Fallback: nothing is ever locked.
    """

    def retention_until(self, name: str) -> dt.datetime | None:
        """End of the object's retention (UTC-aware), or None; ObjectMissing if absent."""

    def is_locked(self, name: str) -> bool:
        """True while retention or a legal hold forbids deleting the object."""

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        """Push retention out to ``until``; never shortens it."""


@runtime_checkable
class ServerClock(Protocol):
    """The store's own clock (S3: the HTTP ``Date`` header), to detect clock skew.

    Skew breaks request signing, lock staleness and Object Lock dates.
    Fallback: no clock (None).
    """

    def server_time(self) -> dt.datetime | None:
        """The store's current time, or None when it did not say."""


@runtime_checkable
class LocationSetup(Protocol):
    """Prepare an empty location before a repository is created (mkdir, bucket check).

    Fallback: nothing to prepare.
    """

    def create_location(self) -> None:
        """Make the location usable, or raise a clear error saying why it is not."""


@runtime_checkable
class TemporaryCleanup(Protocol):
    """Remove what killed writers left half-written (local: ``.tmp-*`` files, staged packs).

    Only backends whose writes go through temporaries have any.  Fallback:
    nothing to remove.
    """

    def remove_abandoned_temporaries(self, older_than_seconds: float) -> int:
        """Delete temporaries untouched for this long; return how many.  Call it under the
        repository's exclusive lock."""


@runtime_checkable
class GroupSharing(Protocol):
    """Let a second OS user (the database's: ``postgres`` runs ``archive_command``) write the
    repository the backup user created (local: setgid directories, group-readable files).

    Chosen once at ``init --group``; the backend remembers it in the location itself so that
    every later writer, whatever its umask, keeps files and directories usable by the group.
    Fallback: none -- stores with their own access control (S3: IAM) refuse ``--group``.
    """

    def share_with_group(self, group: str) -> None:
        """Give ``group`` read and write access to the (new, empty) location; clear error if not
        possible (unknown group, not a member)."""

    def shared_group(self) -> int | None:
        """The id of the group the location is shared with, or None when it is private."""


CAPABILITIES: tuple[type, ...] = (StagedWrites, PartWrites, ViewReads, BufferedReads, ReadAhead, ConcurrentReads,
                                  StreamedReads,
                                  ColdStorage, ConditionalCreate, ObjectLock, ServerClock, LocationSetup,
                                  TemporaryCleanup, GroupSharing)


def supports(backend: Backend, capability: type) -> bool:
    """Whether the backend's class implements ``capability`` (ABC-cached per class)."""
    return issubclass(type(backend), capability)


# ----- writes ------------------------------------------------------------------------------------
def stage(backend: Backend, prefix: str) -> StagedObject | None:
    """A staged object under ``prefix``, or None: then keep the pieces for :func:`put_parts`."""
    if supports(backend, StagedWrites):
        return backend.stage(prefix)  # type: ignore[attr-defined, no-any-return]
    return None


def put_parts(backend: Backend, name: str, parts: Sequence[bytes | bytearray]) -> None:
    """Store the concatenation of ``parts`` atomically under ``name``."""
    if supports(backend, PartWrites):
        backend.put_parts(name, parts)  # type: ignore[attr-defined]
    else:
        backend.put(name, b"".join(parts))


def put_if_absent(backend: Backend, name: str, data: bytes) -> bool:
    """Store ``data`` only if ``name`` does not exist; True when stored.

    Atomic on backends with :class:`ConditionalCreate`; elsewhere
    :func:`check_then_put`, whose race is documented there.
    """
    if supports(backend, ConditionalCreate):
        return bool(backend.put_if_absent(name, data))  # type: ignore[attr-defined]
    return check_then_put(backend, name, data)


def check_then_put(backend: Backend, name: str, data: bytes) -> bool:
    """The fallback of :func:`put_if_absent`: ``stat``, then ``put`` when absent.

    Racy: two writers can both see the name free and both put, the later
    one winning while both believe they created it.  Nothing in drtool's
    correctness rests on it; ``repo validate`` reports a backend that has
    only this.
    """
    if backend.stat(name) is not None:
        return False
    backend.put(name, data)
    return True


# ----- reads -------------------------------------------------------------------------------------
def read_view(backend: Backend, name: str, offset: int, length: int) -> memoryview:
    """Exactly the range as a read-only view (mapped, not copied, where the backend can)."""
    if supports(backend, ViewReads):
        return backend.get_range_view(name, offset, length)  # type: ignore[attr-defined, no-any-return]
    return memoryview(backend.get_range(name, offset, length))


def read_into(backend: Backend, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
    """Exactly the range as a view, read into ``buf`` where that saves a copy."""
    if supports(backend, BufferedReads):
        return backend.get_range_into(name, offset, length, buf)  # type: ignore[attr-defined, no-any-return]
    return memoryview(backend.get_range(name, offset, length))


def read_ahead(backend: Backend, name: str, offset: int, length: int) -> None:
    """Start reading the range in the background where the backend can; else nothing."""
    if supports(backend, ReadAhead):
        backend.read_ahead(name, offset, length)  # type: ignore[attr-defined]


def read_concurrency(backend: Backend) -> tuple[int, int] | None:
    """(requests in flight, bytes per request) for stores where reads pay a round trip; else None."""
    if supports(backend, ConcurrentReads):
        return backend.read_concurrency()  # type: ignore[attr-defined, no-any-return]
    return None


def range_opener(backend: Backend) -> Callable[[str, int, int], RangeStream] | None:
    """``open_range`` of a store that streams ranged reads, or None."""
    if supports(backend, StreamedReads):
        return backend.open_range  # type: ignore[attr-defined, no-any-return]
    return None


def cold_storage(backend: Backend) -> ColdStorage | None:
    """The backend as a :class:`ColdStorage`, or None when nothing it holds is ever cold."""
    return backend if supports(backend, ColdStorage) else None  # type: ignore[return-value]


# ----- object lock, clock, location, temporaries -----------------------------------------------
def object_lock(backend: Backend) -> ObjectLock | None:
    """The backend as an :class:`ObjectLock`, or None when it cannot lock objects."""
    return backend if supports(backend, ObjectLock) else None  # type: ignore[return-value]


def is_locked(backend: Backend, name: str) -> bool:
    """True when Object Lock forbids deleting ``name`` now (never on backends without it)."""
    lock = object_lock(backend)
    return lock is not None and bool(lock.is_locked(name))


def server_time(backend: Backend) -> dt.datetime | None:
    """The store's clock, or None when it has none."""
    if supports(backend, ServerClock):
        return backend.server_time()  # type: ignore[attr-defined, no-any-return]
    return None


def create_location(backend: Backend) -> None:
    """Prepare the location for a new repository (nothing to do on backends without setup)."""
    if supports(backend, LocationSetup):
        backend.create_location()  # type: ignore[attr-defined]


def share_with_group(backend: Backend, group: str) -> None:
    """Share a new repository with an OS group, or refuse clearly where the store cannot."""
    if not supports(backend, GroupSharing):
        raise UsageError(f"--group is for repositories in a local directory, not {backend.url}",
                         hint="give every user its own credentials for the store instead (S3: an IAM "
                              "policy per user, docs/s3.md)")
    backend.share_with_group(group)  # type: ignore[attr-defined]


def shared_group(backend: Backend) -> int | None:
    """The group id a repository is shared with (``init --group``), or None."""
    if supports(backend, GroupSharing):
        return backend.shared_group()  # type: ignore[attr-defined, no-any-return]
    return None


def remove_abandoned_temporaries(backend: Backend, older_than_seconds: float) -> int:
    """Remove temporaries killed writers left, older than this; how many (0 without any)."""
    if supports(backend, TemporaryCleanup):
        return int(backend.remove_abandoned_temporaries(older_than_seconds))  # type: ignore[attr-defined]
    return 0
