"""Options shared by several commands, defined once (as pip-tools does)."""
from __future__ import annotations

from typing import Any

import click

from drtool.cli.complete import series_names

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
name_option = click.option("--name", "name", metavar="NAME", help="Snapshot series name.",
                           shell_complete=series_names)
tag_option = click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag (repeatable).")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")
target_option = click.option("--target", required=True, type=click.Path(file_okay=False),
                             help="Directory to restore into.")



def recovery_target_options(command: Any) -> Any:
    """``restore --source``'s targets other than a time (PostgreSQL), collected in ``recovery_targets``."""
    def collect(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and value != ():
            ctx.meta.setdefault("recovery_targets", {})[param.name] = value
        return value
    options = [
        click.option("--target-lsn", metavar="LSN", expose_value=False, callback=collect,
                     help="With a PostgreSQL --source: stop at this WAL location (e.g. 0/3000148)."),
        click.option("--target-xid", metavar="XID", expose_value=False, callback=collect,
                     help="With a PostgreSQL --source: stop at the commit of this transaction."),
        click.option("--target-name", metavar="POINT", expose_value=False, callback=collect,
                     help="With a PostgreSQL --source: stop at this restore point (drtool pg restore-point)."),
        click.option("--timeline", type=click.IntRange(1), expose_value=False, callback=collect,
                     help="With a PostgreSQL --source: recover along this timeline (default: the latest)."),
        click.option("--tablespace-map", metavar="OLD=NEW", multiple=True, expose_value=False, callback=collect,
                     help="With a PostgreSQL --source: restore the tablespace at location (or named) OLD "
                          "into NEW (repeatable; default: its original location, which must be empty)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
