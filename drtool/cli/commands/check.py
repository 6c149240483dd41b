"""``drtool check``: verify structure, and data with ``--read-data``."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option


@click.command()
@click.option("--read-data", is_flag=True, help="Download and verify every pack.")
@click.option("--read-data-subset", type=click.FloatRange(0, 100, min_open=True), metavar="PERCENT",
              help="Download and verify this percentage of packs (random).")
@json_option
@pass_state
def check(state: CliState, read_data: bool, read_data_subset: float | None, as_json: bool) -> None:
    """Verify the repository's structure (and data with --read-data)."""
    fraction = 1.0 if read_data else (read_data_subset or 0.0) / 100
    report = api.check(state.session(check_catalog=True), fraction)  # the catalog's pages too
    lines = [f"checked {report.snapshots} snapshot(s), {report.packs} pack(s); "
             f"read {report.packs_read} pack(s), {report.blobs_read} blob(s)"]
    lines += [f"warning: {w}" for w in report.warnings] if state.verbose else []
    lines += [f"error: {e}" for e in report.errors]
    lines.append("no errors found" if report.ok else f"{len(report.errors)} error(s) found")
    emit(report.as_dict(), as_json, "\n".join(lines))
    if not report.ok:
        from drtool.errors import IntegrityError
        raise IntegrityError(f"check found {len(report.errors)} error(s); damaged objects: "
                             f"{', '.join(report.damaged_objects[:5]) or 'see above'}",
                             hint="restore affected data from another copy; see docs/operations.md")


def register(group: click.Group) -> None:
    group.add_command(check)
