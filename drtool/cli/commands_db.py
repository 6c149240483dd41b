"""``drtool pg …`` and ``drtool mariadb …``: log archiving and recovery windows.

Also the ``--source`` / ``--all`` branches of ``backup`` and ``restore``
(called from commands_core), so database options stay out of that module.
Thin: parsing and printing only, the work is in drtool.ops.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

import click

from drtool.cli.context import CliState, command_line, emit
from drtool.cli.options import json_option
from drtool.errors import DrtoolError, SourceError, UsageError
# The use cases are imported where used: wal-push / wal-fetch run once per WAL file, and
# databases / sources_run pull in the catalog (SQLAlchemy), logarchive the repository layer,
# which an asynchronous wal-push (it only waits for the worker) does not need at all.

pass_state = click.make_pass_decorator(CliState)
log = logging.getLogger("drtool")
source_option = click.option("--source", "source", required=True, envvar="DRTOOL_SOURCE", metavar="NAME",
                             help="Source name (the [sources.NAME] table; also DRTOOL_SOURCE).")


WAL_TIMEOUT = 120.0
BINLOG_TIMEOUT = 900.0
timeout_option = click.option(
    "--timeout", "timeout", metavar="DURATION", default=None,
    help="Give up after this long (default: log_timeout of the source's table, else 120s for WAL, "
         "15m for binlog-push): a hung run must not block the database's archiver forever.")


def _timeout_seconds(state: CliState, source: str, value: str | None, default: float = WAL_TIMEOUT) -> float:
    from drtool.snapshot.timeparse import parse_duration
    text = value or _source_table(state, source).get("log_timeout")
    if not text:
        return default
    seconds = parse_duration(str(text)).total_seconds()
    if seconds <= 0:
        raise UsageError(f"--timeout must be positive, not {text!r}")
    return seconds


@contextmanager
def deadline(seconds: float, what: str, exit_code: int) -> Iterator[None]:
    """End the process with ``exit_code`` if the block runs longer than ``seconds``.

    A thread, not a signal: a hang inside C code (a stalled socket, a key
    derivation) never returns to the interpreter to run a signal handler.
    Exiting hard is safe here: every object is put atomically (a killed push
    leaves at most a temporary file that prune removes), and the archiver
    retries a failed push.
    """
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(seconds):
            sys.stderr.write(f"drtool: error: {what} did not finish within {seconds:g}s; giving up "
                             f"(the database retries; see --timeout)\n")
            sys.stderr.flush()
            os._exit(exit_code)

    thread = threading.Thread(target=watchdog, name="deadline", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def _source_table(state: CliState, source: str) -> dict[str, Any]:
    table = state.settings.section("sources").get(source, {})
    return table if isinstance(table, dict) else {}


@click.group("pg")
def pg_group() -> None:
    """PostgreSQL: WAL archiving for point-in-time restore."""


@pg_group.command("wal-push")
@source_option
@timeout_option
@click.option("--async", "use_async", is_flag=True,
              help="Wait for the archive worker instead of storing the file here (also: archive_async = true "
                   "in the source's table).")
@click.argument("path", type=click.Path(dir_okay=False))
@pass_state
def wal_push(state: CliState, source: str, timeout: str | None, use_async: bool, path: str) -> None:
    """Archive one WAL file (archive_command = 'drtool pg wal-push --source NAME %p').

    Exit 0 only once the file is stored; re-pushing identical content is a
    success, different content under the same name is an error.  With
    asynchronous archiving a long-lived worker stores the files and this
    command only waits for its verdict on PATH (no key derivation per file).
    """
    table = _source_table(state, source)
    seconds = _timeout_seconds(state, source, timeout)
    if use_async or table.get("archive_async"):
        from drtool.databases import archive_async
        spool = archive_async.Spool.open(table.get("spool_dir"), source)
        status = archive_async.push_async(spool, path, seconds,
                                          lambda: _spawn_worker(state, source, os.path.dirname(os.path.abspath(path)),
                                                                spool.log_path))
        log.info("%s %s (asynchronous)", status, os.path.basename(path))
        return
    from drtool.databases import logarchive
    with deadline(seconds, f"wal-push of {os.path.basename(path)}", 1):
        repo = state.repository_only()
        try:
            result = logarchive.wal_push(repo, source, path, table.get("bindir"))
        finally:
            repo.close()
    log.info("%s %s (%d bytes)", result.status, result.name, result.size)


def _spawn_worker(state: CliState, source: str, wal_dir: str, log_path: str) -> None:
    """Start ``drtool pg archive-worker`` detached: its own session, no inherited descriptors."""
    import subprocess
    from drtool.databases.archive_async import trim_log
    env = dict(os.environ)
    if state.settings.path:
        env["DRTOOL_CONFIG"] = os.path.abspath(state.settings.path)
    if state.repo_option:
        env["DRTOOL_REPOSITORY"] = state.repo_option
    trim_log(log_path)
    with open(log_path, "ab") as log_file:
        subprocess.Popen([sys.executable, "-m", "drtool", "--log-format", "json", "pg", "archive-worker",
                          "--source", source, "--wal-dir", wal_dir], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True, close_fds=True,
                         cwd="/")


@pg_group.command("archive-worker", hidden=True)
@source_option
@click.option("--wal-dir", required=True, type=click.Path(file_okay=False),
              help="The server's pg_wal directory (its archive_status/ names the ready files).")
@pass_state
def archive_worker(state: CliState, source: str, wal_dir: str) -> None:
    """Store every ready WAL file ahead of archive_command (started by wal-push with archive_async)."""
    from drtool.databases import logarchive
    from drtool.databases import archive_async
    table = _source_table(state, source)
    spool = archive_async.Spool.open(table.get("spool_dir"), source)
    if spool.worker_running():
        return
    try:
        repo = state.repository_only()
    except DrtoolError as exc:  # reported by the waiting archive_command, then retried by PostgreSQL
        spool.fail_worker(exc.one_line())
        raise
    try:
        stored = archive_async.run_worker(
            spool, wal_dir, lambda path: logarchive.wal_push(repo, source, path, table.get("bindir")),
            parallel=int(table.get("archive_parallel", archive_async.DEFAULT_PARALLEL)))
    finally:
        repo.close()
    log.info("archive worker for %s exits after storing %d file(s)", source, stored)


@pg_group.command("wal-fetch")
@source_option
@timeout_option
@click.option("--absent-exit-code", type=click.IntRange(1, 125), default=1, show_default=True,
              help="Exit status for 'this file is not archived' (every other failure exits 126).")
@click.argument("name")
@click.argument("dest", type=click.Path(dir_okay=False))
@pass_state
def wal_fetch(state: CliState, source: str, timeout: str | None, absent_exit_code: int, name: str,
              dest: str) -> None:
    """Restore one archived WAL file (restore_command: ... wal-fetch --source NAME %f %p).

    Exit 1 only when the repository was read and the file is not in it
    (PostgreSQL then ends recovery); every other failure (key, network,
    lock, damaged object, timeout, internal error) exits 126, which
    PostgreSQL treats as fatal instead of promoting early with missing WAL.
    """
    from drtool.databases import logarchive
    try:
        with deadline(_timeout_seconds(state, source, timeout), f"wal-fetch of {name}",
                      logarchive.FetchFailed.exit_code):
            repo = state.repository_only()
            try:
                logarchive.wal_fetch(repo, source, name, dest)
            finally:
                repo.close()
    except logarchive.SegmentNotArchived as exc:
        exc.exit_code = absent_exit_code
        raise
    except DrtoolError as exc:
        raise logarchive.FetchFailed(exc.one_line()) from None
    except Exception as exc:  # anything unexpected must stop recovery, not end it
        raise logarchive.FetchFailed(f"internal error: {type(exc).__name__}: {exc}") from None


def _print_window(window: Any, as_json: bool) -> None:
    lines = [f"source {window.source} ({window.kind}): {window.bases} base(s), {window.segments} archived file(s)"]
    if window.intervals:
        lines += [f"recoverable: {a.astimezone().isoformat()} .. {b.astimezone().isoformat()}"
                  for a, b in window.intervals]
    else:
        lines.append("recoverable: nothing yet (no base with its logs)")
    lines += [f"gap: {g['count']} file(s) missing from {g['first_missing']} (after {g['after']})"
              for g in window.gaps]
    emit(window.as_dict(), as_json, "\n".join(lines))


@pg_group.command("window")
@source_option
@json_option
@pass_state
def pg_window(state: CliState, source: str, as_json: bool) -> None:
    """Show the recoverable window and WAL gaps of a source."""
    from drtool.databases.engine import engine_named
    from drtool.databases.planner import recoverable_window
    _print_window(recoverable_window(state.session(), source, engine_named("postgresql")), as_json)


@click.group("mariadb")
def mariadb_group() -> None:
    """MariaDB: binlog archiving for point-in-time restore."""


@mariadb_group.command("binlog-push")
@source_option
@timeout_option
@json_option
@pass_state
def binlog_push(state: CliState, source: str, timeout: str | None, as_json: bool) -> None:
    """Archive every closed binlog of the source not yet in the repository (run it often)."""
    from drtool.databases import logarchive
    from drtool.backup import configured as sources_run
    from drtool.databases.engine import source_engines
    src = sources_run.get_source(state.settings, source, source_engines())
    if sources_run.source_type(src, source_engines()) != "mariadb":
        raise UsageError(f"source {source} is not a mariadb source")
    with deadline(_timeout_seconds(state, source, timeout, BINLOG_TIMEOUT), f"binlog-push of source {source}", 1):
        repo = state.repository_only()
        try:
            results = logarchive.binlog_push(repo, src)  # type: ignore[arg-type]
        finally:
            repo.close()
    stored = [r for r in results if r.status == "stored"]
    emit([r.as_dict() for r in results], as_json,
         f"{len(stored)} binlog(s) archived, {len(results) - len(stored)} already archived"
         + "".join(f"\n  {r.name} ({r.size} bytes)" for r in stored))


@mariadb_group.command("window")
@source_option
@json_option
@pass_state
def mariadb_window(state: CliState, source: str, as_json: bool) -> None:
    """Show the recoverable window and binlog gaps of a source."""
    from drtool.databases.engine import engine_named
    from drtool.databases.planner import recoverable_window
    _print_window(recoverable_window(state.session(), source, engine_named("mariadb")), as_json)


# ----- backup / restore --source (dispatched from commands_core) ---------------------------------
def run_source_backup(state: CliState, source: str | None, all_sources: bool, tags: list[str],
                      as_json: bool) -> None:
    from drtool.backup import configured as sources_run
    if source and all_sources:
        raise UsageError("give either --source NAME or --all")
    from drtool.databases.engine import source_engines
    run = sources_run.backup_sources(state.session(), state.settings, None if all_sources else [source or ""],
                                     tags, source_engines())
    lines = []
    for name, results in run.results.items():
        for result in results:
            snap, s = result.snapshot, result.snapshot.summary
            ratio = s["bytes_added_raw"] / s["size"] if s.get("size") else 0.0
            lines.append(f"{name}: snapshot {snap.short_id} ({snap.name}, {snap.kind}) "
                         f"{s['size'] / 2**20:.1f} MiB, new {s['bytes_added_raw'] / 2**20:.1f} MiB "
                         f"({ratio:.0%}), stored {s['bytes_added'] / 2**20:.1f} MiB")
    emit(run.as_dict(), as_json, "\n".join(lines) if lines else None)
    for name, message in run.failures.items():
        click.echo(f"drtool: error: source {name}: {message}", err=True)
    if run.failures:
        raise SourceError(f"{len(run.failures)} of {len(run.failures) + len(run.results)} source(s) failed: "
                          f"{', '.join(run.failures)}")


def run_source_restore(state: CliState, source: str, target: str | None, when: str | None, latest: bool,
                       exclusive: bool, start: bool, port: int | None, target_db: str | None,
                       dry_run: bool, as_json: bool, snapshot: str | None = None, *,
                       target_lsn: str | None = None, target_xid: str | None = None,
                       target_name: str | None = None, timeline: int | None = None) -> None:
    from drtool import api
    from drtool.databases import planner
    from drtool.databases.engine import RestoreRequest
    from drtool.backup import configured as sources_run
    from drtool.snapshot.timeparse import parse_point_in_time
    recovery_target = api.databases.recovery_target(target_lsn, target_xid, target_name)
    if recovery_target is not None and (when or latest or exclusive and recovery_target.kind == "name"):
        raise UsageError("--target-lsn/--target-xid/--target-name take no --point-in-time or --latest"
                         + (" (and a restore point takes no --exclusive)" if exclusive else ""))
    if recovery_target is None and (bool(when) + latest + bool(snapshot)) != 1:
        raise UsageError("give one of SNAPSHOT, --point-in-time TIME, --latest, --target-lsn, --target-xid "
                         "or --target-name with --source")
    from drtool.databases.engine import source_engines
    src = sources_run.get_source(state.settings, source, source_engines())
    if isinstance(src, (sources_run.FilesSource, sources_run.CommandSource)):
        raise UsageError(f"source {source} is a {sources_run.source_type(src, source_engines())} source",
                         hint=f"use 'drtool restore --name {source} --point-in-time TIME --target DIR'")
    point: datetime | None = parse_point_in_time(when) if when else None
    session = state.session()
    if dry_run:
        plan = planner.plan_from_config(session, src, point, not exclusive, snapshot, recovery_target, timeline)
        emit(plan.as_dict(), as_json, "\n".join(["plan (dry run, nothing restored):", *plan.lines()]))
        return
    request = RestoreRequest(target=target, target_db=target_db, start=start, port=port,
                             command_line=command_line())
    result = planner.restore_pitr(session, state.settings, src, point, request, inclusive=not exclusive,
                                  snapshot=snapshot, target=recovery_target, timeline=timeline)
    emit(result.as_dict(), as_json, "\n".join([*result.plan.lines(), *result.lines()]))


def register(group: click.Group) -> None:
    from drtool.cli.commands import pg_restore_point
    pg_restore_point.add_to(pg_group)
    group.add_command(pg_group)
    group.add_command(mariadb_group)
