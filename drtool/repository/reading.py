"""Reading groups back: a small cache of opened groups, and recycled read buffers.

Two ways to read, for two access patterns.  Tree walks, prune and copy ask
for blobs one list at a time and come back to the same groups, so opened
groups stay in a :class:`GroupCache`.  A restore plans which blobs of each
group it needs and opens every group once, into buffers from a
:class:`ScratchPool` that go back to the pool when the group is written out.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

MiB = 1024 * 1024


class GroupCache:
    """A few recently opened groups: tree walks and small files hit the same group often."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        """``max_bytes`` is set per use case (``Repository.limit_group_cache``)."""
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[bytes, int], bytes | bytearray] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[bytes, int], threading.Event] = {}

    def get_or_load(self, key: tuple[bytes, int],
                    load: Callable[[], bytes | bytearray]) -> bytes | bytearray:
        """The cached group, or ``load()`` it -- once, even when several threads want it.

        A repository may be read from several threads (API users); two that
        miss on the same 16 MiB group would both decompress it.  (Restores,
        whose workers once hit exactly that, now plan groups and bypass this
        cache: see ``ops/restore_groups.py``.)
        """
        while True:
            with self._lock:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                    return value
                loading = self._loading.get(key)
                if loading is None:
                    loading = self._loading[key] = threading.Event()
                    break
            loading.wait()  # another thread is opening it; then look again
            with self._lock:
                value = self._items.get(key)
            if value is not None:
                return value
            return load()  # it failed there or was too big to cache: do it here
        try:
            value = load()
            self.put(key, value)
            return value
        finally:
            with self._lock:
                del self._loading[key]
            loading.set()

    def get(self, key: tuple[bytes, int]) -> bytes | bytearray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            while self._size > self.max_bytes and self._items:
                _old_key, old = self._items.popitem(last=False)
                self._size -= len(old)

    def put(self, key: tuple[bytes, int], value: bytes | bytearray) -> None:
        with self._lock:
            if key in self._items or len(value) > self.max_bytes // 4:
                return
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _old_key, old = self._items.popitem(last=False)
                self._size -= len(old)


class ScratchPool:
    """Recycled buffers of at least a requested size (decrypted and decompressed groups).

    A fresh 16 MiB buffer is faulted in page by page, zeroed and unmapped
    again after use; on the bench restore that was ~10 % of the CPU (perf:
    ``do_anonymous_page``, ``memset``, ``munmap`` with TLB shoot-downs).
    Sizes are rounded up to whole MiB so that groups of similar size share
    buffers; at most ``keep`` buffers are kept, the largest first.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            fits = [b for b in self._free if len(b) >= size]
            if fits:
                best = min(fits, key=len)
                self._free.remove(best)
                return best
        return bytearray(-(-max(size, 1) // MiB) * MiB)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)
            if len(self._free) > self.keep:
                self._free.remove(min(self._free, key=len))


class OpenedGroup:
    """A group's plaintext held in pooled buffers until :meth:`release` gives them back.

    Views cut from ``plain`` must not be used after ``release``: the next
    group is decompressed into the same memory.
    """

    __slots__ = ("plain", "_held", "_pool")

    def __init__(self, plain: memoryview, held: list[bytearray], pool: ScratchPool) -> None:
        self.plain = plain
        self._held = held
        self._pool = pool

    def release(self) -> None:
        held, self._held = self._held, []
        for buf in held:
            self._pool.give(buf)
