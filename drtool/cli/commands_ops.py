"""forget, prune, locks, status, metrics: running a repository day to day."""
from __future__ import annotations

import time
from datetime import timedelta, tzinfo
from typing import Any

import click

from drtool.cli.complete import snapshot_ids as complete_snapshot_ids, source_names
from drtool.cli.context import CliState, emit
from drtool.cli.options import dry_run_option, json_option, name_option
from drtool.errors import DrtoolError, UsageError
from drtool.maintain import forget as forget_ops
from drtool.monitor import metrics as metrics_ops
from drtool.maintain import prune as prune_ops
from drtool.monitor import status as status_ops
from drtool.repository.locks import read_locks, stale_reason
from drtool.snapshot.names import display
from drtool.snapshot.retention import RetentionPolicy
from drtool.snapshot.timeparse import format_duration, parse_duration

pass_state = click.make_pass_decorator(CliState)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _duration(value: str | None, option: str) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except UsageError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _percent(value: Any, option: str) -> float:
    text = str(value).strip()
    if text.lower() == "unlimited":
        return 100.0
    try:
        return float(text.removesuffix("%"))
    except ValueError:
        raise UsageError(f"{option}: expected a percentage such as 10%, got {text!r}") from None


def prune_options(state: CliState, dry_run: bool, max_unused: str | None,
                  grace: str | None) -> prune_ops.PruneOptions:
    """Command line over ``[prune]`` config over defaults."""
    conf = state.settings.section("prune")
    lock_days = state.settings.backend_options.get("object_lock_days")
    grace_td = _duration(grace if grace is not None else conf.get("grace"), "--grace")
    renew = _duration(conf.get("renew_within"), "prune.renew_within")
    return prune_ops.PruneOptions(
        dry_run=dry_run,
        max_unused=_percent(max_unused if max_unused is not None
                            else conf.get("max_unused", prune_ops.DEFAULT_MAX_UNUSED), "--max-unused"),
        grace=prune_ops.DEFAULT_GRACE if grace_td is None else grace_td,
        object_lock_days=int(lock_days) if lock_days else None,
        renew_within=timedelta(days=7) if renew is None else renew)


# ----- forget -------------------------------------------------------------------------
@click.command()
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...", shell_complete=complete_snapshot_ids)
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
    within = _duration(keep_within, "--keep-within")
    data = state.settings.data
    if snapshot_ids:
        if given or within or keep_tags or name or keep_log_segments:
            raise UsageError("give either SNAPSHOT ids or a policy (--keep-*, --name), not both")
        if any(not ref.strip() for ref in snapshot_ids):
            raise UsageError("an empty snapshot id was given", hint="list snapshots with 'drtool snapshots'")
        result = forget_ops.forget_ids(state.session(), list(snapshot_ids), dry_run=dry_run)
        _emit_forget(state, result, forget_ops.zone_from_config(data), then_prune, dry_run, as_json)
        return
    if given or within or keep_tags:
        cli_policy = RetentionPolicy(**given, keep_within=within, keep_tags=frozenset(keep_tags))

        def policy_for(series: str) -> RetentionPolicy | None:
            return cli_policy
    else:
        def policy_for(series: str) -> RetentionPolicy | None:
            return forget_ops.config_policy(data, series)
        if (name and policy_for(name) is None) or (not name and not _any_policy(data)):
            raise UsageError("refusing to forget everything: give at least one --keep option",
                             hint="or configure [retention] / [sources.NAME.retention]")
    tz = forget_ops.zone_from_config(data)
    result = forget_ops.forget(state.session(), policy_for, name=name, tz=tz, dry_run=dry_run,
                               keep_log_segments=keep_log_segments)
    _emit_forget(state, result, tz, then_prune, dry_run, as_json)


def _emit_forget(state: CliState, result: forget_ops.ForgetResult, tz: tzinfo, then_prune: bool,
                 dry_run: bool, as_json: bool) -> None:
    if not (then_prune and not dry_run):
        emit(result.as_dict(), as_json, _forget_text(result, tz))
        return
    if not as_json:
        click.echo(_forget_text(result, tz))
    report = _run_prune(state, prune_options(state, False, None, None), as_json=False, quiet=as_json)
    emit({"forget": result.as_dict(), "prune": report.as_dict()}, as_json)


def _any_policy(data: dict[str, Any]) -> bool:
    sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    return "retention" in data or any(isinstance(s, dict) and "retention" in s
                                      for s in sources.values())


def _forget_text(result: forget_ops.ForgetResult, tz: tzinfo) -> str:
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


# ----- prune ----------------------------------------------------------------------------
@click.command()
@click.option("--max-unused", metavar="PERCENT",
              help="Tolerate this much unused space in partly used packs (default 10%).")
@click.option("--grace", metavar="DURATION",
              help="Delete condemned packs only this long after they were marked (default 24h).")
@dry_run_option
@json_option
@pass_state
def prune(state: CliState, max_unused: str | None, grace: str | None, dry_run: bool,
          as_json: bool) -> None:
    """Free space that no snapshot needs (two-phase: mark now, delete after --grace)."""
    _run_prune(state, prune_options(state, dry_run, max_unused, grace), as_json)


def _run_prune(state: CliState, options: prune_ops.PruneOptions, as_json: bool,
               quiet: bool = False) -> prune_ops.PruneReport:
    report = prune_ops.prune(state.session(), options)
    if quiet:
        return report
    r = report
    verb = "would " if r.dry_run else ""
    lines = [f"{r.snapshots} snapshot(s), {r.packs} pack(s): {_mib(r.used_bytes)} used, "
             f"{_mib(r.unused_bytes)} unused",
             f"{verb}repack {r.packs_repacked} pack(s) ({r.blobs_repacked} blob(s)); "
             f"{verb}condemn {r.packs_condemned} pack(s)",
             f"{verb}delete {r.packs_deleted} pack(s), freeing {_mib(r.bytes_freed)}"]
    if r.packs_pending:
        when = r.next_deletion.isoformat(timespec="seconds") if r.next_deletion else "?"
        lines.append(f"{r.packs_pending} condemned pack(s) wait for the grace period "
                     f"(next deletion possible from {when})")
    if r.packs_spared:
        lines.append(f"{r.packs_spared} condemned pack(s) were referenced again and kept")
    if r.locked_skipped:
        lines.append(f"{r.locked_skipped} object(s) under Object Lock retention were not deleted")
    if r.temporaries_removed:
        lines.append(f"removed {r.temporaries_removed} temporary file(s) left by interrupted writes")
    lines += [f"warning: {w}" for w in r.warnings]
    emit(r.as_dict(), as_json, "\n".join(lines))
    return report


# ----- locks ------------------------------------------------------------------------------
@click.command("locks")
@json_option
@pass_state
def locks(state: CliState, as_json: bool) -> None:
    """List repository locks with their age (see 'drtool unlock')."""
    now = time.time()
    session = state.session()
    infos = sorted(read_locks(session.repo), key=lambda i: i.created)
    reasons = {i.lock_id: stale_reason(i, now, session.host) for i in infos}
    rows = [{"id": i.lock_id, "exclusive": i.exclusive, "command": i.command, "host": i.host,
             "pid": i.pid, "created": i.created, "heartbeat": i.heartbeat,
             "age_seconds": round(now - i.created, 1), "heartbeat_age_seconds": round(i.age(now), 1),
             "stale": reasons[i.lock_id] is not None, "stale_reason": reasons[i.lock_id]} for i in infos]
    lines = [f"{r['id'][:8]}  {'exclusive' if r['exclusive'] else 'shared':9}  {r['command']:10}  "
             f"{display(r['host'])}:{r['pid']}  age {format_duration(timedelta(seconds=r['age_seconds']))}, "
             f"heartbeat {format_duration(timedelta(seconds=r['heartbeat_age_seconds']))} ago"
             + (f"  STALE ({r['stale_reason']})" if r["stale"] else "") for r in rows]
    emit(rows, as_json, "\n".join(lines) or "no locks")


# ----- status and metrics -------------------------------------------------------------------
def _collect(state: CliState, source: str | None, max_age: str | None) -> status_ops.StatusReport:
    """The status report, or an UNKNOWN one when the repository cannot be read."""
    try:
        limit = _duration(max_age, "--max-age")
        return status_ops.collect(state.session(), state.settings.data, source=source, max_age=limit)
    except DrtoolError as exc:
        return status_ops.unknown(exc.one_line())


@click.command()
@click.option("--source", metavar="NAME", help="Only this source / snapshot series.",
              shell_complete=source_names)
@click.option("--max-age", metavar="DURATION",
              help="CRITICAL when the newest snapshot is older (WARNING at 80%); default 36h.")
@json_option
@pass_state
def status(state: CliState, source: str | None, max_age: str | None, as_json: bool) -> None:
    """Backup freshness per source; exits like a Nagios plugin (0 OK .. 3 UNKNOWN)."""
    report = _collect(state, source, max_age)
    emit(report.as_dict(), as_json, "\n".join([report.summary(), *report.details()]))
    raise click.exceptions.Exit(report.state)


@click.command()
@click.option("--textfile", metavar="PATH", type=click.Path(dir_okay=False),
              help="Write here atomically (node_exporter textfile collector); default stdout.")
@pass_state
def metrics(state: CliState, textfile: str | None) -> None:
    """Prometheus metrics: freshness, sizes, durations, RPO, rehearsal results."""
    report = _collect(state, None, None)
    text = metrics_ops.render(report)
    if textfile:
        metrics_ops.write_textfile(textfile, text)
    else:
        click.echo(text, nl=False)
    if report.error:
        raise DrtoolError(f"metrics written with drtool_repository_up 0: {report.error}")


def register(group: click.Group) -> None:
    for command in (forget, prune, locks, status, metrics):
        group.add_command(command)
