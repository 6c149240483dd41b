"""PostgreSQL as a database engine: base backups, WAL rules, restore with verified replay.

PostgreSQL replays WAL itself: drtool unpacks the base backup, writes
``recovery.signal`` plus ``restore_command`` (a wrapper script around
``drtool pg wal-fetch``) and the recovery target, and optionally starts the
server, waits for promotion and reads the server's own log to verify that
replay reached what was planned.  PostgreSQL stops *before* the first commit
later than the target, so a target is reachable only if a later commit is
archived; planning checks that instead of letting the server fail with
"recovery ended before configured recovery target was reached".
"""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from drtool.childenv import child_environment
from drtool.databases import pg_tablespaces, wal_prefetch
from drtool.core import stages
from drtool.databases.engine import Labels, RestoreRequest, stream_bytes
from drtool.databases.planner import PitrPlan, PitrResult, RecoveryPointUnreachable, RecoveryShort
from drtool.databases.targets import RecoveryTarget, TargetPosition
from drtool.databases.tree_writer import empty_directory, sync_restored, write_error
from drtool.errors import ProgramFailed, SnapshotNotFound, SourceError, UsageError
from drtool.snapshot.logwindow import WAL, Gap, RecoveryBase, Segment, contiguous_run, find_gaps
from drtool.snapshot.model import Snapshot
from drtool.snapshot.streamread import read_stream
from drtool.sources import postgres

if TYPE_CHECKING:
    from drtool.config import Settings
    from drtool.repository.repo import Repository
    from drtool.backup.run import BackupResult
    from drtool.core.session import Session
    from drtool.backup.streams import StreamTap

PG_BASE = "pg-base"
PG_DUMP = "pg-dump"
PG_GLOBALS = "pg-globals"
START_TIMEOUT = 600.0


class PostgresEngine:
    name = "postgresql"
    log_kind = WAL
    base_kind = PG_BASE
    base_kinds = (PG_BASE,)
    labels = Labels(base="base backup", log_file="WAL segment", event="transaction",
                    archive_more="pg_switch_wal / archive_timeout")

    # ----- configuration and backup -----------------------------------------------------------
    def owns(self, src: Any) -> bool:
        return isinstance(src, postgres.PgSource)

    def source_from_config(self, name: str, table: dict[str, Any]) -> postgres.PgSource:
        return postgres.PgSource.from_config(name, table)

    def check_pitr_source(self, src: postgres.PgSource) -> None:
        if src.method != "basebackup":
            raise UsageError(f"source {src.name} makes pg_dump dumps (method = \"dump\"): point-in-time "
                             f"restore needs method = \"basebackup\" and WAL archiving",
                             hint=f"restore the dump file with 'drtool restore latest --name {src.name} "
                                  f"--target DIR'")

    def backup(self, session: Session, src: postgres.PgSource, tags: list[str],
               full: bool = False) -> list[BackupResult]:
        """A base backup (``method = "basebackup"``), or pg_dump per database plus globals.

        Every one is full already (``full``: ``--full``, meaningful for MariaDB's incremental nights)."""
        base_meta = {"source": src.name, "source_type": self.name}
        with postgres.credentials_env(src) as env:
            if src.method == "basebackup":
                return [self._base_backup(session, src, env, dict(base_meta, method="basebackup"), tags)]
            results: list[BackupResult] = []
            try:
                return self._dumps(session, src, env, base_meta, tags, results)
            except ProgramFailed as exc:
                raise postgres.dump_failure(src, exc, stored=[r.snapshot.name for r in results]) from None

    def _dumps(self, session: Session, src: postgres.PgSource, env: dict[str, str], base_meta: dict[str, Any],
               tags: list[str], results: list[BackupResult]) -> list[BackupResult]:
        """pg_dump per database (custom format), plus pg_dumpall's globals with ``all``; each one's
        result appended to ``results`` as it is stored."""
        from drtool.backup.streams import run_dump
        databases = [src.dbname] if src.dbname and not src.all and not src.databases else src.databases
        if src.all:
            results.append(run_dump(session, postgres.globals_command(src), env, f"{src.name}/globals",
                                    "globals.sql", PG_GLOBALS, dict(base_meta), tags))
            databases = _list_databases(src, env)
        for database, snap_name in src.snapshot_names(databases).items():
            meta = dict(base_meta, database=database, format="custom")
            results.append(run_dump(session, postgres.dump_command(src, database), env, snap_name,
                                    f"{database}.dump", PG_DUMP, meta, tags))
        return results

    def _base_backup(self, session: Session, src: postgres.PgSource, env: dict[str, str], meta: dict[str, Any],
                     tags: list[str]) -> BackupResult:
        from drtool.backup.streams import binary_streams, run_dump
        label = f"drtool {src.name} {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
        spaces = pg_tablespaces.list_tablespaces(src, env)
        with binary_streams(session):
            if spaces:  # pg_basebackup writes one tar per tablespace, not one stream
                return pg_tablespaces.backup_with_tablespaces(session, src, env, label, meta, tags, spaces, PG_BASE)
            return run_dump(session, postgres.basebackup_command(src, label), env, src.name, "base.tar",
                            PG_BASE, meta, tags, _basebackup_finish)

    # ----- WAL rules ------------------------------------------------------------------------------
    def base_of(self, snap: Snapshot, segment_size: int) -> RecoveryBase | None:
        meta = snap.meta
        if "start_lsn" not in meta:
            return None
        start = postgres.parse_lsn(meta["start_lsn"]) // segment_size
        required = postgres.parse_lsn(meta["end_lsn"]) // segment_size if meta.get("end_lsn") else start
        consistent = datetime.fromisoformat(meta["end_time"]) if meta.get("end_time") else snap.time
        return RecoveryBase(snap, start, int(meta.get("timeline", 1)), consistent, required)

    def first_missing_name(self, gap: Gap, timeline: int, segment_size: int) -> str:
        return postgres.segment_name(timeline, gap.first, segment_size)

    def chain_from(self, base: RecoveryBase, segments: list[Segment]) -> list[Segment]:
        """WAL segments by number from the base's start, the highest timeline per number."""
        return contiguous_run(segments, base.start_seq, base.timeline)

    def gaps_from(self, base: RecoveryBase | None, segments: list[Segment]) -> list[Gap]:
        return find_gaps(segments, base.start_seq if base is not None else None)

    def reachable(self, when: datetime, reach: datetime, inclusive: bool) -> bool:
        """Recovery stops before the first commit after the target: an inclusive target needs one."""
        return when < reach if inclusive else when <= reach

    def needed(self, chain: list[Segment], when: datetime | None) -> list[Segment]:
        if when is None:
            return chain
        for index, seg in enumerate(chain):
            if seg.last_time is not None and seg.last_time > when:
                return chain[:index + 1]
        return chain

    def immediate(self, chain: list[Segment], base: RecoveryBase) -> list[Segment]:
        """recovery_target = 'immediate' replays only the WAL the base backup itself needs."""
        return [seg for seg in chain if (seg.seq or 0) <= base.required_seq]

    def keep_from(self, base: RecoveryBase, segment_size: int) -> str:
        return postgres.segment_name(base.timeline, base.start_seq, segment_size)

    # ----- other recovery targets (drtool.databases.targets) --------------------------------------
    def resolve_target(self, target: RecoveryTarget | None, timeline: int | None, segments: list[Segment],
                       segment_size: int) -> TargetPosition | None:
        """Where an LSN, a committed transaction or a recorded restore point lies in the archive."""
        if target is None:
            return None
        if target.kind == "lsn":
            try:
                lsn = postgres.parse_lsn(target.value)
            except ValueError:
                raise UsageError(f"--target-lsn {target.value!r} is not an LSN",
                                 hint="write it as PostgreSQL prints it, e.g. 0/3000148") from None
            return TargetPosition(lsn // segment_size, lsn, "given")
        if target.kind == "name":
            return _restore_point_position(target.value, segments, segment_size)
        return _xid_position(target.value, segments, segment_size)

    def check_chain(self, source: str, chain: list[Segment], segments: list[Segment]) -> None:
        """Recovery follows a later timeline only through its archived ``.history`` file.

        A copy promoted with archiving off never archives its history file:
        without it PostgreSQL stays on the old timeline and ends early.
        """
        timelines = sorted({s.timeline for s in chain if s.timeline})
        histories = {s.timeline for s in segments
                     if (s.extra.get("file") or postgres.wal_file_kind(s.name)) == "history"}
        missing = [t for t in timelines[1:] if t not in histories]
        if missing:
            name = f"{missing[0]:08X}.history"
            raise RecoveryPointUnreachable(
                f"WAL of timeline {missing[0]} of source {source} is archived, but its history file {name} "
                f"is not: recovery cannot follow that timeline",
                hint=f"archive it (drtool pg wal-push --source {source} $PGDATA/pg_wal/{name} on the server of "
                     f"that timeline), or restore along an older one with --timeline {timelines[0]}")

    def base_precedes(self, base: RecoveryBase, position: TargetPosition) -> bool:
        """The base was consistent (its end LSN) at or before the target."""
        end = base.snapshot.meta.get("end_lsn")
        if end:
            return postgres.parse_lsn(end) <= position.position
        return base.required_seq < position.seq

    def expiry_position(self, seg: Segment, base: RecoveryBase, segment_size: int) -> int | None:
        """Segments by number; .backup and .partial files by the segment they belong to; restore
        points by the segment they are in; .history files never expire."""
        file_kind = seg.extra.get("file") or postgres.wal_file_kind(seg.name)
        if file_kind == "segment":
            return seg.seq
        if file_kind in ("backup", "partial"):
            parsed = postgres.parse_segment(seg.name[:24], segment_size)
            return parsed[1] if parsed else None
        if file_kind == "restore-point" and seg.start_pos:
            return postgres.parse_lsn(seg.start_pos) // segment_size
        return None

    # ----- restore ----------------------------------------------------------------------------------
    def base_chain(self, base: Snapshot, snapshots: list[Snapshot]) -> list[Snapshot]:
        return [base]  # every base backup is whole

    def checks_chain_data(self, base: Snapshot) -> bool:
        return False  # one base, read from its first pack on: a lost pack stops the restore as it reads

    def restore(self, session: Session, settings: Settings, plan: PitrPlan, src: postgres.PgSource,
                request: RestoreRequest) -> PitrResult:
        refuse_root(request.command_line)
        if not request.target:
            raise UsageError("PostgreSQL restore needs --target DIR (the new data directory)")
        if request.target_db or request.table:
            raise UsageError("--target-db and --table are for MariaDB sources")
        return restore_datadir(session, plan, src, request.target, fetch_env=fetch_environment(settings),
                               start=request.start, port=request.port, tablespace_map=request.tablespace_map)


POSTGRESQL = PostgresEngine()


def create_restore_point(repo: Repository, src: postgres.PgSource, name: str) -> dict[str, Any]:
    """``pg_create_restore_point`` on the source's server, then record it beside its WAL.

    The WAL file is switched so the point reaches the archive at once (the
    planner needs that file archived before a restore can stop there).
    """
    from drtool.databases.logarchive import record_restore_point
    postgres.check_restore_point_name(name)
    with postgres.credentials_env(src) as env:
        proc = subprocess.run(postgres.restore_point_command(src, name), capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL, timeout=120, check=False)
    if proc.returncode != 0:
        raise SourceError(f"cannot create restore point {name!r} on source {src.name}: "
                          f"{' | '.join(proc.stderr.strip().splitlines()[-3:])}",
                          hint="the user needs superuser or EXECUTE on pg_create_restore_point and pg_switch_wal")
    point = postgres.parse_restore_point_output(proc.stdout)
    record_restore_point(repo, src.name, name, point)
    return dict(point, name=name, source=src.name)


def _restore_point_position(name: str, segments: list[Segment], segment_size: int) -> TargetPosition:
    for seg in segments:
        if seg.extra.get("file") == "restore-point" and seg.extra.get("restore_point") == name:
            lsn = postgres.parse_lsn(seg.start_pos or "0/0")
            return TargetPosition(lsn // segment_size, lsn, f"recorded {seg.first_time.isoformat() if seg.first_time else ''} "
                                                            f"at {seg.start_pos}".replace("  ", " "))
    raise SnapshotNotFound(f"restore point {name!r} is not recorded for this source",
                           hint="create restore points with 'drtool pg restore-point --source NAME POINT'; for "
                                "one made otherwise, name the base: 'drtool restore SNAPSHOT --source NAME "
                                "--target-name POINT …'")


def _xid_position(value: str, segments: list[Segment], segment_size: int) -> TargetPosition:
    """The first archived WAL file whose committed-transaction range holds ``value``."""
    if not value.isdigit() or int(value) < 3:
        raise UsageError(f"--target-xid {value!r} is not a transaction id", hint="give a number such as 745")
    xid = int(value)
    holding = sorted((s for s in segments if s.seq is not None and "xid_min" in s.extra
                      and s.extra["xid_min"] <= xid <= s.extra["xid_max"]), key=lambda s: s.seq or 0)
    if not holding:
        raise RecoveryPointUnreachable(
            f"no archived WAL file records a commit of transaction {xid}",
            hint="check the id (SELECT pg_current_xact_id() in the transaction, or pg_waldump), wait for its WAL "
                 "to be archived, or name the base: 'drtool restore SNAPSHOT --source NAME --target-xid …'")
    seg = holding[0]
    return TargetPosition(seg.seq or 0, (seg.seq or 0) * segment_size, f"committed in {seg.name}")


def _basebackup_finish(tap: StreamTap, meta: dict[str, Any]) -> None:
    label = postgres.backup_label_from_tar_head(bytes(tap.head))
    if label is None:
        raise SourceError(f"the base backup of {meta['source']} does not start with backup_label; "
                          f"no snapshot was written")
    meta.update(postgres.parse_backup_label(label))
    meta.update(postgres.wal_range_from_tail(bytes(tap.tail)))
    meta["end_time"] = datetime.now(timezone.utc).isoformat()


def _list_databases(src: postgres.PgSource, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(postgres.list_databases_command(src), capture_output=True, text=True,
                          env=child_environment(base=env), stdin=subprocess.DEVNULL, timeout=300, check=False)
    if proc.returncode != 0:
        raise postgres.client_failure(src, f"cannot list the databases of {src.name}", proc.stderr)
    return [line for line in proc.stdout.splitlines() if line]


# ----- restoring a data directory ------------------------------------------------------------------------
def refuse_root(command_line: str | None, os_user: str = "postgres") -> None:
    """Before anything is unpacked: PostgreSQL will not run as root, and root-owned files
    would need chown before it could.  Name the command that works."""
    if os.geteuid() != 0:
        return
    suggestion = f"runuser -u {os_user} -- {command_line}" if command_line else \
        f"runuser -u {os_user} -- drtool restore --source …"
    raise UsageError("PostgreSQL restores must run as the PostgreSQL OS user, not root (the server refuses "
                     "root and the files must belong to it)", hint=f"run: {suggestion}")


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


def socket_dir_for(target: str) -> str:
    """The restored server's own socket directory (never the production one).

    Unix socket paths are limited to 107 bytes (``.s.PGSQL.NNNNN`` included):
    a long target gets a private directory under /tmp instead -- /tmp itself,
    not $TMPDIR, which may be as long as the target.
    """
    if len(os.fsencode(target)) + len("/.s.PGSQL.65535") < 100:
        return target
    return tempfile.mkdtemp(prefix="drtool-pg-", dir="/tmp")


def free_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def restore_datadir(session: Session, plan: PitrPlan, src: postgres.PgSource, target: str, *,
                    fetch_env: dict[str, str], start: bool = False, port: int | None = None,
                    timeout: float = START_TIMEOUT, tablespace_map: dict[str, str] | None = None) -> PitrResult:
    """Unpack the base backup and configure recovery; with ``start``, run it to promotion and verify.

    Tablespaces go to their original locations or where ``tablespace_map``
    (OLD location, name or oid → NEW) puts them; each must be new or empty.
    """
    target = os.path.abspath(target)
    snap = plan.base.snapshot
    places = pg_tablespaces.locations(snap, tablespace_map or {})
    pg_tablespaces.check_locations(target, places)
    created = not os.path.exists(target)
    postgres.prepare_datadir(target)
    if start and port is None:
        port = free_port()  # never collide with the production server's 5432
    socket_dir = target
    try:
        members = _extract_base(session, snap, target, places)
        try:
            socket_dir = socket_dir_for(target)
            script = _configure_recovery(plan, target, places, fetch_env, port, socket_dir, start)
        except OSError as exc:  # one line naming the file, not an internal error
            raise write_error(exc.filename or target, exc) from None
        with stages.stage("syncing the restored files to disk") as step:  # with the recovery files
            step.note(f"{sum(sync_restored(root) for root in [target, *places.values()])} files and directories "
                      f"synced")
    except BaseException:
        for root in [target, *places.values()]:  # new or empty before: a half-unpacked copy must not
            empty_directory(root)                # pass for a restored one
        if created:
            with contextlib.suppress(OSError):  # never hide the error that brought us here
                os.rmdir(target)
        if socket_dir != target:  # the private socket directory made for it under /tmp
            with contextlib.suppress(OSError):
                os.rmdir(socket_dir)
        raise
    result = PitrResult(plan, target, members=members, script=script, port=port, socket_dir=socket_dir,
                        log_file=postgres.recovery_log(target))
    if not start:
        result.notes.append(f"start it with: pg_ctl -D {target} -l {result.log_file} start  (PostgreSQL replays "
                            f"WAL via {script}, then promotes; port {port or 'from its configuration'}, "
                            f"socket directory {socket_dir})")
        if plan.segments:
            result.notes.append(f"its first WAL fetch starts 'drtool pg wal-prefetch', which fetches the "
                                f"{len(plan.segments)} planned WAL file(s) ahead of it (log: "
                                f"{wal_prefetch.log_path(wal_prefetch.spool_dir(target))})")
        return result
    with stages.stage(f"recovery: PostgreSQL replays up to {len(plan.segments)} WAL file(s) and promotes") as step:
        with _prefetching(session, plan, target) as prefetch:
            result.outcome = postgres.start_and_wait(target, src.bindir, timeout)
        result.prefetch = {"planned": len(plan.segments), "fetched": prefetch.fetched, "taken": prefetch.taken,
                           "stopped": prefetch.failure or None}
        step.note(f"{prefetch.taken} of {len(plan.segments)} WAL file(s) fetched ahead by this restore"
                  + (f" (stopped: {prefetch.failure})" if prefetch.failure else ""))
    try:
        result.reached = verify_recovery(plan, result.outcome)
    except RecoveryShort as exc:
        postgres.stop_server(target, src.bindir)
        raise RecoveryShort(f"{exc} (server stopped; its log is {result.log_file})") from None
    result.started = True
    pg_ctl = postgres.find_binary("pg_ctl", src.bindir)
    result.notes.append(f"PostgreSQL running from {target}: port {port}, socket directory {socket_dir}; "
                        f"connect with: psql -h {socket_dir} -p {port} (stop: {pg_ctl} -D {target} stop)")
    result.notes.append(f"connection: {conninfo(host=socket_dir, port=str(port))}")
    return result


def _prefetching(session: Session, plan: PitrPlan, target: str) -> wal_prefetch.WalPrefetcher:
    """The planned WAL fetched ahead of the server while it replays (``wal_prefetch``)."""
    from drtool.databases.logarchive import fetch_segment
    files = [(seg.name, seg.size) for seg in plan.segments]
    return wal_prefetch.WalPrefetcher(lambda name: fetch_segment(session.repo, WAL, plan.source, name), files,
                                      wal_prefetch.spool_dir(target))


def _configure_recovery(plan: PitrPlan, target: str, places: dict[str, str], fetch_env: dict[str, str],
                        port: int | None, socket_dir: str, start: bool) -> str:
    """``tablespace_map``, the fetch script, the recovery settings and ``recovery.signal``; the
    script's path.  Without ``start``, the plan for the prefetch the server's first fetch starts."""
    if places:
        pg_tablespaces.write_tablespace_map(target, places)
    for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        if os.path.exists(os.path.join(target, stale)):
            os.unlink(os.path.join(target, stale))
    script = postgres.write_fetch_script(target, plan.source, fetch_env, sys.executable,
                                         spool=wal_prefetch.spool_dir(target))
    settings = postgres.recovery_settings(f"{shlex.quote(script)} %f %p", plan.target_time, plan.inclusive, port,
                                          socket_dir, immediate=plan.immediate,
                                          target=(plan.target.kind, plan.target.value) if plan.target else None,
                                          timeline=plan.timeline)
    postgres.write_recovery_files(target, settings)
    if not start and plan.segments:
        wal_prefetch.write_plan(wal_prefetch.spool_dir(target), [(seg.name, seg.size) for seg in plan.segments])
    return script


def _extract_base(session: Session, snap: Snapshot, target: str, places: dict[str, str]) -> int:
    """Unpack the base backup (and its tablespaces); the member count."""
    with session.lock("restore", read_only_ok=True):
        session.repo.load_index()
        base = pg_tablespaces.BASE_TAR if "tablespaces" in snap.meta else None
        with stages.stage(f"extracting the base backup {snap.short_id}",
                          None if base else stream_bytes(snap)) as step:
            members = extract_tar(session.repo, snap, base, target, step.counted)
        if snap.meta.get("tablespaces"):
            with stages.stage(f"extracting {len(snap.meta['tablespaces'])} tablespace(s)"):
                members += pg_tablespaces.extract_tablespaces(
                    places, lambda filename, place: extract_tar(session.repo, snap, filename, place))
    return members


def extract_tar(repo: Repository, snap: Snapshot, filename: str | None, target: str,
                counted: Callable[[Iterator[memoryview]], Iterator[memoryview]] = iter) -> int:
    """Write the stored tar ``filename`` of ``snap`` into ``target`` (:mod:`tar_extract`, in
    process, whole blocks around the page cache); the member count.  The stream is read here so
    that the reader holds each window as long as the writer may still be writing it."""
    from drtool.databases.tar_extract import LAG, TarWriter
    with TarWriter(target, f"snapshot {snap.short_id}", lag=LAG) as writer:
        writer.write_stream(counted(read_stream(repo, snap, filename, hold=writer.lag)))
        return writer.members


def conninfo(**params: str) -> str:
    """A libpq connection string (``host=... port=...``): what runbooks pass to psql as is, so
    nothing depends on PGHOST/PGPORT left over from production."""
    def quote(value: str) -> str:
        if value and not any(c in value for c in " '\\\t\n"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{key}={quote(value)}" for key, value in params.items())


def verify_recovery(plan: PitrPlan, outcome: dict[str, str]) -> str:
    """What PostgreSQL's own log says recovery reached; RecoveryShort if it fell short of the plan.

    A restore_command that reports "not archived" for a file that is (a
    failed fetch read as absence) makes PostgreSQL end recovery early and
    promote: for a time target it refuses ("recovery ended before configured
    recovery target was reached"), but for --latest nothing would notice.
    So --latest must have replayed the last archived commit and read into
    the last archived segment.
    """
    last = postgres.last_transaction_time(outcome)
    redo = postgres.redo_end_lsn(outcome)
    if plan.immediate:
        if "consistency" in outcome.get("stopped", ""):
            return "stopped at the consistent end of the base backup"
        raise RecoveryShort(f"recovery did not stop at the end of base backup {plan.base.snapshot.short_id}: "
                            f"{outcome.get('stopped') or outcome.get('redo_done') or 'no recovery end logged'}")
    if plan.target is not None:
        return _verify_target(plan.target, outcome, last)
    if not plan.latest:
        if "stopped" not in outcome:
            raise RecoveryShort(f"recovery ended without reaching {plan.target_time.isoformat()} "  # type: ignore[union-attr]
                                f"(last replayed transaction: {last.isoformat() if last else 'none'})")
        return outcome["stopped"]
    expected = plan.last_archived_commit()
    if expected is not None and (last is None or last < expected):
        raise RecoveryShort(f"recovery ended at the transaction of {last.isoformat() if last else '(none)'}, "
                            f"but the archive holds transactions up to {expected.isoformat()}: "
                            f"the restored server is short of --latest")
    if plan.segments and plan.segments[-1].start_pos:
        needed = postgres.parse_lsn(plan.segments[-1].start_pos)
        if redo is None or redo < needed:
            raise RecoveryShort(f"recovery replayed WAL up to {postgres.format_lsn(redo) if redo else '(unknown)'}, "
                                f"short of the last archived segment {plan.segments[-1].name}")
    return (f"all archived WAL replayed (last transaction {last.isoformat() if last else 'none'}, "
            f"redo done at {postgres.format_lsn(redo) if redo is not None else 'unknown'})")


def _verify_target(target: RecoveryTarget, outcome: dict[str, str], last: datetime | None) -> str:
    """The log must say recovery stopped at *this* target (an LSN, transaction or restore point)."""
    stopped = outcome.get("stopped", "")
    expected = {"lsn": "WAL location", "xid": f"transaction {target.value},",
                "name": f'restore point "{target.value}"'}[target.kind]
    if expected not in stopped:
        raise RecoveryShort(f"recovery ended without reaching {target.describe()} "
                            f"({stopped or outcome.get('fatal') or 'no recovery stop logged'}; last replayed "
                            f"transaction: {last.isoformat() if last else 'none'})")
    return stopped
