"""``drtool init``: create an encrypted repository (the catalog beside it)."""
from __future__ import annotations

import click

from drtool import api
from drtool.api.repo_access import KdfParams
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option


@click.command()
@click.option("--kdf-memory-kib", type=int, default=None, hidden=True)
@click.option("--kdf-iterations", type=int, default=None, hidden=True)
@click.option("--group", metavar="GROUP",
              help="OS group that may read and write the repository too (local directories: the backup "
                   "user and the database user share it).")
@json_option
@pass_state
def init(state: CliState, kdf_memory_kib: int | None, kdf_iterations: int | None, group: str | None,
         as_json: bool) -> None:
    """Create a new encrypted repository."""
    kdf = None
    if kdf_memory_kib or kdf_iterations:
        base = KdfParams()
        kdf = KdfParams(kdf_memory_kib or base.memory_kib, kdf_iterations or base.iterations,
                        1 if kdf_memory_kib and kdf_memory_kib < 8192 else base.lanes)
    repo = state.repository()
    repo_id = api.init(repo, state.passphrase(confirm=True), catalog=state.settings.catalog, kdf=kdf,
                       backend_options=state.settings.backend_options, group=group)
    shared = f" (shared with group {group})" if group else ""
    emit({"repository": repo, "id": repo_id, "group": group}, as_json,
         f"created repository {repo_id[:8]} at {repo}{shared}\n"
         "Keep the passphrase safe: without it the backups cannot be read.")


def register(group: click.Group) -> None:
    group.add_command(init)
