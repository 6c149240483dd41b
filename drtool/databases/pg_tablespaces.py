"""PostgreSQL base backups of clusters with tablespaces: one tar per tablespace, no temporary copy.

``pg_basebackup -D - -Ft`` refuses a cluster with tablespaces ("can only
write single tablespace to stdout"): with tar format it writes ``base.tar``
and one ``OID.tar`` per tablespace into a directory instead, one archive
after the other.  drtool lets it create that (empty) directory, puts a named
pipe in it for every tablespace it listed just before, and stores what comes
out of each pipe as one file of the snapshot (``base.tar``, ``OID.tar``,
``backup_manifest``) -- the layout of ``pg_basebackup -Ft -D DIR``, so a plain
``drtool restore SNAPSHOT --target DIR`` gives exactly that directory.

The pipes must exist before pg_basebackup opens the first archive, which it
does after its checkpoint; if it ever got there first, ``mkfifo`` finds the
file and the backup is retried once, then refused -- never stored half.
A tablespace created during the backup shows up as a plain file and is
refused the same way.

A restore unpacks ``base.tar`` into the data directory and each tablespace
into its location -- the original one, or where ``--tablespace-map`` puts it
-- and rewrites ``tablespace_map``, from which PostgreSQL makes the
``pg_tblspc`` links when recovery starts.
"""
from __future__ import annotations

import io
import os
import queue
import subprocess
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from drtool.childenv import child_environment
from drtool.errors import RestoreTargetError, SourceError, UsageError
from drtool.sources import postgres
from drtool.sources.common import StderrTail, make_private_dir, widen_pipe

if TYPE_CHECKING:
    from drtool.backup.run import BackupResult
    from drtool.backup.streams import StreamTap
    from drtool.core.session import Session
    from drtool.snapshot.model import Snapshot

TABLESPACES_SQL = ("SELECT oid, spcname, pg_tablespace_location(oid) FROM pg_tablespace "
                   "WHERE pg_tablespace_location(oid) <> '' ORDER BY oid")
MANIFEST = "backup_manifest"
BASE_TAR = "base.tar"
_SEP = "\x1f"
_DIR_WAIT = 600.0


def list_tablespaces(src: postgres.PgSource, env: dict[str, str]) -> list[dict[str, str]]:
    """The cluster's tablespaces outside the data directory (oid, name, location)."""
    cmd = [postgres.find_binary("psql", src.bindir), *postgres.conn_args(src), "-d", src.dbname or "postgres",
           "-AtX", "-F", _SEP, "-c", TABLESPACES_SQL]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_environment(base=env),
                          stdin=subprocess.DEVNULL, timeout=300, check=False)
    if proc.returncode != 0:
        raise postgres.client_failure(src, f"cannot list the tablespaces of {src.name}", proc.stderr)
    spaces = []
    for line in proc.stdout.splitlines():
        fields = line.split(_SEP, 2)
        if len(fields) != 3 or not fields[0].isdigit():
            raise SourceError(f"source {src.name}: unexpected tablespace row {line[:80]!r}",
                              hint="a tablespace location with a line break cannot be backed up")
        spaces.append({"oid": fields[0], "name": fields[1], "location": fields[2]})
    return spaces


def backup_with_tablespaces(session: Session, src: postgres.PgSource, env: dict[str, str], label: str,
                            meta: dict[str, Any], tags: list[str], spaces: list[dict[str, str]],
                            kind: str) -> BackupResult:
    """One snapshot of ``base.tar``, ``OID.tar`` per tablespace and ``backup_manifest``."""
    meta = dict(meta, tablespaces=spaces)
    for attempt in (1, 2):
        try:
            return _attempt(session, src, env, label, meta, tags, spaces, kind)
        except _LostRace:
            if attempt == 2:
                raise SourceError(f"pg_basebackup of {src.name} opened its archives before drtool could put "
                                  f"pipes in their place (twice); no snapshot was written",
                                  hint="run the backup again; a busy host makes this more likely") from None
    raise AssertionError("unreachable")


class _LostRace(Exception):
    """pg_basebackup created an archive file before the pipe for it existed."""


def _attempt(session: Session, src: postgres.PgSource, env: dict[str, str], label: str,
             meta: dict[str, Any], tags: list[str], spaces: list[dict[str, str]], kind: str) -> BackupResult:
    from drtool.backup.run import backup_streams
    from drtool.backup.streams import StreamTap
    with tempfile.TemporaryDirectory(prefix="drtool-basebackup-") as work:
        out = os.path.join(work, "out")
        cmd = [postgres.find_binary("pg_basebackup", src.bindir), *postgres.conn_args(src), "-D", out, "-Ft",
               "--no-sync", "-X", "none", "-c", "fast", "-l", label, *src.options]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, env=child_environment(base=env))
        except OSError as exc:
            raise SourceError(f"cannot start {cmd[0]}: {exc.strerror}") from None
        assert proc.stderr is not None
        errors = StderrTail(proc.stderr)
        names = [BASE_TAR] + [f"{space['oid']}.tar" for space in spaces]
        pipes: _Pipes | None = None
        try:
            pipes = _Pipes(out, names, proc, errors)
            taps: dict[str, StreamTap] = {}

            def streams() -> Iterator[tuple[str, IO[bytes]]]:
                for name, handle in pipes.opened():  # type: ignore[union-attr]
                    taps[name] = StreamTap(handle)
                    yield name, taps[name]
                yield MANIFEST, _manifest(out, proc, errors, src.name)

            def verify() -> None:
                pipes.close()  # type: ignore[union-attr]
                _check_complete(out, names, taps, src.name)
                meta["tablespaces"] = [s for s in spaces if f"{s['oid']}.tar" in taps]  # none dropped meanwhile
                _finish_meta(taps[BASE_TAR], out, meta)
            return backup_streams(session, streams(), src.name, tags, kind, meta, verify)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if pipes is not None:
                pipes.close()


class _Pipes:
    """Named pipes in pg_basebackup's output directory, handed out in the order it opens them."""

    def __init__(self, out: str, names: list[str], proc: subprocess.Popen[bytes], errors: StderrTail) -> None:
        self.out, self.names, self.proc, self.errors = out, names, proc, errors
        self._wait_for_directory()
        for name in names:
            try:
                os.mkfifo(os.path.join(out, name), 0o600)
            except FileExistsError:
                raise _LostRace() from None
        self._ready: queue.Queue[tuple[str, IO[bytes]]] = queue.Queue()
        self._handles: list[IO[bytes]] = []
        self._released: set[str] = set()
        self._threads = [threading.Thread(target=self._open, args=(name,), daemon=True) for name in names]
        for thread in self._threads:
            thread.start()

    def _wait_for_directory(self) -> None:
        deadline = time.monotonic() + _DIR_WAIT
        while not os.path.isdir(self.out):
            if self.proc.poll() is not None:
                code = self.proc.wait()
                raise SourceError(f"pg_basebackup exited with status {code} before writing anything; no "
                                  f"snapshot was written. stderr: {self.errors.text() or '(empty)'}")
            if time.monotonic() > deadline:
                raise SourceError("pg_basebackup did not create its output directory in time")
            time.sleep(0.0005)

    def _open(self, name: str) -> None:
        handle = open(os.path.join(self.out, name), "rb", buffering=0)  # noqa: SIM115 - closed by close()
        widen_pipe(handle.fileno())
        self._handles.append(handle)
        self._ready.put((name, handle))  # type: ignore[arg-type]

    def opened(self) -> Iterator[tuple[str, IO[bytes]]]:
        """Each pipe once pg_basebackup opened it for writing; ends when pg_basebackup exits.

        A pipe pg_basebackup never opened (a tablespace dropped meanwhile) is
        opened by :meth:`_release_unopened` so its reader ends; it comes out
        empty and is left out.  A short archive pg_basebackup wrote just
        before exiting may look the same way, but has content.
        """
        seen = 0
        while seen < len(self.names):
            try:
                name, handle = self._ready.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is None:
                    continue
                self._release_unopened()
                try:
                    name, handle = self._ready.get_nowait()
                except queue.Empty:
                    return
            seen += 1
            if name in self._released:
                content = handle.read()  # the writer is gone: what the pipe holds, at most its capacity
                if not content:
                    continue
                handle = io.BytesIO(content)
            yield name, handle

    def _release_unopened(self) -> None:
        """pg_basebackup exited: let readers still waiting in open() see an empty pipe."""
        for thread, name in zip(self._threads, self.names):
            if thread.is_alive():
                self._released.add(name)
                try:
                    os.close(os.open(os.path.join(self.out, name), os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
                thread.join(5)

    def close(self) -> None:
        self._release_unopened()
        for handle in self._handles:
            handle.close()


def _manifest(out: str, proc: subprocess.Popen[bytes], errors: StderrTail, source: str) -> IO[bytes]:
    """pg_basebackup writes the manifest as a plain file once every archive is through."""
    code = proc.wait()
    if code != 0:
        raise SourceError(f"pg_basebackup for {source} exited with status {code}; no snapshot was written. "
                          f"stderr: {errors.text() or '(empty)'}", hint="the repository is unchanged")
    try:
        with open(os.path.join(out, MANIFEST), "rb") as handle:
            return io.BytesIO(handle.read())
    except FileNotFoundError:
        return io.BytesIO(b"")  # --no-manifest in the source's options


def _check_complete(out: str, names: list[str], taps: dict[str, StreamTap], source: str) -> None:
    """Every archive came through a pipe: a plain file is a tablespace created meanwhile."""
    strays = [n for n in os.listdir(out) if n not in names and n != MANIFEST and not n.endswith(".tmp")]
    if strays:
        raise SourceError(f"the base backup of {source} wrote {', '.join(sorted(strays))}, a tablespace created "
                          f"during the backup; no snapshot was written", hint="run the backup again")
    for name in names:
        tap = taps.get(name)
        if name == BASE_TAR and (tap is None or tap.total == 0):
            raise SourceError(f"the base backup of {source} has no base.tar; no snapshot was written")


def _finish_meta(base: StreamTap, out: str, meta: dict[str, Any]) -> None:
    from datetime import datetime, timezone
    label = postgres.backup_label_from_tar_head(bytes(base.head))
    if label is None:
        raise SourceError(f"the base backup of {meta['source']} does not start with backup_label; "
                          f"no snapshot was written")
    meta.update(postgres.parse_backup_label(label))
    try:
        with open(os.path.join(out, MANIFEST), "rb") as handle:
            meta.update(postgres.wal_range_from_tail(handle.read()))
    except FileNotFoundError:
        pass
    meta["end_time"] = datetime.now(timezone.utc).isoformat()


# ----- restore ------------------------------------------------------------------------------------
def parse_mapping(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``OLD=NEW`` pairs (OLD: the original location, the tablespace's name or its oid)."""
    mapping: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--tablespace-map {item!r} is not OLD=NEW",
                             hint="e.g. --tablespace-map /srv/pg/fast=/restore/fast (or NAME=DIR)")
        if not os.path.isabs(new):
            raise UsageError(f"--tablespace-map {item!r}: the new location must be an absolute path")
        mapping[old] = os.path.normpath(new)
    return mapping


def locations(snap: Snapshot, mapping: dict[str, str]) -> dict[str, str]:
    """oid → where each tablespace of the base backup is restored; unknown map entries are refused."""
    spaces = snap.meta.get("tablespaces") or []
    known = {key for space in spaces for key in (space["oid"], space["name"], space["location"])}
    unknown = sorted(set(mapping) - known)
    if unknown:
        names = ", ".join(f"{s['name']} ({s['location']})" for s in spaces) or "none"
        raise UsageError(f"--tablespace-map names {', '.join(unknown)}, which base backup {snap.short_id} "
                         f"does not have", hint=f"its tablespaces: {names}")
    out = {}
    for space in spaces:
        new = next((mapping[k] for k in (space["location"], space["name"], space["oid"]) if k in mapping),
                   space["location"])
        if "\n" in new or "\r" in new:
            raise UsageError(f"tablespace location {new!r} contains a line break")
        out[space["oid"]] = new
    return out


def check_locations(target: str, places: dict[str, str]) -> None:
    """Before anything is unpacked: each location new or empty, none inside another or the target."""
    for oid, place in places.items():
        if os.path.exists(place) and (not os.path.isdir(place) or os.listdir(place)):
            raise RestoreTargetError(f"tablespace location {place} (oid {oid}) exists and is not empty",
                                     hint="map it elsewhere: --tablespace-map OLD=NEW (e.g. under the new "
                                          "data directory's parent)")
        inside = os.path.commonpath([os.path.abspath(target), place]) == os.path.abspath(target)
        if inside:
            raise RestoreTargetError(f"tablespace location {place} is inside the data directory {target}",
                                     hint="map it next to the data directory, not into it")
    if len(set(places.values())) != len(places):
        raise RestoreTargetError("two tablespaces are mapped to the same location")


def extract_tablespaces(places: dict[str, str], extract: Callable[[str, str], int]) -> int:
    """Unpack each ``OID.tar`` into its location (mode 0700, as PostgreSQL wants it) with
    ``extract(FILENAME, PLACE)``; the member count."""
    members = 0
    for oid, place in places.items():
        make_private_dir(place, "the tablespace location ",
                         hint="map the tablespace to a writable location (--tablespace-map)")
        members += extract(f"{oid}.tar", place)
    return members


def write_tablespace_map(target: str, places: dict[str, str]) -> None:
    """PostgreSQL links ``pg_tblspc/OID`` to these at the start of recovery (backslashes escaped)."""
    lines = "".join(f"{oid} {place.replace(chr(92), chr(92) * 2)}\n" for oid, place in sorted(places.items()))
    path = os.path.join(target, "tablespace_map")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(lines)
