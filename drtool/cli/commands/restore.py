"""``drtool restore``: files from a snapshot, or a database to a point in time (``--source``).

The snapshot is picked here once and handed on; file restores go through
:class:`drtool.api.restoring.RestoreRequest`, database restores through
:class:`SourceRestore`, so no long positional argument lists cross the door.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import click

from drtool import api
from drtool.api import restoring
from drtool.api.restoring import DEFAULT_POLICY, POLICIES, RestoreRequest
from drtool.api.settings import display, in_utc_and_host, parse_point_in_time, zone_note
from drtool.cli.complete import snapshot_ids, source_names
from drtool.cli.context import CliState, command_line, emit, pass_state
from drtool.cli.options import dry_run_option, json_option, name_option, recovery_target_options
from drtool.cli.progress import byte_progress, restore_stages
from drtool.cli.values import mib
from drtool.errors import DrtoolError, PartialSuccess, UsageError

if TYPE_CHECKING:
    from drtool.api.objectstores import ObjectStoreSource


@click.command()
@click.argument("snapshot", required=False, shell_complete=snapshot_ids)
@click.option("--target", type=click.Path(file_okay=False), help="Directory to restore into.")
@name_option
@click.option("--point-in-time", "when", metavar="TIME",
              help="Newest snapshot at or before TIME (ISO 8601; local zone if none).")
@click.option("--include", "includes", multiple=True, metavar="PATH", help="Restore only this path.")
@click.option("--allow-partial", is_flag=True, help="Restore what is intact; exit 3 listing the rest.")
@click.option("--overwrite", type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
              help="Existing files that differ: keep them and exit 3 (never), replace older ones "
                   "(if-newer), replace unless size and mtime match (if-changed), or replace (always).")
@click.option("--source", metavar="NAME",
              help="Configured source: a database (point-in-time restore, docs/databases.md) or an object store.",
              shell_complete=source_names)
@click.option("--latest", is_flag=True, help="With --source: replay every archived log.")
@click.option("--exclusive", is_flag=True, help="With --source: stop just before TIME.")
@click.option("--start", is_flag=True, help="With --source: start the restored server and wait for recovery.")
@click.option("--port", type=int, help="With --source: port for the restored server.")
@click.option("--target-db", metavar="DB", help="With a MariaDB --source: load into this new database.")
@click.option("--table", metavar="DB.TABLE",
              help="With a MariaDB mydumper --source: restore this table only (docs/databases.md).")
@recovery_target_options
@click.option("--to-bucket", metavar="URL",
              help="With an object-store --source: put the objects under s3://BUCKET[/PREFIX] "
                   "(swift://CONTAINER[/PREFIX] for a swift source).")
@dry_run_option
@json_option
@pass_state
def restore(state: CliState, snapshot: str | None, target: str | None, name: str | None, when: str | None,
            includes: tuple[str, ...], allow_partial: bool, overwrite: str, source: str | None, latest: bool,
            exclusive: bool, start: bool, port: int | None, target_db: str | None, table: str | None,
            to_bucket: str | None,
            dry_run: bool, as_json: bool) -> None:
    """Restore SNAPSHOT (an id, or 'latest') or the snapshot at --point-in-time into --target.

    A snapshot set (SNAPSHOT 'set-...', or 'latest' with a --source that has shards = N)
    is restored whole: every shard into the same --target or --to-bucket URL."""
    sharded = _sharded(state, source)
    if sharded is not None or (snapshot or "").startswith("set-"):
        if when or name or latest or exclusive or start or port or target_db or table:
            raise UsageError("a snapshot set takes SNAPSHOT (set-ID or 'latest') with --target or --to-bucket; "
                             "no --point-in-time, --name or database options")
        return run_set_restore(state, SetRestore(snapshot or "latest", source, sharded, target, to_bucket,
                                                 list(includes), overwrite, allow_partial, dry_run, as_json))
    if source:
        from drtool.api import objectstores
        object_source = objectstores.object_source(state.settings, source)
        if object_source is not None:
            if name or latest or exclusive or start or port or target_db or table:
                raise UsageError("an object-store --source takes no --name, --latest, --exclusive, "
                                 "--start, --port, --target-db or --table")
            if to_bucket is None:  # into a directory: the ordinary file restore of the series NAME
                name, source = source, None
            else:
                return run_bucket_restore(state, object_source, to_bucket, snapshot, when, list(includes),
                                          dry_run, as_json, target)
    if to_bucket:
        raise UsageError("--to-bucket needs an object-store --source (its endpoint and credentials)")
    if source:
        if name or includes or allow_partial or overwrite != DEFAULT_POLICY:
            raise UsageError("--source takes no --name, --include, --allow-partial or --overwrite")
        request = SourceRestore(source=source, snapshot=snapshot, when=when, latest=latest,
                                inclusive=not exclusive, dry_run=dry_run, as_json=as_json,
                                target=target, target_db=target_db, start=start, port=port, table=table,
                                **click.get_current_context().meta.get("recovery_targets", {}))
        return run_source_restore(state, request)
    if latest or exclusive or start or port or target_db or table \
            or click.get_current_context().meta.get("recovery_targets"):
        raise UsageError("--latest, --exclusive, --start, --port, --target-db, --table, --target-* and --timeline "
                         "need --source")
    if not target:
        raise UsageError("--target is required")
    _restore_files(state, snapshot, name, _which_point(snapshot, when),
                   RestoreRequest(target, list(includes), overwrite, allow_partial=allow_partial, dry_run=dry_run),
                   as_json)


def _restore_files(state: CliState, snapshot: str | None, name: str | None, point: datetime | None,
                   request: RestoreRequest, as_json: bool) -> None:
    """The file restore: the snapshot picked once (by id, 'latest' or point in time) and handed on."""
    session = state.session(defer_catalog=True)  # local repositories: snapshot and index from the repository
    pick = api.pick_snapshot(session, snapshot, name, point)
    if request.dry_run:
        result = restoring.restore_snapshot(session, pick, request)
    else:
        if not as_json:
            if point is not None:
                click.echo(f"point in time: {in_utc_and_host(point)}", err=True)
            click.echo(f"restoring snapshot {pick.short_id} ({display(pick.name)}, taken "
                       f"{in_utc_and_host(pick.time)}) to {request.target}", err=True)
        with byte_progress("restoring", pick.summary.get("size")) as progress:
            request.progress = progress
            result = restoring.restore_snapshot(session, pick, request)
    # 'latest' may not be the newest backup if one vanished: the catalog's memory says, at the end
    # (a local restore only reads an SQLite catalog; it never creates one or takes its index from it).
    if snapshot == "latest" or point is not None:
        warn_vanished(session)
    _report_restore(result, as_json, point)


def _which_point(snapshot: str | None, when: str | None) -> datetime | None:
    """Exactly one of SNAPSHOT and --point-in-time; the time parsed."""
    if snapshot is not None and not snapshot.strip():
        raise UsageError("an empty snapshot id was given",
                         hint="give a snapshot id, 'latest', or --point-in-time TIME")
    if snapshot and when is not None:
        raise UsageError("give either SNAPSHOT or --point-in-time, not both")
    if snapshot is None and when is None:
        raise UsageError("which snapshot? give a snapshot id, 'latest', or --point-in-time TIME")
    return resolve_point(when)


def resolve_point(when: str | None) -> datetime | None:
    """``--point-in-time`` as an instant; a time without a zone on a host not in UTC says which
    zone it was read in (on stderr, before anything is restored)."""
    if when is None:
        return None
    point = parse_point_in_time(when)
    note = zone_note(when, point)
    if note:
        click.echo(f"drtool: note: {note}", err=True)
    return point


def warn_vanished(session: api.Session) -> None:
    """Snapshots the catalog saw committed that are gone: 'latest' may not be the newest backup."""
    try:
        report = session.rollback_report()
    except DrtoolError as exc:  # the memory is advice here: never fail a finished restore over it
        click.echo(f"drtool: warning: could not compare with the catalog's memory: {exc.one_line()}", err=True)
        return
    for line in report.warnings():
        click.echo(f"drtool: warning: {line}; run 'drtool check'", err=True)


def _warm_line(warm: dict) -> str:  # type: ignore[type-arg]
    """--dry-run on packs in an archive class: what must be warmed first, how long, roughly what cost."""
    which = "tree packs (the data packs are known once these are readable)" if warm["scope"] == "trees" \
        else "packs"
    return (f"must warm first: {warm['packs_to_warm']} {which}, {warm['packs_warming']} already warming, "
            f"{mib(int(warm['bytes']))}; {warm['tier']} tier, typically {warm['estimated_hours']} h, "
            f"about ${warm['estimated_cost_usd']:.2f} (list prices)")


def _report_restore(result: restoring.RestoreResult, as_json: bool, point: datetime | None = None) -> None:
    snap = result.snapshot
    verb = "would restore" if result.plan_only else "restored"
    doc = result.as_dict()
    if point is not None:
        doc["point_in_time"] = point.isoformat()
    if result.plan_only and point is not None and not as_json:
        click.echo(f"point in time: {in_utc_and_host(point)}")
    emit(doc, as_json,
         f"{verb} snapshot {snap.short_id} ({display(snap.name)}, taken {in_utc_and_host(snap.time)}): "
         f"{result.files} files, {result.dirs} dirs, {mib(result.bytes)}"
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


def _more(count: int, err: bool) -> None:
    if count > 0:
        click.echo(f"... and {count} more (the JSON output lists the first {restoring.LIST_LIMIT})", err=err)


@dataclass
class SourceRestore:
    """``restore --source``: which moment of a configured database, and the server to restore into."""

    source: str
    snapshot: str | None
    when: str | None
    latest: bool
    inclusive: bool
    dry_run: bool
    as_json: bool
    target: str | None
    target_db: str | None
    start: bool
    port: int | None
    table: str | None = None        # MariaDB mydumper: DB.TABLE only
    target_lsn: str | None = None   # PostgreSQL recovery targets other than a time
    target_xid: str | None = None
    target_name: str | None = None
    timeline: int | None = None
    tablespace_map: tuple[str, ...] = ()


def run_source_restore(state: CliState, request: SourceRestore) -> None:
    from drtool.api import backing_up, databases
    target = databases.recovery_target(request.target_lsn, request.target_xid, request.target_name)
    if target is not None and (request.when or request.latest or not request.inclusive and target.kind == "name"):
        raise UsageError("--target-lsn/--target-xid/--target-name take no --point-in-time or --latest"
                         + (" (and a restore point takes no --exclusive)" if not request.inclusive else ""))
    if target is None and (bool(request.when) + request.latest + bool(request.snapshot)) != 1:
        raise UsageError("give one of SNAPSHOT, --point-in-time TIME, --latest, --target-lsn, --target-xid "
                         "or --target-name with --source")
    engines = backing_up.source_engines()
    src = backing_up.get_source(state.settings, request.source, engines)
    if isinstance(src, (backing_up.FilesSource, backing_up.CommandSource)):
        raise UsageError(f"source {request.source} is a {backing_up.source_type(src, engines)} source",
                         hint=f"use 'drtool restore --name {request.source} --point-in-time TIME --target DIR'")
    kind = backing_up.source_type(src, engines)
    if request.tablespace_map and kind != "postgresql":
        raise UsageError(f"--tablespace-map is for PostgreSQL base backups; source {request.source} is a {kind} "
                         "source", hint="leave it out (MariaDB restores go to --target or --target-db)")
    point: datetime | None = resolve_point(request.when) if request.when else None
    session = state.session()
    if request.dry_run:
        plan = databases.plan_from_config(session, src, point, request.inclusive, request.snapshot, target,
                                          request.timeline, dry_run=True)
        emit(plan.as_dict(), request.as_json, "\n".join(["plan (dry run, nothing restored):", *plan.lines()]))
        return
    server = databases.DatabaseRestoreRequest(target=request.target, target_db=request.target_db,
                                              start=request.start, port=request.port, command_line=command_line(),
                                              tablespace_map=databases.tablespace_map(request.tablespace_map),
                                              table=request.table)
    with restore_stages():
        result = databases.restore_pitr(session, state.settings, src, point, server, inclusive=request.inclusive,
                                        snapshot=request.snapshot, target=target, timeline=request.timeline)
    emit(result.as_dict(), request.as_json, "\n".join([*result.plan.lines(), *result.lines()]))


def run_bucket_restore(state: CliState, src: ObjectStoreSource, url: str, snapshot: str | None, when: str | None,
                       includes: list[str], dry_run: bool, as_json: bool, target: str | None) -> None:
    """``restore --source NAME --to-bucket URL``: the series NAME's snapshot, objects put under URL."""
    from drtool.api import objectstores
    if target or dry_run:
        raise UsageError("--to-bucket takes no --target or --dry-run")
    objectstores.parse_bucket_url(url, src.scheme)  # a bad URL fails before the repository is opened
    point = _which_point(snapshot, when)
    session = state.session()
    pick = api.pick_snapshot(session, snapshot, src.name, point)
    if not as_json:
        if point is not None:
            click.echo(f"point in time: {in_utc_and_host(point)}", err=True)
        click.echo(f"restoring snapshot {pick.short_id} ({display(pick.name)}, taken "
                   f"{in_utc_and_host(pick.time)}) to {url}", err=True)
    result = objectstores.restore_into_bucket(session, pick, src, url, includes)
    emit(result.as_dict(), as_json,
         f"restored snapshot {pick.short_id}: {result.objects} objects, {mib(result.bytes)}"
         + (f", {result.markers} folder markers" if result.markers else "") + f" to {result.url}")
    for line in result.failed:
        click.echo(f"drtool: error: not restored: {line}", err=True)
    if result.failed:
        raise PartialSuccess(f"{len(result.failed)} object(s) could not be put into {result.url}",
                             hint="re-run the restore; objects already there are simply written again")


# ----- snapshot sets of sharded sources ---------------------------------------------------------
def _sharded(state: CliState, source: str | None):  # type: ignore[no-untyped-def]
    if not source:
        return None
    from drtool.api import shardsets
    return shardsets.sharded_source(state.settings, source)


@dataclass
class SetRestore:
    ref: str
    source: str | None
    src: object
    target: str | None
    to_bucket: str | None
    includes: list[str]
    overwrite: str
    allow_partial: bool
    dry_run: bool
    as_json: bool


def run_set_restore(state: CliState, req: SetRestore) -> None:
    """Every shard of a set into one directory or one bucket prefix."""
    from drtool.api import objectstores, shardsets
    if bool(req.target) == bool(req.to_bucket):
        raise UsageError("give either --target DIR or --to-bucket URL for a snapshot set")
    if req.to_bucket and (req.dry_run or not isinstance(req.src, objectstores.ObjectStoreSource)):
        raise UsageError("--to-bucket needs the set's object-store --source (its endpoint and credentials) "
                         "and takes no --dry-run")
    session = state.session()
    snapset = shardsets.pick_set(session, req.ref, req.source)
    if not req.as_json:
        click.echo(f"restoring snapshot set {snapset.id} ({display(snapset.source)}, {snapset.shards} shards, "
                   f"taken {in_utc_and_host(snapset.time)}) to {req.target or req.to_bucket}", err=True)
    if req.to_bucket:
        result = shardsets.restore_set_into_bucket(session, snapset, req.src, req.to_bucket,  # type: ignore[arg-type]
                                                   req.includes, req.allow_partial)
        text = f"restored snapshot set {snapset.id}: {result.total('objects')} objects, " \
               f"{mib(result.total('bytes'))} to {req.to_bucket}"
    else:
        assert req.target is not None
        result = shardsets.restore_set(session, snapset, req.target, req.includes, req.overwrite,
                                       req.allow_partial, req.dry_run)
        verb = "would restore" if req.dry_run else "restored"
        text = f"{verb} snapshot set {snapset.id}: {result.total('files')} files, " \
               f"{mib(result.total('bytes'))} to {req.target}"
    emit(result.as_dict(), req.as_json, text)
    failed = [line for r in result.shards for line in getattr(r, "failed", [])]
    damaged = [line for r in result.shards for line in getattr(r, "damaged", [])]
    kept = sum(int(getattr(r, "not_overwritten_count", 0)) for r in result.shards)
    for line in failed + damaged:
        click.echo(f"drtool: error: not restored: {line}", err=True)
    if failed or damaged or (kept and not req.dry_run):
        raise PartialSuccess(f"{len(failed) + len(damaged)} item(s) not restored, {kept} existing item(s) "
                             f"left as they are", hint="see the messages above")


def register(group: click.Group) -> None:
    group.add_command(restore)
