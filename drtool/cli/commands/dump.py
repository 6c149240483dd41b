"""``drtool dump SNAPSHOT [PATH]``: a file, a directory (tar) or a dump, to stdout."""
from __future__ import annotations

import sys

import click

from drtool import api
from drtool.cli.context import CliState, pass_state
from drtool.cli.options import name_option
from drtool.errors import UsageError


@click.command("dump")
@click.argument("snapshot")
@click.argument("path", required=False)
@name_option
@pass_state
def dump(state: CliState, snapshot: str, path: str | None, name: str | None) -> None:
    """Write PATH of SNAPSHOT to stdout: a file as it is, a directory as a tar stream; without
    PATH a dump snapshot's dump (drtool dump latest --name db/wiki | mariadb wiki) or a files
    snapshot as tar."""
    out = sys.stdout.buffer
    if out.isatty():
        raise UsageError("dump writes binary data to stdout, which is a terminal",
                         hint="redirect it: drtool dump SNAPSHOT PATH > file, or pipe it into a program")
    sys.stdout.flush()
    api.dump(state.session(defer_catalog=True), snapshot, path, out, name=name)


def register(cli: click.Group) -> None:
    cli.add_command(dump)
