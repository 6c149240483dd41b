"""The ring buffer streamed restores read sealed groups into: no slice overlaps another in use,
memory never exceeds its size, and a group bigger than the ring still goes (alone)."""
from __future__ import annotations

import random
import threading
import time
from collections import deque

from drtool.restore.ring import Ring


def test_slices_in_use_never_overlap_and_stay_within_the_ring() -> None:
    """Four takers and two givers (mostly in order, sometimes not), every slice stamped with its
    own byte and checked when given back: an overlapping slice would have been overwritten."""
    ring = Ring(1000)
    live: deque = deque()
    lock = threading.Lock()
    errors: list[str] = []
    stop = threading.Event()

    def taker(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(400):
            length = rng.randint(1, 300)
            view, give = ring.take(length)
            stamp = (seed * 50 + i) % 251
            view[:] = bytes([stamp]) * length
            with lock:
                live.append((view, give, stamp))

    def giver(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set() or live:
            with lock:
                if not live:
                    item = None
                else:
                    item = live.popleft() if rng.random() < 0.8 else live.pop()
            if item is None:
                time.sleep(0.0005)
                continue
            view, give, stamp = item
            if view.tobytes() != bytes([stamp]) * len(view):
                errors.append("a slice in use was overwritten")
            give()

    takers = [threading.Thread(target=taker, args=(s,)) for s in range(4)]
    givers = [threading.Thread(target=giver, args=(s,)) for s in range(2)]
    for t in takers + givers:
        t.start()
    for t in takers:
        t.join()
    stop.set()
    for t in givers:
        t.join()
    assert errors == []
    assert ring.held == 0 and 300 < ring.peak <= 1000


def test_a_taker_waits_for_the_oldest_slice_and_the_space_behind_it_is_reused() -> None:
    ring = Ring(100)
    first, give_first = ring.take(60)
    _second, give_second = ring.take(40)  # the ring is full
    got: list[memoryview] = []
    waiter = threading.Thread(target=lambda: got.append(ring.take(50)[0]))
    waiter.start()
    time.sleep(0.05)
    give_second()  # not the oldest: nothing is reclaimed behind the first
    time.sleep(0.05)
    assert got == []
    give_first()
    give_first()  # giving back twice is harmless
    waiter.join(timeout=5)
    assert len(got) == 1 and len(got[0]) == 50
    assert ring.held == 50 and ring.peak == 100


def test_a_group_bigger_than_the_ring_gets_its_own_buffer_once_the_ring_is_empty() -> None:
    ring = Ring(100)
    _small, give_small = ring.take(10)
    got: list[memoryview] = []
    waiter = threading.Thread(target=lambda: got.append(ring.take(250)[0]))
    waiter.start()
    time.sleep(0.05)
    assert got == []  # it waits: a big group goes alone
    give_small()
    waiter.join(timeout=5)
    assert len(got) == 1 and len(got[0]) == 250 and ring.held == 250
