"""``drtool ls SNAPSHOT [PATH]``: what a snapshot holds, like ``ls`` (-l, -R, --json)."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option, name_option


@click.command("ls")
@click.argument("snapshot")
@click.argument("path", required=False, default="")
@click.option("-l", "--long", "long_format", is_flag=True, help="Mode, owner, size and mtime, like ls -l.")
@click.option("-R", "--recursive", is_flag=True, help="Everything below PATH, not only its entries.")
@name_option
@json_option
@pass_state
def ls(state: CliState, snapshot: str, path: str, long_format: bool, recursive: bool, name: str | None,
       as_json: bool) -> None:
    """List PATH in SNAPSHOT (an id, or 'latest' with --name); paths as restore --include takes them."""
    # local repositories: trees and index straight from the repository (no catalog, as restore)
    entries = api.ls(state.session(defer_catalog=True), snapshot, path, name=name, recursive=recursive)
    if as_json:
        emit([e.as_dict() for e in entries], True)
        return
    if entries:  # one write: ls -R of 200,000 entries line by line cost more than reading the trees
        click.echo("\n".join(e.long_line() if long_format else e.short_line() for e in entries))


def register(cli: click.Group) -> None:
    cli.add_command(ls)
