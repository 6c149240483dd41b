"""MariaDB physical backups (mariabackup) as recovery bases: backup, restore, binlog replay.

``method = "physical"``: ``mariabackup --backup --stream=mbstream`` is stored
as it streams (``run_dump``: no temporary copy; the snapshot is written only
after mariabackup exited 0 and the stream's closing ``xtrabackup_info`` was
seen).  Its binlog coordinates make it a base like a dump's, so binlog
replay after it is the same as after a dump.  Restoring is: the prepare
tool's version checked against the backup's server *before* anything is
written, the stored stream extracted into ``DIR/data`` (in process, as
``mbstream -x`` would: :mod:`drtool.databases.mbstream_extract`),
``mariabackup --prepare``, then — when binlogs are to be replayed — a
private start with ``--skip-grant-tables`` and no networking (the copied
accounts have production's passwords, which drtool does not hold), replay,
stop; with ``--start`` the server is started normally for the operator.
Always with ``--skip-slave-start``: a copy of a replica must never start
replicating from production on its own.  Nights after the first are
incremental (``mariadb_chain``): a restore extracts the chain's members into
their own directories and applies each incremental onto the prepared full.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Iterator

from drtool.childenv import child_environment
from drtool.core import stages
from drtool.databases import mariadb_chain as chain
from drtool.databases import subpage_format
from drtool.databases.engine import stream_bytes
from drtool.databases.planner import PitrPlan, PitrResult
from drtool.databases.tree_writer import empty_directory, sync_restored
from drtool.errors import (DrtoolError, RestoreChainError, RestoreTargetError, SourceError, UsageError,
                           unusable_chain_hint)
from drtool.snapshot.streamread import read_stream
from drtool.sources import mariabackup, mariadb

if TYPE_CHECKING:
    from drtool.backup.run import BackupResult
    from drtool.snapshot.model import Snapshot
    from drtool.backup.streams import StreamTap
    from drtool.core.session import Session
    from drtool.databases.engine import RestoreRequest
    from drtool.databases.subpage_backup import SubpageNight
    from drtool.repository.repo import Repository

log = logging.getLogger("drtool")
MARIADB_PHYSICAL = "mariadb-physical"
PREPARE_TIMEOUT = 6 * 3600
REPLAY_PACKET = "1G"  # the server's maximum
COPY_ATTEMPTS = 3  # mariabackup runs per night when a copy's redo log stops short (ShortRedoCopy)


def backup_physical(session: Session, src: mariadb.MariaSource, tags: list[str], engine: str,
                    full: bool = False) -> list[BackupResult]:
    """Stream mariabackup of the whole server into one snapshot (``backup.mbstream``): full, or
    incremental to the previous physical snapshot (``mariadb_chain.choose``).

    A copy whose redo log stops short of its own checkpoint (``mariabackup.ShortRedoCopy``, a race
    inside mariabackup on a quiet server) could never be prepared: it is not stored, and the backup
    is taken again, up to :data:`COPY_ATTEMPTS` times."""
    datadir, replica = _server_facts(src)
    identity = server_identity(src, datadir)
    night = chain.choose(session.snapshots(src.name), identity, _current_lsn(src), src.full_every, full)
    log.info("source %s: physical backup %s", src.name, night.reason)
    meta: dict[str, Any] = {"source": src.name, "source_type": engine, "method": "physical", "pitr": src.pitr,
                            "replica": replica, "server_identity": identity, **night.meta()}
    if src.pitr:
        from drtool.databases.mariadb import note_server_id
        note_server_id(src, meta)
    for attempt in range(1, COPY_ATTEMPTS):
        try:
            return [_backup_once(session, src, night, _attempt_meta(meta, attempt), tags, datadir, replica)]
        except mariabackup.ShortRedoCopy as exc:
            log.warning("source %s: %s; taking the backup again (attempt %d of %d)", src.name, exc,
                        attempt + 1, COPY_ATTEMPTS)
    return [_backup_once(session, src, night, _attempt_meta(meta, COPY_ATTEMPTS), tags, datadir, replica)]


def _attempt_meta(meta: dict[str, Any], attempt: int) -> dict[str, Any]:
    """A fresh copy per run; a night that needed more than one says so (for monitoring)."""
    return {**meta, "copy_attempts": attempt} if attempt > 1 else dict(meta)


def _backup_once(session: Session, src: mariadb.MariaSource, night: chain.Night, meta: dict[str, Any],
                 tags: list[str], datadir: str, replica: bool) -> BackupResult:
    """One mariabackup run stored as tonight's snapshot; nothing is kept if it is refused."""
    from drtool.backup.streams import binary_streams, run_dump
    subpage = _subpage_night(session, src, night.parent)

    def finish(tap: StreamTap, meta: dict[str, Any]) -> None:
        if subpage is not None:
            subpage.finish(src.name, meta)
        _physical_finish(tap, meta)
    try:
        with mariadb.client_options(src) as opts, \
                tempfile.TemporaryDirectory(prefix="drtool-mariabackup-") as work, binary_streams(session):
            command = mariabackup.backup_command(src, opts, datadir, work, replica, incremental_lsn=night.lsn)
            result = run_dump(session, command, child_environment(), src.name, "backup.mbstream",
                              MARIADB_PHYSICAL, meta, tags, finish, rewrite=subpage.wrap if subpage else None)
    except BaseException:
        if subpage is not None:
            subpage.abort()
        raise
    if subpage is not None:
        subpage.commit(result.snapshot.id)
    return result


def _subpage_night(session: Session, src: mariadb.MariaSource, parent: Snapshot | None) -> SubpageNight | None:
    """Tonight's block map, or None (``subpage = false``, or no cache directory: the night is stored
    as mariabackup wrote it).  A parent with no map here (another host, a lost cache, a parent from
    before sub-page members) gives a night of whole pages that starts a new map."""
    from drtool.databases.blockmap import BlockMapStore
    from drtool.databases.subpage_backup import SubpageNight
    if not src.subpage:
        return None
    store = BlockMapStore.open(session.repo.config.repo_id, src.name)
    if store is None:
        log.warning("source %s: no writable cache directory for the block map; incrementals store whole "
                    "pages (set DRTOOL_CACHE_DIR)", src.name)
        return None
    try:
        return SubpageNight(store, parent.id if parent is not None else None)
    except OSError as exc:
        log.warning("source %s: the block map cannot be started in %s (%s); tonight is stored as mariabackup "
                    "writes it", src.name, store.base, exc.strerror or exc)
        return None


def _server_facts(src: mariadb.MariaSource) -> tuple[str, bool]:
    """The server's data directory (mariabackup reads its files) and whether it replicates."""
    rows = mariadb.run_sql(src, "SELECT @@datadir")
    datadir = rows[0][0] if rows and rows[0] else ""
    if not datadir:
        raise SourceError(f"source {src.name}: the server did not name its data directory")
    if not os.access(datadir, os.R_OK | os.X_OK):
        raise SourceError(f"source {src.name}: cannot read the data directory {datadir}",
                          hint="a physical backup runs on the database host as a user who can read it "
                               "(e.g. the mysql OS user)")
    replica = bool(mariadb.run_sql(src, "SHOW ALL SLAVES STATUS"))
    return datadir, replica


def server_identity(src: mariadb.MariaSource, datadir: str) -> dict[str, Any]:
    """What says tonight's server is the one a chain was taken from (``mariadb_chain.IDENTITY_KEYS``).

    The system tablespace's device and inode change when the data directory is
    re-cloned or restored, even under the same path, host and server id.
    """
    server_id, hostname, home, files = mariadb.run_sql(
        src, "SELECT @@server_id, @@hostname, IFNULL(@@innodb_data_home_dir, ''), @@innodb_data_file_path")[0]
    first = str(files).split(";")[0].split(":")[0]
    path = os.path.join(str(home) or datadir, first)
    try:
        info = os.stat(path)
        system = f"{info.st_dev}:{info.st_ino}"
    except OSError:
        system = f"unreadable {path}"  # the same string every night: identity by the other keys
    return {"server_id": int(server_id), "hostname": str(hostname), "datadir": os.path.normpath(datadir),
            "system_tablespace": system}


def _current_lsn(src: mariadb.MariaSource) -> int | None:
    rows = mariadb.run_sql(src, "SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")
    return int(rows[0][1]) if rows and len(rows[0]) > 1 and str(rows[0][1]).isdigit() else None


def _physical_finish(tap: StreamTap, meta: dict[str, Any]) -> None:
    renamed = chain.CHECKPOINTS_FILE + subpage_format.SUFFIX  # a sub-page incremental's (subpage_backup)
    wanted = (mariabackup.INFO_FILE, mariabackup.SLAVE_INFO_FILE, chain.CHECKPOINTS_FILE, renamed)
    files = mariabackup.stream_files(bytes(tap.tail), wanted)
    if renamed in files:
        files[chain.CHECKPOINTS_FILE] = files.pop(renamed)
    info = files.get(mariabackup.INFO_FILE)
    if info is None:
        raise SourceError(f"the mariabackup stream of {meta['source']} does not end with xtrabackup_info: it "
                          f"was cut short; no snapshot was written")
    meta.update(mariabackup.parse_backup_info(info.decode("utf-8", "replace")))
    if mariabackup.SLAVE_INFO_FILE in files:
        meta.update(mariabackup.parse_slave_info(files[mariabackup.SLAVE_INFO_FILE].decode("utf-8", "replace")))
    _check_lsns(meta, files.get(chain.CHECKPOINTS_FILE))
    if meta.get("pitr") and "binlog_file" not in meta:
        raise SourceError(f"the mariabackup stream of {meta['source']} carries no binlog coordinates",
                          hint="enable log_bin on the server, or set pitr = false for this source")


def _check_lsns(meta: dict[str, Any], checkpoints: bytes | None) -> None:
    """Record the LSNs the next night starts from; an incremental must start where its parent ended."""
    if checkpoints is None:
        raise SourceError(f"the mariabackup stream of {meta['source']} has no xtrabackup_checkpoints; "
                          f"no snapshot was written")
    meta.update(chain.parse_checkpoints(checkpoints.decode("utf-8", "replace")))
    want = "incremental" if meta.get(chain.PARENT) else "full"
    if meta.get("backup_type") != want or "to_lsn" not in meta:
        raise SourceError(f"mariabackup of {meta['source']} wrote a backup of type "
                          f"{meta.get('backup_type', 'unknown')} where {want} was asked for; no snapshot was written")
    mariabackup.check_redo_copied(meta)


def restore_physical(session: Session, plan: PitrPlan, src: mariadb.MariaSource,
                     request: RestoreRequest) -> PitrResult:
    """Extract, prepare, replay binlogs (if planned) and optionally start the restored server."""
    from drtool.databases.mariadb import replay_binlogs
    if request.target_db or not request.target:
        raise UsageError("a physical MariaDB backup restores a whole server: give --target DIR (not --target-db)")
    members = plan.chain or [plan.base.snapshot]
    tool = mariabackup.tool_version(src.bindir)
    for member in members:
        mariabackup.check_prepare_version(str(member.meta.get("server_version", "")), tool)
        subpage_format.check_readable(member.meta.get("subpage"), member.short_id)
    instance = mariadb.Instance(request.target, None, src.bindir)
    if os.path.exists(instance.root) and os.listdir(instance.root):
        raise RestoreTargetError(f"restore target {instance.root} is not empty",
                                 hint="choose a new --target for the restored MariaDB server")
    created = not os.path.exists(instance.root)
    try:
        mariadb.make_target_dir(instance.datadir)
        _extract_and_prepare(session, members, instance.root, instance.datadir, src.bindir)
    except BaseException:
        empty_directory(instance.root)  # a half-extracted or unprepared copy must not pass for a restored one
        if created:
            with contextlib.suppress(OSError):  # never hide the error that brought us here
                os.rmdir(instance.root)
        raise
    reached = "the backup's consistent point (no binlog replayed)"
    if plan.segments:
        # a transaction's row events come out of mariadb-binlog as one BINLOG statement: an
        # UPDATE of 125,000 rows is ~50 MB, past the 16 MiB default ("server has gone away")
        instance.start(extra=["--skip-grant-tables", "--skip-slave-start", f"--max-allowed-packet={REPLAY_PACKET}"])
        try:
            with session.lock("restore", read_only_ok=True):
                reached = replay_binlogs(session, plan, instance.source(src.name), None, None) or reached
        finally:
            instance.stop()
    result = PitrResult(plan, instance.root, socket=instance.socket, reached=reached)
    if request.start:
        instance.port = request.port
        instance.start(extra=["--skip-slave-start"], own_users=True)
        result.started, result.port = True, request.port
        result.notes.append(f"MariaDB running from {instance.datadir} on socket {instance.socket} with the "
                            f"backed-up server's accounts (stop: kill $(cat {instance.datadir}/mariadbd.pid))")
    else:
        result.notes.append(f"prepared data directory {instance.datadir}: start mariadbd --datadir on it")
    return result


def _extract_and_prepare(session: Session, members: list[Snapshot], root: str, datadir: str,
                         bindir: str | None) -> None:
    """The full into ``datadir``, each incremental into its own directory under ``root``; prepare the
    full, then apply each incremental onto it in order (its directory removed once applied)."""
    dirs = [datadir] + [os.path.join(root, f"incremental-{n}") for n in range(1, len(members))]
    with session.lock("restore", read_only_ok=True):
        session.repo.load_index()
        for number, (member, target) in enumerate(zip(members, dirs)):
            mariadb.make_target_dir(target)
            with stages.stage(f"extracting {_member_label(member, number, len(members))}",
                              stream_bytes(member)) as step:
                _extract(session.repo, member, target, direct=len(members) == 1, counted=step.counted)
    if any(member.meta.get("subpage") for member in members):
        from drtool.databases.subpage_restore import rebuild_chain
        with stages.stage(f"rebuilding the changed pages of {len(members) - 1} incremental(s)") as step:
            step.note(f"{rebuild_chain(datadir, dirs[1:])} page(s) rebuilt")
    with stages.stage(f"preparing the full {members[0].short_id} (mariabackup --prepare)"):
        _run(mariabackup.prepare_command(datadir, bindir), f"mariabackup --prepare of snapshot {members[0].short_id}",
             members[0])
    for number, (member, incremental) in enumerate(zip(members[1:], dirs[1:]), 1):
        with stages.stage(f"applying {_member_label(member, number, len(members))} (mariabackup --prepare)"):
            _run(mariabackup.prepare_command(datadir, bindir, incremental),
                 f"mariabackup --prepare of incremental snapshot {member.short_id}", member)
        shutil.rmtree(incremental)
    with stages.stage("syncing the restored files to disk") as step:
        step.note(f"{sync_restored(root)} files and directories synced")


def _member_label(member: Snapshot, number: int, count: int) -> str:
    if number == 0:
        return f"the full {member.short_id}" + (f" (1 of {count})" if count > 1 else "")
    return f"incremental {member.short_id} ({number + 1} of {count})"


def _extract(repo: Repository, member: Snapshot, target: str, direct: bool = False,
             counted: Callable[[Iterator[memoryview]], Iterator[memoryview]] = iter) -> None:
    """Write the member's stored mbstream into ``target`` (:mod:`mbstream_extract`, in process: what
    ``mbstream -x`` wrote, on more than one core); a member that cannot be read is named (the chain is
    broken there).  The stream is read here, so that the reader holds each window as long as the
    writer may still be writing it (``hold`` = ``lag``); ``counted``: the stage's byte count.

    ``direct``: around the page cache (``fdio.DirectWrites``), for a full restored alone: only the
    server reads its pages next, with O_DIRECT.  A chain's members stay in the page cache: the
    rebuild and ``--prepare --incremental-dir`` read the full's pages back at once (bench: with the
    full written around the cache, the rebuild read 112,000 pages from disk, 2.7 -> 6.0 s).
    """
    from drtool.databases.mbstream_extract import LAG, MbstreamWriter
    with MbstreamWriter(target, f"snapshot {member.short_id}", direct=direct, lag=LAG) as writer:
        writer.write_stream(_readable(counted(read_stream(repo, member, hold=writer.lag)), member))


def _readable(windows: Iterator[memoryview], member: Snapshot) -> Iterator[memoryview]:
    """``windows``, with a read that fails (a damaged or lost pack) said in one line naming ``member``."""
    try:
        yield from windows
    except DrtoolError as exc:
        raise RestoreChainError(f"snapshot {member.short_id} of the restore chain cannot be read: {exc}; "
                                f"nothing was restored", hint=_unusable_chain_hint(member)) from None


def _unusable_chain_hint(member: Snapshot) -> str:
    return unusable_chain_hint(str(member.meta.get("source") or member.name))


def _run(cmd: list[str], what: str, member: Snapshot) -> None:
    """A prepare step; its failure names mariabackup's error lines (its last lines are often
    the shutdown that follows) and what to do: the target's default hint ("free space ...;
    re-running restore resumes") is wrong here, the backup itself did not prepare."""
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
                          env=child_environment(), timeout=PREPARE_TIMEOUT)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        shown = [line for line in lines if "error" in line.lower()][-2:] or lines[-3:]
        raise RestoreChainError(f"{what} failed (exit {proc.returncode}): {' | '.join(shown)}; nothing was restored",
                                hint=_unusable_chain_hint(member))
