"""Asynchronous WAL archiving: one long-lived worker pushes ahead of ``archive_command``.

PostgreSQL calls ``archive_command`` once per WAL file and waits for it.  A
process per file pays for the interpreter, the imports and the Argon2id key
derivation (~0.3 s of CPU by design) every time: a busy server produces WAL
faster than that, the archive falls behind, ``pg_wal`` fills up.  So, as
pgBackRest's ``archive-async`` does:

* ``archive_command`` (``drtool pg wal-push``, with ``archive_async = true``
  in the source's table) derives no key.  It waits for the worker's verdict
  on *its* file: ``ok/<name>`` (stored) or ``error/<name>`` (a message), and
  starts the worker if none runs.  It still exits 0 only once that file is
  safely in the repository: the contract with PostgreSQL is unchanged.
* The worker (``drtool pg archive-worker``, started detached) holds
  ``worker.lock``, derives the key once, and pushes every file PostgreSQL
  has marked ``pg_wal/archive_status/<name>.ready`` — so the files behind
  the one being asked about are usually stored before they are asked about —
  with a few in parallel.  It exits after a quiet period.

The spool directory holds markers only, never WAL data; it must be writable
by the PostgreSQL OS user and live on a local file system.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from drtool.errors import DrtoolError, UsageError
from drtool.fdio import lock_held

log = logging.getLogger("drtool")
DEFAULT_SPOOL_ROOT = "/var/spool/drtool"
DEFAULT_PARALLEL = 2
IDLE_EXIT = 30.0  # seconds without a .ready file before the worker exits
POLL = 0.02
STALE_MARKER = 600.0  # an ok marker whose .ready is gone: PostgreSQL will not ask again
MAX_LOG = 1024 * 1024


class ArchiveFailed(DrtoolError):
    """The worker could not store this file (its message says why); PostgreSQL retries."""


class ArchiveTimeout(DrtoolError):
    hint = "see the worker log in the spool directory; raise --timeout or log_timeout if the storage is slow"


@dataclass(frozen=True)
class Spool:
    root: str

    @classmethod
    def open(cls, spool_dir: str | None, source: str) -> "Spool":
        root = spool_dir or os.path.join(DEFAULT_SPOOL_ROOT, source.replace("/", "_"))
        try:
            for sub in ("ok", "error"):
                os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"asynchronous archiving needs the spool directory {root}: {exc.strerror}",
                             hint="create it writable by the PostgreSQL OS user, or set spool_dir in the "
                                  "source's table") from None
        return cls(root)

    def marker(self, verdict: str, name: str) -> str:
        return os.path.join(self.root, verdict, name)

    @property
    def lock_path(self) -> str:
        return os.path.join(self.root, "worker.lock")

    @property
    def worker_error(self) -> str:
        return os.path.join(self.root, "worker.error")

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "worker.log")

    def worker_running(self) -> bool:
        """True while some process holds the worker lock."""
        return lock_held(self.lock_path)

    def write_marker(self, verdict: str, name: str, text: str = "") -> None:
        """Atomically: an ok marker must never be seen half-written or before the file is stored."""
        self._write(self.marker(verdict, name), text)

    def fail_worker(self, text: str) -> None:
        """The worker cannot run at all (wrong passphrase, no repository): tell the waiting push."""
        self._write(self.worker_error, text)

    def _write(self, final: str, text: str) -> None:
        tmp = f"{final}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, final)

    def take(self, path: str) -> str | None:
        """Read and remove a marker; None if it is not there."""
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return text


# ----- archive_command side ---------------------------------------------------------------------
def push_async(spool: Spool, wal_path: str, timeout: float, spawn_worker: Callable[[], None],
               clock: Callable[[], float] = time.monotonic) -> str:
    """Wait for the worker's verdict on ``wal_path``; start the worker when none runs."""
    name = os.path.basename(wal_path)
    if not os.path.exists(wal_path):
        raise UsageError(f"cannot read WAL file {wal_path}: no such file")
    started = clock()
    spawned_at: float | None = None
    while True:
        if spool.take(spool.marker("ok", name)) is not None:
            return "stored"
        message = spool.take(spool.marker("error", name))
        if message is not None:
            raise ArchiveFailed(f"archiving {name} failed: {message.strip() or 'no message'}")
        failure = spool.take(spool.worker_error)
        if failure is not None:
            raise ArchiveFailed(f"the archive worker could not start: {failure.strip()}")
        if not spool.worker_running() and (spawned_at is None or clock() - spawned_at > 1.0):
            spawn_worker()
            spawned_at = clock()
        if clock() - started > timeout:
            raise ArchiveTimeout(f"{name} was not archived within {timeout:g}s")
        time.sleep(POLL)


# ----- the worker ---------------------------------------------------------------------------------
def ready_files(wal_dir: str) -> list[str]:
    """WAL files PostgreSQL has marked for archiving, oldest first (history files first of all)."""
    try:
        entries = os.listdir(os.path.join(wal_dir, "archive_status"))
    except FileNotFoundError:
        return []
    names = [e[:-len(".ready")] for e in entries if e.endswith(".ready")]
    return sorted(names, key=lambda n: (not n.endswith(".history"), n))


def run_worker(spool: Spool, wal_dir: str, push: Callable[[str], object], *, parallel: int = DEFAULT_PARALLEL,
               idle_exit: float = IDLE_EXIT, clock: Callable[[], float] = time.monotonic) -> int:
    """Push ready files until none came for ``idle_exit`` seconds; return how many were stored.

    ``push(path)`` stores one file (raising DrtoolError on failure).  Returns
    0 at once if another worker holds the lock.
    """
    lock_fd = os.open(spool.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0
        return _work(spool, wal_dir, push, max(1, parallel), idle_exit, clock)
    finally:
        os.close(lock_fd)


def _work(spool: Spool, wal_dir: str, push: Callable[[str], object], parallel: int, idle_exit: float,
          clock: Callable[[], float]) -> int:
    stored = 0
    flying: dict[Future[object], str] = {}
    finished: set[str] = set()  # stored by this worker: still .ready until PostgreSQL renames it
    last_work = clock()
    last_sweep = 0.0
    with ThreadPoolExecutor(parallel, thread_name_prefix="wal-push") as pool:
        while True:
            ready = ready_files(wal_dir)
            finished &= set(ready)
            busy = set(flying.values()) | finished
            todo = [n for n in ready if n not in busy and not _has_verdict(spool, n)]
            for name in todo[:parallel - len(flying)]:
                flying[pool.submit(push, os.path.join(wal_dir, name))] = name
            if flying:
                done, _ = wait(list(flying), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    name = flying.pop(future)
                    if _record(spool, name, future):
                        stored += 1
                        finished.add(name)
                last_work = clock()
            elif clock() - last_work > idle_exit:
                return stored
            else:
                time.sleep(0.05)
            if clock() - last_sweep > 60:
                sweep_stale(spool, wal_dir)
                last_sweep = clock()


def _has_verdict(spool: Spool, name: str) -> bool:
    return os.path.exists(spool.marker("ok", name)) or os.path.exists(spool.marker("error", name))


def _record(spool: Spool, name: str, future: Future[object]) -> int:
    exc = future.exception()
    if exc is None:
        spool.write_marker("ok", name)
        return 1
    message = exc.one_line() if isinstance(exc, DrtoolError) else f"internal error: {type(exc).__name__}: {exc}"
    log.warning("archiving %s failed: %s", name, message)
    spool.write_marker("error", name, message)
    return 0


def sweep_stale(spool: Spool, wal_dir: str, now: float | None = None) -> int:
    """Remove verdicts PostgreSQL will never read (the file is no longer .ready)."""
    now = time.time() if now is None else now
    ready = set(ready_files(wal_dir))
    removed = 0
    for verdict in ("ok", "error"):
        folder = os.path.join(spool.root, verdict)
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            try:
                old = now - os.stat(path).st_mtime > STALE_MARKER
            except FileNotFoundError:
                continue
            if name not in ready and old:
                os.unlink(path)
                removed += 1
    return removed


def trim_log(path: str) -> None:
    """The worker appends to its log; keep it from growing without bound."""
    try:
        if os.path.getsize(path) > MAX_LOG:
            os.truncate(path, 0)
    except OSError:
        pass
