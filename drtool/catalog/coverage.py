"""Rehearsal coverage rows: per configured source, the last passing and the last failing rehearsal.

Rows only: one GROUP BY over the per-step table (``rehearsal_steps``), so
``drtool status`` and the metrics pay one small query however long the
history is.  Judging the rows (due, overdue) is ``drtool.snapshot.coverage``.
A step counts for the configured source it restored -- also ``NAME/db``
series of a multi-database source count for ``NAME``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from sqlalchemy import func, select

from drtool.catalog.models import rehearsal_step_table
from drtool.catalog.store import Catalog
from drtool.snapshot.coverage import owner_of

PASSED = "passed"


@dataclass
class CoverageRow:
    source: str
    last_pass: datetime | None = None
    last_fail: datetime | None = None


def _aware(value: datetime | None) -> datetime | None:
    """SQLite drops the zone of DateTime(timezone=True) values; they are stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def coverage_rows(catalog: Catalog, names: Iterable[str]) -> dict[str, CoverageRow]:
    """``{name: CoverageRow}`` for every name given (rows with no rehearsal have no times)."""
    names = list(names)
    rows = {name: CoverageRow(name) for name in names}
    steps = rehearsal_step_table.c
    query = (select(steps.source, steps.status, func.max(steps.started))
             .where(steps.repo_id == catalog.repo_id).group_by(steps.source, steps.status))
    with catalog.engine.connect() as conn:
        found = conn.execute(query).all()
    for source, status, started in found:
        owner = owner_of(source, names)
        when = _aware(started)
        if owner is None or when is None:
            continue
        row = rows[owner]
        if status == PASSED:
            row.last_pass = when if row.last_pass is None else max(row.last_pass, when)
        else:
            row.last_fail = when if row.last_fail is None else max(row.last_fail, when)
    return rows
