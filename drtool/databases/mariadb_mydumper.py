"""MariaDB parallel logical backups with mydumper / myloader (``method = "mydumper"``).

A backup runs ``mydumper`` into a private scratch directory and stores that
directory as a snapshot *tree* (kind ``mariadb-mydumper``), one file per
table (or per chunk of one), not as one stream: a table that did not change
overnight is written byte for byte as before, so its chunks deduplicate and
night 2 stores only the tables that changed.  The snapshot is written only
after mydumper exited 0 and its ``metadata`` says ``Finished dump at``; the
binlog coordinates in it make the snapshot a recovery base like a dump's.

A restore writes the snapshot's files (all, or with ``--table DB.TABLE`` just
that table's and its database's) into a scratch directory and loads them with
``myloader --threads N`` into a new database (``--target-db``) or a fresh
instance (``--target DIR``), then replays binlogs as after a dump (one table:
``mariadb-binlog --table``, row events of that table only).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING, Any

from drtool.childenv import child_environment
from drtool.core import stages
from drtool.databases.planner import PitrPlan, PitrResult
from drtool.errors import RestoreTargetError, SourceError, UsageError
from drtool.snapshot.model import FILE
from drtool.snapshot.store import walk_tree
from drtool.sources import mariadb, mydumper

if TYPE_CHECKING:
    from drtool.backup.run import BackupResult
    from drtool.core.session import Session
    from drtool.databases.engine import RestoreRequest
    from drtool.snapshot.model import Snapshot

log = logging.getLogger("drtool")
MARIADB_MYDUMPER = "mariadb-mydumper"
DUMP_DIR = "dump"  # the snapshot's one top-level directory: a stable name, so trees compare between nights
DUMP_TIMEOUT = 24 * 3600
READ_BATCH = 256


def backup_mydumper(session: Session, src: mariadb.MariaSource, tags: list[str], engine: str) -> list[BackupResult]:
    """mydumper into scratch space, then that directory as one snapshot tree."""
    from drtool.backup.run import backup_paths
    meta: dict[str, Any] = {"source": src.name, "source_type": engine, "method": "mydumper", "pitr": src.pitr,
                            "database": src.single_database, "databases": src.databases, "all": src.all,
                            "threads": src.threads}
    if src.pitr:
        from drtool.databases.mariadb import note_server_id
        note_server_id(src, meta)
    with tempfile.TemporaryDirectory(prefix="drtool-mydumper-") as work:
        outdir = os.path.join(work, DUMP_DIR)
        started = time.monotonic()
        with mariadb.client_options(src) as opts:
            _run(mydumper.dump_command(src, opts, outdir, src.threads), f"mydumper for {src.name}", SourceError)
        meta.update(_finished(src, outdir))
        meta["dump_seconds"] = round(time.monotonic() - started, 3)
        return [backup_paths(session, [outdir], src.name, tags, kind=MARIADB_MYDUMPER, meta=meta)]


def _finished(src: mariadb.MariaSource, outdir: str) -> dict[str, Any]:
    """The dump's coordinates and tables; a dump without its closing line never becomes a snapshot."""
    try:
        with open(os.path.join(outdir, mydumper.METADATA), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        text = ""
    if mydumper.FINISHED not in text:
        raise SourceError(f"the mydumper dump of {src.name} has no '{mydumper.FINISHED}' line in its metadata: "
                          f"it was cut short; no snapshot was written")
    coords = mydumper.parse_metadata(text)
    if src.pitr and "binlog_file" not in coords:
        raise SourceError(f"the mydumper dump of {src.name} carries no binlog coordinates",
                          hint="enable log_bin on the server, or set pitr = false for this source")
    names = os.listdir(outdir)
    coords["tables"] = mydumper.tables_of(names)
    coords["dump_bytes"] = sum(os.path.getsize(os.path.join(outdir, n)) for n in names)
    return coords


def _run(cmd: list[str], what: str, error: type[Exception]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
                          env=child_environment(), timeout=DUMP_TIMEOUT)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise error(f"{what} failed (exit {proc.returncode}): {tail or '(no message)'}")


# ----- restore ----------------------------------------------------------------------------------------
def parse_table(value: str) -> tuple[str, str]:
    database, dot, table = value.partition(".")
    if not dot or not database or not table or "/" in value:
        raise UsageError(f"--table {value!r} is not DB.TABLE", hint="name the table with its database: wiki.page")
    return database, table


def restore_mydumper(session: Session, plan: PitrPlan, src: mariadb.MariaSource,
                     request: RestoreRequest) -> PitrResult:
    """Load the snapshot's files with myloader, then replay binlogs to the plan's target."""
    from drtool.databases.mariadb import create_database, replay_binlogs
    meta = plan.base.snapshot.meta
    table = parse_table(request.table) if request.table else None
    if table is not None and f"{table[0]}.{table[1]}" not in meta.get("tables", []):
        raise UsageError(f"snapshot {plan.base.snapshot.short_id} holds no table {request.table}",
                         hint=f"it holds: {', '.join(meta.get('tables', [])[:20]) or 'no tables'}")
    single = table[0] if table else meta.get("database")
    if request.target is None and not request.target_db:
        raise UsageError("give --target-db NAME (a new database on the source's server) or "
                         "--target DIR (a fresh MariaDB instance)")
    if request.target_db and not single:
        raise UsageError("--target-db needs a single-database snapshot (or --table DB.TABLE); this one holds "
                         "several databases", hint="restore it into a fresh instance with --target DIR")
    instance = mariadb.Instance(request.target, request.port, src.bindir) if request.target else None
    server = src
    if instance is not None:
        instance.install()
        instance.start()
        server = instance.source(src.name)
    database = request.target_db or single
    try:
        if request.target_db:
            create_database(server, request.target_db, fresh=instance is not None)
        with session.lock("restore", read_only_ok=True):
            session.repo.load_index()
            _load(session, plan.base.snapshot, server, src.threads, table, request.target_db)
            reached = replay_binlogs(session, plan, server, single, database, table=table[1] if table else None)
    finally:
        if instance is not None and not request.start:
            instance.stop()
    result = PitrResult(plan, instance.root if instance else None, target_db=database,
                        started=request.start and instance is not None,
                        socket=instance.socket if instance else None,
                        reached=reached or "the snapshot's consistent point (no binlog replayed)")
    if table is not None:
        result.notes.append(f"restored table {table[0]}.{table[1]} only, into {database}")
    if result.started:
        result.notes.append(f"MariaDB instance running on socket {result.socket}")
    return result


def _load(session: Session, snap: Snapshot, server: mariadb.MariaSource, threads: int,
          table: tuple[str, str] | None, target_db: str | None) -> None:
    """Write the wanted files into scratch space and load them with myloader."""
    with tempfile.TemporaryDirectory(prefix="drtool-myloader-") as work:
        folder = os.path.join(work, DUMP_DIR)
        os.makedirs(folder, mode=0o700)
        count = _materialise(session, snap, folder, table)
        with stages.stage(f"loading {count} file(s) with myloader ({threads} thread(s))"), \
                mariadb.client_options(server) as opts:
            _run(mydumper.load_command(server, opts, folder, threads, target_db, binlog=target_db is not None),
                 "myloader", RestoreTargetError)
        shutil.rmtree(folder, ignore_errors=True)


def _materialise(session: Session, snap: Snapshot, folder: str, table: tuple[str, str] | None) -> int:
    """The snapshot's dump files (one table's with ``table``) under ``folder``; blobs verified on read."""
    files = {path.split("/", 1)[1]: node for path, node in walk_tree(session.repo, snap.tree)
             if node.type == FILE and path.startswith(DUMP_DIR + "/") and path.count("/") == 1}
    wanted = mydumper.table_files(list(files), *table) if table else list(files)
    total = sum(files[name].size or 0 for name in wanted)
    with stages.stage(f"fetching {len(wanted)} file(s) of snapshot {snap.short_id}", total or None) as step:
        for name in wanted:
            ids = [bytes.fromhex(blob) for blob in files[name].content]
            with open(os.path.join(folder, name), "wb") as handle:
                for start in range(0, len(ids), READ_BATCH):  # neighbouring blobs of a pack in one ranged read
                    for view in step.counted(session.repo.read_blobs(ids[start:start + READ_BATCH])):
                        handle.write(view)
    return len(wanted)
