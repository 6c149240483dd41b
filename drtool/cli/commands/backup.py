"""``drtool backup``: file trees, a command's output, or the configured sources (``--source``/``--all``)."""
from __future__ import annotations

import click

from drtool import api
from drtool.api.backing_up import log_backup_summary
from drtool.api.settings import display
from drtool.cli.complete import source_names
from drtool.cli.context import CliState, emit, pass_state, tune_malloc_for_backup
from drtool.cli.options import json_option, tag_option
from drtool.cli.progress import walk_progress
from drtool.cli.values import mib
from drtool.errors import PartialSuccess, SourceError, UsageError


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--name", metavar="NAME", help="Snapshot series name (e.g. db/wiki).")
@click.option("--from-command", "command", metavar="CMD",
              help="Back up this command's stdout as one file (e.g. 'pg_dump wiki').")
@click.option("--filename", metavar="NAME", help="File name for --from-command output.")
@click.option("--source", metavar="NAME", help="Back up the configured [sources.NAME].",
              shell_complete=source_names)
@click.option("--all", "all_sources", is_flag=True, help="Back up every configured source.")
@click.option("--join", "join_only", is_flag=True,
              help="Sharded --source: only help with its open snapshot set; never open a new one.")
@click.option("--abandon-set", is_flag=True,
              help="Sharded --source: mark its open snapshot set failed (the next run opens a new one).")
@click.option("--full", is_flag=True,
              help="--source/--all: a full physical backup where an incremental one would be taken.")
@click.option("--content-hash", type=click.Choice(["sha256", "sha1"]),
              help="Record each file's hash for 'drtool find --hash' (or content_hash in [sources.NAME]).")
@tag_option
@json_option
@pass_state
def backup(state: CliState, paths: tuple[str, ...], name: str | None, command: str | None,
           filename: str | None, source: str | None, all_sources: bool, join_only: bool, abandon_set: bool,
           full: bool, content_hash: str | None, tags: tuple[str, ...], as_json: bool) -> None:
    """Back up PATHs (or a command's output, or configured sources) as new snapshots.

    A source with shards = N is backed up by workers: run this on as many hosts
    as you like; they share the shards through the catalog (docs/scale.md)."""
    if (join_only or abandon_set) and not source:
        raise UsageError("--join and --abandon-set need --source NAME (a source with shards = N)")
    if source and (join_only or abandon_set or _is_sharded(state, source)):
        if paths or command or name or all_sources:
            raise UsageError("--source takes no PATH, --from-command, --name or --all")
        return run_shard_worker(state, source, join_only, abandon_set, list(tags), as_json)
    if full and not (source or all_sources):
        raise UsageError("--full is for configured sources (--source NAME or --all)")
    if content_hash and (source or all_sources or command):
        raise UsageError("--content-hash is for backups of PATHs",
                         hint="for configured sources set content_hash = \"sha256\" in [sources.NAME]")
    if source or all_sources:
        if paths or command or name:
            raise UsageError("--source/--all take no PATH, --from-command or --name")
        return run_source_backup(state, source, all_sources, list(tags), as_json, full)
    if not name:
        raise UsageError("--name is required (or use --source NAME / --all)")
    if bool(paths) == bool(command):
        raise UsageError("give either PATH... or --from-command CMD")
    tune_malloc_for_backup()
    state.run_name = name
    session = state.session(defer_catalog=True)  # local repositories: opened once the data is stored
    if command:
        result = api.backup_command(session, command, name, filename, list(tags))
    else:
        with walk_progress(f"backing up {name}") as progress:
            result = api.backup(session, list(paths), name, list(tags), progress, content_hash=content_hash)
    log_backup_summary(result)
    snap = result.snapshot
    s = snap.summary
    emit(result.as_dict(), as_json,
         f"snapshot {snap.short_id} saved ({display(snap.name)}): {s['files']} files, {mib(s['size'])}, "
         f"{s.get('files_unchanged', 0)} unchanged, added {mib(s['bytes_added'])} "
         f"in {s['duration']:.1f}s")
    for line in result.changed:
        click.echo(f"drtool: warning: {line} changed while it was read", err=True)
    if result.unreadable:
        for line in result.unreadable:
            click.echo(f"drtool: warning: unreadable: {line}", err=True)
        raise PartialSuccess(f"snapshot {snap.short_id} saved, but {len(result.unreadable)} "
                             f"item(s) could not be read", hint="see the warnings above")


# ----- backup --source / --all: the configured sources -----------------------------------------
def run_source_backup(state: CliState, source: str | None, all_sources: bool, tags: list[str],
                      as_json: bool, full: bool = False) -> None:
    from drtool.api import backing_up
    if source and all_sources:
        raise UsageError("give either --source NAME or --all")
    from drtool.api.backing_up import source_engines
    run = backing_up.backup_sources(state.session(), state.settings, None if all_sources else [source or ""],
                                     tags, source_engines(), full)
    lines = []
    for name, results in run.results.items():
        for result in results:
            snap, s = result.snapshot, result.snapshot.summary
            ratio = s["bytes_added_raw"] / s["size"] if s.get("size") else 0.0
            incremental = snap.meta.get("incremental_parent")
            kind = f"{snap.kind}, incremental to {incremental[:8]}" if incremental else snap.kind
            lines.append(f"{name}: snapshot {snap.short_id} ({snap.name}, {kind}) "
                         f"{s['size'] / 2**20:.1f} MiB, new {s['bytes_added_raw'] / 2**20:.1f} MiB "
                         f"({ratio:.0%}), stored {s['bytes_added'] / 2**20:.1f} MiB")
    emit(run.as_dict(), as_json, "\n".join(lines) if lines else None)
    unreadable = [line for results in run.results.values() for r in results for line in r.unreadable]
    for line in unreadable:
        click.echo(f"drtool: warning: unreadable: {line}", err=True)
    if len(run.failures) == 1 and not run.results:  # one source, failed: its message is the one line
        name, message = next(iter(run.failures.items()))
        raise SourceError(f"source {name}: {message}")
    for name, message in run.failures.items():
        click.echo(f"drtool: error: source {name}: {message}", err=True)
    if run.failures:
        raise SourceError(f"{len(run.failures)} of {len(run.failures) + len(run.results)} source(s) failed: "
                          f"{', '.join(run.failures)}")
    if unreadable:
        raise PartialSuccess(f"snapshots saved, but {len(unreadable)} entries could not be read "
                             f"and are not in them (listed above)")


# ----- backup --source NAME of a sharded source: one worker of its snapshot set --------------------
def _is_sharded(state: CliState, source: str) -> bool:
    from drtool.api import shardsets
    return shardsets.sharded_source(state.settings, source) is not None


def run_shard_worker(state: CliState, source: str, join_only: bool, abandon: bool, tags: list[str],
                     as_json: bool) -> None:
    from drtool.api import shardsets
    src = shardsets.sharded_source(state.settings, source)
    if src is None:
        raise UsageError(f"source {source} has no shards = N", hint="--join and --abandon-set are for sharded sources")
    session = state.session()
    if abandon:
        row = shardsets.abandon_set(session, source)
        emit({"abandoned": row.id if row else None}, as_json,
             f"snapshot set {row.id} of {source} marked failed" if row else f"{source} has no open snapshot set")
        return
    tune_malloc_for_backup()
    state.run_name = source
    worker = shardsets.work_on_source(session, src, tags, join_only=join_only)
    prog = worker.progress
    lines = [f"{source}: shard {r.snapshot.meta['set']['shard']}: snapshot {r.snapshot.short_id} "
             f"{r.snapshot.summary['files']} files, new {mib(r.snapshot.summary['bytes_added'])}"
             for r in worker.results]
    lines += [f"{source}: shard {i}: adopted the snapshot a stopped worker had written" for i in worker.adopted]
    if worker.set_id is None:
        lines.append(f"{source}: no open snapshot set to join")
    elif prog is not None:
        lines.append(f"{source}: snapshot set {worker.set_id} {worker.state}: {prog.done}/{prog.total} shards done"
                     + (f", {prog.leased} held by other workers" if prog.leased else "")
                     + (f", {prog.failed} failed" if prog.failed else ""))
    emit(worker.as_dict(), as_json, "\n".join(lines))
    for result in worker.results:
        log_backup_summary(result)
        for line in result.unreadable:
            click.echo(f"drtool: warning: unreadable: {line}", err=True)
    for line in worker.failures:  # an attempt that failed and was retried is only a warning
        click.echo(f"drtool: {'warning' if worker.state == 'committed' else 'error'}: {source}: {line}", err=True)
    if worker.state == "failed":
        raise SourceError(f"snapshot set {worker.set_id} of {source} failed",
                          hint="see the errors above; the next run opens a new set")
    if worker.failures and worker.state != "committed":
        raise SourceError(f"{len(worker.failures)} shard attempt(s) failed; other workers retry them")
    if any(r.unreadable for r in worker.results):
        raise PartialSuccess("snapshots saved, but some entries could not be read and are not in them")


def register(group: click.Group) -> None:
    group.add_command(backup)
