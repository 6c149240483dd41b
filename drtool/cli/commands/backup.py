"""``drtool backup``: file trees, a command's output, or the configured sources (``--source``/``--all``)."""
from __future__ import annotations

import click

from drtool import api
from drtool.api.backing_up import log_backup_summary
from drtool.api.settings import display
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
                      as_json: bool) -> None:
    from drtool.api import backing_up
    if source and all_sources:
        raise UsageError("give either --source NAME or --all")
    from drtool.api.backing_up import source_engines
    run = backing_up.backup_sources(state.session(), state.settings, None if all_sources else [source or ""],
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
    unreadable = [line for results in run.results.values() for r in results for line in r.unreadable]
    for line in unreadable:
        click.echo(f"drtool: warning: unreadable: {line}", err=True)
    for name, message in run.failures.items():
        click.echo(f"drtool: error: source {name}: {message}", err=True)
    if run.failures:
        raise SourceError(f"{len(run.failures)} of {len(run.failures) + len(run.results)} source(s) failed: "
                          f"{', '.join(run.failures)}")
    if unreadable:
        raise PartialSuccess(f"snapshots saved, but {len(unreadable)} entries could not be read "
                             f"and are not in them (listed above)")


def register(group: click.Group) -> None:
    group.add_command(backup)
