"""init, backup, snapshots, restore, check: thin wrappers over drtool.api."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, emit, tune_malloc_for_backup
from drtool.cli.options import dry_run_option, json_option, name_option, tag_option
from drtool.cli.progress import byte_progress, walk_progress
from drtool.crypto.keys import KdfParams
from drtool.monitor.notify import log_backup_summary
from drtool.errors import DrtoolError, PartialSuccess, UsageError
from drtool.restore.target import DEFAULT_POLICY, POLICIES
from drtool.snapshot.names import display
from drtool.snapshot.timeparse import parse_point_in_time

pass_state = click.make_pass_decorator(CliState)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@click.command()
@click.option("--kdf-memory-kib", type=int, default=None, hidden=True)
@click.option("--kdf-iterations", type=int, default=None, hidden=True)
@json_option
@pass_state
def init(state: CliState, kdf_memory_kib: int | None, kdf_iterations: int | None, as_json: bool) -> None:
    """Create a new encrypted repository."""
    kdf = None
    if kdf_memory_kib or kdf_iterations:
        base = KdfParams()
        kdf = KdfParams(kdf_memory_kib or base.memory_kib, kdf_iterations or base.iterations,
                        1 if kdf_memory_kib and kdf_memory_kib < 8192 else base.lanes)
    repo = state.repository()
    repo_id = api.init(repo, state.passphrase(confirm=True), catalog=state.settings.catalog, kdf=kdf,
                       backend_options=state.settings.backend_options)
    emit({"repository": repo, "id": repo_id}, as_json,
         f"created repository {repo_id[:8]} at {repo}\n"
         "Keep the passphrase safe: without it the backups cannot be read.")


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--name", metavar="NAME", help="Snapshot series name (e.g. db/wiki).")
@click.option("--from-command", "command", metavar="CMD",
              help="Back up this command's stdout as one file (e.g. 'pg_dump wiki').")
@click.option("--filename", metavar="NAME", help="File name for --from-command output.")
@click.option("--source", metavar="NAME", help="Back up the configured [sources.NAME].")
@click.option("--all", "all_sources", is_flag=True, help="Back up every configured source.")
@tag_option
@json_option
@pass_state
def backup(state: CliState, paths: tuple[str, ...], name: str | None, command: str | None,
           filename: str | None, source: str | None, all_sources: bool, tags: tuple[str, ...],
           as_json: bool) -> None:
    """Back up PATHs (or a command's output, or configured sources) as new snapshots."""
    if source or all_sources:
        if paths or command or name:
            raise UsageError("--source/--all take no PATH, --from-command or --name")
        from drtool.cli.commands_db import run_source_backup
        return run_source_backup(state, source, all_sources, list(tags), as_json)
    if not name:
        raise UsageError("--name is required (or use --source NAME / --all)")
    if bool(paths) == bool(command):
        raise UsageError("give either PATH... or --from-command CMD")
    tune_malloc_for_backup()
    state.run_name = name
    session = state.session(defer_catalog=True)  # local repositories: opened while the data is read
    if command:
        result = api.backup_command(session, command, name, filename, list(tags))
    else:
        with walk_progress(f"backing up {name}") as progress:
            result = api.backup(session, list(paths), name, list(tags), progress)
    log_backup_summary(result)
    snap = result.snapshot
    s = snap.summary
    emit(result.as_dict(), as_json,
         f"snapshot {snap.short_id} saved ({display(snap.name)}): {s['files']} files, {_mib(s['size'])}, "
         f"{s.get('files_unchanged', 0)} unchanged, added {_mib(s['bytes_added'])} "
         f"in {s['duration']:.1f}s")
    for line in result.changed:
        click.echo(f"drtool: warning: {line} changed while it was read", err=True)
    if result.unreadable:
        for line in result.unreadable:
            click.echo(f"drtool: warning: unreadable: {line}", err=True)
        raise PartialSuccess(f"snapshot {snap.short_id} saved, but {len(result.unreadable)} "
                             f"item(s) could not be read", hint="see the warnings above")


@click.command()
@name_option
@json_option
@pass_state
def snapshots(state: CliState, name: str | None, as_json: bool) -> None:
    """List snapshots, oldest first."""
    session = state.session()
    snaps = api.snapshots(session, name)
    for line in session.rollback.warnings() if session.rollback else []:
        click.echo(f"drtool: warning: {line}; run 'drtool check'", err=True)
    if as_json:
        emit([s.listing() for s in snaps], True)
        return
    click.echo(f"{'ID':8}  {'TIME':25}  {'NAME':20}  {'HOST':12}  {'FILES':>7}  {'SIZE':>11}  TAGS")
    for s in snaps:
        item = s.listing()
        when = s.time.astimezone().isoformat(timespec="seconds")
        click.echo(f"{s.short_id:8}  {when:25}  {display(s.name):20}  {display(s.host)[:12]:12}  "
                   f"{item['files']:>7}  {_mib(item['size']):>11}  {','.join(map(display, s.tags))}")
    click.echo(f"{len(snaps)} snapshot(s)")


@click.command()
@click.argument("snapshot", required=False)
@click.option("--target", type=click.Path(file_okay=False), help="Directory to restore into.")
@name_option
@click.option("--point-in-time", "when", metavar="TIME",
              help="Newest snapshot at or before TIME (ISO 8601; local zone if none).")
@click.option("--include", "includes", multiple=True, metavar="PATH", help="Restore only this path.")
@click.option("--allow-partial", is_flag=True, help="Restore what is intact; exit 3 listing the rest.")
@click.option("--overwrite", type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
              help="Existing files that differ: keep them and exit 3 (never), replace older ones "
                   "(if-newer), replace unless size and mtime match (if-changed), or replace (always).")
@click.option("--source", metavar="NAME", help="Database source: point-in-time restore (see docs/databases.md).")
@click.option("--latest", is_flag=True, help="With --source: replay every archived log.")
@click.option("--exclusive", is_flag=True, help="With --source: stop just before TIME.")
@click.option("--start", is_flag=True, help="With --source: start the restored server and wait for recovery.")
@click.option("--port", type=int, help="With --source: port for the restored server.")
@click.option("--target-db", metavar="DB", help="With a MariaDB --source: load into this new database.")
@dry_run_option
@json_option
@pass_state
def restore(state: CliState, snapshot: str | None, target: str | None, name: str | None, when: str | None,
            includes: tuple[str, ...], allow_partial: bool, overwrite: str, source: str | None, latest: bool,
            exclusive: bool, start: bool, port: int | None, target_db: str | None, dry_run: bool,
            as_json: bool) -> None:
    """Restore SNAPSHOT (an id, or 'latest') or the snapshot at --point-in-time into --target."""
    if source:
        if name or includes or allow_partial or overwrite != DEFAULT_POLICY:
            raise UsageError("--source takes no --name, --include, --allow-partial or --overwrite")
        from drtool.cli.commands_db import run_source_restore
        return run_source_restore(state, source, target, when, latest, exclusive, start, port,
                                  target_db, dry_run, as_json, snapshot)
    if latest or exclusive or start or port or target_db:
        raise UsageError("--latest, --exclusive, --start, --port and --target-db need --source")
    if not target:
        raise UsageError("--target is required")
    if snapshot is not None and not snapshot.strip():
        raise UsageError("an empty snapshot id was given",
                         hint="give a snapshot id, 'latest', or --point-in-time TIME")
    if snapshot and when is not None:
        raise UsageError("give either SNAPSHOT or --point-in-time, not both")
    if snapshot is None and when is None:
        raise UsageError("which snapshot? give a snapshot id, 'latest', or --point-in-time TIME")
    point = parse_point_in_time(when) if when is not None else None
    session = state.session(defer_catalog=True)  # local repositories: snapshot and index from the repository
    # 'latest' may not be the newest backup if one vanished: the catalog's memory says, at the end
    # (a local restore only reads an SQLite catalog; it never creates one or takes its index from it).
    newest = snapshot == "latest" or point is not None
    if dry_run:
        result = api.restore_plan(session, snapshot, target, name=name, point_in_time=point,
                                  includes=list(includes), overwrite=overwrite)
    else:
        pick = api.pick_snapshot(session, snapshot, name, point)
        if not as_json:
            click.echo(f"restoring snapshot {pick.short_id} ({display(pick.name)}, "
                       f"{pick.time.astimezone().isoformat()}) to {target}", err=True)
        with byte_progress("restoring", pick.summary.get("size")) as progress:
            result = api.restore(session, pick.id, target, includes=list(includes),
                                 allow_partial=allow_partial, progress=progress, overwrite=overwrite)
    if newest:
        warn_vanished(session)
    _report_restore(result, as_json)


def warn_vanished(session: api.Session) -> None:
    """Snapshots the catalog saw committed that are gone: 'latest' may not be the newest backup."""
    try:
        report = session.rollback_report()
    except DrtoolError as exc:  # the memory is advice here: never fail a finished restore over it
        click.echo(f"drtool: warning: could not compare with the catalog's memory: {exc.one_line()}", err=True)
        return
    for line in report.warnings():
        click.echo(f"drtool: warning: {line}; run 'drtool check'", err=True)


def _report_restore(result: api._restore.RestoreResult, as_json: bool) -> None:
    snap = result.snapshot
    verb = "would restore" if result.plan_only else "restored"
    emit(result.as_dict(), as_json,
         f"{verb} snapshot {snap.short_id} ({display(snap.name)}, {snap.time.astimezone().isoformat()}): "
         f"{result.files} files, {result.dirs} dirs, {_mib(result.bytes)}"
         + (f" from {result.packs} pack(s)" if result.plan_only else "")
         + f" to {result.target}"
         + (f"; {result.files_skipped_existing} file(s) already there unchanged"
            if result.files_skipped_existing else ""))
    if not as_json and result.plan_only and result.warm and (result.warm["packs_to_warm"]
                                                             or result.warm["packs_warming"]):
        click.echo(_warm_line(result.warm))
    if not as_json:
        would = "would be " if result.plan_only else ""
        for line in result.overwritten:
            click.echo(f"{would}overwritten: {line}", err=not result.plan_only)
        _more(result.overwritten_count - len(result.overwritten), not result.plan_only)
        for line in result.not_overwritten:
            click.echo(f"{'would be ' if result.plan_only else ''}left as it is (differs from the snapshot, "
                       f"--overwrite {result.overwrite}): {line}", err=not result.plan_only)
        _more(result.not_overwritten_count - len(result.not_overwritten), not result.plan_only)
    for line in result.skipped:
        click.echo(f"drtool: warning: skipped {line}", err=True)
    problems = []
    if result.damaged:
        for line in result.damaged:
            click.echo(f"drtool: damaged, not restored: {line}", err=True)
        problems.append(f"{len(result.damaged)} file(s) were damaged and not restored")
    if result.not_overwritten_count and not result.plan_only:
        problems.append(f"{result.not_overwritten_count} existing item(s) differ from the snapshot and were "
                        f"left as they are (--overwrite {result.overwrite})")
    if problems:
        hint = ("re-run with --overwrite always to replace them (--dry-run lists them first)"
                if result.not_overwritten_count else None)
        raise PartialSuccess("; ".join(problems), hint=hint)


def _warm_line(warm: dict) -> str:  # type: ignore[type-arg]
    """--dry-run on packs in an archive class: what must be warmed first, how long, roughly what cost."""
    which = "tree packs (the data packs are known once these are readable)" if warm["scope"] == "trees" \
        else "packs"
    return (f"must warm first: {warm['packs_to_warm']} {which}, {warm['packs_warming']} already warming, "
            f"{_mib(int(warm['bytes']))}; {warm['tier']} tier, typically {warm['estimated_hours']} h, "
            f"about ${warm['estimated_cost_usd']:.2f} (list prices)")


def _more(count: int, err: bool) -> None:
    if count > 0:
        click.echo(f"... and {count} more (the JSON output lists the first {api._restore.LIST_LIMIT})", err=err)


@click.command()
@click.option("--read-data", is_flag=True, help="Download and verify every pack.")
@click.option("--read-data-subset", type=click.FloatRange(0, 100, min_open=True), metavar="PERCENT",
              help="Download and verify this percentage of packs (random).")
@json_option
@pass_state
def check(state: CliState, read_data: bool, read_data_subset: float | None, as_json: bool) -> None:
    """Verify the repository's structure (and data with --read-data)."""
    fraction = 1.0 if read_data else (read_data_subset or 0.0) / 100
    report = api.check(state.session(), fraction)
    lines = [f"checked {report.snapshots} snapshot(s), {report.packs} pack(s); "
             f"read {report.packs_read} pack(s), {report.blobs_read} blob(s)"]
    lines += [f"warning: {w}" for w in report.warnings] if state.verbose else []
    lines += [f"error: {e}" for e in report.errors]
    lines.append("no errors found" if report.ok else f"{len(report.errors)} error(s) found")
    emit(report.as_dict(), as_json, "\n".join(lines))
    if not report.ok:
        from drtool.errors import IntegrityError
        raise IntegrityError(f"check found {len(report.errors)} error(s); damaged objects: "
                             f"{', '.join(report.damaged_objects[:5]) or 'see above'}",
                             hint="restore affected data from another copy; see docs/operations.md")


def register(group: click.Group) -> None:
    for command in (init, backup, snapshots, restore, check):
        group.add_command(command)
