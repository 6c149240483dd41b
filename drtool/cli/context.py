"""Per-invocation state: resolved settings, output mode, lazily opened session."""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from drtool.api.settings import (
    Settings,
    display,
    label_problem,
    read_passphrase,
    resolve,
)
from drtool.errors import UsageError

if TYPE_CHECKING:
    from drtool.api.repo_access import OpenOptions, Repository, Session

log = logging.getLogger("drtool")
COMMAND_LINE: list[str] = []  # this invocation's arguments, for messages that say "run this instead"
NOTIFY_COMMANDS = frozenset({"backup", "forget", "prune", "check", "copy", "rehearse", "pg", "mariadb"})


@dataclass
class CliState:
    repo_option: str | None
    config_option: str | None
    verbose: int
    lock_wait: float = 0.0
    command: str | None = None
    no_lock: bool = False
    run_name: str | None = None
    settings: Settings = field(init=False)
    _session: Session | None = field(default=None, init=False)
    _passphrase: bytes | None = field(default=None, init=False, repr=False)
    _unlock: threading.Thread | None = field(default=None, init=False, repr=False)
    _unlocked: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.settings = resolve(self.repo_option, self.config_option)

    def start_unlock(self) -> None:
        """Derive the repository key on a thread while the command's modules are imported.

        Argon2id takes ~0.25 s without holding the GIL; started here it
        overlaps the imports instead of following them.  Only for a local
        repository and a passphrase from the environment or a file: nothing
        is prompted for or run, and a wrong passphrase or a missing
        repository is reported when the command opens its session, exactly
        as it would be without this.
        """
        from drtool.api.settings import is_local_url
        url = self.settings.repository
        if self._unlock is not None or not url or not is_local_url(url):
            return
        if not (os.environ.get("DRTOOL_PASSWORD") or os.environ.get("DRTOOL_PASSWORD_FILE")
                or self.settings.password_file):
            return
        try:
            passphrase = self.passphrase()
        except UsageError:
            return  # reported again, in order, when the command asks for it
        options = dict(self.settings.backend_options)

        def unlock() -> None:
            try:
                from drtool.api.repo_access import Repository, open_backend
                self._unlocked["repo"] = Repository.open(open_backend(url, options), passphrase)
            except BaseException as exc:  # raised in the command's thread, if it opens a session
                self._unlocked["error"] = exc

        thread = threading.Thread(target=unlock, name="unlock", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no memory for another thread: the command unlocks on its own thread
            return
        self._unlock = thread

    def _take_unlocked(self) -> Repository | None:
        if self._unlock is None:
            return None
        self._unlock.join()
        self._unlock = None
        if "error" in self._unlocked:
            raise self._unlocked.pop("error")
        return self._unlocked.pop("repo", None)

    def repository_only(self) -> Repository:
        """The unlocked repository without catalog or index (log archiving needs no more).

        Takes the key the start-up thread derived when there is one: a
        command derives its key once, never twice and never concurrently.
        """
        repo = self._take_unlocked()
        if repo is not None:
            return repo
        from drtool.api.repo_access import Repository, open_backend
        options = self.open_options()
        return Repository.open(open_backend(options.repository, options.backend_options), options.passphrase)

    def repository(self) -> str:
        if not self.settings.repository:
            raise UsageError("no repository given", hint="pass --repo URL or set DRTOOL_REPOSITORY")
        return self.settings.repository

    def passphrase(self, confirm: bool = False) -> bytes:
        if self._passphrase is not None and not confirm:
            return self._passphrase
        prompt = None
        if sys.stdin.isatty():
            def prompt() -> str:
                return click.prompt("Repository passphrase", hide_input=True,
                                    confirmation_prompt=confirm, err=True)
        passphrase = read_passphrase(self.settings, prompt, new=confirm)
        if not confirm:
            self._passphrase = passphrase
        return passphrase

    def open_options(self) -> OpenOptions:
        from drtool.api.repo_access import OpenOptions
        if self.settings.host:
            problem = label_problem(self.settings.host)
            if problem is not None:
                raise UsageError(f"host name '{display(self.settings.host)}' (DRTOOL_HOST or the config's "
                                 f"host) {problem}", hint="use printable UTF-8 without control characters")
        options = OpenOptions(self.repository(), self.passphrase(), self.settings.catalog,
                              backend_options=self.settings.backend_options, lock_wait=self.lock_wait,
                              no_lock=self.no_lock)
        if self.settings.host:
            options.host = self.settings.host
        return options

    def session(self, defer_catalog: bool = False, replace_damaged_catalog: bool = False,
                check_catalog: bool = False) -> Session:
        """The session; ``defer_catalog`` (restores, backups) applies to local repositories only.
        ``check_catalog`` (``drtool check``): a full integrity check of an SQLite catalog on open."""
        if self._session is None:
            from drtool.api.repo_access import Session, import_catalog_layer
            from drtool.api.settings import is_local_url
            options = self.open_options()
            deferred = defer_catalog and is_local_url(options.repository)
            if not deferred and self._unlock is not None:
                import_catalog_layer()  # while the key is still being derived on its thread
            repo = self._take_unlocked()
            self._session = Session.open(options, repository=repo, defer_catalog=deferred,
                                         replace_damaged_catalog=replace_damaged_catalog,
                                         check_catalog=check_catalog)
        return self._session

    def finish(self, command: str | None, exit_code: int, message: str = "") -> None:
        """Record the run in the catalog's history and notify on failure (best effort), then close."""
        if command in NOTIFY_COMMANDS and exit_code not in (0, 2):
            from drtool.api.monitoring import notify_failure
            notify_failure(self.settings.data, command, message, exit_code, host=self.settings.host)
        session = self._session
        # A restore that succeeded without the catalog is not recorded in its
        # run history (opening the catalog only for that costs ~0.3 s, 10 % of
        # the bench restore); a failed one is, if the catalog can be opened.
        if session is not None and command and (exit_code != 0 or not session.catalog_deferred):
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
        if self._unlock is not None:  # unlocked early for a command that never opened a session
            self._unlock.join()
            self._unlock = None
            unused = self._unlocked.pop("repo", None)
            if unused is not None:
                unused.close()
                unused.backend.close()
        self._unlocked.clear()


def command_line() -> str:
    """This invocation as a shell command a user can copy."""
    import shlex
    return " ".join(shlex.quote(word) for word in ["drtool", *COMMAND_LINE])


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


pass_state = click.make_pass_decorator(CliState)
