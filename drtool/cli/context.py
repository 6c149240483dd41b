"""Per-invocation state: resolved settings, output mode, lazily opened session."""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from drtool.config import Settings, read_passphrase, resolve
from drtool.errors import UsageError
from drtool.ops.session import OpenOptions, Session

log = logging.getLogger("drtool")
NOTIFY_COMMANDS = frozenset({"backup", "forget", "prune", "check", "copy", "rehearse", "pg", "mariadb"})


@dataclass
class CliState:
    repo_option: str | None
    config_option: str | None
    verbose: int
    lock_wait: float = 0.0
    command: str | None = None
    run_name: str | None = None
    settings: Settings = field(init=False)
    _session: Session | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.settings = resolve(self.repo_option, self.config_option)

    def repository(self) -> str:
        if not self.settings.repository:
            raise UsageError("no repository given", hint="pass --repo URL or set DRTOOL_REPOSITORY")
        return self.settings.repository

    def passphrase(self, confirm: bool = False) -> bytes:
        prompt = None
        if sys.stdin.isatty():
            def prompt() -> str:
                return click.prompt("Repository passphrase", hide_input=True,
                                    confirmation_prompt=confirm, err=True)
        return read_passphrase(self.settings, prompt)

    def open_options(self) -> OpenOptions:
        options = OpenOptions(self.repository(), self.passphrase(), self.settings.catalog,
                              backend_options=self.settings.backend_options, lock_wait=self.lock_wait)
        if self.settings.host:
            options.host = self.settings.host
        return options

    def session(self) -> Session:
        if self._session is None:
            self._session = Session.open(self.open_options())
        return self._session

    def finish(self, command: str | None, exit_code: int, message: str = "") -> None:
        """Record the run in the catalog's history and notify on failure (best effort), then close."""
        if command in NOTIFY_COMMANDS and exit_code not in (0, 2):
            from drtool.ops.notify import notify_failure
            notify_failure(self.settings.data, command, message, exit_code, host=self.settings.host)
        session = self._session
        if session is not None and command:
            try:
                run_id = session.catalog.start_run(command, session.host, self.run_name)
                status = "ok" if exit_code == 0 else "partial" if exit_code == 3 else "failed"
                session.catalog.finish_run(run_id, status, exit_code, message=message,
                                           stats=session.repo.backend.stats.as_dict())
            except Exception as exc:  # history must never turn a good run into a failure
                log.debug("could not record the run: %s", exc)
        self.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print JSON (for scripts) or text (for people) on stdout."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif text is not None:
        click.echo(text)


TRIM_THRESHOLD = 16 * 1024 * 1024
ARENA_MAX = 1


def tune_malloc_for_backup() -> None:
    """Pin glibc's mmap and trim thresholds (DRTOOL_MMAP_THRESHOLD, 0 = leave glibc alone).

    Fresh pages are what a backup pays for in system time (and, on a VM
    whose balloon takes free memory back, in host faults): every mmap'ed
    buffer is faulted in and zeroed, every trimmed heap re-faulted.  The
    mmap threshold (20 MiB) keeps the 16 MiB group buffers and zstd's
    16 MiB output bound on the heap, where they are reused; the trim
    threshold keeps up to 16 MiB of freed heap per arena.  With recycled
    group buffers and packs streamed to disk, night 1 of the full bench
    went from ~460 k to ~90 k minor faults at ~215 MiB peak RSS (glibc's
    dynamic threshold once let freed 16 MiB buffers fragment the heap to
    ~300 MiB, which is why it is pinned).  One malloc arena for all threads:
    per-thread arenas each kept their own free space (the 200,000-file
    backup peaked at 187 MiB with four arenas, 172 MiB with one, at the same
    speed: the data path makes few, large allocations).  Only backups use it.
    """
    import os
    threshold = int(os.environ.get("DRTOOL_MMAP_THRESHOLD", 20 * 1024 * 1024))
    if threshold <= 0:
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, ARENA_MAX)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def show_progress() -> bool:
    return sys.stderr.isatty()
