"""``shell_complete`` callbacks: click's own completion (``_DRTOOL_COMPLETE``) with drtool's names.

They read the global ``--repo`` / ``--config`` the user already typed (else
the environment), ask ``drtool.api.complete`` -- config file and catalog,
read-only, never the passphrase -- and turn any failure into "no
candidates": a completion must never prompt or print an error.
"""
from __future__ import annotations

from typing import Callable

import click
from click.shell_completion import CompletionItem


def _globals(ctx: click.Context) -> tuple[str | None, str | None]:
    params = ctx.find_root().params
    return params.get("repo"), params.get("config")


def _quietly(produce: Callable[[], list[CompletionItem]]) -> list[CompletionItem]:
    try:
        return produce()
    except Exception:  # noqa: BLE001 - completion never fails loudly
        return []


def snapshot_ids(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from drtool.api import complete
    return _quietly(lambda: [CompletionItem(value, help=about) for value, about in
                             complete.snapshot_candidates(*_globals(ctx), incomplete)])


def source_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from drtool.api import complete
    return _quietly(lambda: [CompletionItem(n) for n in complete.source_names(*_globals(ctx), incomplete)])


def series_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from drtool.api import complete
    return _quietly(lambda: [CompletionItem(n) for n in complete.series_names(*_globals(ctx), incomplete)])
