"""``drtool repo``: check that a storage location behaves as drtool needs before trusting it."""
from __future__ import annotations

from typing import Any

import click

from drtool.api.monitoring import CheckResult, validate_backend
from drtool.api.repo_access import create_location, open_backend
from drtool.cli.context import CliState, emit, pass_state
from drtool.cli.options import json_option
from drtool.errors import BackendError, DrtoolError


# ----- repo validate ----------------------------------------------------------------------
@click.group("repo")
def repo_group() -> None:
    """Inspect the storage a repository lives on."""


def _location_check(url: str, options: dict[str, Any]) -> tuple[Any, CheckResult]:
    """Open the backend and prepare its location (as init would); never raises."""
    try:
        backend = open_backend(url, options)
    except DrtoolError as exc:
        return None, CheckResult("location", False, exc.one_line())
    try:
        create_location(backend)
    except DrtoolError as exc:
        backend.close()
        return None, CheckResult("location", False, exc.one_line())
    return backend, CheckResult("location", True, f"{backend.url} is reachable")


@repo_group.command("validate")
@json_option
@pass_state
def repo_validate(state: CliState, as_json: bool) -> None:
    """Check the storage behaves as drtool needs (atomic puts, ranges, listing, clock, locks).

    Test objects go under validate/ and are removed afterwards (Object Lock
    may keep them until their retention ends).  Exit 1 if any check fails.
    """
    url = state.repository()
    backend, location = _location_check(url, state.settings.backend_options)
    results = [location]
    if backend is not None:
        try:
            results += validate_backend(backend)
        finally:
            backend.close()
    failed = [r.name for r in results if not r.ok]
    width = max(len(r.name) for r in results)
    emit({"repository": url, "ok": not failed,
          "checks": [{"name": r.name, "ok": r.ok, "detail": r.detail} for r in results]},
         as_json, "\n".join(f"{'ok' if r.ok else 'FAIL':4}  {r.name:{width}}  {r.detail}"
                            for r in results))
    if failed:
        raise BackendError(f"{len(failed)} storage check(s) failed: {', '.join(failed)}",
                           hint="fix the storage (or its configuration) before trusting backups to it")


def register(group: click.Group) -> None:
    group.add_command(repo_group)
