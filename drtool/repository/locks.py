"""Repository locks: shared (backup, restore, check) and exclusive (prune).

A lock is a sealed object ``locks/<id>`` holding host, pid and a heartbeat
that a background thread refreshes.  A lock whose heartbeat is older than
``stale_after`` is ignored with a warning, so a crashed cron job never blocks
the next night.  If the holder cannot refresh its own lock it flags itself
lost; long operations check :meth:`Lock.ensure_held` before committing.

Whether a lock of *this* host is stale does not wait for its heartbeat to
age: the lock records the process's start time (``/proc/<pid>/stat``) and
the kernel's boot id, so a lock whose process is gone, whose pid now
belongs to another program, or that was taken before a reboot is stale at
once.  ``drtool unlock`` removes exactly the locks :func:`stale_reason`
calls stale, which is the rule every waiting run applies.  Locks written by
older versions (no start time, no boot id) are judged by pid and heartbeat.

A holder also counts itself lost when its own last successful refresh is
older than ``stale_after`` (the process was suspended, or the clock jumped):
other hosts may already have treated the lock as stale and started an
exclusive prune, so committing now could reference data being deleted.  And
a refresh that finds its lock object gone (``drtool unlock --force``) does not
silently recreate it: the run is flagged lost instead.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from drtool.digests import token_hex
from drtool.errors import DrtoolError, IntegrityError, LockHeld
from drtool.repository.objects import LOCK_KIND, LOCKS, object_name
from drtool.repository.repo import Repository

log = logging.getLogger("drtool")
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
    start_time: int | None = None  # the holder's start, in clock ticks after boot (/proc/<pid>/stat)
    boot_id: str | None = None     # /proc/sys/kernel/random/boot_id of the holder's host

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
        self.lock_id = token_hex(16)
        self.created = clock()
        self.lost: str | None = None
        self.last_refresh = self.created
        self.warnings: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        now = self.clock()
        pid = os.getpid()
        body = json.dumps({"host": self.host, "pid": pid, "exclusive": self.exclusive,
                           "command": self.command, "created": self.created, "heartbeat": now,
                           "start_time": process_start_time(pid), "boot_id": boot_id()}).encode()
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
            reason = stale_reason(info, now, self.host, self.stale_after)
            if reason is not None:
                warning = f"ignoring stale {info.describe()}: {reason} ('drtool unlock' removes it)"
                if warning not in self.warnings:
                    self.warnings.append(warning)
                    log.warning("%s", warning)
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


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (field 22 of /proc/<pid>/stat); None if unknown.

    Together with the pid it names one process: a pid reused by another
    program has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str | None:
    """This boot of this host's kernel (Linux); a lock from an earlier boot is dead."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def stale_reason(info: LockInfo, now: float, host: str, stale_after: float = STALE_SECONDS) -> str | None:
    """Why ``info`` no longer holds the repository, or None while it may.

    The heartbeat rule applies to every host; the process rules only to
    locks of this host (same host name), where the pid can be looked up.
    """
    if info.age(now) > stale_after:
        return f"no heartbeat for {info.age(now):.0f}s"
    if info.host != host:
        return None
    mine = boot_id()
    if info.boot_id and mine and info.boot_id != mine:
        return "this host has rebooted since it was taken"
    if not _process_alive(info.pid):
        return f"process {info.pid} no longer exists"
    if info.start_time is not None:
        started = process_start_time(info.pid)
        if started is not None and started != info.start_time:
            return f"process {info.pid} has ended and the pid now belongs to another program"
    return None


def read_locks(repo: Repository) -> list[LockInfo]:
    locks = []
    for lock_id in repo.list_objects(LOCKS):
        try:
            data = json.loads(repo.get_object(LOCKS, LOCK_KIND, lock_id))
        except (DrtoolError, ValueError):
            continue  # vanished between list and get, or damaged: not a live lock
        try:
            start = data.get("start_time")  # absent in locks of older versions
            locks.append(LockInfo(lock_id, str(data["host"]), int(data["pid"]), bool(data["exclusive"]),
                                  str(data.get("command", "?")), float(data["created"]),
                                  float(data["heartbeat"]), int(start) if start is not None else None,
                                  str(data["boot_id"]) if data.get("boot_id") else None))
        except (KeyError, TypeError, ValueError):
            continue  # not a lock this version can judge; never blocks anyone
    return locks


def remove_locks(repo: Repository, *, force: bool, host: str | None = None,
                 clock: Callable[[], float] = time.time,
                 stale_after: float = STALE_SECONDS) -> list[tuple[LockInfo, str | None]]:
    """Remove stale locks (all with ``force``); return each removed lock with why it was stale."""
    removed = []
    now = clock()
    here = host or socket.gethostname()
    for info in read_locks(repo):
        reason = stale_reason(info, now, here, stale_after)
        if force or reason is not None:
            repo.backend.delete(object_name(LOCKS, info.lock_id))
            removed.append((info, reason))
    return removed


__all__ = ["IntegrityError", "Lock", "LockInfo", "boot_id", "process_start_time", "read_locks", "remove_locks",
           "stale_reason"]
