"""``drtool mariadb``: binlog archiving and recoverable windows."""
from __future__ import annotations

import click

from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.dbsupport import (
    BINLOG_TIMEOUT,
    deadline,
    print_window,
    source_option,
    timeout_option,
    timeout_seconds,
)
from drtool.cli.options import json_option
from drtool.errors import UsageError


@click.group("mariadb")
def mariadb_group() -> None:
    """MariaDB: binlog archiving for point-in-time restore."""


@mariadb_group.command("binlog-push")
@source_option
@timeout_option
@json_option
@pass_state
def binlog_push(state: CliState, source: str, timeout: str | None, as_json: bool) -> None:
    """Archive every closed binlog of the source not yet in the repository (run it often)."""
    from drtool.api import backing_up, databases
    from drtool.api.backing_up import source_engines
    src = backing_up.get_source(state.settings, source, source_engines())
    if backing_up.source_type(src, source_engines()) != "mariadb":
        raise UsageError(f"source {source} is not a mariadb source")
    with deadline(timeout_seconds(state, source, timeout, BINLOG_TIMEOUT), f"binlog-push of source {source}", 1):
        repo = state.repository_only()
        try:
            results = databases.binlog_push(repo, src)  # type: ignore[arg-type]
        finally:
            repo.close()
    stored = [r for r in results if r.status == "stored"]
    emit([r.as_dict() for r in results], as_json,
         f"{len(stored)} binlog(s) archived, {len(results) - len(stored)} already archived"
         + "".join(f"\n  {r.name} ({r.size} bytes)" for r in stored))


@mariadb_group.command("window")
@source_option
@json_option
@pass_state
def mariadb_window(state: CliState, source: str, as_json: bool) -> None:
    """Show the recoverable window and binlog gaps of a source."""
    from drtool.api.databases import engine_named, recoverable_window
    print_window(recoverable_window(state.session(), source, engine_named("mariadb")), as_json)


def register(group: click.Group) -> None:
    group.add_command(mariadb_group)
