"""catalog rebuild, key add|list|remove|passwd, unlock."""
from __future__ import annotations

import os
import sys
import time

import click

from drtool import api
from drtool.cli.context import CliState, emit
from drtool.cli.options import json_option
from drtool.config import Settings, read_passphrase
from drtool.errors import UsageError
from drtool.repository.locks import read_locks, remove_locks, stale_reason
from drtool.repository.objects import key_name

pass_state = click.make_pass_decorator(CliState)


@click.group("catalog")
def catalog_group() -> None:
    """Manage the local catalog (a rebuildable cache plus run history)."""


@catalog_group.command("rebuild")
@json_option
@pass_state
def catalog_rebuild(state: CliState, as_json: bool) -> None:
    """Reconstruct the catalog from the repository alone."""
    result = api.rebuild_catalog(state.session(replace_damaged_catalog=True))
    emit(result.as_dict(), as_json,
         f"catalog rebuilt: {result.snapshots} snapshot(s), {result.index_objects} index object(s), "
         f"{result.packs_reindexed} unindexed pack(s) indexed, {result.log_segments} archived "
         f"log file(s), {result.rehearsals} rehearsal(s)"
         + "".join(f"\nwarning: {d}" for d in result.damaged + result.vanished))


def _new_passphrase() -> bytes:
    """The new passphrase: DRTOOL_NEW_PASSWORD(_FILE) or a confirmed prompt, never argv, never empty."""
    env = {"DRTOOL_PASSWORD": os.environ.get("DRTOOL_NEW_PASSWORD", ""),
           "DRTOOL_PASSWORD_FILE": os.environ.get("DRTOOL_NEW_PASSWORD_FILE", "")}
    prompt = None
    if sys.stdin.isatty():
        def prompt() -> str:
            return click.prompt("New passphrase", hide_input=True, confirmation_prompt=True, err=True)
    if not any(env.values()) and prompt is None:
        raise UsageError("no new passphrase given", hint="set DRTOOL_NEW_PASSWORD_FILE")
    try:
        return read_passphrase(Settings(), prompt, env, new=True)
    except UsageError as exc:
        raise UsageError(str(exc).replace("the password file", "the new password file (DRTOOL_NEW_PASSWORD_FILE)"),
                         hint=exc.hint) from None


@click.group("key")
def key_group() -> None:
    """Manage key slots (passphrases that open the repository)."""


@key_group.command("list")
@json_option
@pass_state
def key_list(state: CliState, as_json: bool) -> None:
    session = state.session()
    slots = session.repo.list_key_slots()
    rows = [{"id": s.slot_id, "created": s.created, "label": s.label,
             "current": s.slot_id == session.repo.slot_id,
             "kdf": {"memory_kib": s.params.memory_kib, "iterations": s.params.iterations}}
            for s in slots]
    emit(rows, as_json, "\n".join(f"{'*' if r['current'] else ' '} {r['id']}  {r['created']}  {r['label']}"
                                  for r in rows))


@key_group.command("add")
@click.option("--label", default="", help="A note to tell the slots apart (no secrets).")
@json_option
@pass_state
def key_add(state: CliState, label: str, as_json: bool) -> None:
    slot = state.session().repo.add_key_slot(_new_passphrase(), label=label)
    emit({"id": slot.slot_id}, as_json, f"added key slot {slot.slot_id}")


@key_group.command("remove")
@click.argument("slot_id")
@json_option
@pass_state
def key_remove(state: CliState, slot_id: str, as_json: bool) -> None:
    session = state.session()
    if slot_id == session.repo.slot_id:
        raise UsageError("refusing to remove the key slot in use",
                         hint="open the repository with another passphrase first")
    session.repo.remove_key_slot(slot_id)
    emit({"removed": slot_id}, as_json, f"removed key slot {slot_id}")


@key_group.command("passwd")
@json_option
@pass_state
def key_passwd(state: CliState, as_json: bool) -> None:
    """Change the passphrase of the slot in use (adds the new slot before removing the old)."""
    repo = state.session().repo
    old = repo.slot_id
    slot = repo.add_key_slot(_new_passphrase(), label="passwd")
    repo.backend.delete(key_name(old))
    emit({"id": slot.slot_id, "replaced": old}, as_json, f"passphrase changed (slot {slot.slot_id})")


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


def register(group: click.Group) -> None:
    for command in (catalog_group, key_group, unlock):
        group.add_command(command)
