"""``drtool pg``: WAL archiving (archive_command / restore_command) and recoverable windows.

The use cases are imported where used: wal-push / wal-fetch run once per
WAL file, and an asynchronous wal-push only talks to the spool
(``drtool.api.log_shipping``), so it must not pay for the repository or
catalog layers.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.dbsupport import (
    deadline,
    print_window,
    source_option,
    source_table,
    timeout_option,
    timeout_seconds,
)
from drtool.cli.options import json_option
from drtool.errors import DrtoolError

log = logging.getLogger("drtool")


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
    table = source_table(state, source)
    seconds = timeout_seconds(state, source, timeout)
    if use_async or table.get("archive_async"):
        from drtool.api import log_shipping
        spool = log_shipping.Spool.open(table.get("spool_dir"), source)
        status = log_shipping.push_async(spool, path, seconds,
                                          lambda: _spawn_worker(state, source, os.path.dirname(os.path.abspath(path)),
                                                                spool.log_path))
        log.info("%s %s (asynchronous)", status, os.path.basename(path))
        return
    from drtool.api import databases
    with deadline(seconds, f"wal-push of {os.path.basename(path)}", 1):
        repo = state.repository_only()
        try:
            result = databases.wal_push(repo, source, path, table.get("bindir"))
        finally:
            repo.close()
    log.info("%s %s (%d bytes)", result.status, result.name, result.size)


def _spawn_worker(state: CliState, source: str, wal_dir: str, log_path: str) -> None:
    _spawn_detached(state, ["pg", "archive-worker", "--source", source, "--wal-dir", wal_dir], log_path)


def _spawn_detached(state: CliState, args: list[str], log_path: str) -> None:
    """Start ``drtool ARGS`` detached: its own session, no inherited descriptors, this command's
    repository and configuration, its log (JSON lines) appended to ``log_path``."""
    import subprocess

    from drtool.api.log_shipping import trim_log
    env = dict(os.environ)
    if state.settings.path:
        env["DRTOOL_CONFIG"] = os.path.abspath(state.settings.path)
    if state.repo_option:
        env["DRTOOL_REPOSITORY"] = state.repo_option
    trim_log(log_path)
    with open(log_path, "ab") as log_file:
        subprocess.Popen([sys.executable, "-m", "drtool", "--log-format", "json", *args], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file,
                         start_new_session=True, close_fds=True, cwd="/")


@pg_group.command("archive-worker", hidden=True)
@source_option
@click.option("--wal-dir", required=True, type=click.Path(file_okay=False),
              help="The server's pg_wal directory (its archive_status/ names the ready files).")
@pass_state
def archive_worker(state: CliState, source: str, wal_dir: str) -> None:
    """Store every ready WAL file ahead of archive_command (started by wal-push with archive_async)."""
    from drtool.api import databases, log_shipping
    table = source_table(state, source)
    spool = log_shipping.Spool.open(table.get("spool_dir"), source)
    if spool.worker_running():
        return
    try:
        repo = state.repository_only()
    except DrtoolError as exc:  # reported by the waiting archive_command, then retried by PostgreSQL
        spool.fail_worker(exc.one_line())
        raise
    try:
        stored = log_shipping.run_worker(
            spool, wal_dir, lambda path: databases.wal_push(repo, source, path, table.get("bindir")),
            parallel=int(table.get("archive_parallel", log_shipping.DEFAULT_PARALLEL)))
    finally:
        repo.close()
    log.info("archive worker for %s exits after storing %d file(s)", source, stored)


@pg_group.command("wal-fetch")
@source_option
@timeout_option
@click.option("--absent-exit-code", type=click.IntRange(1, 125), default=1, show_default=True,
              help="Exit status for 'this file is not archived' (every other failure exits 126).")
@click.option("--spool", type=click.Path(file_okay=False),
              help="The restore's prefetch spool (drtool-wal-fetch.sh passes it): where a plan waits there, "
                   "start the process that fetches it ahead.")
@click.argument("name")
@click.argument("dest", type=click.Path(dir_okay=False))
@pass_state
def wal_fetch(state: CliState, source: str, timeout: str | None, absent_exit_code: int, spool: str | None,
              name: str, dest: str) -> None:
    """Restore one archived WAL file (restore_command: ... wal-fetch --source NAME %f %p).

    Exit 1 only when the repository was read and the file is not in it
    (PostgreSQL then ends recovery); every other failure (key, network,
    lock, damaged object, timeout, internal error) exits 126, which
    PostgreSQL treats as fatal instead of promoting early with missing WAL.
    """
    from drtool.api import databases
    if spool:
        _start_prefetch(state, source, spool)
    try:
        with deadline(timeout_seconds(state, source, timeout), f"wal-fetch of {name}",
                      databases.FetchFailed.exit_code):
            repo = state.repository_only()
            try:
                databases.wal_fetch(repo, source, name, dest)
            finally:
                repo.close()
    except databases.SegmentNotArchived as exc:
        exc.exit_code = absent_exit_code
        raise
    except DrtoolError as exc:
        raise databases.FetchFailed(exc.one_line()) from None
    except Exception as exc:  # anything unexpected must stop recovery, not end it
        raise databases.FetchFailed(f"internal error: {type(exc).__name__}: {exc}") from None


def _start_prefetch(state: CliState, source: str, spool: str) -> None:
    """Start ``drtool pg wal-prefetch`` detached where a restore without ``--start`` left a plan and
    nothing serves it yet (best effort: this fetch goes on either way)."""
    from drtool.api import databases
    try:
        if databases.wal_prefetch_wanted(spool, server_dir=os.getcwd()):  # PostgreSQL runs it in its data dir
            _spawn_detached(state, ["-v", "pg", "wal-prefetch", "--source", source, os.path.abspath(spool)],
                            databases.wal_prefetch_log(spool))
    except OSError as exc:
        log.info("cannot start the WAL prefetch: %s", exc)


@pg_group.command("wal-prefetch", hidden=True)
@source_option
@click.argument("spool", type=click.Path(file_okay=False))
@pass_state
def wal_prefetch(state: CliState, source: str, spool: str) -> None:
    """Fetch a restore's planned WAL ahead of the server (started by wal-fetch --spool)."""
    from drtool.api import databases
    if not databases.wal_prefetch_wanted(spool):
        return
    repo = state.repository_only()
    try:
        log.info("WAL prefetch for %s: %s", source, databases.wal_prefetch(repo, source, spool))
    finally:
        repo.close()


@pg_group.command("window")
@source_option
@json_option
@pass_state
def pg_window(state: CliState, source: str, as_json: bool) -> None:
    """Show the recoverable window and WAL gaps of a source."""
    from drtool.api.databases import engine_named, recoverable_window
    print_window(recoverable_window(state.session(), source, engine_named("postgresql")), as_json)


@pg_group.command("restore-point")
@source_option
@click.argument("name")
@json_option
@pass_state
def restore_point(state: CliState, source: str, name: str, as_json: bool) -> None:
    """Create restore point NAME on the source's server (pg_create_restore_point) and record it.

    The WAL file is switched so the point is archived at once; later,
    'drtool restore --source SOURCE --target-name NAME' starts from the newest
    base backup taken before it and stops there.  Names are unique per source.
    """
    from drtool.api import databases
    repo = state.repository_only()
    try:
        point = databases.create_restore_point(repo, state.settings, source, name)
    finally:
        repo.close()
    emit(point, as_json, f"restore point {name!r} of source {source} at {point['lsn']} "
                         f"(timeline {point['timeline']}, {point['time']}, WAL file {point['wal_file']})")


def register(group: click.Group) -> None:
    group.add_command(pg_group)
