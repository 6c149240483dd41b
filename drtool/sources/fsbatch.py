"""Directory listings and small-file reads in one GIL release each, when the helper is built.

Python releases the GIL around every system call: a cold backup of tiny
files made ~7 per file (``scandir``'s ``readdir``, ``lstat``, ``open``,
``posix_fadvise``, ``readv``, ``fstat``, ``close``) on the scan and reader
threads, and with the walk and the chunk workers wanting the GIL each one
was a hand-off between threads: ~22 % of a cold first backup's samples on
the 2-core VM were those wake-ups (docs/performance.md). The compiled helper
``_fsbatch`` (``_fsbatch.c``, built by setup.py, optional) lists a directory
with its ``lstat``s releasing the GIL once per 1,024 entries (so its own
buffer stays small whatever the directory), and opens, prefetches, reads,
``fstat``s and closes a whole batch of small files releasing it once.

It only makes the calls and reports their results; what they mean (an entry
that vanished, a file replaced or grown) is decided here and in
``backup.readers`` by the same rules as the pure-Python path
(``files.scan_dir``, ``readers.read_open_file``), which stays the fallback
wherever the helper is not built and is tested beside it.
"""
from __future__ import annotations

import os
from types import ModuleType

from drtool.sources.files import _BY_NAME, _GONE, Entry, Unreadable, _error

# The outcome of one file of read_batch (_fsbatch.c's enum)
READ_OK, OPEN_FAILED, READ_FAILED, GREW, FSTAT_FAILED = range(5)


def load() -> ModuleType | None:
    """The compiled helper, or None where it was not built (the pure-Python path is used)."""
    try:
        from drtool.sources import _fsbatch  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _fsbatch


def os_error(err: int) -> OSError:
    """The exception Python's own call would have raised for ``err`` (``strerror`` included)."""
    return OSError(err, os.strerror(err))


def scan_dir(native: ModuleType, path: bytes) -> tuple[list[Entry], list[Unreadable]]:
    """``files.scan_dir`` through the helper: the same entries (paths, names, ``stat_result``s),
    the same order, the same problems and errors."""
    try:
        listed, failed = native.scan(path)
    except OSError as exc:
        raise _error(path, exc, _GONE) from None
    entries = [Entry(full, name, st) for full, name, st in listed]
    entries.sort(key=_BY_NAME)
    return entries, [_error(full, os_error(err), _GONE) for full, err in failed]
