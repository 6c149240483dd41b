"""One exception hierarchy for drtool; every class carries its exit code.

The CLI turns any :class:`DrtoolError` into a one-line message and exits with
its ``exit_code``, so lower layers raise meaning, not process behaviour.
Exit codes are part of the public contract (README "Exit codes").
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_REPO_NOT_FOUND = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12


class DrtoolError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""

    exit_code: int = EXIT_ERROR
    hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        text = str(self)
        return f"{text}; {self.hint}" if self.hint else text


class UsageError(DrtoolError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """Malformed configuration file or option values."""


class RepositoryNotFound(DrtoolError):
    exit_code = EXIT_REPO_NOT_FOUND
    hint = "check --repo / DRTOOL_REPOSITORY, or create one with 'drtool init'"


class RepositoryExists(DrtoolError):
    hint = "choose an empty location, or use the existing repository"


class WrongPassword(DrtoolError):
    exit_code = EXIT_WRONG_PASSWORD
    hint = "check DRTOOL_PASSWORD / DRTOOL_PASSWORD_FILE / DRTOOL_PASSWORD_COMMAND"


class KeyDerivationError(DrtoolError):
    """The passphrase's key could not be derived (Argon2id out of memory or failed)."""

    hint = "the key derivation needs 64 MiB of memory by default: check the process's memory limit and retry"


class LockHeld(DrtoolError):
    exit_code = EXIT_LOCKED
    hint = "wait for the other run, use --lock-wait, or 'drtool unlock' if it is stale"


class IntegrityError(DrtoolError):
    """Stored data failed authentication or does not match its id."""

    hint = "run 'drtool check --read-data' to list damaged objects and affected snapshots"


class ObjectMissing(IntegrityError):
    """An object that the repository references is not in the backend."""


class BackendError(DrtoolError):
    """The storage backend failed (I/O, network, permissions)."""


class TransientBackendError(BackendError):
    """A failure that may succeed on retry (timeouts, 5xx, resets)."""


class RepositoryFull(BackendError):
    """The repository's file system is full: the run stops, and what it stored unindexed is
    removed again (it would only hold the space the user must free)."""


class ReadOnlyRepository(BackendError):
    """The repository cannot be written by this process (read-only mount, permissions, a
    restore-only S3 policy).  Restore and check go on without a lock; writers fail."""

    hint = ("mount the repository read-write (or use credentials that may write) for this command; "
            "restore and check work on a read-only repository")


class SourceError(DrtoolError):
    """A backup source could not be read (dump command failed, path missing)."""


class ProgramFailed(SourceError):
    """A source's program exited non-zero.  ``stderr``: its last lines, for an engine that can say
    what went wrong better than the program's status (a PostgreSQL client that could not connect)."""

    def __init__(self, message: str, stderr: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.stderr = stderr


class RestoreTargetError(DrtoolError):
    """The restore target cannot be written (permissions, disk full)."""

    hint = "free space or choose another --target; re-running restore resumes"


def unusable_chain_hint(source: str = "NAME") -> str:
    """What to do when the stored backup itself cannot be restored: nothing was restored."""
    return ("'drtool check --read-data' lists what else is damaged; restore an older base (an earlier "
            f"--point-in-time), and take a full backup now: drtool backup --source {source} --full")


class RestoreChainError(RestoreTargetError):
    """The stored backup cannot be made into a database: a member of its chain is unreadable, or
    the engine's prepare of it failed.  Unlike a target problem, re-running the restore cannot help,
    so the hint points away from this chain (``unusable_chain_hint``, with the source's name where
    the raiser knows it)."""

    hint = unusable_chain_hint()


class SnapshotNotFound(DrtoolError):
    hint = "list snapshots with 'drtool snapshots'"


class CatalogError(DrtoolError):
    hint = "run 'drtool catalog rebuild' to reconstruct it from the repository"


class PartialSuccess(DrtoolError):
    """The operation finished but some items were skipped (exit 3)."""

    exit_code = EXIT_PARTIAL
