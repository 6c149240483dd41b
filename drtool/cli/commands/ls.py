"""``drtool ls SNAPSHOT [PATH]``: what a snapshot holds, like ``ls`` (-l, -R, --json)."""
from __future__ import annotations

from itertools import islice

import click

from drtool import api
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option, name_option

CHUNK_LINES = 8192


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
    session = state.session(defer_catalog=True)
    if as_json:
        emit([e.as_dict() for e in api.ls(session, snapshot, path, name=name, recursive=recursive)], True)
        return
    lines = api.ls_lines(session, snapshot, path, name=name, recursive=recursive, long_format=long_format)
    for chunk in iter(lambda: list(islice(lines, CHUNK_LINES)), []):
        click.echo("\n".join(chunk))  # a write per chunk, not per line; nothing held but the chunk


def register(cli: click.Group) -> None:
    cli.add_command(ls)
