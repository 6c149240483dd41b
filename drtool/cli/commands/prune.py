"""``drtool prune``: free the space forgotten snapshots held, within the grace period and Object Lock."""
from __future__ import annotations

from datetime import timedelta

import click

from drtool.api import maintenance
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import dry_run_option, json_option
from drtool.cli.values import duration_value, mib, percent_value


def prune_options(state: CliState, dry_run: bool, max_unused: str | None,
                  grace: str | None) -> maintenance.PruneOptions:
    """Command line over ``[prune]`` config over defaults."""
    conf = state.settings.section("prune")
    lock_days = state.settings.backend_options.get("object_lock_days")
    grace_td = duration_value(grace if grace is not None else conf.get("grace"), "--grace")
    renew = duration_value(conf.get("renew_within"), "prune.renew_within")
    return maintenance.PruneOptions(
        dry_run=dry_run,
        max_unused=percent_value(max_unused if max_unused is not None
                            else conf.get("max_unused", maintenance.DEFAULT_MAX_UNUSED), "--max-unused"),
        grace=maintenance.DEFAULT_GRACE if grace_td is None else grace_td,
        object_lock_days=int(lock_days) if lock_days else None,
        renew_within=timedelta(days=7) if renew is None else renew)


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
    run_prune(state, prune_options(state, dry_run, max_unused, grace), as_json)


def run_prune(state: CliState, options: maintenance.PruneOptions, as_json: bool,
               quiet: bool = False) -> maintenance.PruneReport:
    report = maintenance.prune(state.session(), options)
    if quiet:
        return report
    r = report
    verb = "would " if r.dry_run else ""
    lines = [f"{r.snapshots} snapshot(s), {r.packs} pack(s): {mib(r.used_bytes)} used, "
             f"{mib(r.unused_bytes)} unused",
             f"{verb}repack {r.packs_repacked} pack(s) ({r.blobs_repacked} blob(s)); "
             f"{verb}condemn {r.packs_condemned} pack(s)",
             f"{verb}delete {r.packs_deleted} pack(s), freeing {mib(r.bytes_freed)}"]
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


def register(group: click.Group) -> None:
    group.add_command(prune)
