"""``drtool metrics``: Prometheus text for node_exporter's textfile collector."""
from __future__ import annotations

import click

from drtool.api import monitoring
from drtool.cli.commands.status import collect_report
from drtool.cli.context import CliState, pass_state
from drtool.errors import DrtoolError


@click.command()
@click.option("--textfile", metavar="PATH", type=click.Path(dir_okay=False),
              help="Write here atomically (node_exporter textfile collector); default stdout.")
@pass_state
def metrics(state: CliState, textfile: str | None) -> None:
    """Prometheus metrics: freshness, sizes, durations, RPO, rehearsal results."""
    report = collect_report(state, None, None)
    text = monitoring.render_metrics(report)
    if textfile:
        monitoring.write_textfile(textfile, text)
    else:
        click.echo(text, nl=False)
    if report.error:
        raise DrtoolError(f"metrics written with drtool_repository_up 0: {report.error}")


def register(group: click.Group) -> None:
    group.add_command(metrics)
