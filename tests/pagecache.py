"""How much of a file the page cache holds dirty: Linux's ``cachestat`` (6.5+), asked per file.

Why a syscall and not ``/proc/meminfo``: the machine's other writers move ``Dirty`` all the time;
``cachestat`` counts one file's own pages, so a restore that did not sync shows its own."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

_CACHESTAT = 451  # x86_64 and aarch64 share the generic number


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


_libc = ctypes.CDLL(None, use_errno=True)


def unwritten_pages(paths: list[Path]) -> dict[str, int]:
    """Pages dirty or under writeback, per file that has any (an empty dict: everything is on disk)."""
    found: dict[str, int] = {}
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            stat = _Stat()
            if _libc.syscall(_CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(stat), 0) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"cachestat: {os.strerror(err)}", str(path))
        finally:
            os.close(fd)
        if stat.nr_dirty or stat.nr_writeback:
            found[str(path)] = stat.nr_dirty + stat.nr_writeback
    return found
