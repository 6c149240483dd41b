"""``drtool diff SNAP1 SNAP2``: what changed between two snapshots."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option, name_option


@click.command("diff")
@click.argument("first")
@click.argument("second")
@name_option
@json_option
@pass_state
def diff(state: CliState, first: str, second: str, name: str | None, as_json: bool) -> None:
    """Added (+), removed (-), modified (M) and metadata-only (U) entries from FIRST to SECOND."""
    result = api.diff(state.session(defer_catalog=True), first, second, name=name)
    if as_json:
        emit(result.as_dict(), True)
        return
    for line in result.lines():
        click.echo(line)
    counts = result.as_dict()["summary"]
    click.echo(f"{counts['added']} added, {counts['removed']} removed, {counts['modified']} modified, "
               f"{counts['metadata']} metadata only")


def register(cli: click.Group) -> None:
    cli.add_command(diff)
