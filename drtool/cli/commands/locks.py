"""``drtool locks`` and ``drtool unlock``: see who holds the repository, remove stale locks."""
from __future__ import annotations

import time
from datetime import timedelta

import click

from drtool.api.repo_access import read_locks, remove_locks, stale_reason
from drtool.api.settings import display, format_duration
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option


@click.command()
@click.option("--force", is_flag=True, help="Remove all locks, also live ones (dangerous).")
@json_option
@pass_state
def unlock(state: CliState, force: bool, as_json: bool) -> None:
    """Remove stale locks (or all with --force); 'drtool locks' lists them first."""
    if force:
        click.echo("drtool: warning: removing all locks; a running backup or prune may be harmed "
                   "(it aborts before committing when it notices)", err=True)
    now = time.time()
    session = state.session()
    removed = remove_locks(session.repo, force=force, host=session.host)
    rows = [{"lock": r.describe(), "id": r.lock_id, "heartbeat_age_seconds": round(r.age(now), 1),
             "stale": reason is not None, "reason": reason} for r, reason in removed]
    live = [] if force else [i for i in read_locks(session.repo)
                             if stale_reason(i, now, session.host) is None]
    lines = [f"removed {r['lock']} ({r['reason'] or 'still live'})" for r in rows] or ["no stale locks"]
    lines += [f"live: {i.describe()}, heartbeat {i.age(now):.0f}s ago (remove with --force only if you are "
              f"sure its process is gone)" for i in live]
    text = "\n".join(lines)
    emit(rows, as_json, text)


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


def register(group: click.Group) -> None:
    group.add_command(locks)
    group.add_command(unlock)
