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

A restore without ``--start`` leaves the server to the operator (``pg_ctl``,
systemd): it writes the plan into the spool instead (:func:`write_plan`), and
the first ``wal-fetch`` the server runs starts a detached process
(``drtool pg wal-prefetch``) that does the same from the plan
(:func:`serve`), holding the spool's lock, until recovery ends, the server
goes away or stops asking.

Whatever is not spooled when the server asks — a timeline history file,
a file outside the plan's order, one still being fetched, everything after
a fetch here failed — goes the old way, through ``wal-fetch``, which also
reports failures as before.  A spooled file is the archived file's verified
bytes under its own name, so the server replays the same bytes either way.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from typing import Callable

from drtool.errors import DrtoolError
from drtool.fdio import lock_held

log = logging.getLogger("drtool")

SPOOL_NAME = "drtool-wal-prefetch"
ASKED = ".asked"  # in the spool: the file the server asked for last (written by the fetch script)
QUEUE_BYTES = 128 * 1024 * 1024  # spooled and not yet taken, at most (pgBackRest's archive-get-queue-max)
POLL_SECONDS = 0.02              # how often a full queue looks whether the server took a file
FETCHERS = 2                     # fetches in flight at once
PLAN = "plan"    # in the spool: the planned files, "NAME SIZE" a line (a restore without --start)
LOCK = ".lock"   # in the spool: held by the detached prefetch process for its life
LOG_NAME = "drtool-wal-prefetch.log"  # in the data directory: what the detached process did
IDLE_SECONDS = 600.0  # a server that asks for nothing new this long (stopped, paused): the process exits

Fetch = Callable[[str], bytes]   # a file's verified bytes, by name


class WalPrefetcher:
    """Fetches ``files`` ((name, size), in replay order) into ``spool`` on ``fetchers`` threads, ahead of
    the server.  Several fetches in flight hide an object store's latency per request and its
    bandwidth per connection (one 16 MiB GET at a time is about what the server replays).

    Use as a context manager around the server's recovery: on the way out
    the threads stop and the spool is removed, with whatever it still holds.
    """

    def __init__(self, fetch: Fetch, files: list[tuple[str, int]], spool: str,
                 queue_bytes: int = QUEUE_BYTES, fetchers: int = FETCHERS) -> None:
        self.fetch, self.files, self.spool, self.queue_bytes = fetch, files, spool, queue_bytes
        self.taken = 0       # spooled files the server took (moved away by the fetch script)
        self.fetched = 0
        self.failure = ""    # why prefetching stopped early ("" if it did not)
        self._stop = threading.Event()
        self._lock = threading.Lock()   # guards the counts, _next, _in_flight and _waiting
        self._threads = [threading.Thread(target=self._run, name=f"wal-prefetch-{n}", daemon=True)
                         for n in range(fetchers)]
        self._next = 0                  # the next plan index to claim
        self._in_flight = 0             # bytes being fetched (claimed, not spooled yet)
        self._waiting: dict[str, tuple[int, int]] = {}  # spooled, not taken yet: name -> (plan index, size)
        self._index = {name: index for index, (name, _size) in enumerate(files)}
        self.keep: tuple[str, ...] | None = None  # on exit: None removes the spool, else all but these

    def __enter__(self) -> WalPrefetcher:
        os.makedirs(self.spool, mode=0o700, exist_ok=True)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        with self._lock:
            self._look()  # the last files the server took count too
        if self.keep is None:
            shutil.rmtree(self.spool, ignore_errors=True)
        else:
            for entry in os.listdir(self.spool):
                if entry not in self.keep:
                    _remove(os.path.join(self.spool, entry))
        log.info("WAL prefetch: the server took %d of %d file(s) fetched ahead (%d planned)",
                 self.taken, self.fetched, len(self.files))

    def _run(self) -> None:
        while True:
            claim = self._claim()
            if claim is None:
                return
            index, name, size = claim
            try:
                data = self.fetch(name)
            except DrtoolError as exc:  # the server's own fetch of this file reports it, the old way
                self._give_up(f"{name}: {exc.one_line()}", size)
                return
            except Exception as exc:  # noqa: BLE001 - best effort: never a traceback from this thread
                self._give_up(f"{name}: {type(exc).__name__}: {exc}", size)
                return
            problem = self._spool(name, data)
            if problem:
                self._give_up(problem, size)
                return
            with self._lock:
                self._in_flight -= size
                self._waiting[name] = (index, len(data))
                self.fetched += 1

    def _claim(self) -> tuple[int, str, int] | None:
        """The next file to fetch, once it fits in the queue beside those waiting and in flight (at
        once when both are empty); files the server has reached are passed over.  None when every
        file is claimed, prefetching stopped, or the restore ends."""
        while not self._stop.is_set():
            with self._lock:
                self._look()
                asked = self._asked()
                while self._next < len(self.files) and self._next <= asked:
                    self._next += 1  # the server got there first: it fetches these itself
                if self._next >= len(self.files) or self.failure:
                    return None
                name, size = self.files[self._next]
                used = self._in_flight + sum(s for _i, s in self._waiting.values())
                if used == 0 or used + size <= self.queue_bytes:
                    self._next += 1
                    self._in_flight += size
                    return self._next - 1, name, size
            self._stop.wait(POLL_SECONDS)
        return None

    def drained(self) -> bool:
        """Nothing left to do: every file fetched and taken (or passed by), or prefetching stopped
        and nothing it spooled still waits."""
        with self._lock:
            self._look()
            done = self._next >= len(self.files) or bool(self.failure)
            return done and self._in_flight == 0 and not self._waiting

    def progress(self) -> tuple[int, int]:
        """How far the server is (the plan index it asked for last) and how many files it took: a
        server that moves neither is stopped or paused."""
        with self._lock:
            self._look()
            return self._asked(), self.taken

    def _give_up(self, why: str, size: int) -> None:
        with self._lock:
            self._in_flight -= size
            if not self.failure:
                self.failure = why
                log.info("WAL prefetch stopped at %s; the server fetches the rest itself", why)

    def _look(self) -> None:
        """(Lock held.)  Files gone from the spool were taken; waiting ones before the last the server
        asked for were passed by (it fetched them the old way, before they were here): removed, so
        the queue makes room for what comes next."""
        gone = [name for name in self._waiting if not os.path.exists(os.path.join(self.spool, name))]
        for name in gone:
            del self._waiting[name]
        self.taken += len(gone)
        reached = self._asked()
        for name, (index, _size) in list(self._waiting.items()):
            if index < reached:
                del self._waiting[name]
                try:
                    os.unlink(os.path.join(self.spool, name))
                except FileNotFoundError:  # taken after the look above: the server read it after all
                    self.taken += 1
                except OSError:
                    pass

    def _asked(self) -> int:
        """The plan index of the file the server asked for last, -1 if none (or not a planned file)."""
        try:
            with open(os.path.join(self.spool, ASKED), encoding="ascii", errors="replace") as handle:
                return self._index.get(handle.read().strip(), -1)
        except OSError:
            return -1

    def _spool(self, name: str, data: bytes) -> str:
        """Write a file under a temporary name and rename it: the script never sees half a file.
        Not synced: the server reads it at once, and after a crash it asks again.  "" or what failed."""
        tmp = os.path.join(self.spool, f".{name}.part")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, os.path.join(self.spool, name))
        except OSError as exc:
            _remove(tmp)
            return f"cannot write {tmp}: {exc.strerror}"
        return ""


def spool_dir(datadir: str) -> str:
    return os.path.join(datadir, SPOOL_NAME)


def log_path(spool: str) -> str:
    """The detached process's log, in the data directory beside the spool."""
    return os.path.join(os.path.dirname(os.path.abspath(spool)), LOG_NAME)


# ----- the detached prefetch of a restore without --start ------------------------------------------
def write_plan(spool: str, files: list[tuple[str, int]]) -> None:
    """The restore's planned files, for the process the server's first ``wal-fetch`` starts."""
    os.makedirs(spool, mode=0o700, exist_ok=True)
    tmp = os.path.join(spool, f".{PLAN}.part")
    with open(tmp, "w", encoding="ascii") as handle:
        handle.writelines(f"{name} {size}\n" for name, size in files)
    os.replace(tmp, os.path.join(spool, PLAN))


def read_plan(spool: str) -> list[tuple[str, int]]:
    """The planned files ([] when there is no plan, or it does not parse)."""
    try:
        with open(os.path.join(spool, PLAN), encoding="ascii") as handle:
            rows = [line.split() for line in handle]
        return [(name, int(size)) for name, size in rows]
    except (OSError, ValueError, UnicodeDecodeError):
        return []


def should_start(spool: str, server_dir: str | None = None) -> bool:
    """A plan waits and no process serves it (checked by each ``wal-fetch`` the server runs; a
    second process started in a race finds the lock held and exits).  ``server_dir``: the data
    directory of the server asking (``restore_command``'s working directory); a spool of another
    one (a restored directory copied elsewhere and started there) is not served, since the process
    would watch a server that is not running and exit at once, on every fetch."""
    if server_dir is not None and not _same_dir(server_dir, os.path.dirname(os.path.abspath(spool))):
        return False
    return os.path.isfile(os.path.join(spool, PLAN)) and not _lock_held(spool)


def _same_dir(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def _lock_held(spool: str) -> bool:
    try:
        return lock_held(os.path.join(spool, LOCK))
    except OSError:
        return True  # cannot even look: do not start anything


def serve(fetch: Fetch, spool: str, poll: float = 0.5, idle_seconds: float = IDLE_SECONDS,
          clock: Callable[[], float] = time.monotonic) -> WalPrefetcher | None:
    """Fetch the spool's plan ahead of the server whose data directory holds it, until there is
    nothing left to fetch, recovery ended (``recovery.signal`` gone), the server is gone, or it
    asked for nothing new for ``idle_seconds``.  None when another process holds the lock.

    The plan is removed with the spool when recovery ended, every file was taken, or a fetch
    failed (the rest goes the old way, as with ``--start``); it stays when the server stopped or
    idled, so the next ``wal-fetch`` after a restart starts a new process from where it is.
    """
    try:
        fd = os.open(os.path.join(spool, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # the spool went away (recovery ended) since the fetch looked
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None
        files = read_plan(spool)
        prefetch = WalPrefetcher(fetch, files, spool)
        prefetch.keep = (PLAN, LOCK, ASKED)
        with prefetch:
            why = _watch(prefetch, os.path.dirname(os.path.abspath(spool)), poll, idle_seconds, clock)
            if why != "idle" and why != "server gone":
                prefetch.keep = None
        log.info("WAL prefetch process exits (%s)", why)
        return prefetch
    finally:
        os.close(fd)


def _watch(prefetch: WalPrefetcher, datadir: str, poll: float, idle_seconds: float,
           clock: Callable[[], float]) -> str:
    """Wait until the prefetch should end; why it did."""
    last, since = prefetch.progress(), clock()
    while True:
        time.sleep(poll)
        if not os.path.exists(os.path.join(datadir, "recovery.signal")):
            return "recovery ended"
        if prefetch.drained():
            return "prefetch stopped" if prefetch.failure else "nothing left to fetch"
        if not _server_running(datadir):
            return "server gone"
        now = prefetch.progress()
        if now != last:
            last, since = now, clock()
        elif clock() - since > idle_seconds:
            return "idle"


def _server_running(datadir: str) -> bool:
    """The postmaster named by ``postmaster.pid`` is alive (kill 0; another user's process counts)."""
    try:
        with open(os.path.join(datadir, "postmaster.pid"), encoding="ascii") as handle:
            pid = int(handle.readline())
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
