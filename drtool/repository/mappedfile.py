"""Files beside the disk index that are memory-mapped whole: the absent-id filter (idfilter)
and the exact id table (idtable).

Both are opened the same way (a file that is not whole and valid is as good as missing: it is
rebuilt) and made the same way (a temporary file beside the final name, sized, mapped,
renamed into place once filled, or removed); this module holds those steps once, and
:class:`MappedFile` the life cycle both classes share.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Callable


def open_mapped(path: Path, header_size: int,
                valid: Callable[[mmap.mmap, int], bool]) -> tuple[int, mmap.mmap] | None:
    """``path`` mapped read-write for random access, or None when it is missing, shorter than
    its header or ``valid(mapping, size)`` says it is not a whole file of its kind."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size < header_size:
            raise ValueError
        mapping = mmap.mmap(fd, size)
        if not valid(mapping, size):
            mapping.close()
            raise ValueError
        mapping.madvise(mmap.MADV_RANDOM)
    except (OSError, ValueError):
        os.close(fd)
        return None
    return fd, mapping


def create_mapped(path: Path, size: int) -> tuple[Path, int, mmap.mmap]:
    """A new zero-filled file of ``size`` bytes beside ``path`` (``path.tmp<pid>``), mapped;
    the caller fills it and renames it over ``path``."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return tmp, fd, mapping


class MappedFile:
    """A file mapped whole, as :func:`open_mapped` or :func:`create_mapped` made it."""

    def __init__(self, path: Path, fd: int, mapping: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._map = mapping

    def _durable_over(self, path: Path) -> None:
        """Flush a file made by :func:`create_mapped` to disk and rename it over ``path``."""
        os.fsync(self._fd)
        os.replace(self.path, path)
        self.path = path

    def discard(self) -> None:
        """Close and remove a file made by :func:`create_mapped` that was not installed."""
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        try:
            self._map.close()
        finally:
            os.close(self._fd)
