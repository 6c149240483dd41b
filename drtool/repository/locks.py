"""Repository locks: shared (backup, restore, check) and exclusive (prune).

A lock is a sealed object ``locks/<id>`` holding host, pid and a heartbeat
that a background thread refreshes.  A lock whose heartbeat is older than
``stale_after`` is ignored with a warning, so a crashed cron job never blocks
the next night.  If the holder cannot refresh its own lock it flags itself
lost; long operations check :meth:`Lock.ensure_held` before committing.

A holder also counts itself lost when its own last successful refresh is
older than ``stale_after`` (the process was suspended, or the clock jumped):
other hosts may already have treated the lock as stale and started an
exclusive prune, so committing now could reference data being deleted.  And
a refresh that finds its lock object gone (``drtool unlock --force``) does not
silently recreate it: the run is flagged lost instead.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from drtool.errors import DrtoolError, IntegrityError, LockHeld
from drtool.repository.objects import LOCK_KIND, LOCKS, object_name
from drtool.repository.repo import Repository

REFRESH_SECONDS = 60.0
STALE_SECONDS = 300.0


@dataclass
class LockInfo:
    lock_id: str
    host: str
    pid: int
    exclusive: bool
    command: str
    created: float
    heartbeat: float

    def age(self, now: float) -> float:
        return now - self.heartbeat

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return f"{kind} lock {self.lock_id[:8]} by {self.command} (pid {self.pid} on {self.host})"


class Lock:
    def __init__(self, repo: Repository, exclusive: bool, command: str, *,
                 clock: Callable[[], float] = time.time, refresh: float = REFRESH_SECONDS,
                 stale_after: float = STALE_SECONDS, host: str | None = None) -> None:
        self.repo = repo
        self.exclusive = exclusive
        self.command = command
        self.clock = clock
        self.refresh_interval = refresh
        self.stale_after = stale_after
        self.host = host or socket.gethostname()
        self.lock_id = secrets.token_hex(16)
        self.created = clock()
        self.lost: str | None = None
        self.last_refresh = self.created
        self.warnings: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        now = self.clock()
        body = json.dumps({"host": self.host, "pid": os.getpid(), "exclusive": self.exclusive,
                           "command": self.command, "created": self.created,
                           "heartbeat": now}).encode()
        self.repo.put_object(LOCKS, LOCK_KIND, body, object_id=self.lock_id)
        self.last_refresh = now

    def acquire(self, wait: float = 0.0, poll: float = 5.0) -> "Lock":
        """Take the lock, retrying for ``wait`` seconds.

        Polling starts at half a second and backs off (with jitter, so two
        waiters do not retry in lockstep) up to ``poll`` seconds.
        """
        deadline = self.clock() + wait
        delay = min(0.5, poll)
        while True:
            self._write()
            conflict = self._conflicts()
            if not conflict:
                break
            self.repo.backend.delete(object_name(LOCKS, self.lock_id))
            if self.clock() >= deadline:
                raise LockHeld(f"repository is locked: {conflict.describe()}, "
                               f"heartbeat {conflict.age(self.clock()):.0f}s ago")
            time.sleep(min(delay * random.uniform(0.8, 1.2), max(0.1, deadline - self.clock())))
            delay = min(poll, delay * 2)
        self._thread = threading.Thread(target=self._heartbeat, name="lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _conflicts(self) -> LockInfo | None:
        now = self.clock()
        for info in read_locks(self.repo):
            if info.lock_id == self.lock_id:
                continue
            if info.age(now) > self.stale_after:
                self.warnings.append(f"ignoring stale {info.describe()}")
                continue
            if info.host == self.host and not _process_alive(info.pid):
                self.warnings.append(f"ignoring {info.describe()}: that process no longer exists")
                continue
            if self.exclusive or info.exclusive:
                return info
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.refresh()
            except DrtoolError as exc:
                self.lost = f"could not refresh the repository lock: {exc.one_line()}"
                return

    def refresh(self) -> None:
        """Rewrite the heartbeat; refuse to resurrect a lock someone removed."""
        if self.repo.backend.stat(object_name(LOCKS, self.lock_id)) is None:
            raise LockHeld(f"lock {self.lock_id[:8]} was removed by another process "
                           f"(drtool unlock?)")
        self._write()

    def ensure_held(self) -> None:
        """Abort before a commit if the lock could not be kept fresh.

        Besides a failed refresh, a last refresh older than ``stale_after``
        also counts: others may already have ignored this lock as stale.
        """
        if not self.lost and self.clock() - self.last_refresh > self.stale_after:
            self.lost = (f"the repository lock was last refreshed "
                         f"{self.clock() - self.last_refresh:.0f}s ago, longer than the "
                         f"{self.stale_after:.0f}s after which others treat it as stale")
        if self.lost:
            raise LockHeld(self.lost, hint="the run was stopped before doing harm; run it again")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.repo.backend.delete(object_name(LOCKS, self.lock_id))
        except DrtoolError:
            pass  # a leftover lock goes stale and is ignored

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_locks(repo: Repository) -> list[LockInfo]:
    locks = []
    for lock_id in repo.list_objects(LOCKS):
        try:
            data = json.loads(repo.get_object(LOCKS, LOCK_KIND, lock_id))
        except (DrtoolError, ValueError):
            continue  # vanished between list and get, or damaged: not a live lock
        locks.append(LockInfo(lock_id, str(data["host"]), int(data["pid"]), bool(data["exclusive"]),
                              str(data.get("command", "?")), float(data["created"]),
                              float(data["heartbeat"])))
    return locks


def remove_locks(repo: Repository, *, force: bool, clock: Callable[[], float] = time.time,
                 stale_after: float = STALE_SECONDS) -> list[LockInfo]:
    removed = []
    now = clock()
    for info in read_locks(repo):
        if force or info.age(now) > stale_after:
            repo.backend.delete(object_name(LOCKS, info.lock_id))
            removed.append(info)
    return removed


__all__ = ["IntegrityError", "Lock", "LockInfo", "read_locks", "remove_locks"]
