"""Options shared by several commands, defined once (as pip-tools does)."""
from __future__ import annotations

import click

from drtool.cli.complete import series_names

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
name_option = click.option("--name", "name", metavar="NAME", help="Snapshot series name.",
                           shell_complete=series_names)
tag_option = click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag (repeatable).")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")
target_option = click.option("--target", required=True, type=click.Path(file_okay=False),
                             help="Directory to restore into.")
