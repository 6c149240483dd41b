"""Rehearsal history in the catalog: one row per drill, one per restored step.

Unlike snapshots, rehearsal history cannot be recomputed from the data, so
each drill is also stored in the repository as a sealed ``rehearsals/``
object; these rows are an index over those documents (the ``document``
column holds the full JSON) and are refilled by ``rebuild_rehearsals``.
The per-step table exists so "the last drill of source X" is one query, also
for whole-site drills that restore many sources at once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import DatabaseError, OperationalError

from drtool.catalog.models import rehearsal_step_table, rehearsal_table
from drtool.catalog.store import Catalog
from drtool.errors import CatalogError


@dataclass
class RehearsalSummary:
    """The last rehearsal of one source, as ``drtool status`` shows it.

    ``status`` is this source's step result ("passed"/"failed"); objectives
    are in seconds (None when the runbook sets none); ``failed_checks`` are
    one-line messages for this step and for missed drill-wide objectives;
    ``warnings`` what the step passed despite (its restore passed over the
    newest base: a broken chain or a lost pack).
    """

    id: str
    runbook: str
    source: str
    step: str
    started: datetime
    finished: datetime
    status: str
    rehearsal_status: str
    rto_seconds: float | None
    rpo_seconds: float | None
    rto_objective: float | None
    rpo_objective: float | None
    snapshot_id: str | None
    failed_checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["started"] = self.started.isoformat()
        data["finished"] = self.finished.isoformat()
        return data


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _begin(catalog: Catalog):  # type: ignore[no-untyped-def]
    try:
        return catalog.engine.begin()
    except (DatabaseError, OperationalError) as exc:
        raise CatalogError(f"the catalog cannot be written: {exc}") from None


def add_rehearsals(catalog: Catalog, documents: Iterable[dict[str, Any]]) -> int:
    """Insert rehearsal documents (each with its repository object ``id``); skip known ones."""
    known = rehearsal_ids(catalog)
    rows, steps = [], []
    for doc in documents:
        if doc["id"] in known:
            continue
        known.add(doc["id"])
        rows.append(_row(catalog.repo_id, doc))
        steps.extend(_step_rows(catalog.repo_id, doc))
    if rows:
        with _begin(catalog) as conn:
            conn.execute(insert(rehearsal_table), rows)
            if steps:
                conn.execute(insert(rehearsal_step_table), steps)
    return len(rows)


def _row(repo_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {"repo_id": repo_id, "id": doc["id"], "runbook": doc["runbook"], "host": doc.get("host", ""),
            "started": parse_time(doc["started"]), "finished": parse_time(doc["finished"]),
            "status": doc["status"], "rto_seconds": doc.get("rto_seconds"),
            "rpo_seconds": doc.get("rpo_seconds"), "document": json.dumps(doc, sort_keys=True)}


def _step_rows(repo_id: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"repo_id": repo_id, "rehearsal_id": doc["id"], "position": i, "name": step["name"],
             "source": step["source"], "snapshot_id": step.get("snapshot"),
             "started": parse_time(doc["started"]), "status": step["status"],
             "rto_seconds": step.get("rto_seconds"), "rpo_seconds": step.get("rpo_seconds")}
            for i, step in enumerate(doc.get("steps", []))]


def remove_rehearsals(catalog: Catalog, ids: Iterable[str]) -> None:
    ids = list(ids)
    if ids:
        with _begin(catalog) as conn:
            for table, column in ((rehearsal_step_table, rehearsal_step_table.c.rehearsal_id),
                                  (rehearsal_table, rehearsal_table.c.id)):
                conn.execute(delete(table).where(table.c.repo_id == catalog.repo_id, column.in_(ids)))


def rehearsal_ids(catalog: Catalog) -> set[str]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(select(rehearsal_table.c.id).where(rehearsal_table.c.repo_id == catalog.repo_id))
        return {r[0] for r in rows}


def rehearsal_history(catalog: Catalog, source: str | None = None, since: datetime | None = None,
                      limit: int | None = None) -> list[dict[str, Any]]:
    """Rehearsal documents, oldest first; with ``source`` only drills that restored it."""
    query = select(rehearsal_table.c.document).where(rehearsal_table.c.repo_id == catalog.repo_id)
    if source:
        ids = select(rehearsal_step_table.c.rehearsal_id).where(
            rehearsal_step_table.c.repo_id == catalog.repo_id, rehearsal_step_table.c.source == source)
        query = query.where(rehearsal_table.c.id.in_(ids))
    if since is not None:
        query = query.where(rehearsal_table.c.started >= since.astimezone(timezone.utc))
    query = query.order_by(rehearsal_table.c.started.desc(), rehearsal_table.c.id)
    if limit:
        query = query.limit(limit)
    with catalog.engine.connect() as conn:
        docs = [json.loads(r[0]) for r in conn.execute(query)]
    return docs[::-1]


def last_rehearsal(catalog: Catalog, source: str) -> RehearsalSummary | None:
    """The most recent rehearsal that restored ``source`` (for ``drtool status``)."""
    query = (select(rehearsal_table.c.document, rehearsal_step_table.c.position)
             .join(rehearsal_step_table, (rehearsal_step_table.c.repo_id == rehearsal_table.c.repo_id)
                   & (rehearsal_step_table.c.rehearsal_id == rehearsal_table.c.id))
             .where(rehearsal_table.c.repo_id == catalog.repo_id, rehearsal_step_table.c.source == source)
             .order_by(rehearsal_table.c.started.desc(), rehearsal_step_table.c.position.desc()).limit(1))
    with catalog.engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return summarize_step(json.loads(row[0]), row[1])


def summarize_step(doc: dict[str, Any], position: int) -> RehearsalSummary:
    step = doc["steps"][position]
    objectives = step.get("objectives") or {}
    failed = list(step.get("failed", [])) + list(doc.get("drill_failed", []))
    return RehearsalSummary(
        id=doc["id"], runbook=doc["runbook"], source=step["source"], step=step["name"],
        started=parse_time(doc["started"]), finished=parse_time(doc["finished"]),
        status=step["status"], rehearsal_status=doc["status"],
        rto_seconds=step.get("rto_seconds"), rpo_seconds=step.get("rpo_seconds"),
        rto_objective=objectives.get("rto"), rpo_objective=objectives.get("rpo"),
        snapshot_id=step.get("snapshot"), failed_checks=failed, warnings=list(step.get("warnings", [])))
