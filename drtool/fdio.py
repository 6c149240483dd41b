"""Whole writes to a file descriptor: ``os.write``/``os.pwrite`` may write less than asked
(a signal, a full pipe, some file systems near full), and a short write left unnoticed is a
file with a hole where data should be.  Shared by the staged local backend and the restores
that write files themselves (mbstream extraction, the sub-page rebuild)."""
from __future__ import annotations

import os


def write_all(fd: int, view: memoryview) -> None:
    """Write all of ``view`` at the descriptor's position."""
    while view:
        view = view[os.write(fd, view):]


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """Write all of ``view`` at ``offset``."""
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
