"""``drtool snapshots``: list what can be restored, warning when the catalog remembers more."""
from __future__ import annotations

import click

from drtool import api
from drtool.api.settings import display
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option, name_option
from drtool.cli.values import mib


@click.command()
@name_option
@json_option
@pass_state
def snapshots(state: CliState, name: str | None, as_json: bool) -> None:
    """List snapshots, oldest first."""
    session = state.session()
    snaps = api.snapshots(session, name)
    for line in session.rollback.warnings() if session.rollback else []:
        click.echo(f"drtool: warning: {line}; run 'drtool check'", err=True)
    if as_json:
        emit([s.listing() for s in snaps], True)
        return
    click.echo(f"{'ID':8}  {'TIME':25}  {'NAME':20}  {'HOST':12}  {'FILES':>7}  {'SIZE':>11}  TAGS")
    for s in snaps:
        item = s.listing()
        when = s.time.astimezone().isoformat(timespec="seconds")
        click.echo(f"{s.short_id:8}  {when:25}  {display(s.name):20}  {display(s.host)[:12]:12}  "
                   f"{item['files']:>7}  {mib(item['size']):>11}  {','.join(map(display, s.tags))}")
    click.echo(f"{len(snaps)} snapshot(s)")


def register(group: click.Group) -> None:
    group.add_command(snapshots)
