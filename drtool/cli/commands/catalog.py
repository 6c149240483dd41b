"""``drtool catalog``: rebuild the catalog from the repository."""
from __future__ import annotations

import click

from drtool import api
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option


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


def register(group: click.Group) -> None:
    group.add_command(catalog_group)
