"""Deterministic fault injection around any Backend, for tests.

Higher layers (pack upload, restore, prune, check) must be tested against a
store that fails in the ways real stores do, without patching anything: a
test wraps its backend in :class:`FaultyBackend` and adds rules.  Rules fire
on the Nth matching call so failures are reproducible; ``fail_rate`` with a
seed gives repeatable "flaky network" runs.  Every injected fault is recorded
in ``injected`` so a test can assert the fault actually happened.

The wrapper has the core operations and ``put_if_absent``, all of which
rules can hit, and mirrors the inner backend's read concurrency, Object Lock,
server clock, location setup and temporaries cleanup (:mod:`drtool.testing.mirror`).
Streamed ranged reads (StreamedReads, S3's restore path) are the ``stream``
operation: ``fail`` before the stream opens, ``truncate`` breaks it off
halfway, ``flip`` damages the middle byte as it passes, ``fail_after``
raises once the last byte is read.  It
deliberately lacks staged and part writes and mapped or buffered reads:
callers then take the shared fallbacks, which go through ``put`` and
``get_range``, where the rules fire.
"""
from __future__ import annotations

import functools
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from drtool.backends import capabilities
from drtool.backends.base import Backend, ObjectInfo
from drtool.backends.capabilities import (ConcurrentReads, GroupSharing, LocationSetup, ObjectLock, RangeStream,
                                          ReadAhead, ServerClock, StreamedReads, TemporaryCleanup)
from drtool.errors import BackendError, DrtoolError, TransientBackendError
from drtool.testing.mirror import mirrored_class

OPS = ("put", "put_if_absent", "get", "get_range", "stream", "stat", "delete", "list")
ACTIONS = ("fail", "fail_after", "truncate", "flip", "drop")


@dataclass
class FaultRule:
    """Fire ``action`` on matching calls number ``nth`` .. ``nth + times - 1``.

    ``fail``: raise before the operation; ``fail_after``: do the operation,
    then raise (a lost response); ``truncate``/``flip``: damage the bytes a
    read returns (or the bytes a put stores); ``drop``: a put that reports
    success but stores nothing (a lying store).  ``times=0`` means forever.
    """

    op: str
    action: str = "fail"
    prefix: str = ""
    nth: int = 1
    times: int = 1
    error: Callable[[str], DrtoolError] = TransientBackendError
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.op not in OPS and self.op != "*":
            raise ValueError(f"unknown op {self.op!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")

    def matches(self, op: str, name: str) -> bool:
        """Count the call and say whether this rule fires on it (caller holds the lock)."""
        if self.op not in ("*", op) or not name.startswith(self.prefix):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times and self.seen >= self.nth + self.times):
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Injected:
    op: str
    name: str
    action: str


class FaultyBackend(Backend):
    """Wraps ``inner``; behaves exactly like it except where a rule fires."""

    MIRRORED = (ReadAhead, ConcurrentReads, ObjectLock, ServerClock, LocationSetup, TemporaryCleanup, GroupSharing)

    def __new__(cls, inner: Backend, *args: Any, **kwargs: Any) -> "FaultyBackend":
        mixed = mirrored_class(cls, inner, cls.MIRRORED)
        if inner is not None and capabilities.supports(inner, StreamedReads):
            mixed = _with_faulty_streams(mixed)
        return super().__new__(mixed)  # type: ignore[no-any-return]

    def __init__(self, inner: Backend, *, fail_rate: float = 0.0, seed: int = 0,
                 random_ops: tuple[str, ...] = OPS) -> None:
        super().__init__()
        self.inner = inner
        self.url = inner.url
        self.stats = inner.stats
        self.rules: list[FaultRule] = []
        self.injected: list[Injected] = []
        self.fail_rate = fail_rate
        self.random_ops = random_ops
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    # -- rule helpers ------------------------------------------------------

    def add_rule(self, op: str, action: str = "fail", *, prefix: str = "", nth: int = 1,
                 times: int = 1, error: Callable[[str], DrtoolError] = TransientBackendError
                 ) -> FaultRule:
        rule = FaultRule(op, action, prefix, nth, times, error)
        with self._lock:
            self.rules.append(rule)
        return rule

    def fail_nth(self, op: str, nth: int = 1, *, prefix: str = "", times: int = 1,
                 error: Callable[[str], DrtoolError] = TransientBackendError) -> FaultRule:
        return self.add_rule(op, "fail", prefix=prefix, nth=nth, times=times, error=error)

    def truncate_get(self, prefix: str = "", *, nth: int = 1, times: int = 1) -> list[FaultRule]:
        return [self.add_rule(op, "truncate", prefix=prefix, nth=nth, times=times)
                for op in ("get", "get_range", "stream")]

    def flip_get(self, prefix: str = "", *, nth: int = 1, times: int = 1) -> list[FaultRule]:
        return [self.add_rule(op, "flip", prefix=prefix, nth=nth, times=times)
                for op in ("get", "get_range", "stream")]

    def fail_delete(self, prefix: str = "", *, times: int = 0) -> FaultRule:
        return self.add_rule("delete", "fail", prefix=prefix, times=times, error=BackendError)

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.fail_rate = 0.0

    # -- machinery ---------------------------------------------------------

    def _check(self, op: str, name: str) -> FaultRule | None:
        """The rule that fires for this call, or a synthetic one from fail_rate."""
        with self._lock:
            fired = None
            for rule in self.rules:
                if rule.matches(op, name) and fired is None:
                    fired = rule
            if fired is None and self.fail_rate and op in self.random_ops \
                    and self._random.random() < self.fail_rate:
                fired = FaultRule(op, "fail")
            if fired is not None:
                self.injected.append(Injected(op, name, fired.action))
            return fired

    @staticmethod
    def _raise(rule: FaultRule, op: str, name: str) -> None:
        raise rule.error(f"injected fault: {op} {name} failed")

    @staticmethod
    def _damage(rule: FaultRule, data: bytes) -> bytes:
        if rule.action == "truncate":
            return data[: len(data) // 2]
        if rule.action == "flip" and data:
            pos = len(data) // 2
            return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]
        return data

    def _write(self, op: str, name: str, data: bytes, do: Callable[[bytes], Any]) -> Any:
        rule = self._check(op, name)
        if rule is None:
            return do(data)
        if rule.action == "fail":
            self._raise(rule, op, name)
        if rule.action == "drop":
            return True
        result = do(self._damage(rule, data))
        if rule.action == "fail_after":
            self._raise(rule, op, name)
        return result

    def _read(self, op: str, name: str, do: Callable[[], bytes]) -> bytes:
        rule = self._check(op, name)
        if rule is not None and rule.action == "fail":
            self._raise(rule, op, name)
        data = do()
        if rule is not None and rule.action == "fail_after":
            self._raise(rule, op, name)
        return data if rule is None else self._damage(rule, data)

    # -- Backend interface -------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        self._write("put", name, data, lambda d: self.inner.put(name, d))

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Atomic exactly when the inner backend's is (its capability, or the racy fallback)."""
        return bool(self._write("put_if_absent", name, data,
                                lambda d: capabilities.put_if_absent(self.inner, name, d)))

    def get(self, name: str) -> bytes:
        return self._read("get", name, lambda: self.inner.get(name))

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._read("get_range", name, lambda: self.inner.get_range(name, offset, length))

    def stat(self, name: str) -> ObjectInfo | None:
        rule = self._check("stat", name)
        if rule is not None and rule.action in ("fail", "fail_after"):
            self._raise(rule, "stat", name)
        return self.inner.stat(name)

    def delete(self, name: str) -> None:
        rule = self._check("delete", name)
        if rule is not None and rule.action == "fail":
            self._raise(rule, "delete", name)
        self.inner.delete(name)
        if rule is not None and rule.action == "fail_after":
            self._raise(rule, "delete", name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        rule = self._check("list", prefix)
        if rule is not None and rule.action == "fail":
            self._raise(rule, "list", prefix)
        items = list(self.inner.list(prefix))
        if rule is not None and rule.action == "truncate":
            items = items[: len(items) // 2]  # a listing that lags or was cut short
        if rule is not None and rule.action == "fail_after":
            self._raise(rule, "list", prefix)
        return iter(items)

    def close(self) -> None:
        self.inner.close()


class _FaultyStream:
    """An inner streamed range with the ``stream`` rule that fired when it was opened."""

    def __init__(self, inner: RangeStream, rule: "FaultRule | None", name: str, length: int) -> None:
        self.inner, self.rule, self.name, self.length = inner, rule, name, length
        self.pos = 0

    def _passing(self, amount: int) -> None:
        """Raise where the rule breaks the stream before bytes ``pos .. pos + amount`` pass."""
        action = self.rule.action if self.rule is not None else None
        if action == "truncate" and self.pos + amount > self.length // 2:
            raise TransientBackendError(f"injected fault: stream {self.name} broke off")

    def readinto(self, view: memoryview) -> None:
        self._passing(len(view))
        self.inner.readinto(view)
        start, self.pos = self.pos, self.pos + len(view)
        action = self.rule.action if self.rule is not None else None
        middle = self.length // 2
        if action == "flip" and start <= middle < self.pos:
            view[middle - start] ^= 0x01
        if action == "fail_after" and self.pos == self.length:
            raise TransientBackendError(f"injected fault: stream {self.name} failed")

    def skip(self, amount: int) -> None:
        self._passing(amount)
        self.inner.skip(amount)
        self.pos += amount

    def close(self) -> None:
        self.inner.close()


class _FaultyStreamedReads:
    inner: Any

    def open_range(self, name: str, offset: int, length: int) -> RangeStream:
        rule = self._check("stream", name)  # type: ignore[attr-defined]
        if rule is not None and rule.action == "fail":
            self._raise(rule, "stream", name)  # type: ignore[attr-defined]
        return _FaultyStream(self.inner.open_range(name, offset, length), rule, name, length)


@functools.lru_cache(maxsize=None)
def _with_faulty_streams(base: type) -> type:
    """``base`` (a FaultyBackend class) with StreamedReads whose streams the rules can hit."""
    namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__, "__doc__": base.__doc__}
    return type(base)(base.__name__, (base, _FaultyStreamedReads), namespace)
