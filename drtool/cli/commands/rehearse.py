"""``drtool rehearse``, ``rehearsals`` and ``report``: restore drills, their history, the HTML report."""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from typing import Any

import click

from drtool.api.rehearsals import (
    RehearsalResult,
    RehearseOptions,
    fmt_seconds,
    load_runbooks,
    parse_assignments,
    rebuild_rehearsals,
    rehearsal_history,
    render_html,
)
from drtool.api.rehearsals import rehearse as run_rehearsal
from drtool.api import fleet
from drtool.api.settings import parse_duration
from drtool.cli.complete import source_names
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option
from drtool.errors import DrtoolError, UsageError


def _configured_sources(state: CliState) -> dict[str, Any]:
    sources = state.settings.section("sources")
    return sources if isinstance(sources, dict) else {}


@click.command()
@click.argument("runbooks", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--sample", type=click.IntRange(1), metavar="N",
              help="Instead of runbooks: rehearse N configured sources, least recently rehearsed first.")
@click.option("--window", metavar="DURATION",
              help="With --sample: a random snapshot (files) or moment (databases) within this "
                   "period; default 30d.")
@click.option("--keep", is_flag=True, help="Leave the sandboxes in place and print where they are.")
@click.option("--seed", type=int, help="Seed for random_within and file sampling (repeat a drill).")
@click.option("--sandbox-root", type=click.Path(file_okay=False), metavar="DIR",
              help="Create sandboxes under DIR (else DRTOOL_SANDBOX_ROOT, $SANDBOX, [rehearse] sandbox_root, "
                   "the temp dir).")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              help="Set a variable the runbook declares in [variables] (e.g. --set source=db/wiki).")
@json_option
@pass_state
def rehearse(state: CliState, runbooks: tuple[str, ...], sample: int | None, window: str | None,
             keep: bool, seed: int | None, sandbox_root: str | None, assignments: tuple[str, ...],
             as_json: bool) -> None:
    """Restore into a sandbox, validate, and measure RTO/RPO for each RUNBOOK (or --sample N sources)."""
    if sample is None and window is not None:
        raise UsageError("--window goes with --sample", hint="drtool rehearse --sample 3 --window 30d")
    if (sample is None) == (not runbooks):
        raise UsageError("give runbook file(s) or --sample N, not both" if runbooks else
                         "give runbook file(s) or --sample N",
                         hint="e.g. drtool rehearse runbooks/media-files.toml, or drtool rehearse --sample 3")
    if sample is not None and assignments:
        raise UsageError("--set fills a runbook's [variables]; --sample runs no runbook file")
    # every runbook is checked (with its --set values) before any runs
    books = load_runbooks(list(runbooks), parse_assignments(assignments)) if runbooks else []
    period = parse_duration(window) if window else None
    session = state.session()

    def log(line: str) -> None:
        click.echo(line, err=as_json)
    results: list[RehearsalResult] = []
    if sample is not None:
        options = RehearseOptions(keep=keep, seed=seed, sandbox_root=sandbox_root,
                                  sources=_configured_sources(state), settings=state.settings, log=log)
        results = fleet.rehearse_sample(session, options.sources, sample,
                                            period or fleet.DEFAULT_WINDOW, options)
        if not as_json:
            click.echo("\n".join(_summary(r) for r in results))
    for book in books:
        options = RehearseOptions(keep=keep, seed=seed, sandbox_root=sandbox_root,
                                  sources=_configured_sources(state), settings=state.settings, log=log)
        result = run_rehearsal(session, book, options)
        results.append(result)
        if not as_json:
            click.echo(_summary(result))
    if as_json:
        emit([r.as_dict() for r in results], True)
    _exit_status(results)


def _summary(result: RehearsalResult) -> str:
    book = result.runbook
    head = (f"rehearsal {book.name}: {result.status.upper()} - RTO {fmt_seconds(result.rto_seconds)}"
            f"{_goal(book.objectives.rto)}, RPO {fmt_seconds(result.rpo_seconds)}"
            f"{_goal(book.objectives.rpo)}"
            + (f" (recorded as {result.id[:8]})" if result.id else ""))
    lines = [head, f"  {'STEP':16} {'SOURCE':16} {'SNAPSHOT':8}  {'RECOVERED TO':25}  "
                   f"{'RTO (OBJECTIVE)':18} {'RPO (OBJECTIVE)':18} STATUS"]
    for step in result.steps:
        snap = step.snapshot.short_id if step.snapshot else "-"
        recovered = step.recovered_to.astimezone().isoformat(timespec="seconds") \
            if step.recovered_to else "-"
        rto = fmt_seconds(step.rto_seconds) + _goal(step.objectives.rto)
        rpo = fmt_seconds(step.rpo_seconds) + _goal(step.objectives.rpo)
        lines.append(f"  {step.name[:16]:16} {step.source[:16]:16} {snap:8}  {recovered:25}  "
                     f"{rto:18} {rpo:18} {step.status}")
        if step.shards and len(step.shards["restored"]) < step.shards["of"]:
            lines.append(f"  {'':16} sampled shards {', '.join(map(str, step.shards['restored']))} "
                         f"of {step.shards['of']}: the RTO is theirs, not the whole set's")
    lines += [f"  failed: {line}" for line in result.failed_checks]
    lines += [f"  warning: {line}" for line in result.warnings]
    if result.record_error:
        lines.append(f"  not recorded: {result.record_error}")
    return "\n".join(lines)


def _goal(goal: Any) -> str:
    return f" ({fmt_seconds(goal.total_seconds())})" if goal is not None else ""


def _exit_status(results: list[RehearsalResult]) -> None:
    failed = [r for r in results if r.status != "passed"]
    unrecorded = [r for r in results if r.record_error]
    if failed:
        first = "; ".join(f"{r.runbook.name}: {(r.failed_checks or ['failed'])[0]}" for r in failed)
        raise DrtoolError(f"{len(failed)} of {len(results)} rehearsal(s) failed ({first})",
                          hint="see the log above; re-run with --keep to inspect the sandbox")
    if unrecorded:
        raise DrtoolError(f"rehearsal passed but could not be recorded: {unrecorded[0].record_error}")


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.now(timezone.utc) - parse_duration(value)


@click.command()
@click.option("--source", metavar="NAME", help="Only rehearsals that restored this source.",
              shell_complete=source_names)
@click.option("--since", metavar="DURATION", help="Only rehearsals started in this period (e.g. 90d).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@json_option
@pass_state
def rehearsals(state: CliState, source: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """History of rehearsals: recovery point, timings, RTO/RPO, result, failed checks."""
    session = state.session()
    rebuild_rehearsals(session)  # history survives catalog loss: refill from the repository
    docs = rehearsal_history(session.catalog, source, _since(since), limit)
    if as_json:
        emit(docs, True)
        return
    click.echo(f"{'ID':8}  {'RUNBOOK':20}  {'RECOVERY POINT':28}  {'STARTED':19}  {'FINISHED':19}  "
               f"{'RTO':>9}  {'RPO':>9}  {'STATUS':6}  FAILED CHECKS")
    for doc in docs:
        click.echo(_history_line(doc, source))
    click.echo(f"{len(docs)} rehearsal(s)")


def _history_line(doc: dict[str, Any], source: str | None) -> str:
    steps = doc.get("steps", [])
    step = next((s for s in steps if s["source"] == source), None) if source else \
        (steps[0] if len(steps) == 1 else None)
    if step is not None:
        point = f"{step['source']}@{_short_time(step.get('recovered_to') or step.get('target'))}"
        rto, rpo, status = step.get("rto_seconds"), step.get("rpo_seconds"), step["status"]
        failed = step.get("failed", []) + doc.get("drill_failed", [])
        failed += [f"warning: {w}" for w in step.get("warnings", [])]
    else:
        point = f"{len(steps)} steps"
        rto, rpo, status = doc.get("rto_seconds"), doc.get("rpo_seconds"), doc["status"]
        failed = doc.get("failed_checks", []) + [f"warning: {w}" for w in doc.get("warnings", [])]
    return (f"{doc['id'][:8]:8}  {doc['runbook'][:20]:20}  {point[:28]:28}  "
            f"{_short_time(doc['started']):19}  {_short_time(doc['finished']):19}  "
            f"{fmt_seconds(rto):>9}  {fmt_seconds(rpo):>9}  {status:6}  {' | '.join(failed) or '-'}")


def _short_time(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


@click.command()
@click.option("--html", "html_file", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Write a self-contained HTML report to FILE.")
@click.option("--since", default="90d", show_default=True, metavar="DURATION",
              help="Cover rehearsals started in this period.")
@json_option
@pass_state
def report(state: CliState, html_file: str, since: str, as_json: bool) -> None:
    """Write the DR drill report: per source the last rehearsal, RTO/RPO and trends."""
    window = parse_duration(since)
    session = state.session()
    rebuild_rehearsals(session)
    now = datetime.now(timezone.utc)
    docs = rehearsal_history(session.catalog, since=now - window)
    page = render_html(docs, now, window, repository=state.repository(),
                       coverage=fleet.coverage(session, state.settings.data, now))
    _write_atomically(html_file, page)
    sources = sorted({s["source"] for d in docs for s in d.get("steps", [])})
    emit({"file": html_file, "rehearsals": len(docs), "sources": sources}, as_json,
         f"wrote {html_file}: {len(docs)} rehearsal(s) of {len(sources)} source(s)")


def _write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".drtool-report-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write the report {path}: {exc.strerror}") from None


def register(group: click.Group) -> None:
    group.add_command(rehearse)
    group.add_command(rehearsals)
    group.add_command(report)
