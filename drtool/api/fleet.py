"""Fleet rehearsals and rehearsal coverage (``drtool rehearse --sample``, docs/rehearsals.md)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping

from drtool.core.session import Session
from drtool.monitor.status import source_coverage
from drtool.rehearse.drill import RehearsalResult, RehearseOptions
from drtool.rehearse.fleet import DEFAULT_WINDOW, rehearse_sample as _rehearse_sample

__all__ = ["DEFAULT_WINDOW", "coverage", "rehearse_sample"]


def rehearse_sample(session: Session, sources: Mapping[str, Any], count: int,
                    window: timedelta = DEFAULT_WINDOW,
                    options: RehearseOptions | None = None) -> list[RehearsalResult]:
    """Rehearse ``count`` configured sources, least recently rehearsed first, each at a random
    recovery point within ``window``; every result is recorded."""
    return _rehearse_sample(session, sources, count, window, options)


def coverage(session: Session, config: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
    """Every configured source's last pass, last fail and due time under its ``rehearse_every``."""
    sources = config.get("sources") or {}
    names = sorted(sources) if isinstance(sources, dict) else []
    return [c.as_dict() for c in source_coverage(session, config, names, now).values()]
