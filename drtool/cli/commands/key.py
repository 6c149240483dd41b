"""``drtool key``: passphrase slots (list, add, remove, passwd)."""
from __future__ import annotations

import os
import sys

import click

from drtool.api.repo_access import key_name
from drtool.api.settings import Settings, read_passphrase
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option
from drtool.errors import UsageError


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


def register(group: click.Group) -> None:
    group.add_command(key_group)
