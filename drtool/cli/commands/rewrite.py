"""``drtool rewrite --exclude PATH... [SNAPSHOT...]``: take files out of snapshots (takedowns)."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, command_line, emit, pass_state
from drtool.cli.options import dry_run_option, json_option, name_option
from drtool.errors import PartialSuccess


@click.command("rewrite")
@click.argument("snapshots", nargs=-1)
@click.option("--exclude", "excludes", multiple=True, metavar="PATH",
              help="Path to take out (repeatable), as 'drtool find' prints it.")
@click.option("--reason", default="", metavar="TEXT", help="Why (recorded in the snapshots and the audit trail).")
@click.option("--history", is_flag=True, help="Show the audit trail of earlier rewrites instead.")
@name_option
@dry_run_option
@json_option
@pass_state
def rewrite(state: CliState, snapshots: tuple[str, ...], excludes: tuple[str, ...], reason: str,
            history: bool, name: str | None, dry_run: bool, as_json: bool) -> None:
    """Replace SNAPSHOTs (default: all, or all of --name) holding an --exclude PATH by new
    snapshots without it (same name, host, time, tags); the originals are forgotten and the
    next prune frees the data.  Under Object Lock, says what cannot be deleted before when."""
    session = state.session()
    if history:
        rows = api.rewrite_history(session)
        emit(rows, as_json, "\n".join(f"{r['time']}  {r['host']}  {str(r['original_id'])[:8]} -> "
                                      f"{str(r['new_id'] or '-')[:8]}  {r['excluded']}  reason: {r['reason']}  "
                                      f"({r['outcome']})" for r in rows) or "no rewrites recorded")
        return
    result = api.rewrite(session, list(excludes), list(snapshots), name=name, reason=reason,
                         dry_run=dry_run, command=command_line())
    summary = (f"{len(result.affected)} snapshot(s) {'would be ' if dry_run else ''}rewritten, "
               f"{result.unaffected} unaffected")
    emit(result.as_dict(), as_json, "\n".join([a.text(dry_run) for a in result.affected] + [summary]))
    if not result.complete:
        raise PartialSuccess("the new snapshots are written, but Object Lock keeps some originals until "
                             "the dates above", hint="run the same rewrite again after that date, then prune")


def register(cli: click.Group) -> None:
    cli.add_command(rewrite)
