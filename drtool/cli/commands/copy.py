"""``drtool copy``: snapshots to a second repository (another site, another key)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from drtool.api import maintenance
from drtool.api.repo_access import KdfParams, OpenOptions
from drtool.api.settings import Settings, read_passphrase
from drtool.cli.complete import snapshot_ids
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option, name_option
from drtool.errors import ConfigError, PartialSuccess, UsageError, WrongPassword

log = logging.getLogger("drtool")


# [copy] keys that describe the destination itself; any other key is an S3 option.
COPY_KEYS = {"repository", "catalog", "password_file", "password_command", "s3"}


TO_PASSWORD_VARS = ("DRTOOL_TO_PASSWORD", "DRTOOL_TO_PASSWORD_FILE", "DRTOOL_TO_PASSWORD_COMMAND")


# ----- copy -----------------------------------------------------------------------------
def _destination_url(state: CliState, to: str | None, conf: dict[str, Any]) -> str:
    url = to or conf.get("repository")
    if not url or not isinstance(url, str):
        raise UsageError("no destination repository given",
                         hint="pass --to URL or set repository in the config's [copy] table")
    if "://" in url:
        return url
    if to is None and state.settings.path:  # relative to the config file, like [repository]
        return str((Path(state.settings.path).parent / url).resolve())
    return os.path.abspath(url)


def _destination_backend_options(conf: dict[str, Any]) -> dict[str, Any]:
    """``[copy]`` keys other than the destination's own, overlaid by ``[copy.s3]``."""
    nested = conf.get("s3", {})
    if not isinstance(nested, dict):
        raise ConfigError("[copy.s3] must be a table")
    options = {k: v for k, v in conf.items() if k not in COPY_KEYS}
    options.update(nested)
    return options


def _destination_passphrase(state: CliState, conf: dict[str, Any]) -> bytes:
    """DRTOOL_TO_PASSWORD(_FILE|_COMMAND), then [copy] password_file/_command, else the source's.

    Reusing the source passphrase keeps the break-glass kit small (bucket,
    credentials, one passphrase); the keys themselves still differ.
    """
    env = {var.replace("_TO_", "_"): os.environ.get(var, "") for var in TO_PASSWORD_VARS}
    settings = Settings(password_file=conf.get("password_file"),
                        password_command=conf.get("password_command"))
    if any(env.values()) or settings.password_file or settings.password_command:
        return read_passphrase(settings, None, env)
    log.info("destination passphrase: the source's (set DRTOOL_TO_PASSWORD_FILE for another)")
    return state.passphrase()


def destination_options(state: CliState, to: str | None) -> OpenOptions:
    conf = state.settings.section("copy")
    options = OpenOptions(_destination_url(state, to, conf), _destination_passphrase(state, conf),
                          os.environ.get("DRTOOL_TO_CATALOG") or conf.get("catalog"),
                          backend_options=_destination_backend_options(conf),
                          lock_wait=state.lock_wait)
    if state.settings.host:
        options.host = state.settings.host
    return options


@click.command("copy")
@click.argument("snapshots", nargs=-1, metavar="[SNAPSHOT]...", shell_complete=snapshot_ids)
@click.option("--to", "to", metavar="URL",
              help="Destination repository (or [copy] repository); created if absent.")
@name_option
@click.option("--kdf-memory-kib", type=int, default=None, hidden=True)
@click.option("--kdf-iterations", type=int, default=None, hidden=True)
@json_option
@pass_state
def copy(state: CliState, snapshots: tuple[str, ...], to: str | None, name: str | None,
         kdf_memory_kib: int | None, kdf_iterations: int | None, as_json: bool) -> None:
    """Copy snapshots (default: all; or ids / 'latest') to a second repository.

    Only data the destination lacks is transferred; snapshots already copied
    are skipped.  The destination has its own keys; its passphrase comes from
    DRTOOL_TO_PASSWORD_FILE / DRTOOL_TO_PASSWORD_COMMAND (else the source's).
    """
    dest = destination_options(state, to)
    maintenance.check_apart(state.repository(), dest.repository)  # before anything is opened or created
    source = state.session()
    kdf = None
    if kdf_memory_kib or kdf_iterations:
        base = KdfParams()
        kdf = KdfParams(kdf_memory_kib or base.memory_kib, kdf_iterations or base.iterations,
                        1 if kdf_memory_kib and kdf_memory_kib < 8192 else base.lanes)
    try:
        dst, created = maintenance.open_destination(dest, kdf)
    except WrongPassword as exc:
        raise WrongPassword(f"destination {dest.repository}: {exc}",
                            hint="check DRTOOL_TO_PASSWORD_FILE / DRTOOL_TO_PASSWORD_COMMAND or "
                                 "[copy] password_file (default: the source passphrase)") from None
    try:
        report = maintenance.copy_snapshots(source, dst, maintenance.CopyOptions(list(snapshots), name))
    finally:
        dst.close()
    report.initialized = created
    text = maintenance.summary_line(report)
    if created:
        text = f"created repository at {report.destination}\n{text}"
    emit(report.as_dict(), as_json, text)
    if report.refused:
        ids = " ".join(r["source"][:8] for r in report.refused)
        raise PartialSuccess(f"{len(report.refused)} incremental snapshot(s) not copied, their chain is lost: "
                             f"{report.refused[0]['problem']}" + (" (and more, see the warnings)"
                                                                 if len(report.refused) > 1 else ""),
                             hint=f"they cannot be restored anywhere; take a full backup (drtool backup "
                                  f"--source NAME --full), then forget them: drtool forget {ids}")


def register(group: click.Group) -> None:
    group.add_command(copy)
