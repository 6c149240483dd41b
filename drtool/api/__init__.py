"""drtool's one door: every use case the CLI offers, as a small, stable Python API.

    from drtool import api
    with api.open_repository("/srv/backup", passphrase=b"...") as repo:
        result = api.backup(repo, ["/srv/media"], name="media")
        api.restore(repo, "latest", "/tmp/r", name="media")

The CLI imports nothing else below it (tests/test_layering.py): what a
command needs is exported by one module per feature -- ``settings`` (light:
configuration, names, times), ``repo_access``, ``backing_up``, ``restoring``,
``databases``, ``maintenance``, ``monitoring``, ``rehearsals``, ``objectstores``, ``shardsets``,
``browse``.  Names are
resolved lazily, so ``drtool pg wal-push`` does not pay for the restore
engine it never runs.  Every failure is a :class:`drtool.errors.DrtoolError`
with an ``exit_code``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drtool.api.backing_up import FileOps, Reading, backup, backup_command
    from drtool.api.browse import (diff, dump, find_files, find_files_without_key, index_files, ls, ls_lines,
                                   mount, parse_size, rewrite, rewrite_history)
    from drtool.api.maintenance import check, rebuild_catalog
    from drtool.api.repo_access import KdfParams, Session, init, open_repository, snapshots
    from drtool.api.restoring import RestoreRequest, pick_snapshot, restore, restore_plan

_HOME = {
    "KdfParams": "repo_access", "Session": "repo_access", "init": "repo_access",
    "open_repository": "repo_access", "snapshots": "repo_access",
    "backup": "backing_up", "backup_command": "backing_up", "FileOps": "backing_up", "Reading": "backing_up",
    "RestoreRequest": "restoring", "pick_snapshot": "restoring", "restore": "restoring",
    "restore_plan": "restoring",
    "check": "maintenance", "rebuild_catalog": "maintenance",
    **dict.fromkeys(("diff", "dump", "find_files", "find_files_without_key", "index_files", "ls", "ls_lines",
                     "mount", "parse_size", "rewrite", "rewrite_history"), "browse"),
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'drtool.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"drtool.api.{home}"), name)
    globals()[name] = value
    return value
