"""``drtool forget``: apply a retention policy (or remove given snapshots), optionally pruning."""
from __future__ import annotations

from datetime import tzinfo
from typing import Any

import click

from drtool.api import maintenance
from drtool.api.maintenance import RetentionPolicy
from drtool.api.settings import display
from drtool.cli.commands.prune import prune_options, run_prune
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import dry_run_option, json_option, name_option
from drtool.cli.values import duration_value
from drtool.errors import UsageError


# ----- forget -------------------------------------------------------------------------
@click.command()
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@name_option
@click.option("--keep-last", type=int, metavar="N", help="Keep the N newest snapshots.")
@click.option("--keep-hourly", type=int, metavar="N", help="Keep the newest of each of N hours.")
@click.option("--keep-daily", type=int, metavar="N", help="Keep the newest of each of N days.")
@click.option("--keep-weekly", type=int, metavar="N", help="Keep the newest of each of N ISO weeks.")
@click.option("--keep-monthly", type=int, metavar="N", help="Keep the newest of each of N months.")
@click.option("--keep-yearly", type=int, metavar="N", help="Keep the newest of each of N years.")
@click.option("--keep-within", metavar="DURATION", help="Keep all within DURATION of the newest.")
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="TAG", help="Keep snapshots with TAG.")
@click.option("--prune", "then_prune", is_flag=True, help="Run prune afterwards.")
@click.option("--keep-log-segments", is_flag=True,
              help="Do not expire archived WAL/binlog files older than the kept base backups.")
@dry_run_option
@json_option
@pass_state
def forget(state: CliState, snapshot_ids: tuple[str, ...], name: str | None, keep_last: int | None,
           keep_hourly: int | None, keep_daily: int | None, keep_weekly: int | None,
           keep_monthly: int | None, keep_yearly: int | None, keep_within: str | None,
           keep_tags: tuple[str, ...], then_prune: bool, keep_log_segments: bool, dry_run: bool,
           as_json: bool) -> None:
    """Remove snapshots a retention policy does not keep, or the SNAPSHOTs given (data goes with prune).

    Without --keep options the policy comes from [sources.NAME.retention] or
    [retention] in the config; series without a policy are left alone.  Ids
    of snapshots that 'drtool check' reports missing acknowledge their loss.
    """
    counts = dict(keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily,
                  keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly)
    given = {k: v for k, v in counts.items() if v is not None}
    within = duration_value(keep_within, "--keep-within")
    data = state.settings.data
    if snapshot_ids:
        if given or within or keep_tags or name or keep_log_segments:
            raise UsageError("give either SNAPSHOT ids or a policy (--keep-*, --name), not both")
        if any(not ref.strip() for ref in snapshot_ids):
            raise UsageError("an empty snapshot id was given", hint="list snapshots with 'drtool snapshots'")
        result = maintenance.forget_ids(state.session(), list(snapshot_ids), dry_run=dry_run)
        _emit_forget(state, result, maintenance.zone_from_config(data), then_prune, dry_run, as_json)
        return
    if given or within or keep_tags:
        cli_policy = RetentionPolicy(**given, keep_within=within, keep_tags=frozenset(keep_tags))

        def policy_for(series: str) -> RetentionPolicy | None:
            return cli_policy
    else:
        def policy_for(series: str) -> RetentionPolicy | None:
            return maintenance.config_policy(data, series)
        if (name and policy_for(name) is None) or (not name and not _any_policy(data)):
            raise UsageError("refusing to forget everything: give at least one --keep option",
                             hint="or configure [retention] / [sources.NAME.retention]")
    tz = maintenance.zone_from_config(data)
    result = maintenance.forget(state.session(), policy_for, name=name, tz=tz, dry_run=dry_run,
                               keep_log_segments=keep_log_segments)
    _emit_forget(state, result, tz, then_prune, dry_run, as_json)


def _emit_forget(state: CliState, result: maintenance.ForgetResult, tz: tzinfo, then_prune: bool,
                 dry_run: bool, as_json: bool) -> None:
    if not (then_prune and not dry_run):
        emit(result.as_dict(), as_json, _forget_text(result, tz))
        return
    if not as_json:
        click.echo(_forget_text(result, tz))
    report = run_prune(state, prune_options(state, False, None, None), as_json=False, quiet=as_json)
    emit({"forget": result.as_dict(), "prune": report.as_dict()}, as_json)


def _any_policy(data: dict[str, Any]) -> bool:
    sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    return "retention" in data or any(isinstance(s, dict) and "retention" in s
                                      for s in sources.values())


def _forget_text(result: maintenance.ForgetResult, tz: tzinfo) -> str:
    lines = []
    for series in result.series:
        lines.append(f"{display(series.name)} (policy: {series.policy})")
        for d in series.decisions:
            verb = "keep  " if d.keep else "remove"
            when = d.snapshot.time.astimezone(tz).isoformat(timespec="seconds")
            lines.append(f"  {verb}  {d.snapshot.id[:8]}  {when}  {', '.join(d.reasons)}")
        lines += [f"  not removed: {line}" for line in series.not_removed]
    lines += [f"{display(name)}: no retention policy configured; all snapshots kept" for name in result.skipped]
    lines += result.log_lines()
    count = sum(1 for s in result.series for d in s.decisions if not d.keep)
    lines.append(f"would remove {count} snapshot(s) (dry run)" if result.dry_run
                 else f"removed {len(result.removed)} snapshot(s)")
    return "\n".join(lines)


def register(group: click.Group) -> None:
    group.add_command(forget)
