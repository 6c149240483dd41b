"""Exercise a storage backend the way drtool will use it, before trusting backups to it.

Many "S3-compatible" stores differ from S3 in ways that silently corrupt a
repository: non-atomic overwrites, ranged reads that ignore the range,
listings that never show new objects, conditional writes that are accepted
but ignored, or a clock far from ours (which breaks lock staleness and
Object Lock dates).  Each check returns a :class:`CheckResult` instead of
raising, so one run reports every problem.  All objects live under
``validate/<random>/`` and are removed at the end (unless Object Lock keeps
them, which is then reported).
"""
from __future__ import annotations

import datetime as dt
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from drtool.backends import capabilities
from drtool.backends.base import Backend
from drtool.backends.capabilities import ConditionalCreate, supports
from drtool.errors import BackendError, DrtoolError, ObjectMissing
from drtool.repository.objects import VALIDATE

SIZES = (0, 1, 4096, 300_000)


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


class _Ctx:
    """Shared state for one validation run."""

    def __init__(self, backend: Backend, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.backend = backend
        self.clock = clock
        self.sleep = sleep
        self.base = f"{VALIDATE}/{os.urandom(6).hex()}/"
        self.written: set[str] = set()
        self.blobs: dict[str, bytes] = {}
        self.locked = False

    def name(self, leaf: str) -> str:
        return self.base + leaf

    def put(self, leaf: str, data: bytes) -> str:
        name = self.name(leaf)
        self.written.add(name)
        self.backend.put(name, data)
        self.blobs[name] = data
        return name


def validate_backend(backend: Backend, *, clock: Callable[[], float] = time.time,
                     sleep: Callable[[float], None] = time.sleep,
                     max_skew: float = 60.0) -> list[CheckResult]:
    """Run all checks; the result lists every check with ok/detail."""
    ctx = _Ctx(backend, clock, sleep)
    checks: list[tuple[str, Callable[[_Ctx], str]]] = [
        ("read-after-write", _check_read_after_write),
        ("stat", _check_stat),
        ("missing-object", _check_missing),
        ("ranged-read", _check_ranges),
        ("atomic-overwrite", _check_atomic_overwrite),
        ("listing", _check_listing),
        ("conditional-create", _check_conditional_create),
        ("clock-skew", lambda c: _check_clock(c, max_skew)),
        ("object-lock", _check_object_lock),
        ("delete", _check_delete),
    ]
    results = [_run(name, fn, ctx) for name, fn in checks]
    results.append(_cleanup(ctx))
    return results


def _run(name: str, fn: Callable[[_Ctx], str], ctx: _Ctx) -> CheckResult:
    try:
        return CheckResult(name, True, fn(ctx))
    except _Failed as exc:
        return CheckResult(name, False, str(exc))
    except DrtoolError as exc:
        return CheckResult(name, False, f"{type(exc).__name__}: {exc.one_line()}")
    except Exception as exc:  # noqa: BLE001 - a validator must report, not crash
        return CheckResult(name, False, f"unexpected {type(exc).__name__}: {exc}")


class _Failed(Exception):
    pass


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise _Failed(message)


def _pattern(size: int, seed: int) -> bytes:
    """Position-dependent content, so a misplaced range or mixed write is visible."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


def _check_read_after_write(ctx: _Ctx) -> str:
    for size in SIZES:
        name = ctx.put(f"rw-{size}", _pattern(size, size % 97))
        got = ctx.backend.get(name)
        _expect(got == ctx.blobs[name], f"{name}: read {len(got)} bytes back, wrote {size} "
                                        "(or content differs)")
    lock = capabilities.object_lock(ctx.backend)
    if lock is not None and lock.retention_until(ctx.name(f"rw-{SIZES[-1]}")) is not None:
        ctx.locked = True
    return f"{len(SIZES)} objects of {min(SIZES)}..{max(SIZES)} bytes read back intact"


def _check_stat(ctx: _Ctx) -> str:
    for size in SIZES:
        info = ctx.backend.stat(ctx.name(f"rw-{size}"))
        _expect(info is not None and info.size == size, f"stat of rw-{size} gave {info}")
    _expect(ctx.backend.stat(ctx.name("never-written")) is None, "stat of an absent object is not None")
    return "sizes correct; absent object reports None"


def _check_missing(ctx: _Ctx) -> str:
    for op, call in (("get", lambda n: ctx.backend.get(n)),
                     ("get_range", lambda n: ctx.backend.get_range(n, 0, 1))):
        try:
            call(ctx.name("never-written"))
        except ObjectMissing:
            continue
        raise _Failed(f"{op} of an absent object did not raise ObjectMissing")
    return "absent objects raise ObjectMissing"


def _check_ranges(ctx: _Ctx) -> str:
    name = ctx.name(f"rw-{SIZES[-1]}")
    data = ctx.blobs[name]
    size = len(data)
    for offset, length in ((0, 1), (1, 100), (size - 1, 1), (4095, 70_001), (0, size)):
        got = ctx.backend.get_range(name, offset, length)
        _expect(got == data[offset:offset + length],
                f"get_range({offset}, {length}) returned {len(got)} wrong bytes")
    for offset, length in ((size - 10, 20), (size + 5, 1)):
        try:
            got = ctx.backend.get_range(name, offset, length)
        except DrtoolError:
            continue
        raise _Failed(f"get_range({offset}, {length}) past the end returned {len(got)} bytes "
                      "instead of raising")
    return "exact bytes for 5 ranges; reads past the end raise"


def _check_atomic_overwrite(ctx: _Ctx) -> str:
    """Readers racing a writer must see the old or the new object, never a mix."""
    size = 200_000
    versions = [_pattern(size, 1), _pattern(size, 2)]
    name = ctx.put("overwrite", versions[0])
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                got = ctx.backend.get(name)
            except DrtoolError as exc:
                problems.append(f"read during overwrite failed: {exc}")
                return
            reads[0] += 1
            if got not in versions:
                problems.append(f"reader saw a mixed or partial object ({len(got)} bytes)")
                return

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for i in range(12):
            ctx.backend.put(name, versions[(i + 1) % 2])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    _expect(not problems, problems[0] if problems else "")
    _expect(ctx.backend.get(name) == versions[0], "final content is not the last write")
    return f"12 overwrites raced by {reads[0]} reads: always old or new"


def _check_listing(ctx: _Ctx) -> str:
    ctx.put("list/a/1", b"1")
    ctx.put("list/a/2", b"22")
    ctx.put("list/b/3", b"333")
    want = {ctx.name("list/a/1"): 1, ctx.name("list/a/2"): 2}
    got: dict[str, int] = {}
    for attempt in range(5):
        got = {o.name: o.size for o in ctx.backend.list(ctx.name("list/a/"))}
        if got == want:
            return f"prefix listing exact{' after lag' if attempt else ''}"
        ctx.sleep(0.2 * 2 ** attempt)
    raise _Failed(f"listing of list/a/ gave {sorted(got)} instead of {sorted(want)}")


def _check_conditional_create(ctx: _Ctx) -> str:
    name = ctx.name("cond")
    ctx.written.add(name)
    _expect(capabilities.put_if_absent(ctx.backend, name, b"first") is True,
            "put_if_absent of a new object returned False")
    _expect(capabilities.put_if_absent(ctx.backend, name, b"second") is False,
            "put_if_absent over an existing object returned True")
    _expect(ctx.backend.get(name) == b"first", "put_if_absent replaced an existing object")
    if not supports(ctx.backend, ConditionalCreate):
        return "semantics correct, but check-then-put only (not atomic under races)"
    return "create-if-absent is honoured"


def _check_clock(ctx: _Ctx, max_skew: float) -> str:
    now: Any = capabilities.server_time(ctx.backend)
    if now is None:
        return "backend has no server clock (local or in-memory): skipped"
    if isinstance(now, dt.datetime):
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.timezone.utc)
        now = now.timestamp()
    skew = float(now) - ctx.clock()
    _expect(abs(skew) <= max_skew, f"local clock differs from the server by {skew:+.0f}s "
                                   f"(limit {max_skew:.0f}s): fix NTP before using locks or Object Lock")
    return f"skew {skew:+.1f}s"


def _check_object_lock(ctx: _Ctx) -> str:
    lock = capabilities.object_lock(ctx.backend)
    if not ctx.locked or lock is None:
        return "not configured: skipped"
    name = ctx.name(f"rw-{SIZES[-1]}")
    until = lock.retention_until(name)
    _expect(until is not None and until.timestamp() > ctx.clock(), f"retention of {name} is {until}")
    _expect(bool(lock.is_locked(name)), "is_locked is False for a fresh object")
    try:
        ctx.backend.delete(name)
    except BackendError:
        pass
    else:
        raise _Failed("delete of a locked object did not fail")
    _expect(ctx.backend.get(name) == ctx.blobs[name], "locked object changed after a refused delete")
    later = until + dt.timedelta(days=1)
    lock.extend_retention(name, later)
    now_until = lock.retention_until(name)
    _expect(now_until is not None and now_until >= later, "extend_retention did not extend")
    return f"retention until {until:%Y-%m-%d}; delete refused; extension works"


def _check_delete(ctx: _Ctx) -> str:
    if ctx.locked:
        return "objects are locked by Object Lock: delete check skipped"
    name = ctx.put("delete-me", b"x" * 10)
    ctx.backend.delete(name)
    _expect(ctx.backend.stat(name) is None, "object still there after delete")
    try:
        ctx.backend.get(name)
    except ObjectMissing:
        pass
    else:
        raise _Failed("get after delete did not raise ObjectMissing")
    ctx.backend.delete(name)  # deleting a missing object is not an error
    for attempt in range(5):
        if name not in {o.name for o in ctx.backend.list(ctx.base)}:
            return "delete removes the object; repeated delete is fine"
        ctx.sleep(0.2 * 2 ** attempt)
    raise _Failed("deleted object still listed")


def _cleanup(ctx: _Ctx) -> CheckResult:
    """Remove every test object; report what could not be removed."""
    left: list[str] = []
    names = set(ctx.written)
    try:
        names |= {o.name for o in ctx.backend.list(ctx.base)}
    except DrtoolError:
        pass
    for name in sorted(names):
        try:
            ctx.backend.delete(name)
        except DrtoolError:
            left.append(name)
    if left and ctx.locked:
        return CheckResult("cleanup", True, f"{len(left)} locked test objects remain under "
                                            f"{ctx.base} until their retention ends")
    if left:
        return CheckResult("cleanup", False, f"could not delete {len(left)} objects under {ctx.base}")
    return CheckResult("cleanup", True, f"removed {len(names)} test objects")
