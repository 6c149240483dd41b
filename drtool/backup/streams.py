"""Running a dump program into a stream snapshot: no temporary file, and no commit on a bad dump.

The stream is tapped on its way into the repository: the head and tail are
kept so that the snapshot ``meta`` can record what the dump says about
itself (binlog coordinates, a base backup's WAL range) and so that a
truncated dump is refused before the commit point.  The program's exit
status and a ``finish`` check decide whether the snapshot is written.
"""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator

from drtool.backup.run import BackupResult, backup_stream
from drtool.childenv import child_environment
from drtool.core.session import Session
from drtool.errors import ProgramFailed, SourceError
from drtool.sources.common import StderrTail, widen_pipe

HEAD_BYTES = 1024 * 1024
TAIL_BYTES = 64 * 1024


class StreamTap:
    """A pass-through reader that keeps the first and last bytes of a stream."""

    def __init__(self, stream: IO[bytes], head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self.stream = stream
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self._head_limit, self._tail_limit = head, tail
        self._read = getattr(stream, "read1", stream.read)

    def read1(self, size: int = -1) -> bytes:
        data = self._read(size)
        if data:
            self._keep(data)
        return data

    read = read1

    def readinto(self, buffer: memoryview) -> int:
        """Into the caller's buffer (the backup's recycled segments), no copy but the tap's."""
        readinto = getattr(self.stream, "readinto1", None) or getattr(self.stream, "readinto", None)
        if readinto is None:
            data = self.read1(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        count = readinto(buffer) or 0
        if count:
            self._keep(buffer[:count])
        return count

    def boundaries(self, upto: int) -> list[int] | None:
        """Where the stream's own structure says its pieces start, below stream offset ``upto``
        (a full's mbstream: ``FullPassage``); None: the backup finds cut points itself."""
        find = getattr(self.stream, "boundaries", None)
        return find(upto) if find is not None else None

    def _keep(self, data: bytes | memoryview) -> None:
        self.total += len(data)
        if len(self.head) < self._head_limit:
            self.head += data[:self._head_limit - len(self.head)]
        if len(data) >= self._tail_limit:
            self.tail[:] = data[-self._tail_limit:]
        else:
            self.tail += data
            if len(self.tail) > 2 * self._tail_limit:
                del self.tail[:-self._tail_limit]


def run_dump(session: Session, command: list[str], env: dict[str, str], name: str, filename: str,
             kind: str, meta: dict[str, Any], tags: list[str],
             finish: Callable[[StreamTap, dict[str, Any]], None] | None = None,
             rewrite: Callable[[IO[bytes]], IO[bytes]] | None = None) -> BackupResult:
    """Stream a dump command into a snapshot; exit status and ``finish`` may veto the commit.

    ``rewrite`` wraps the program's stdout (a physical backup's sub-page form); the tap, and so
    ``finish``, see the rewritten stream."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=child_environment(base=env))
    except OSError as exc:
        raise SourceError(f"cannot start {command[0]}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    widen_pipe(proc.stdout.fileno())
    tap, errors = StreamTap(rewrite(proc.stdout) if rewrite else proc.stdout), StderrTail(proc.stderr)
    program = command[0].rsplit("/", 1)[-1]

    def verify() -> None:
        code = proc.wait()
        if code != 0:
            raise ProgramFailed(f"{program} for {name} exited with status {code}; no snapshot was written. "
                                f"stderr: {errors.text() or '(empty)'}", "\n".join(errors.lines()),
                                hint="the repository is unchanged")
        if finish is not None:
            finish(tap, meta)
        meta["dump_bytes"] = tap.total
    try:
        return backup_stream(session, tap, name, filename, tags, kind, meta, verify=verify)  # type: ignore[arg-type]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def binary_streams(session: Session) -> Iterator[None]:
    """Physical backups (mariabackup, pg_basebackup): data-file pages, for which zstd's
    long-distance matching costs half the compression speed and saves nothing, and whose
    long runs of new blobs are compressed in one shot (``repository.longgroups``)."""
    envelope = session.repo.envelope
    before = envelope.text_ldm, envelope.run_groups
    envelope.text_ldm, envelope.run_groups = False, True
    try:
        yield
    finally:
        envelope.text_ldm, envelope.run_groups = before
