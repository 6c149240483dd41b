"""The storage contract as executable checks: ``verify_backend(make_backend)``.

Higher layers are tested mostly on the memory backend; that is only sound if
every backend behaves the same for the operations they use.  Each check
takes a fresh backend from ``make_backend``, exercises one promise of the
contract (``drtool.backends.base``) or of a capability through its helper
(``drtool.backends.capabilities``, so a backend without the capability is
checked on the shared fallback), and closes it.  A failure names the check
and says what was wrong; ``verify_backend`` runs them all and reports every
failure at once, so a new backend is verified by one call::

    from drtool.testing import verify_backend
    verify_backend(lambda: MyBackend(...))

Stores whose listings lag writes pass ``listing_lags=True``: the checks that
need a listing to show a write at once are then skipped, and
``listing-catches-up`` still requires listings to become exact.  This module
is a library, not a test file: it never uses ``assert`` (which ``python -O``
removes).
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Callable

from drtool.backends import capabilities
from drtool.backends.base import Backend, ObjectInfo
from drtool.backends.capabilities import ConditionalCreate, supports
from drtool.errors import DrtoolError, ObjectMissing

MiB = 1024 * 1024
LISTINGS_TO_CATCH_UP = 20  # a lagging store must list exactly within this many listings


class BackendCheckFailed(AssertionError):
    """One or more checks failed; the message names each and says why."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"check {name} failed: {why}" for name, why in failures.items()))


class NotApplicable(Exception):
    """The check does not apply to this backend (a missing capability, a lagging listing)."""


@dataclass(frozen=True)
class BackendCheck:
    name: str
    run: Callable[[Backend], None]
    read_after_list: bool = False  # needs a listing to show a write at once

    @property
    def doc(self) -> str:
        return (self.run.__doc__ or "").strip()


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    status: str  # "passed", "failed" or "skipped"
    detail: str = ""


def _expect(condition: bool, why: str) -> None:
    if not condition:
        raise _Failure(why)


class _Failure(Exception):
    pass


def _raises_missing(call: Callable[[], object], what: str) -> None:
    try:
        got = call()
    except ObjectMissing:
        return
    except DrtoolError as exc:
        raise _Failure(f"{what} raised {type(exc).__name__} ({exc}), not ObjectMissing") from None
    size = len(got) if isinstance(got, (bytes, bytearray, memoryview)) else got
    raise _Failure(f"{what} returned {size!r} instead of raising ObjectMissing")


def _blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _names(backend: Backend, prefix: str = "") -> set[str]:
    return {info.name for info in backend.list(prefix)}


# ----- the checks --------------------------------------------------------------------------------
def check_put_get_roundtrip(backend: Backend) -> None:
    """put then get returns the same bytes and stat the size, for empty to 256 KiB objects."""
    for size in (0, 1, 1000, 256 * 1024):
        data = _blob(size, size)
        backend.put(f"data/obj-{size}", data)
        got = backend.get(f"data/obj-{size}")
        _expect(got == data, f"get of a {size}-byte object returned {len(got)} different bytes")
        info = backend.stat(f"data/obj-{size}")
        _expect(info == ObjectInfo(f"data/obj-{size}", size), f"stat of a {size}-byte object gave {info}")


def check_overwrite_replaces_whole_object(backend: Backend) -> None:
    """A put over a longer object leaves exactly the new bytes (no tail of the old one)."""
    backend.put("config", _blob(5000, 1))
    backend.put("config", b"short")
    got = backend.get("config")
    _expect(got == b"short", f"after the overwrite get returned {len(got)} bytes, not b'short'")
    info = backend.stat("config")
    _expect(info == ObjectInfo("config", 5), f"stat after the overwrite gave {info}")


def check_get_range_exact(backend: Backend) -> None:
    """get_range returns exactly the bytes asked for, at the start, the end, inside, and empty."""
    data = _blob(100_000, 7)
    backend.put("packs/aa/range", data)
    rng = random.Random(3)
    cases = [(0, 1), (0, len(data)), (len(data) - 1, 1), (99_000, 1000), (12345, 0), (len(data), 0)]
    cases += [(o, rng.randrange(1, len(data) - o + 1)) for o in rng.sample(range(len(data)), 10)]
    for offset, length in cases:
        got = backend.get_range("packs/aa/range", offset, length)
        _expect(got == data[offset:offset + length],
                f"get_range({offset}, {length}) returned {len(got)} bytes that are not the range")


def check_get_range_to_the_end(backend: Backend) -> None:
    """length=None reads to the end; get(name) is the whole object; at the end it is empty."""
    data = _blob(70_000, 8)
    backend.put("packs/ab/tail", data)
    for offset in (0, 1, 69_999, 70_000):
        got = backend.get_range("packs/ab/tail", offset)
        _expect(got == data[offset:], f"get_range({offset}, None) returned {len(got)} bytes, "
                                      f"not the {len(data) - offset} to the end")
    _expect(backend.get("packs/ab/tail") == data, "get differs from the object")
    _raises_missing(lambda: backend.get_range("packs/ab/tail", 70_001), "get_range(70001) of 70000 bytes")


def check_get_range_past_end_raises(backend: Backend) -> None:
    """A range past the end raises ObjectMissing (a truncated object), never returns short bytes."""
    backend.put("small", _blob(100))
    for offset, length in ((95, 10), (100, 1), (5000, 10), (101, 0)):
        _raises_missing(lambda: backend.get_range("small", offset, length),
                        f"get_range({offset}, {length}) of a 100-byte object")


def check_absent_objects(backend: Backend) -> None:
    """get and get_range of an absent object raise ObjectMissing; stat returns None."""
    _raises_missing(lambda: backend.get("nope/never"), "get of an absent object")
    _raises_missing(lambda: backend.get_range("nope/never", 0, 10), "get_range of an absent object")
    _raises_missing(lambda: backend.get_range("nope/never"), "get_range(to the end) of an absent object")
    _expect(backend.stat("nope/never") is None, f"stat of an absent object gave {backend.stat('nope/never')}")


def check_delete_is_idempotent(backend: Backend) -> None:
    """delete removes the object (stat None, get raises); deleting a missing object is fine."""
    backend.put("locks/one", b"x")
    backend.delete("locks/one")
    _expect(backend.stat("locks/one") is None, "stat after delete still finds the object")
    _raises_missing(lambda: backend.get("locks/one"), "get after delete")
    backend.delete("locks/one")
    backend.delete("never/existed")


def check_list_shows_deletes_at_once(backend: Backend) -> None:
    """A deleted object is gone from the next listing."""
    backend.put("locks/one", b"x")
    backend.put("locks/two", b"y")
    backend.delete("locks/one")
    names = _names(backend)
    _expect("locks/one" not in names and "locks/two" in names, f"listing after a delete: {sorted(names)}")


def check_list_prefixes_and_nesting(backend: Backend) -> None:
    """Listings are exact for every prefix: nested names, partial segments, sizes, none extra."""
    names = ["config", "keys/k1", "packs/ab/ab01", "packs/ab/ab02", "packs/cd/cd01",
             "packs/cd/deeper/x", "snapshots/s1", "packsX"]
    for i, name in enumerate(names):
        backend.put(name, b"z" * i)
    for prefix in ("", "packs/", "packs/ab/", "packs/ab/ab0", "packs", "missing/"):
        got = _names(backend, prefix)
        want = {n for n in names if n.startswith(prefix)}
        _expect(got == want, f"list({prefix!r}) gave {sorted(got)}, expected {sorted(want)}")
    sizes = {info.name: info.size for info in backend.list("")}
    _expect(sizes == {n: i for i, n in enumerate(names)}, f"listed sizes are wrong: {sizes}")


def check_listing_catches_up(backend: Backend) -> None:
    """Listings may lag, but become exact (puts shown, deletes gone) within a few listings."""
    backend.put("index/a", b"1")
    backend.put("index/b", b"22")
    _settles(backend, "index/", {"index/a": 1, "index/b": 2})
    backend.delete("index/a")
    _settles(backend, "index/", {"index/b": 2})


def _settles(backend: Backend, prefix: str, want: dict[str, int]) -> None:
    got: dict[str, int] = {}
    for _ in range(LISTINGS_TO_CATCH_UP):
        got = {info.name: info.size for info in backend.list(prefix)}
        if got == want:
            return
    raise _Failure(f"after {LISTINGS_TO_CATCH_UP} listings list({prefix!r}) still gives {got}, not {want}")


def check_put_parts(backend: Backend) -> None:
    """put_parts (capability or join-and-put) stores exactly the concatenation."""
    parts = [_blob(1000, 1), bytearray(_blob(70_000, 2)), b"", _blob(5, 3)]
    capabilities.put_parts(backend, "data/parts", parts)
    joined = b"".join(bytes(p) for p in parts)
    _expect(backend.get("data/parts") == joined, "the stored object is not the concatenation of the parts")
    _expect(backend.stat("data/parts") == ObjectInfo("data/parts", len(joined)),
            f"stat of the parts object gave {backend.stat('data/parts')}")


def check_read_view(backend: Backend) -> None:
    """read_view (mapped where the backend can) holds exactly the bytes of get_range."""
    data = _blob(3 * MiB + 77, 9)
    backend.put("packs/bb/view", data)
    for offset, length in ((0, 10), (4097, 2 * MiB), (1, len(data) - 1), (len(data) - MiB, MiB)):
        view = capabilities.read_view(backend, "packs/bb/view", offset, length)
        _expect(bytes(view) == data[offset:offset + length],
                f"read_view({offset}, {length}) is not the range")
    _raises_missing(lambda: capabilities.read_view(backend, "packs/bb/view", MiB, len(data)),
                    "read_view past the end")
    _raises_missing(lambda: capabilities.read_view(backend, "packs/bb/absent", 0, 2 * MiB),
                    "read_view of an absent object")


def check_read_into(backend: Backend) -> None:
    """read_into a recycled buffer shows exactly the range, never stale bytes of the buffer."""
    data = _blob(3 * MiB + 77, 11)
    backend.put("packs/cc/into", data)
    buf = bytearray(b"\xee" * (3 * MiB + 100))
    for offset, length in ((0, 10), (4097, 2 * MiB), (1, len(data) - 1), (len(data) - 5, 5)):
        view = capabilities.read_into(backend, "packs/cc/into", offset, length, buf)
        _expect(len(view) == length and bytes(view) == data[offset:offset + length],
                f"read_into({offset}, {length}) is not the range")
        del view
    _raises_missing(lambda: capabilities.read_into(backend, "packs/cc/into", MiB, len(data), buf),
                    "read_into past the end")
    _raises_missing(lambda: capabilities.read_into(backend, "packs/cc/absent", 0, 1000, buf),
                    "read_into of an absent object")


def check_put_if_absent(backend: Backend) -> None:
    """put_if_absent stores only when the name is free, and never replaces an object."""
    _expect(capabilities.put_if_absent(backend, "locks/exclusive", b"first") is True,
            "put_if_absent of a new name returned False")
    _expect(capabilities.put_if_absent(backend, "locks/exclusive", b"second") is False,
            "put_if_absent over an existing object returned True")
    _expect(backend.get("locks/exclusive") == b"first", "put_if_absent replaced an existing object")
    backend.delete("locks/exclusive")
    _expect(capabilities.put_if_absent(backend, "locks/exclusive", b"third") is True,
            "put_if_absent after a delete returned False")
    _expect(backend.get("locks/exclusive") == b"third", "put_if_absent after a delete stored other bytes")


def check_put_if_absent_race(backend: Backend) -> None:
    """With conditional create, six racing writers of one name have exactly one winner."""
    if not supports(backend, ConditionalCreate):
        raise NotApplicable("no conditional create: the racy check-then-put fallback")
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def contend(i: int) -> None:
        barrier.wait()
        results.append(capabilities.put_if_absent(backend, "locks/race", f"writer-{i}".encode()))

    _in_threads([lambda i=i: contend(i) for i in range(6)])  # type: ignore[misc]
    _expect(results.count(True) == 1, f"{results.count(True)} of 6 racing writers won")
    _expect(backend.get("locks/race").startswith(b"writer-"), "the race left another object")


def check_large_object(backend: Backend) -> None:
    """An 11 MiB object (multipart on S3) round-trips, with exact ranges across part edges."""
    data = _blob(11 * MiB + 123, 11)
    backend.put("packs/ff/large", data)
    _expect(backend.stat("packs/ff/large") == ObjectInfo("packs/ff/large", len(data)),
            f"stat of the large object gave {backend.stat('packs/ff/large')}")
    _expect(backend.get("packs/ff/large") == data, "the large object came back different")
    for edge in (5 * MiB, 8 * MiB, 10 * MiB):
        _expect(backend.get_range("packs/ff/large", edge - 10, 20) == data[edge - 10:edge + 10],
                f"range across {edge} is wrong")


def check_concurrent_puts(backend: Backend) -> None:
    """Six threads putting 24 objects at once: every object stored intact, stats counted."""
    blobs = {f"packs/{i:02x}/obj{i}": _blob(2000 + i, i) for i in range(24)}
    items = list(blobs.items())
    puts_before = backend.stats.puts

    def upload(share: list[tuple[str, bytes]]) -> None:
        for name, data in share:
            backend.put(name, data)

    _in_threads([lambda share=items[i::6]: upload(share) for i in range(6)])  # type: ignore[misc]
    for name, data in blobs.items():
        _expect(backend.get(name) == data, f"{name} came back different")
    _expect(backend.stats.puts - puts_before >= len(blobs),
            f"stats counted {backend.stats.puts - puts_before} puts for {len(blobs)}")


def check_overwrite_is_atomic(backend: Backend) -> None:
    """Readers racing overwrites see the old or the new object, never a mix or a part."""
    versions = [_blob(300_000, 1), _blob(300_000, 2)]
    backend.put("index/current", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(backend.get("index/current"))

    errors: list[BaseException] = []
    threads = [threading.Thread(target=_reporting(reader, errors)) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for i in range(10):
            backend.put("index/current", versions[(i + 1) % 2])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    _expect(not errors, f"a reader failed during overwrites: {errors[:1]}")
    bad = [len(s) for s in seen if s not in versions]
    _expect(bool(seen) and not bad, f"readers saw {len(bad)} mixed or partial objects of {len(seen)}")


def check_stats_are_counted(backend: Backend) -> None:
    """Every kind of request is counted in ``stats`` (cost reporting)."""
    before = backend.stats.as_dict()
    backend.put("a", b"123")
    backend.get("a")
    backend.stat("a")
    list(backend.list(""))
    backend.delete("a")
    after = backend.stats.as_dict()
    for key in ("puts", "gets", "lists", "deletes", "bytes_up"):
        _expect(after[key] > before[key], f"stats.{key} did not grow ({before[key]} -> {after[key]})")


def check_staged_object(backend: Backend) -> None:
    """A staged object is invisible under any name until commit, then exactly what was written."""
    staged = capabilities.stage(backend, "packs")
    if staged is None:
        raise NotApplicable("no staged writes: packs are kept for put_parts")
    staged.write(b"first ")
    staged.write(memoryview(b"second"))
    _expect(_names(backend, "packs/") == set(), "a staged object is listed before its commit")
    staged.commit("packs/ab/abcdef")
    _expect(backend.get("packs/ab/abcdef") == b"first second",
            "the committed object differs from what was written")
    _expect(_names(backend, "packs/") == {"packs/ab/abcdef"},
            f"listing after the commit: {sorted(_names(backend, 'packs/'))}")


def check_aborted_stage_leaves_nothing(backend: Backend) -> None:
    """An aborted staged object (aborted twice) leaves no object and no listing entry."""
    staged = capabilities.stage(backend, "packs")
    if staged is None:
        raise NotApplicable("no staged writes")
    staged.write(b"partial pack")
    staged.abort()
    staged.abort()
    _expect(_names(backend, "packs/") == set(), "an aborted staged object is listed")


def _reporting(target: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the check
            errors.append(exc)
    return run


def _in_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_reporting(t, errors)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise _Failure(f"a thread failed: {type(errors[0]).__name__}: {errors[0]}")


CHECKS: tuple[BackendCheck, ...] = (
    BackendCheck("put-get-roundtrip", check_put_get_roundtrip),
    BackendCheck("overwrite-replaces-whole-object", check_overwrite_replaces_whole_object),
    BackendCheck("get-range-exact", check_get_range_exact),
    BackendCheck("get-range-to-the-end", check_get_range_to_the_end),
    BackendCheck("get-range-past-end-raises", check_get_range_past_end_raises),
    BackendCheck("absent-objects", check_absent_objects),
    BackendCheck("delete-is-idempotent", check_delete_is_idempotent),
    BackendCheck("list-shows-deletes-at-once", check_list_shows_deletes_at_once, read_after_list=True),
    BackendCheck("list-prefixes-and-nesting", check_list_prefixes_and_nesting, read_after_list=True),
    BackendCheck("listing-catches-up", check_listing_catches_up),
    BackendCheck("put-parts", check_put_parts),
    BackendCheck("read-view", check_read_view),
    BackendCheck("read-into", check_read_into),
    BackendCheck("put-if-absent", check_put_if_absent),
    BackendCheck("put-if-absent-race", check_put_if_absent_race),
    BackendCheck("large-object", check_large_object),
    BackendCheck("concurrent-puts", check_concurrent_puts),
    BackendCheck("overwrite-is-atomic", check_overwrite_is_atomic),
    BackendCheck("stats-are-counted", check_stats_are_counted),
    BackendCheck("staged-object", check_staged_object, read_after_list=True),
    BackendCheck("aborted-stage-leaves-nothing", check_aborted_stage_leaves_nothing),
)


def run_check(check: BackendCheck, make_backend: Callable[[], Backend], *,
              listing_lags: bool = False) -> CheckOutcome:
    """Run one check on a fresh backend; the outcome says passed, failed (and why) or skipped."""
    if listing_lags and check.read_after_list:
        return CheckOutcome(check.name, "skipped", "needs a listing to show writes at once")
    backend = make_backend()
    try:
        check.run(backend)
    except NotApplicable as exc:
        return CheckOutcome(check.name, "skipped", str(exc))
    except _Failure as exc:
        return CheckOutcome(check.name, "failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - a check reports, it does not crash
        return CheckOutcome(check.name, "failed", f"unexpected {type(exc).__name__}: {exc}")
    finally:
        backend.close()
    return CheckOutcome(check.name, "passed")


def verify_backend(make_backend: Callable[[], Backend], *, listing_lags: bool = False,
                   only: tuple[str, ...] = ()) -> list[CheckOutcome]:
    """Run every check (or the ``only`` ones) on fresh backends from ``make_backend``.

    Returns the outcomes when none failed; raises :class:`BackendCheckFailed`
    naming each failed check and why otherwise.
    """
    unknown = set(only) - {check.name for check in CHECKS}
    if unknown:
        raise ValueError(f"unknown checks: {', '.join(sorted(unknown))}")
    outcomes = [run_check(check, make_backend, listing_lags=listing_lags)
                for check in CHECKS if not only or check.name in only]
    failures = {o.name: o.detail for o in outcomes if o.status == "failed"}
    if failures:
        raise BackendCheckFailed(failures)
    return outcomes
