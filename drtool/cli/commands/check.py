"""``drtool check``: verify structure, and data with ``--read-data``."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option


@click.command()
@click.option("--read-data", is_flag=True, help="Download and verify every pack.")
@click.option("--read-data-subset", metavar="PERCENT|N/T|SIZE",
              help="Download and verify some packs: a random PERCENT (5, 2.5%), part N of T by pack id "
                   "(1/7 ... 7/7 read every pack once), or random packs of about SIZE (50G).")
@json_option
@pass_state
def check(state: CliState, read_data: bool, read_data_subset: str | None, as_json: bool) -> None:
    """Verify the repository's structure (and data with --read-data)."""
    from drtool.api.maintenance import DataSubset
    if read_data and read_data_subset is not None:
        from drtool.errors import UsageError
        raise UsageError("give either --read-data or --read-data-subset")
    read = DataSubset.everything() if read_data else (
        DataSubset.parse(read_data_subset) if read_data_subset is not None else None)  # before the key is asked for
    report = api.check(state.session(check_catalog=True), read)  # the catalog's pages too
    lines = [f"checked {report.snapshots} snapshot(s), {report.packs} pack(s); "
             f"read {report.packs_read} pack(s){f' ({report.read_subset})' if report.read_subset else ''}, "
             f"{report.blobs_read} blob(s)"]
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
