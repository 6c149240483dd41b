"""``drtool pg restore-point NAME``: a named PostgreSQL restore point, recorded for planning.

Added to the ``pg`` group by the module that registers it (``add_to(pg_group)``).
"""
from __future__ import annotations

import click

from drtool.cli.context import CliState, emit
from drtool.cli.options import json_option

pass_state = click.make_pass_decorator(CliState)


@click.command("restore-point")
@click.option("--source", "source", required=True, envvar="DRTOOL_SOURCE", metavar="NAME",
              help="Source name (the [sources.NAME] table; also DRTOOL_SOURCE).")
@click.argument("name")
@json_option
@pass_state
def restore_point(state: CliState, source: str, name: str, as_json: bool) -> None:
    """Create restore point NAME on the source's server (pg_create_restore_point) and record it.

    The WAL file is switched so the point is archived at once; later,
    'drtool restore --source SOURCE --target-name NAME' starts from the newest
    base backup taken before it and stops there.  Names are unique per source.
    """
    from drtool import api
    repo = state.repository_only()
    try:
        point = api.databases.create_restore_point(repo, state.settings, source, name)
    finally:
        repo.close()
    emit(point, as_json, f"restore point {name!r} of source {source} at {point['lsn']} "
                         f"(timeline {point['timeline']}, {point['time']}, WAL file {point['wal_file']})")


def add_to(group: click.Group) -> None:
    group.add_command(restore_point)
