"""Wrappers that have exactly the optional capabilities of the backend they wrap.

A capability belongs to a backend's class (``drtool.backends.capabilities``),
so a wrapper cannot forward one with ``__getattr__``: it would claim
capabilities its inner backend lacks, or hide ones it has, and the code
under test would take a path that production never takes with that backend.
:func:`mirrored_class` instead derives, once per combination, a subclass of
the wrapper with a forwarding method for each chosen capability the inner
backend's class has.  Wrappers call it from ``__new__``.
"""
from __future__ import annotations

import datetime as dt
import functools
from typing import Any, Iterable

from drtool.backends.base import Backend
from drtool.backends.capabilities import (BufferedReads, ConcurrentReads, GroupSharing, LocationSetup, ObjectLock,
                                          RangeStream, ReadAhead, ServerClock, StreamedReads, TemporaryCleanup,
                                          ViewReads, supports)


class _ViewReads:
    inner: Any

    def get_range_view(self, name: str, offset: int, length: int) -> memoryview:
        return self.inner.get_range_view(name, offset, length)  # type: ignore[no-any-return]


class _BufferedReads:
    inner: Any

    def get_range_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        return self.inner.get_range_into(name, offset, length, buf)  # type: ignore[no-any-return]


class _ReadAhead:
    inner: Any

    def read_ahead(self, name: str, offset: int, length: int) -> None:
        self.inner.read_ahead(name, offset, length)


class _ConcurrentReads:
    inner: Any

    def read_concurrency(self) -> tuple[int, int]:
        return self.inner.read_concurrency()  # type: ignore[no-any-return]


class _StreamedReads:
    inner: Any

    def open_range(self, name: str, offset: int, length: int) -> RangeStream:
        return self.inner.open_range(name, offset, length)  # type: ignore[no-any-return]


class _ObjectLock:
    inner: Any

    def retention_until(self, name: str) -> dt.datetime | None:
        return self.inner.retention_until(name)  # type: ignore[no-any-return]

    def is_locked(self, name: str) -> bool:
        return bool(self.inner.is_locked(name))

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        self.inner.extend_retention(name, until)


class _ServerClock:
    inner: Any

    def server_time(self) -> dt.datetime | None:
        return self.inner.server_time()  # type: ignore[no-any-return]


class _LocationSetup:
    inner: Any

    def create_location(self) -> None:
        self.inner.create_location()


class _TemporaryCleanup:
    inner: Any

    def remove_abandoned_temporaries(self, older_than_seconds: float) -> int:
        return int(self.inner.remove_abandoned_temporaries(older_than_seconds))


class _GroupSharing:
    inner: Any

    def share_with_group(self, group: str) -> None:
        self.inner.share_with_group(group)

    def shared_group(self) -> int | None:
        return self.inner.shared_group()  # type: ignore[no-any-return]


FORWARDERS: dict[type, type] = {
    ViewReads: _ViewReads, BufferedReads: _BufferedReads, ReadAhead: _ReadAhead, ConcurrentReads: _ConcurrentReads,
    StreamedReads: _StreamedReads, ObjectLock: _ObjectLock,
    ServerClock: _ServerClock, LocationSetup: _LocationSetup, TemporaryCleanup: _TemporaryCleanup,
    GroupSharing: _GroupSharing,
}


def mirrored_class(wrapper: type, inner: Backend | None, capabilities: Iterable[type]) -> type:
    """``wrapper``, extended by forwarders for those ``capabilities`` that ``inner`` has."""
    if inner is None:
        return wrapper
    extras = tuple(FORWARDERS[cap] for cap in capabilities if supports(inner, cap))
    return _combined(wrapper, extras) if extras else wrapper


@functools.lru_cache(maxsize=None)
def _combined(wrapper: type, extras: tuple[type, ...]) -> type:
    namespace = {"__module__": wrapper.__module__, "__qualname__": wrapper.__qualname__,
                 "__doc__": wrapper.__doc__}
    return type(wrapper)(wrapper.__name__, (wrapper, *extras), namespace)
