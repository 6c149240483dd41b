"""Point-in-time restore of database sources, and their recoverable windows.

A restore point needs two things: a *base* taken before it (a ``pg-base``
snapshot that finished before the time, or a ``mariadb-dump`` with binlog
coordinates) and an unbroken run of archived log files from that base to
past the time.  Planning uses the catalog only (log-segment rows synced from
the small ``.info`` objects), so ``--dry-run`` and ``recoverable_window`` cost
a few LISTs; restoring then fetches exactly the files the plan names.

PostgreSQL replays WAL itself: drtool unpacks the base backup, writes
``recovery.signal`` plus ``restore_command`` (a wrapper script around
``drtool pg wal-fetch``) and ``recovery_target_time``, and optionally starts
the server and waits for promotion.  PostgreSQL stops *before* the first
commit later than the target, so a target is reachable only if a later
commit is archived; the plan checks that instead of letting the server fail
with "recovery ended before configured recovery target was reached".

MariaDB: the dump is streamed into the ``mariadb`` client, then binlogs are
replayed from the dump's coordinates with ``mariadb-binlog --stop-datetime``.
Binlog times have one-second resolution; an inclusive target replays every
event stamped at or before the target's second.
"""
from __future__ import annotations

import io
import math
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from drtool.childenv import child_environment
from drtool.catalog.logs import (BINLOG, MARIADB_DUMP, PG_BASE, WAL, LogCatalog, RecoveryBase, Segment,
                                 Window, compute_window, contiguous_run, gap_file_name, reach,
                                 recovery_bases, wal_segment_size)
from drtool.catalog.logs import find_gaps as _segment_gaps
from drtool.config import Settings
from drtool.errors import DrtoolError, RestoreTargetError, SnapshotNotFound, UsageError
from drtool.ops.logarchive import fetch_segment, sync_log_segments
from drtool.ops.session import Session
from drtool.ops.sources_run import _Stderr
from drtool.repository.repo import Repository
from drtool.snapshot.model import FILE, Node, Snapshot
from drtool.snapshot.store import load_tree
from drtool.sources import mariadb, postgres



class RecoveryPointUnreachable(DrtoolError):
    """The archive cannot bring any base to the requested time (gap, or not archived yet)."""


def _log_kind(source_type: str) -> str:
    return WAL if source_type == "postgresql" else BINLOG


def _detect_kind(session: Session, source: str, logs: LogCatalog) -> str:
    kinds = {s.kind for s in session.snapshots(source)}
    if PG_BASE in kinds:
        return WAL
    if MARIADB_DUMP in kinds:
        return BINLOG
    segs = {s.kind for s in logs.segments(source)}
    if segs:
        return WAL if WAL in segs else BINLOG
    raise SnapshotNotFound(f"source {source!r} has no base backup, dump or archived log in the repository")


def recoverable_window(session: Session, source: str, source_type: str | None = None) -> Window:
    """Times the source can be restored to from the repository, and the gaps that limit it."""
    logs = sync_log_segments(session)
    kind = _log_kind(source_type) if source_type else _detect_kind(session, source, logs)
    return compute_window(source, kind, session.snapshots(source), logs.segments(source, kind))


def find_gaps(session: Session, source: str, source_type: str | None = None) -> list[dict[str, Any]]:
    """Missing log files between the oldest base and the newest archived file."""
    return recoverable_window(session, source, source_type).gaps


# ----- planning ---------------------------------------------------------------------------------------
@dataclass
class PitrPlan:
    source: str
    source_type: str
    base: RecoveryBase
    segments: list[Segment]
    target_time: datetime | None
    inclusive: bool
    recoverable_until: datetime

    @property
    def latest(self) -> bool:
        return self.target_time is None

    def data_loss_window(self, now: datetime | None = None) -> tuple[datetime, datetime] | None:
        """Changes in this interval are not in the archive and will not be restored (--latest)."""
        if not self.latest:
            return None
        now = now or datetime.now(timezone.utc)
        return (self.recoverable_until, now) if now > self.recoverable_until else None

    def as_dict(self) -> dict[str, Any]:
        loss = self.data_loss_window()
        return {"source": self.source, "type": self.source_type, "base": self.base.as_dict(),
                "segments": [s.name for s in self.segments],
                "segment_bytes": sum(s.size for s in self.segments),
                "target_time": self.target_time.isoformat() if self.target_time else "latest",
                "inclusive": self.inclusive, "recoverable_until": self.recoverable_until.isoformat(),
                "data_loss_window": [loss[0].isoformat(), loss[1].isoformat()] if loss else None}

    def lines(self) -> list[str]:
        snap = self.base.snapshot
        what = "latest archived state" if self.latest else (
            f"{self.target_time.isoformat()} ({'inclusive' if self.inclusive else 'exclusive'})")  # type: ignore[union-attr]
        out = [f"source {self.source} ({self.source_type}): recover to {what}",
               f"base: snapshot {snap.short_id} ({snap.kind}, {snap.time.isoformat()}, "
               f"consistent from {self.base.consistent_at.isoformat()})"]
        if self.segments:
            out.append(f"logs: {len(self.segments)} file(s) {self.segments[0].name} .. {self.segments[-1].name} "
                       f"({sum(s.size for s in self.segments) / 2**20:.1f} MiB)")
        else:
            out.append("logs: none needed")
        out.append(f"archive reaches: {self.recoverable_until.isoformat()}")
        loss = self.data_loss_window()
        if loss:
            out.append(f"data-loss window: changes after {loss[0].isoformat()} are not archived "
                       f"({(loss[1] - loss[0]).total_seconds():.0f}s before now)")
        elif self.latest:
            out.append("data-loss window: none known")
        return out


def plan_pitr(session: Session, source: str, source_type: str, when: datetime | None,
              inclusive: bool = True, snapshot: str | None = None) -> PitrPlan:
    """Choose the base and the log files for a restore to ``when`` (None: latest).

    With ``snapshot`` (an id prefix) that base is restored to the moment it
    became consistent: no later log is replayed.
    """
    kind = _log_kind(source_type)
    segments = sync_log_segments(session).segments(source, kind)
    found = recovery_bases(session.snapshots(source), kind, segments)
    label = "base backup" if source_type == "postgresql" else "dump with binlog coordinates"
    if not found:
        raise SnapshotNotFound(f"source {source} has no {label} in the repository",
                               hint=f"run 'drtool backup --source {source}' first")
    if snapshot is not None:
        chosen = [b for b in found if b.snapshot.id.startswith(snapshot)]
        if len(chosen) != 1:
            raise SnapshotNotFound(f"snapshot {snapshot!r} is not a single {label} of source {source}",
                                   hint=f"list them with 'drtool snapshots --name {source}'")
        found, when = chosen, chosen[0].consistent_at
    candidates = [b for b in found if when is None or b.consistent_at <= when]
    if not candidates:
        raise SnapshotNotFound(f"no {label} of source {source} was consistent at or before "
                               f"{when.isoformat()}; the first is from {found[0].consistent_at.isoformat()}")  # type: ignore[union-attr]
    for base in reversed(candidates):
        chain = contiguous_run(segments, base.start_seq, base.timeline)
        end = reach(base, chain)
        if end is not None:
            break
        if when is not None:
            raise _missing_base_wal(source, base, segments)
    else:
        raise _missing_base_wal(source, candidates[-1], segments)
    if snapshot is not None and source_type == "mariadb":
        # a dump is consistent by itself; binlog stop times have 1 s resolution
        return PitrPlan(source, source_type, base, [], when, inclusive, end)
    if when is not None:
        _check_reachable(source, source_type, base, segments, when, end, inclusive)
    return PitrPlan(source, source_type, base, _needed(chain, when, source_type), when, inclusive, end)


def _missing_base_wal(source: str, base: RecoveryBase, segments: list[Segment]) -> DrtoolError:
    name = postgres.segment_name(base.timeline, base.start_seq, wal_segment_size(segments))
    return RecoveryPointUnreachable(
        f"WAL needed to make base backup {base.snapshot.short_id} of source {source} consistent is "
        f"missing from the archive (from segment {name})",
        hint="check archive_command ('drtool pg wal-push') in the server log; take a new base backup")


def _check_reachable(source: str, source_type: str, base: RecoveryBase, segments: list[Segment], when: datetime,
                     reach: datetime, inclusive: bool) -> None:
    strict = source_type == "postgresql" and inclusive
    if (when < reach) if strict else (when <= reach):
        return
    kind = _log_kind(source_type)
    gaps = _segment_gaps(segments, base.start_seq)
    if gaps:
        missing = gap_file_name(kind, gaps[0], base.timeline, wal_segment_size(segments))
        raise RecoveryPointUnreachable(
            f"{'WAL segment' if kind == WAL else 'binlog'} {missing} of source {source} is missing from "
            f"the archive (gap after {gaps[0].before}): from snapshot {base.snapshot.short_id} recovery "
            f"reaches at most {reach.isoformat()}, not {when.isoformat()}",
            hint="choose an earlier --point-in-time, or a base taken after the gap")
    what = "transaction" if kind == WAL else "binlog event"
    raise RecoveryPointUnreachable(
        f"point in time {when.isoformat()} is after the last archived {what} of source {source} "
        f"({reach.isoformat()})",
        hint="use --latest to recover everything archived, or archive more first "
             + ("(pg_switch_wal / archive_timeout)" if kind == WAL
                else f"(FLUSH BINARY LOGS; drtool mariadb binlog-push --source {source})"))


def _needed(chain: list[Segment], when: datetime | None, source_type: str) -> list[Segment]:
    """The prefix of the chain that replay to ``when`` reads."""
    if when is None:
        return chain
    for index, seg in enumerate(chain):
        newest = seg.last_time if source_type == "postgresql" else seg.newest_time
        if newest is not None and (newest > when if source_type == "postgresql" else newest >= when):
            return chain[:index + 1]
    return chain


def binlog_stop_time(when: datetime, inclusive: bool) -> datetime:
    """``--stop-datetime`` is exclusive and whole seconds: inclusive means the next second."""
    whole = when.replace(microsecond=0)
    if inclusive:
        return whole + timedelta(seconds=1)
    return whole if when.microsecond == 0 else whole + timedelta(seconds=math.ceil(when.microsecond / 1e6))


def plan_from_config(session: Session, src: Any, when: datetime | None, inclusive: bool,
                     snapshot: str | None = None) -> PitrPlan:
    source_type = "postgresql" if isinstance(src, postgres.PgSource) else "mariadb"
    if source_type == "postgresql" and src.method != "basebackup":
        raise UsageError(f"source {src.name} makes pg_dump dumps (method = \"dump\"): point-in-time "
                         f"restore needs method = \"basebackup\" and WAL archiving",
                         hint=f"restore the dump file with 'drtool restore latest --name {src.name} --target DIR'")
    if source_type == "mariadb" and not src.pitr:
        raise UsageError(f"source {src.name} has pitr = false: its dumps carry no binlog coordinates")
    return plan_pitr(session, src.name, source_type, when, inclusive, snapshot)


# ----- executing a plan ----------------------------------------------------------------------------
@dataclass
class PitrResult:
    plan: PitrPlan
    target: str | None = None
    target_db: str | None = None
    started: bool = False
    outcome: dict[str, str] = field(default_factory=dict)
    members: int = 0
    script: str | None = None
    socket: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {"plan": self.plan.as_dict(), "target": self.target, "target_db": self.target_db,
                "started": self.started, "outcome": self.outcome, "restore_command": self.script,
                "socket": self.socket}
        return data

    def lines(self) -> list[str]:
        where = self.target_db or self.target
        out = [f"restored source {self.plan.source} from snapshot {self.plan.base.snapshot.short_id} "
               f"with {len(self.plan.segments)} log file(s) into {where}"]
        if self.plan.source_type == "postgresql" and not self.started:
            out.append(f"start it with: pg_ctl -D {self.target} start  (PostgreSQL replays WAL via "
                       f"{self.script}, then promotes)")
        for key in ("stopped", "last_transaction"):
            if key in self.outcome:
                out.append(f"recovery: {self.outcome[key]}")
        if self.started and self.socket:
            out.append(f"MariaDB instance running on socket {self.socket}")
        return out


class _SnapshotReader(io.RawIOBase):
    """The one file of a stream snapshot as a sequential, non-seekable file object."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buf:
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def snapshot_chunks(repo: Repository, snap: Snapshot) -> Iterator[bytes]:
    """Plaintext of a dump / base backup snapshot (a single file), blob by blob, verified."""
    nodes: list[Node] = [n for n in load_tree(repo, snap.tree) if n.type == FILE]
    if len(nodes) != 1:
        raise RestoreTargetError(f"snapshot {snap.short_id} is not a single-file dump ({len(nodes)} files)")
    for hexid in nodes[0].content:
        yield repo.read_blob(bytes.fromhex(hexid))


def fetch_environment(settings: Settings, env: dict[str, str] | None = None) -> dict[str, str]:
    """Settings the restore_command wrapper needs; the passphrase only as a file or a command."""
    env = dict(os.environ) if env is None else env
    out: dict[str, str] = {}
    if settings.repository:
        repo = settings.repository
        out["DRTOOL_REPOSITORY"] = repo if "://" in repo else os.path.abspath(repo)
    if settings.path:
        out["DRTOOL_CONFIG"] = os.path.abspath(settings.path)
    password_file = env.get("DRTOOL_PASSWORD_FILE") or settings.password_file
    password_command = env.get("DRTOOL_PASSWORD_COMMAND") or settings.password_command
    if password_file:
        out["DRTOOL_PASSWORD_FILE"] = os.path.abspath(password_file)
    elif password_command:
        out["DRTOOL_PASSWORD_COMMAND"] = password_command
    else:
        raise UsageError("PostgreSQL point-in-time restore needs the passphrase in a file",
                         hint="set DRTOOL_PASSWORD_FILE (readable by the PostgreSQL OS user) or "
                              "DRTOOL_PASSWORD_COMMAND; it is never written into the data directory")
    for key in ("PYTHONPATH", "DRTOOL_HOST", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE"):
        if env.get(key):
            out[key] = env[key]
    return out


def restore_postgres(session: Session, plan: PitrPlan, src: postgres.PgSource, target: str, *,
                     fetch_env: dict[str, str], start: bool = False, port: int | None = None,
                     timeout: float = 600.0) -> PitrResult:
    """Unpack the base backup and configure recovery; with ``start``, run it to promotion."""
    target = os.path.abspath(target)
    postgres.prepare_datadir(target)
    with session.lock("restore"):
        session.repo.load_index()
        reader = io.BufferedReader(_SnapshotReader(snapshot_chunks(session.repo, plan.base.snapshot)),
                                   buffer_size=1024 * 1024)
        members = postgres.extract_base_tar(reader, target)
    for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        if os.path.exists(os.path.join(target, stale)):
            os.unlink(os.path.join(target, stale))
    script = postgres.write_fetch_script(target, plan.source, fetch_env, sys.executable)
    settings = postgres.recovery_settings(f"{shlex.quote(script)} %f %p", plan.target_time, plan.inclusive, port)
    postgres.write_recovery_files(target, settings)
    result = PitrResult(plan, target, members=members, script=script)
    if start:
        result.outcome = postgres.start_and_wait(target, src.bindir, timeout)
        result.started = True
    return result


def restore_mariadb(session: Session, plan: PitrPlan, src: mariadb.MariaSource, *, target_db: str | None,
                    target_dir: str | None, start: bool = False, port: int | None = None) -> PitrResult:
    """Load the dump (into a new database, or a fresh instance) and replay binlogs to the target."""
    single = plan.base.snapshot.meta.get("database")
    if target_dir is None and not target_db:
        raise UsageError("give --target-db NAME (a new database on the source's server) or "
                         "--target DIR (a fresh MariaDB instance)")
    if target_db and not single:
        raise UsageError("--target-db needs a single-database dump; this one holds several databases",
                         hint="restore it into a fresh instance with --target DIR")
    instance = mariadb.Instance(target_dir, port, src.bindir) if target_dir else None
    server = src
    if instance is not None:
        instance.install()
        instance.start()
        server = instance.source(src.name)
    database = target_db or single
    try:
        _create_database(server, database, fresh=instance is not None)
        with session.lock("restore"):
            session.repo.load_index()
            _pipe_into_client(server, database, snapshot_chunks(session.repo, plan.base.snapshot), "dump load")
            _replay_binlogs(session, plan, server, single, database)
    finally:
        if instance is not None and not start:
            instance.stop()
    return PitrResult(plan, instance.root if instance else None, target_db=database,
                      started=start and instance is not None,
                      socket=instance.socket if instance else None)


def _create_database(server: mariadb.MariaSource, database: str | None, fresh: bool) -> None:
    if database is None:
        return
    if not fresh and mariadb.database_exists(server, database):
        raise RestoreTargetError(f"database {database} already exists on the target server",
                                 hint="choose a new --target-db (or drop the old one first)")
    mariadb.run_sql(server, f"CREATE DATABASE IF NOT EXISTS {mariadb.quote_ident(database)}")


def _pipe_into_client(server: mariadb.MariaSource, database: str | None, chunks: Iterator[bytes],
                      what: str) -> None:
    with mariadb.client_options(server) as opts:
        cmd = mariadb.client_command(server, opts, database, extra=["--binary-mode"])
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=child_environment())
        assert proc.stdin is not None and proc.stderr is not None
        errors = _Stderr(proc.stderr)
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        finally:
            code = proc.wait()
    if code != 0:
        raise RestoreTargetError(f"{what} into {database or 'the server'} failed (mariadb exit {code}): "
                                 f"{errors.text() or '(no message)'}")


def _replay_binlogs(session: Session, plan: PitrPlan, server: mariadb.MariaSource, single: str | None,
                    database: str | None) -> None:
    if not plan.segments:
        return
    meta = plan.base.snapshot.meta
    with tempfile.TemporaryDirectory(prefix="drtool-replay-") as work:
        files = []
        for seg in plan.segments:
            path = os.path.join(work, seg.name)
            with open(path, "wb") as handle:
                handle.write(fetch_segment(session.repo, BINLOG, plan.source, seg.name))
            files.append(path)
        start = int(meta["binlog_pos"]) if plan.segments[0].name == meta.get("binlog_file") else None
        stop = binlog_stop_time(plan.target_time, plan.inclusive) if plan.target_time else None
        cmd = mariadb.replay_command(files, start, stop, single, database, server.bindir)
        producer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, env=child_environment({"TZ": "UTC"}))
        assert producer.stdout is not None and producer.stderr is not None
        errors = _Stderr(producer.stderr)
        try:
            _pipe_into_client(server, database, iter(lambda: producer.stdout.read(1 << 20), b""),  # type: ignore[union-attr]
                              "binlog replay")
        finally:
            code = producer.wait()
        if code != 0:
            raise RestoreTargetError(f"mariadb-binlog failed (exit {code}): {errors.text()}")


def restore_pitr(session: Session, settings: Settings, src: Any, when: datetime | None, *,
                 inclusive: bool = True, target: str | None = None, target_db: str | None = None,
                 start: bool = False, port: int | None = None, snapshot: str | None = None) -> PitrResult:
    """``drtool restore [SNAPSHOT] --source NAME --point-in-time TIME|--latest`` for databases."""
    plan = plan_from_config(session, src, when, inclusive, snapshot)
    if plan.source_type == "postgresql":
        if not target:
            raise UsageError("PostgreSQL restore needs --target DIR (the new data directory)")
        if target_db:
            raise UsageError("--target-db is for MariaDB sources")
        return restore_postgres(session, plan, src, target, fetch_env=fetch_environment(settings),
                                start=start, port=port)
    return restore_mariadb(session, plan, src, target_db=target_db, target_dir=target, start=start, port=port)
