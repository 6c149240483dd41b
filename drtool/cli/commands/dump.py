"""``drtool dump SNAPSHOT [PATH]``: a file, a directory (tar) or a dump, to stdout."""
from __future__ import annotations

import os
import signal
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
    if sys.stdout.isatty():
        raise UsageError("dump writes binary data to stdout, which is a terminal",
                         hint="redirect it: drtool dump SNAPSHOT PATH > file, or pipe it into a program")
    sys.stdout.flush()
    # A buffered writer of our own over fd 1, whatever PYTHONUNBUFFERED made of sys.stdout: its
    # write takes everything or raises (a raw FileIO may write part and say so in its count).
    out = open(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False)
    try:
        api.dump(state.session(defer_catalog=True), snapshot, path, out, name=name)
        out.flush()
    except BrokenPipeError:
        # the reader stopped (``| head``): end as a process killed by SIGPIPE would, without a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(128 + signal.SIGPIPE) from None


def register(cli: click.Group) -> None:
    cli.add_command(dump)
