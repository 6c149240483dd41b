"""Rehearsal coverage: is every source's restore proven often enough?  (pure, clock injected)

A backup nobody restored is a hope, not a backup.  Each configured source may
say how often a *passing* rehearsal must prove it (``rehearse_every = "7d"``
in ``[sources.NAME]``); a source whose last passing rehearsal is older than
that -- or that never passed one -- is *overdue*, and ``drtool status`` warns.
The catalog supplies the rows (``drtool.catalog.coverage``); this module
judges them, like ``drtool.snapshot.logwindow`` does for archived logs, so
status, metrics, the fleet sampler and the HTML report judge alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from drtool.errors import ConfigError, UsageError
from drtool.snapshot.timeparse import format_duration, parse_duration

EVERY_KEY = "rehearse_every"
#: states, from best to worst
OK, UNSCHEDULED, OVERDUE, NEVER = "ok", "unscheduled", "overdue", "never"


@dataclass
class Coverage:
    """One source's rehearsal record: last pass, last fail, and when the next pass is due."""

    source: str
    every: timedelta | None = None
    last_pass: datetime | None = None
    last_fail: datetime | None = None
    state: str = UNSCHEDULED
    due: datetime | None = None

    @property
    def last_rehearsed(self) -> datetime | None:
        times = [t for t in (self.last_pass, self.last_fail) if t is not None]
        return max(times) if times else None

    @property
    def needs_attention(self) -> bool:
        return self.state in (OVERDUE, NEVER)

    def message(self, now: datetime) -> str:
        """One line for status output (only meaningful when ``needs_attention``)."""
        every = format_duration(self.every) if self.every else "-"
        if self.state == NEVER:
            return f"no passing rehearsal recorded (rehearse_every {every})"
        assert self.last_pass is not None
        return (f"no passing rehearsal for {format_duration(_whole_minutes(now - self.last_pass))} "
                f"(rehearse_every {every})")

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "state": self.state,
                "rehearse_every_seconds": self.every.total_seconds() if self.every else None,
                "last_pass": _iso(self.last_pass), "last_fail": _iso(self.last_fail),
                "due": _iso(self.due), "overdue": self.needs_attention}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _whole_minutes(td: timedelta) -> timedelta:
    seconds = max(0, int(td.total_seconds()))
    return timedelta(seconds=seconds - seconds % 60 if seconds >= 3600 else seconds)


def judge(source: str, every: timedelta | None, last_pass: datetime | None,
          last_fail: datetime | None, now: datetime) -> Coverage:
    """Due = last pass + every; past due (or never passed) = overdue; no ``every`` = unscheduled."""
    cov = Coverage(source, every, last_pass, last_fail)
    if every is None:
        cov.state = UNSCHEDULED
    elif last_pass is None:
        cov.state, cov.due = NEVER, None
    else:
        cov.due = last_pass + every
        cov.state = OVERDUE if now > cov.due else OK
    return cov


def rehearse_every(sources: Mapping[str, Any], name: str) -> timedelta | None:
    """``[sources.NAME] rehearse_every`` as a duration; None when unset; ConfigError when bad."""
    table = sources.get(name)
    if not isinstance(table, dict) or EVERY_KEY not in table:
        return None
    raw = table[EVERY_KEY]
    try:
        if not isinstance(raw, str):
            raise UsageError(f"must be a duration string such as \"7d\", got {raw!r}")
        every = parse_duration(raw)
        if every <= timedelta(0):
            raise UsageError("must be longer than 0s")
    except UsageError as exc:
        raise ConfigError(f"[sources.{name}] {EVERY_KEY}: {exc}") from None
    return every


def owner_of(step_source: str, names: list[str]) -> str | None:
    """The configured source a rehearsed series belongs to: itself, or ``NAME`` for ``NAME/db``
    (the series of a multi-database source); the longest configured name wins."""
    best = None
    for name in names:
        if step_source == name or step_source.startswith(name + "/"):
            if best is None or len(name) > len(best):
                best = name
    return best
