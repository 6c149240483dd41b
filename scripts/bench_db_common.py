#!/usr/bin/env python3
"""What the database bench's two halves share (scripts/bench_databases.py: MariaDB and the
report; scripts/bench_databases_pg.py: PostgreSQL): running and timing commands, the floors
by hand, and drtool as the bench runs it.

The timing state (``clock``: the last run's CPU seconds, which of ``--repeat`` runs was kept)
is one object both halves read through this module: a second copy of a module global (the
script runs as ``__main__``, its half imports it by name) would never see a run's figures.
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PASSWORD = "bench-only-not-a-secret"
ROOT_PW = "bench-root-pw"


@dataclass
class Clock:
    """``repeat``: --repeat, how often restores and the native/floor runs are timed (the best
    kept); ``cpu``/``sys``: CPU seconds (user + sys; of which system time: on the bench's VM
    mostly page-cache writes, see bench_databases' docstring) of the child processes of the
    last :func:`timed` or :func:`best` run; ``kept``: which run of the last :func:`best` was kept."""

    repeat: int = 1
    cpu: float = 0.0
    sys: float = 0.0
    kept: int = 0


clock = Clock()


def log(msg: str) -> None:
    print(f"[bench-db {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spread_new_trees(folder: Path) -> None:
    """Every tree made in ``folder`` (copies, restore targets) starts in a block group of its own
    (``chattr +T``: ext4's Orlov allocator spreads the subdirectories of a "top" directory).

    Why: on an ext4 without a journal (this bench's VM) creating a file first
    skips every inode of its group deleted moments before, reading each one's
    inode-table block to find out (``bench_data.forget_deleted_inodes``; here
    creates were still slow 40 s after a removal).  Right after the bench
    removed a 1,000-file copy beside it, a restore or ``cp -a`` spent
    0.3-0.9 s more creating files, by how many deletes happened to be
    recent: the floor varied 0.6-3.2 s.  A production file system has a
    journal, and no such scan.
    """
    if subprocess.run(["chattr", "+T", str(folder)], capture_output=True).returncode != 0:
        log(f"note: chattr +T {folder} failed: file creation may be slowed by recent deletes beside it")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return proc




def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def children_sys() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of ``fn()``; its children's CPU seconds go to clock.cpu.  On a shared host
    the kernel shares the cores between sessions (autogroups), so under load a wall-clock
    ratio is mostly a ratio of CPU seconds: the bench reports both."""
    before, sys_before, start = children_cpu(), children_sys(), time.monotonic()
    fn()
    wall = time.monotonic() - start
    clock.cpu, clock.sys = children_cpu() - before, children_sys() - sys_before
    return wall


def best(fn: Callable[[int], Any], *made: Path) -> float:
    """The best of ``clock.repeat`` timed runs of ``fn(i)`` (a fresh target per run): on a shared
    host the minimum is the figure least disturbed by other jobs.  ``made``: what a run
    creates (suffixed with ``i``), removed after every run but the last (disk space)."""
    runs = []
    for i in range(clock.repeat):
        runs.append((timed(lambda: fn(i)), clock.cpu, clock.sys))
        if i + 1 < clock.repeat:
            for path in made:
                shutil.rmtree(f"{path}{i}", ignore_errors=True)
    wall, clock.cpu, clock.sys = min(runs)
    clock.kept = runs.index(min(runs))
    return wall


def sync_fs(path: Path) -> float:
    """Seconds of ``sync -f`` (syncfs) on ``path``'s file system: what a copy costs to be on disk.
    drtool's backups (packs fsync'ed before the index) and its physical MariaDB restore (the tree
    synced before it says done, as pgBackRest's restore) end durable; mariabackup's target and
    ``cp -a`` end in the page cache, so the durable floor adds this."""
    start = time.monotonic()
    run(["sync", "-f", str(path)])
    return time.monotonic() - start


def restore_floors(out: dict[str, Any], native: Path, copy: Path, prepare: Callable[[Path], None] | None,
                   cold_restore: Callable[[], Any], cold_target: Path) -> None:
    """The restore floor by hand (``cp -a`` of the native copy [+ ``prepare``]), best of
    ``clock.repeat``, with and without ``sync -f``; then, caches dropped before each, the floor and
    drtool's ``cold_restore`` once (the backup copy and the repository read from disk)."""
    syncs: list[float] = []

    def floor(i: int) -> None:
        run(["cp", "-a", str(native), f"{copy}{i}"])
        if prepare:
            prepare(Path(f"{copy}{i}"))
        syncs.append(sync_fs(Path(f"{copy}{i}")))
    out["floor_durable_s"] = best(floor, copy)
    out["floor_restore_s"] = out["floor_durable_s"] - syncs[clock.kept]
    out["floor_restore_cpu_s"], out["floor_restore_sys_s"] = clock.cpu, clock.sys
    shutil.rmtree(f"{copy}{clock.repeat - 1}", ignore_errors=True)
    if drop_caches():
        out["floor_cold_s"] = timed(lambda: floor(clock.repeat))
        shutil.rmtree(f"{copy}{clock.repeat}", ignore_errors=True)
        drop_caches()
        out["physical_full_cold_s"] = timed(cold_restore)
        shutil.rmtree(cold_target, ignore_errors=True)


def drop_caches() -> bool:
    """Write back and drop the page cache (root only): a nightly backup of a big server, and a
    restore at 3 a.m., read cold.  False where it cannot be done (the cold figures are skipped)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


class Drtool:
    def __init__(self, work: Path, config: Path) -> None:
        self.repo, self.env = work / "repo", dict(os.environ)
        pw = work / "password"
        pw.write_text(PASSWORD + "\n")
        self.env.update(DRTOOL_REPOSITORY=str(self.repo), DRTOOL_PASSWORD_FILE=str(pw),
                        DRTOOL_CATALOG=str(work / "catalog.sqlite"), DRTOOL_CONFIG=str(config),
                        PYTHONPATH=str(REPO_ROOT), XDG_STATE_HOME=str(work / "state"))
        self.env.pop("DRTOOL_PASSWORD", None)
        self.stderrs: list[str] = []

    def __call__(self, *args: str, prefix: list[str] | None = None) -> str:
        proc = run([*(prefix or []), PY, "-m", "drtool", *args], self.env)
        self.stderrs = [*self.stderrs[-clock.repeat:], proc.stderr]
        for line in proc.stderr.splitlines():
            if "INFO" in line or "warning" in line:
                log(line)
        return proc.stdout

    def stage_seconds(self) -> dict[str, float]:
        """The restore stages (``-v`` logs "STAGE: done in N.Ns") of the run the last best() kept,
        summed by kind: where a restore's time goes (extracting the streams, rebuilding pages,
        --prepare, replay)."""
        kinds = {"extracting": "extract", "rebuilding": "rebuild", "preparing": "prepare", "applying": "prepare",
                 "replaying": "replay", "syncing": "sync"}
        out: dict[str, float] = {}
        kept = self.stderrs[-clock.repeat:][clock.kept]
        for match in re.finditer(r"INFO: (\w+) .*?: done in (\d+\.\d+)s", kept):
            kind = kinds.get(match.group(1))
            if kind:
                out[kind] = out.get(kind, 0.0) + float(match.group(2))
        return out

    def stored(self, source: str) -> int:
        """Bytes the newest snapshot of ``source`` added to the repository (compressed, encrypted)."""
        snaps = json.loads(self("snapshots", "--name", source, "--json"))
        return int(snaps[-1]["summary"]["bytes_added"])
