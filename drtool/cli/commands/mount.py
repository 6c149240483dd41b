"""``drtool mount MOUNTPOINT``: browse every snapshot as a read-only file system (FUSE)."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, pass_state


@click.command("mount")
@click.argument("mountpoint", type=click.Path())
@pass_state
def mount(state: CliState, mountpoint: str) -> None:
    """Mount the repository read-only at MOUNTPOINT (by-name/, by-host/, by-time/, latest/, ids/)
    and serve it until 'umount MOUNTPOINT' or Ctrl-C."""
    session = state.session(defer_catalog=True)  # local repositories: no catalog needed
    click.echo(f"serving the repository at {mountpoint} (read-only); umount or Ctrl-C to stop", err=True)
    api.mount(session, mountpoint)


def register(cli: click.Group) -> None:
    cli.add_command(mount)
