"""MariaDB as a database engine: dumps with binlog coordinates, binlog rules, verified replay.

The base is a consistent ``mariadb-dump`` carrying ``CHANGE MASTER TO
MASTER_LOG_FILE=…, MASTER_LOG_POS=…``; the dump is streamed into the
``mariadb`` client, then binlogs are replayed from those coordinates with
``mariadb-binlog --stop-datetime``.  Binlog times have one-second resolution;
an inclusive target replays every event stamped at or before the target's
second.  The replay stream is read on its way to the client so that drtool
can tell whether every planned binlog event before the stop time went in.
Which binlogs a replay reads, across switchovers too, is planned by GTID
(``mariadb_gtid``); per-table and physical bases live in ``mariadb_mydumper``
and ``mariadb_physical``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import tempfile
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterator

from drtool.childenv import child_environment
from drtool.core import stages
from drtool.databases import mariadb_gtid as gtid
from drtool.databases.engine import Labels, RestoreRequest, stream_bytes
from drtool.databases.logarchive import fetch_segment
from drtool.databases.planner import PitrPlan, PitrResult, RecoveryShort
from drtool.errors import RestoreTargetError, SourceError, UsageError
from drtool.snapshot.logwindow import BINLOG, Gap, RecoveryBase, Segment
from drtool.snapshot.model import Snapshot
from drtool.snapshot.store import stream_chunks
from drtool.sources import mariadb
from drtool.sources.common import StderrTail, feed_stdin

if TYPE_CHECKING:
    from drtool.config import Settings
    from drtool.backup.run import BackupResult
    from drtool.core.session import Session
    from drtool.backup.streams import StreamTap

log = logging.getLogger("drtool")
MARIADB_DUMP = "mariadb-dump"
_STEM_RE = re.compile(r"^(.*)\.(\d+)$")


class MariadbEngine:
    name = "mariadb"
    log_kind = BINLOG
    base_kind = MARIADB_DUMP
    base_kinds = (MARIADB_DUMP, "mariadb-physical", "mariadb-mydumper")  # + mariadb_physical, mariadb_mydumper
    labels = Labels(base="backup with binlog coordinates", log_file="binlog", event="binlog event",
                    archive_more="FLUSH BINARY LOGS; drtool mariadb binlog-push")

    # ----- configuration and backup -----------------------------------------------------------
    def owns(self, src: Any) -> bool:
        return isinstance(src, mariadb.MariaSource)

    def source_from_config(self, name: str, table: dict[str, Any]) -> mariadb.MariaSource:
        return mariadb.MariaSource.from_config(name, table)

    def check_pitr_source(self, src: mariadb.MariaSource) -> None:
        if not src.pitr:
            raise UsageError(f"source {src.name} has pitr = false: its dumps carry no binlog coordinates")

    def backup(self, session: Session, src: mariadb.MariaSource, tags: list[str],
               full: bool = False) -> list[BackupResult]:
        """``full``: no incremental tonight (``--full``; only physical nights are incremental)."""
        from drtool.backup.streams import run_dump
        if src.method == "physical":
            from drtool.databases.mariadb_physical import backup_physical
            return backup_physical(session, src, tags, self.name, full)
        if src.method == "mydumper":
            from drtool.databases.mariadb_mydumper import backup_mydumper
            return backup_mydumper(session, src, tags, self.name)
        meta = {"source": src.name, "source_type": self.name, "pitr": src.pitr,
                "database": src.single_database, "databases": src.databases, "all": src.all}
        if src.pitr:
            note_server_id(src, meta)
        with mariadb.client_options(src) as opts:
            return [run_dump(session, mariadb.dump_command(src, opts), child_environment(), src.name,
                             "dump.sql", MARIADB_DUMP, meta, tags, _dump_finish)]

    # ----- binlog rules -----------------------------------------------------------------------------
    def base_of(self, snap: Snapshot, segment_size: int) -> RecoveryBase | None:
        seq = mariadb.binlog_seq(snap.meta.get("binlog_file", ""))
        if seq is None:
            return None
        return RecoveryBase(snap, seq, 0, snap.time, seq - 1)

    def first_missing_name(self, gap: Gap, timeline: int, segment_size: int) -> str:
        if gap.missing:
            return gap.missing
        match = _STEM_RE.match(gap.before) or _STEM_RE.match(gap.after)
        if not match:
            return f"#{gap.first}"
        return f"{match.group(1)}.{gap.first:0{len(match.group(2))}d}"

    def chain_from(self, base: RecoveryBase, segments: list[Segment]) -> list[Segment]:
        """One server's binlogs by number, then by GTID onto another server's (``mariadb_gtid``)."""
        return gtid.chain_from(base.snapshot.meta, segments)

    def gaps_from(self, base: RecoveryBase | None, segments: list[Segment]) -> list[Gap]:
        if base is None:
            return []
        found = gtid.gap_after(base.snapshot.meta, self.chain_from(base, segments), segments)
        return [found] if found else []

    def reachable(self, when: datetime, reach: datetime, inclusive: bool) -> bool:
        return when <= reach

    def needed(self, chain: list[Segment], when: datetime | None) -> list[Segment]:
        if when is None:
            return chain
        for index, seg in enumerate(chain):
            if seg.newest_time >= when:
                return chain[:index + 1]
        return chain

    def immediate(self, chain: list[Segment], base: RecoveryBase) -> list[Segment]:
        return []  # a dump is consistent by itself

    def keep_from(self, base: RecoveryBase, segment_size: int) -> str:
        meta = base.snapshot.meta
        return gtid.archived_name(meta.get("server_id"), str(meta.get("binlog_file", "")))

    def resolve_target(self, target: Any, timeline: int | None, segments: list[Segment],
                       segment_size: int) -> Any:
        """LSNs, transaction ids, restore points and timelines are PostgreSQL's."""
        if target is not None or timeline is not None:
            raise UsageError("--target-lsn, --target-xid, --target-name and --timeline are for PostgreSQL "
                             "sources", hint="restore a MariaDB source with --point-in-time TIME or --latest")
        return None

    def base_precedes(self, base: RecoveryBase, position: Any) -> bool:
        return False  # resolve_target never gives a position

    def check_chain(self, source: str, chain: list[Segment], segments: list[Segment]) -> None:
        return None  # chain_from only links files that follow (by number, or by GTID across servers)

    def expiry_position(self, seg: Segment, base: RecoveryBase, segment_size: int) -> int | None:
        """Binlogs by number, only those of the base's own server and basename (others are not comparable:
        another server's files never expire here)."""
        if _stem(seg.name) != _stem(self.keep_from(base, segment_size)):
            return None
        return seg.seq

    def base_chain(self, base: Snapshot, snapshots: list[Snapshot]) -> list[Snapshot]:
        """A physical incremental and its ancestors back to the full (``mariadb_chain``)."""
        from drtool.databases.mariadb_chain import chain_of
        return chain_of(base, snapshots)

    def checks_chain_data(self, base: Snapshot) -> bool:
        """Physical bases: a chain's members are extracted and prepared one after another, so a pack
        lost from the last one would otherwise be found after all the others were extracted."""
        return base.kind == "mariadb-physical"

    # ----- restore ----------------------------------------------------------------------------------
    def restore(self, session: Session, settings: Settings, plan: PitrPlan, src: mariadb.MariaSource,
                request: RestoreRequest) -> PitrResult:
        kind = plan.base.snapshot.kind
        if kind == "mariadb-mydumper":
            from drtool.databases.mariadb_mydumper import restore_mydumper
            return restore_mydumper(session, plan, src, request)
        if request.table:
            raise UsageError(f"--table needs a mydumper snapshot (method = \"mydumper\"); the base of this "
                             f"restore, {plan.base.snapshot.short_id}, is a {kind}",
                             hint="restore the database into a new one (--target-db) and copy the table from it")
        if kind != MARIADB_DUMP:
            from drtool.databases.mariadb_physical import restore_physical
            return restore_physical(session, plan, src, request)
        return restore_dump(session, plan, src, target_db=request.target_db, target_dir=request.target,
                            start=request.start, port=request.port)


MARIADB = MariadbEngine()


def note_server_id(src: mariadb.MariaSource, meta: dict[str, Any]) -> None:
    """Record ``@@server_id``: it names the archived binlog a base's coordinates point into.

    Best effort: without it the chain starts from the base's GTID position,
    which is as exact; a backup must not fail over this one lookup.  A server
    that cannot be reached at all is not this lookup's problem: the backup
    stops at once with that one line (the dump tool would fail the same way,
    after a misleading warning about the server id).
    """
    try:
        meta["server_id"] = mariadb.server_id(src)
    except mariadb.ServerUnreachable:
        raise
    except (SourceError, ValueError, IndexError) as exc:
        log.warning("source %s: server id not recorded (%s); binlog replay will start by GTID", src.name, exc)


def _stem(name: str) -> str:
    match = _STEM_RE.match(name)
    return match.group(1) if match else name


def _dump_finish(tap: StreamTap, meta: dict[str, Any]) -> None:
    if not mariadb.dump_is_complete(bytes(tap.tail)):
        raise SourceError(f"the mariadb dump of {meta['source']} has no '-- Dump completed' line: it "
                          f"was cut short; no snapshot was written")
    coords = mariadb.parse_dump_coordinates(bytes(tap.head))
    if meta.get("pitr") and "binlog_file" not in coords:
        raise SourceError(f"the mariadb dump of {meta['source']} carries no binlog coordinates",
                          hint="enable log_bin on the server, or set pitr = false for this source")
    meta.update(coords)


def binlog_stop_time(when: datetime, inclusive: bool) -> datetime:
    """``--stop-datetime`` is exclusive and whole seconds: inclusive means the next second."""
    whole = when.replace(microsecond=0)
    if inclusive:
        return whole + timedelta(seconds=1)
    return whole if when.microsecond == 0 else whole + timedelta(seconds=math.ceil(when.microsecond / 1e6))


# ----- restoring a dump and replaying binlogs --------------------------------------------------------------
def restore_dump(session: Session, plan: PitrPlan, src: mariadb.MariaSource, *, target_db: str | None,
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
        create_database(server, database, fresh=instance is not None)
        with session.lock("restore", read_only_ok=True):
            session.repo.load_index()
            snap = plan.base.snapshot
            with stages.stage(f"loading the dump {snap.short_id}", stream_bytes(snap)) as step:
                pipe_into_client(server, database, step.counted(stream_chunks(session.repo, snap)), "dump load")
            reached = replay_binlogs(session, plan, server, single, database)
    finally:
        if instance is not None and not start:
            instance.stop()
    result = PitrResult(plan, instance.root if instance else None, target_db=database,
                        started=start and instance is not None, socket=instance.socket if instance else None,
                        reached=reached or "the dump's consistent point (no binlog replayed)")
    if result.started:
        result.notes.append(f"MariaDB instance running on socket {result.socket}")
    return result


def create_database(server: mariadb.MariaSource, database: str | None, fresh: bool) -> None:
    if database is None:
        return
    if not fresh and mariadb.database_exists(server, database):
        raise RestoreTargetError(f"database {database} already exists on the target server",
                                 hint="choose a new --target-db (or drop the old one first)")
    mariadb.run_sql(server, f"CREATE DATABASE IF NOT EXISTS {mariadb.quote_ident(database)}")


def pipe_into_client(server: mariadb.MariaSource, database: str | None, chunks: Iterator[bytes],
                     what: str) -> None:
    with mariadb.client_options(server) as opts:
        cmd = mariadb.client_command(server, opts, database, extra=["--binary-mode", "--max-allowed-packet=1G"])
        code, errors = feed_stdin(cmd, chunks)
    if code != 0:
        raise RestoreTargetError(f"{what} into {database or 'the server'} failed (mariadb exit {code}): "
                                 f"{errors or '(no message)'}")


def replay_binlogs(session: Session, plan: PitrPlan, server: mariadb.MariaSource, single: str | None,
                    database: str | None, table: str | None = None) -> str | None:
    """Replay the planned binlogs; return what was verifiably reached.

    One ``mariadb-binlog`` per run of one server's consecutive files (the
    first from the base's byte position, a run reached across a switchover
    from the chain's GTID position), all into one client session.
    """
    if not plan.segments:
        return None
    progress = mariadb.ReplayProgress()
    stop = binlog_stop_time(plan.target_time, plan.inclusive) if plan.target_time else None
    with tempfile.TemporaryDirectory(prefix="drtool-replay-") as work:
        commands = []
        for run, start in gtid.replay_runs(plan.base.snapshot.meta, plan.segments):
            files = []
            for seg in run:  # a binlog that cannot be fetched fails the restore, never shortens it
                path = os.path.join(work, seg.name)
                with open(path, "wb") as handle:
                    handle.write(fetch_segment(session.repo, BINLOG, plan.source, seg.name))
                files.append(path)
            commands.append(mariadb.replay_command(files, start, stop, single, database, server.bindir, table))
        failures: list[str] = []
        with stages.stage(f"replaying {len(plan.segments)} binlog file(s)") as step:
            try:
                pipe_into_client(server, database, _replay_stream(commands, progress, failures, step),
                                 "binlog replay")
            finally:
                if failures:  # the reader's failure is the cause; the client's error on the cut stream is not
                    raise RestoreTargetError(failures[0])
    return verify_replay(plan, progress, stop)


def _replay_stream(commands: list[list[str]], progress: mariadb.ReplayProgress,
                   failures: list[str], step: stages.Stage | None = None) -> Iterator[bytes]:
    """The SQL of each ``mariadb-binlog`` in turn, noted by ``progress`` on its way to the client.

    A failed reader ends the stream (noted in ``failures``) rather than
    raising inside the client's feeding loop, which would leave it waiting.
    """
    for cmd in commands:
        producer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, env=child_environment({"TZ": "UTC"}))
        assert producer.stdout is not None and producer.stderr is not None
        errors = StderrTail(producer.stderr)
        try:
            for chunk in iter(lambda: producer.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
                progress.feed(chunk)
                if step is not None:
                    step.advance(len(chunk))
                    if progress.last_time is not None:
                        step.note(f"events up to {progress.last_time:%Y-%m-%d %H:%M:%S} UTC")
                yield chunk
        finally:
            if producer.poll() is None:
                producer.stdout.close()
            code = producer.wait()
        if code != 0:
            failures.append(f"mariadb-binlog failed (exit {code}): {errors.text()}")
            return


def verify_replay(plan: PitrPlan, progress: mariadb.ReplayProgress, stop: datetime | None) -> str:
    """Every planned binlog event before ``stop`` went through the replay, or RecoveryShort.

    A file whose events all precede the stop time must have been read to its
    last event (its recorded end position); a file with any event before it
    must have been started.  --latest therefore ends at the last archived event.
    """
    seen = progress.file_end_pos
    for index, seg in enumerate(plan.segments):
        end = int(seg.end_pos or 0)
        must_finish = stop is None or (seg.last_time is not None and seg.last_time < stop)
        must_start = stop is None or seg.first_time is None or seg.first_time < stop
        reached = seen[index] if index < len(seen) else None
        if must_start and reached is None:
            raise RecoveryShort(f"binlog replay never reached {seg.name} (read {len(seen)} of "
                                f"{len(plan.segments)} planned file(s))")
        if must_finish and end and reached is not None and reached < end:
            raise RecoveryShort(f"binlog replay stopped in {seg.name} at position {reached}, before its last "
                                f"event at {end}")
    last = progress.last_time.isoformat() if progress.last_time else "none"
    if stop is None:
        return f"all archived binlog events replayed (last event {last}, {plan.segments[-1].name})"
    return f"binlog events before {stop.isoformat()} replayed (last event {last})"
