"""Python's cyclic garbage collector, paused over the data paths of backup and restore.

Reference counting frees everything these paths allocate (chunk views,
locations, batches, futures); the cyclic collector only adds passes over
every tracked object -- the index, trees, the interpreter's own modules --
each time enough containers were allocated.  On the full bench restore those
passes were ~10 % of the CPU (perf: ``gc_collect_main``, ``visit_decref``);
pausing them took the restore from ~2.3 s to ~1.95 s.  The objects alive when
the pause starts are frozen out of later collections, and the collector
runs again (and catches any cycle an error left behind) when the pause ends.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
