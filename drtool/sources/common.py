"""Shared by the database sources: ``[sources.NAME]`` table validation, child stderr capture."""
from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from typing import IO, Any, Iterable

from drtool.childenv import child_environment

from drtool.errors import ConfigError, RestoreTargetError

#: keys every [sources.NAME] table may have, whatever its type: what monitoring (status
#: thresholds, rehearse_every), retention and rehearsals read about the source
SHARED_KEYS = frozenset({"status", "retention", "rehearse_every"})


def check_table(name: str, table: dict[str, Any], keys: frozenset[str] | set[str]) -> None:
    """Unknown keys are typos that would silently change what is backed up; a password
    in the config would end up in backups of /etc and in shell histories."""
    if "password" in table:
        raise ConfigError(f"[sources.{name}]: put the password in password_file, not the config")
    keys = set(keys) | SHARED_KEYS
    unknown = set(table) - keys
    if unknown:
        raise ConfigError(f"[sources.{name}]: unknown key(s) {', '.join(sorted(unknown))}",
                          hint=f"known keys: {', '.join(sorted(keys))}")


def check_one_database_choice(name: str, dbname: str | None, databases: list[str], all_: bool) -> None:
    if sum([bool(dbname), bool(databases), all_]) != 1:
        raise ConfigError(f"[sources.{name}]: give exactly one of dbname, databases or all = true")


class StderrTail(threading.Thread):
    """Collects the last few KiB of a child's stderr while it runs (for one-line error messages)."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream, self.buf = stream, b""
        self.start()

    def run(self) -> None:
        for piece in iter(lambda: self.stream.read(4096), b""):
            self.buf = (self.buf + piece)[-4000:]

    def lines(self) -> list[str]:
        """The last five non-blank lines, stripped."""
        self.join(timeout=5)
        lines = (line.strip() for line in self.buf.decode(errors="replace").splitlines())
        return [line for line in lines if line][-5:]

    def text(self) -> str:
        return " | ".join(self.lines())  # one line: no tabs, no blank lines


PIPE_BYTES = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def widen_pipe(fd: int, size: int = PIPE_BYTES) -> None:
    """A 1 MiB pipe instead of 64 KiB: a dump program streaming hundreds of MB/s into
    drtool (or drtool into an extractor) otherwise stalls and wakes every 64 KiB, a
    context switch each on a busy two-core host.  Best effort: Linux only, and capped
    by /proc/sys/fs/pipe-max-size for unprivileged users."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass


def feed_stdin(cmd: list[str], chunks: Iterable[bytes]) -> tuple[int, str]:
    """Run ``cmd`` with ``chunks`` as its standard input; return its exit code and stderr's tail.

    A child that stops reading early (it failed) is not an error of ours:
    its exit code and message say what happened.  A program that cannot be
    started raises ``OSError``.
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=child_environment(),
                            stdout=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stderr is not None
    widen_pipe(proc.stdin.fileno())
    errors = StderrTail(proc.stderr)
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)
    except BrokenPipeError:
        pass
    finally:  # also when ``chunks`` raised (a damaged snapshot): the child must see end of input, or wait forever
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        code = proc.wait()
    return code, errors.text()


def make_private_dir(path: str, what: str = "", hint: str | None = None) -> None:
    """``mkdir -p`` at mode 0700, an existing directory too (PostgreSQL refuses a group-readable
    data directory); a refusal (not a directory, read-only, permissions) is the restore target's,
    one line naming ``what`` and ``path`` with ``hint``, not an internal error."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise RestoreTargetError(f"cannot create {what}{path}: {exc.strerror}", hint=hint) from None
