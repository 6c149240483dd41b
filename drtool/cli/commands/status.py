"""``drtool status``: backup freshness per source, with Nagios-style exit codes."""
from __future__ import annotations

import click

from drtool.api import monitoring
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option
from drtool.cli.values import duration_value
from drtool.errors import DrtoolError


# ----- status and metrics -------------------------------------------------------------------
def collect_report(state: CliState, source: str | None, max_age: str | None) -> monitoring.StatusReport:
    """The status report, or an UNKNOWN one when the repository cannot be read."""
    try:
        limit = duration_value(max_age, "--max-age")
        return monitoring.collect_status(state.session(), state.settings.data, source=source, max_age=limit)
    except DrtoolError as exc:
        return monitoring.unknown_status(exc.one_line())


@click.command()
@click.option("--source", metavar="NAME", help="Only this source / snapshot series.")
@click.option("--max-age", metavar="DURATION",
              help="CRITICAL when the newest snapshot is older (WARNING at 80%); default 36h.")
@json_option
@pass_state
def status(state: CliState, source: str | None, max_age: str | None, as_json: bool) -> None:
    """Backup freshness per source; exits like a Nagios plugin (0 OK .. 3 UNKNOWN)."""
    report = collect_report(state, source, max_age)
    emit(report.as_dict(), as_json, "\n".join([report.summary(), *report.details()]))
    raise click.exceptions.Exit(report.state)


def register(group: click.Group) -> None:
    group.add_command(status)
