"""``drtool snapshots``: list what can be restored, warning when the catalog remembers more.

The shard snapshots of a sharded source are shown as one line per snapshot
set (restore it with its ``set-...`` id); ``--shards`` lists them one by one.
"""
from __future__ import annotations

import click

from drtool import api
from drtool.api import shardsets
from drtool.api.settings import display
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option, name_option
from drtool.cli.values import mib


@click.command()
@name_option
@click.option("--shards", "show_shards", is_flag=True, help="List the snapshots of sets shard by shard.")
@json_option
@pass_state
def snapshots(state: CliState, name: str | None, show_shards: bool, as_json: bool) -> None:
    """List snapshots (and snapshot sets), oldest first."""
    session = state.session()
    snaps = api.snapshots(session, name)
    sets = [] if show_shards else shardsets.snapshot_sets(session, name)
    if sets:
        in_sets = {s.id for snapset in sets for s in snapset.snapshots}
        snaps = [s for s in snaps if s.id not in in_sets]
    for line in session.rollback.warnings() if session.rollback else []:
        click.echo(f"drtool: warning: {line}; run 'drtool check'", err=True)
    rows = sorted([(s.time, s.id, s) for s in snaps] + [(t.time, t.id, t) for t in sets], key=lambda r: r[:2])
    if as_json:
        emit([{"id": item.id, **item.listing()} for _t, _i, item in rows], True)
        return
    width = 20 if sets else 8  # set ids: "set-" and 16 hex digits
    click.echo(f"{'ID':{width}}  {'TIME':25}  {'NAME':20}  {'HOST':12}  {'FILES':>7}  {'SIZE':>11}  TAGS")
    for _t, _i, item in rows:
        listing = item.listing()
        when = item.time.astimezone().isoformat(timespec="seconds")
        if isinstance(item, shardsets.SnapshotSet):
            hosts = ",".join(listing["hosts"])
            state_text = "complete" if item.complete else f"INCOMPLETE, {len(item.missing)} missing"
            click.echo(f"{item.id:{width}}  {when:25}  {display(item.source):20}  {display(hosts)[:12]:12}  "
                       f"{listing['files']:>7}  {mib(listing['size']):>11}  [set of {item.shards} shards, "
                       f"{state_text}]")
            continue
        click.echo(f"{item.short_id:{width}}  {when:25}  {display(item.name):20}  {display(item.host)[:12]:12}  "
                   f"{listing['files']:>7}  {mib(listing['size']):>11}  {','.join(map(display, item.tags))}")
    click.echo(f"{len(snaps)} snapshot(s)" + (f", {len(sets)} snapshot set(s)" if sets else ""))


def register(group: click.Group) -> None:
    group.add_command(snapshots)
