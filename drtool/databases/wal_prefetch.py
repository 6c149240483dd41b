"""A PostgreSQL restore's planned WAL fetched ahead of the server, by the restore's own process.

Why: PostgreSQL asks its ``restore_command`` for one WAL file at a time and
waits for each, and every ``drtool pg wal-fetch`` is a new process that
starts Python, derives the key (Argon2id at the deployed cost) and opens
the repository: 0.42-0.51 s per 16 MiB file on the bench machine, so a
restore replaying 2.1 GiB of WAL (132 files) spent 89.5 s in recovery, about
60 s of it starting fetch processes.  The restore that starts the server
(``--start``) already holds the key and the plan (every file, in order) and
waits for the replay anyway; here it fetches the next files into a spool
directory inside the data directory, at most ``queue_bytes`` ahead of what
the server has taken, and the fetch script moves a spooled file into place
without starting Python (as pgBackRest's asynchronous ``archive-get``).

Whatever is not spooled when the server asks — a timeline history file,
a file outside the plan's order, one still being fetched, everything after
a fetch here failed — goes the old way, through ``wal-fetch``, which also
reports failures as before.  A spooled file is the archived file's verified
bytes under its own name, so the server replays the same bytes either way.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Callable

from drtool.errors import DrtoolError

log = logging.getLogger("drtool")

SPOOL_NAME = "drtool-wal-prefetch"
ASKED = ".asked"  # in the spool: the file the server asked for last (written by the fetch script)
QUEUE_BYTES = 128 * 1024 * 1024  # spooled and not yet taken, at most (pgBackRest's archive-get-queue-max)
POLL_SECONDS = 0.02              # how often a full queue looks whether the server took a file

Fetch = Callable[[str], bytes]   # a file's verified bytes, by name


class WalPrefetcher:
    """Fetches ``files`` ((name, size), in replay order) into ``spool`` on a thread, ahead of the server.

    Use as a context manager around the server's recovery: on the way out
    the thread stops and the spool is removed, with whatever it still holds.
    """

    def __init__(self, fetch: Fetch, files: list[tuple[str, int]], spool: str,
                 queue_bytes: int = QUEUE_BYTES) -> None:
        self.fetch, self.files, self.spool, self.queue_bytes = fetch, files, spool, queue_bytes
        self.taken = 0       # spooled files the server took (moved away by the fetch script)
        self.fetched = 0
        self.failure = ""    # why prefetching stopped early ("" if it did not)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-prefetch", daemon=True)
        self._waiting: dict[str, tuple[int, int]] = {}  # spooled, not taken yet: name -> (plan index, size)
        self._index = {name: index for index, (name, _size) in enumerate(files)}

    def __enter__(self) -> WalPrefetcher:
        os.makedirs(self.spool, mode=0o700, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._look()  # the last files the server took count too
        shutil.rmtree(self.spool, ignore_errors=True)
        log.info("WAL prefetch: the server took %d of %d file(s) fetched ahead (%d planned)",
                 self.taken, self.fetched, len(self.files))

    def _run(self) -> None:
        for index, (name, size) in enumerate(self.files):
            if not self._room_for(size):
                return
            if index <= self._asked():  # the server got there first: it fetches this one itself
                continue
            try:
                data = self.fetch(name)
            except DrtoolError as exc:  # the server's own fetch of this file reports it, the old way
                self.failure = f"{name}: {exc.one_line()}"
                log.info("WAL prefetch stopped at %s; the server fetches the rest itself", self.failure)
                return
            if not self._spool(name, data):
                return
            self._waiting[name] = (index, len(data))
            self.fetched += 1

    def _room_for(self, size: int) -> bool:
        """Wait until the files waiting plus ``size`` fit in the queue (always true for an empty one);
        False when stopped first."""
        while not self._stop.is_set():
            self._look()
            if not self._waiting or sum(s for _i, s in self._waiting.values()) + size <= self.queue_bytes:
                return True
            self._stop.wait(POLL_SECONDS)
        return False

    def _look(self) -> None:
        """Files gone from the spool were taken; waiting ones before the last the server asked for were
        passed by (it fetched them the old way, before they were here): removed, so the queue makes
        room for what comes next."""
        gone = [name for name in self._waiting if not os.path.exists(os.path.join(self.spool, name))]
        for name in gone:
            del self._waiting[name]
        self.taken += len(gone)
        reached = self._asked()
        for name, (index, _size) in list(self._waiting.items()):
            if index < reached:
                del self._waiting[name]
                _remove(os.path.join(self.spool, name))

    def _asked(self) -> int:
        """The plan index of the file the server asked for last, -1 if none (or not a planned file)."""
        try:
            with open(os.path.join(self.spool, ASKED), encoding="ascii", errors="replace") as handle:
                return self._index.get(handle.read().strip(), -1)
        except OSError:
            return -1

    def _spool(self, name: str, data: bytes) -> bool:
        """Write a file under a temporary name and rename it: the script never sees half a file.
        Not synced: the server reads it at once, and after a crash it asks again."""
        tmp = os.path.join(self.spool, f".{name}.part")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, os.path.join(self.spool, name))
        except OSError as exc:
            self.failure = f"cannot write {tmp}: {exc.strerror}"
            log.info("WAL prefetch stopped: %s; the server fetches the rest itself", self.failure)
            _remove(tmp)
            return False
        return True


def spool_dir(datadir: str) -> str:
    return os.path.join(datadir, SPOOL_NAME)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
