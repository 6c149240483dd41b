"""Fleet rehearsals: ``drtool rehearse --sample N`` proves a rotating sample of the configured sources.

A hand-written runbook proves the sources someone wrote it for; a fleet of
hundreds of sources needs a policy instead (as AWS Backup restore testing
has): every night pick ``N`` of the configured ``[sources.*]``, **least
recently rehearsed first** (never-rehearsed ones before all others, ties in
random order), and for each a recovery point chosen at random within a
window (default 30 days):

* files, command and object-store (s3, swift) sources: a random snapshot
  taken within the window,
  restored into a directory sandbox and checked against its manifest (file
  count and size, and a re-hashed sample of files);
* database sources: a random *moment* of the recoverable window (a base plus
  archived logs, ``drtool.databases.planner.window_from_catalog``) within the
  sampling window, restored into a throwaway server of the source's engine
  and replayed to that moment -- so the WAL/binlog chain is exercised too;
  sources without archived logs (plain dumps): a random dump of the window,
  loaded into the throwaway server.

When a source has no snapshot within the window its newest one is used (and
the log says so).  Each source is one recorded rehearsal (runbook name
``sampled``), so history, ``status`` coverage (``rehearse_every``) and the
report treat sampled and hand-written drills alike.  The random generator is
seeded from ``--seed`` so a night's choice can be repeated exactly.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from drtool.catalog.coverage import coverage_rows
from drtool.core.session import Session
from drtool.databases.engine import source_engines
from drtool.databases.logarchive import sync_log_segments
from drtool.databases.planner import window_from_catalog
from drtool.errors import ConfigError, UsageError
from drtool.rehearse.drill import RehearsalResult, RehearseOptions, rebuild_rehearsals, rehearse
from drtool.rehearse.runbook import (DB_SANDBOXES, Check, Objectives, RecoveryPoint, Runbook, SandboxSpec,
                                     Step)
from drtool.snapshot.model import Snapshot
from drtool.snapshot.sets import group_sets, stand_in
from drtool.sources.objectstore import OBJECT_STORE_TYPES
from drtool.snapshot.timeparse import format_duration

DEFAULT_WINDOW = timedelta(days=30)
RUNBOOK_NAME = "sampled"
FILE_SAMPLE = 10
FILE_TYPES = ("files", "command", *OBJECT_STORE_TYPES)  # snapshots of file trees: a directory sandbox


@dataclass
class Pick:
    """One source chosen for tonight, and why."""

    source: str
    last_rehearsed: datetime | None

    def reason(self, now: datetime) -> str:
        if self.last_rehearsed is None:
            return "never rehearsed"
        age = max(timedelta(0), now - self.last_rehearsed)
        return f"last rehearsed {format_duration(timedelta(seconds=int(age.total_seconds())))} ago"


def order_sources(names: list[str], last: Mapping[str, datetime | None], rng: random.Random) -> list[Pick]:
    """Least recently rehearsed first; never rehearsed before everything; equal ones shuffled."""
    shuffled = list(names)
    rng.shuffle(shuffled)  # sorted() is stable: the shuffle breaks ties at random
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    ordered = sorted(shuffled, key=lambda n: (last.get(n) is not None, last.get(n) or oldest))
    return [Pick(name, last.get(name)) for name in ordered]


def sandbox_type(name: str, table: Any) -> str:
    """The sandbox a source restores into: a directory, or a server of the source's engine."""
    if not isinstance(table, dict):
        raise ConfigError(f"[sources.{name}] must be a table")
    kind = table.get("type")
    if kind in FILE_TYPES:
        return "directory"
    engine = source_engines().get(str(kind))
    if engine is None or engine.name not in DB_SANDBOXES:
        raise ConfigError(f"[sources.{name}]: type {kind!r} cannot be rehearsed",
                          hint=f"type must be one of {', '.join((*FILE_TYPES, *source_engines()))}")
    return engine.name


def series_of(name: str, table: dict[str, Any], names_in_repo: set[str],
              rng: random.Random) -> tuple[str, str]:
    """(what the step names, the snapshot series): the source and its own series, or one of its
    ``NAME/db`` series at random (named directly: a runbook step does the same)."""
    base = str(table.get("name") or name)
    if "shards" in table:  # a sharded source: its snapshot sets are rehearsed whole, never one shard
        return name, base
    children = sorted(n for n in names_in_repo if n.startswith(base + "/"))
    if base in names_in_repo or not children:
        return name, base  # no snapshot at all: the step fails "no snapshot named ..."
    child = rng.choice(children)
    return child, child


def random_moment(intervals: list[tuple[datetime, datetime]], earliest: datetime, latest: datetime,
                  rng: random.Random) -> datetime | None:
    """A moment drawn uniformly from the recoverable intervals clipped to [earliest, latest]."""
    clipped = [(max(a, earliest), min(b, latest)) for a, b in intervals if b >= earliest and a <= latest]
    if not clipped:
        return None
    total = sum((b - a).total_seconds() for a, b in clipped)
    offset = rng.random() * total
    for start, end in clipped:
        length = (end - start).total_seconds()
        if offset <= length:
            return start + timedelta(seconds=offset)
        offset -= length
    return clipped[-1][1]


def recovery_point(sandbox: str, snaps: list[Snapshot], window: timedelta, now: datetime,
                   rng: random.Random,
                   intervals: list[tuple[datetime, datetime]] | None = None) -> tuple[RecoveryPoint, str]:
    """A random moment of the recoverable window (databases with archived logs), else a random
    snapshot taken within the window."""
    moment = random_moment(intervals or [], now - window, now, rng)
    if sandbox != "directory" and moment is not None:
        return RecoveryPoint("point_in_time", when=moment), ""
    if not snaps:
        return RecoveryPoint(), ""
    recent = [s for s in snaps if s.time >= now - window]
    if not recent:
        return (RecoveryPoint("point_in_time", when=snaps[-1].time),
                f"no snapshot within {format_duration(window)}; using the newest, "
                f"{snaps[-1].time.isoformat(timespec='seconds')}")
    return RecoveryPoint("point_in_time", when=rng.choice(recent).time), ""


def sampled_runbook(source: str, step_source: str, sandbox: str, point: RecoveryPoint,
                    window: timedelta) -> Runbook:
    """A one-step runbook for one sampled source, with the checks every source of its kind gets."""
    where = f"[sources.{source}] (rehearse --sample)"
    checks = []
    if sandbox == "directory":
        checks = [Check("files", "file count and size match the manifest", where),
                  Check("sample", f"re-hash a sample of {FILE_SAMPLE} file(s)", where, count=FILE_SAMPLE)]
    step = Step(source, step_source, point, SandboxSpec(sandbox), checks, Objectives(), where)
    what = "snapshot" if sandbox == "directory" else "moment"
    return Runbook("rehearse --sample", RUNBOOK_NAME,
                   f"random {what} of {step_source} within {format_duration(window)}", [step], Objectives())


def rehearse_sample(session: Session, sources: Mapping[str, Any], count: int,
                    window: timedelta = DEFAULT_WINDOW,
                    options: RehearseOptions | None = None) -> list[RehearsalResult]:
    """Choose ``count`` configured sources and rehearse each at a random recovery point; record all."""
    options = options or RehearseOptions()
    if not sources:
        raise UsageError("--sample chooses among the configured sources, and the config has no "
                         "[sources.*]", hint="add [sources.NAME] tables to the config (docs/databases.md), "
                                             "or give runbook files")
    if window <= timedelta(0):
        raise UsageError("--window must be longer than 0s")
    kinds = {name: sandbox_type(name, table) for name, table in sources.items()}  # all checked first
    rng = random.Random(options.seed if options.seed is not None else random.SystemRandom().randrange(2**31))
    rebuild_rehearsals(session)  # the order needs the whole history, also after catalog loss
    now = options.clock()
    rows = coverage_rows(session.catalog, list(sources))
    last = {name: _last(rows[name].last_pass, rows[name].last_fail) for name in sources}
    picks = order_sources(sorted(sources), last, rng)[:count]
    _log(options, f"sample: {len(picks)} of {len(sources)} configured source(s), least recently "
                  f"rehearsed first: " + ", ".join(f"{p.source} ({p.reason(now)})" for p in picks))
    names_in_repo = {s.name for s in session.snapshots()}
    if any(kind != "directory" for kind in kinds.values()):
        sync_log_segments(session)  # wal-push / binlog-push write only to the repository
    results = []
    for pick in picks:
        table = sources[pick.source]
        step_source, series = series_of(pick.source, table, names_in_repo, rng)
        intervals = _recoverable(session, series) if kinds[pick.source] != "directory" else []
        point, note = recovery_point(kinds[pick.source], _restorable(session, series), window, now, rng,
                                     intervals)
        if note:
            _log(options, f"sample: {pick.source}: {note}")
        book = sampled_runbook(pick.source, step_source, kinds[pick.source], point, window)
        results.append(rehearse(session, book, replace(options, seed=rng.randrange(2**31))))
    return results


def _restorable(session: Session, series: str) -> list[Snapshot]:
    """The series' snapshots, or for a sharded source one stand-in per complete snapshot set."""
    snaps = session.snapshots(series)
    if snaps:
        return snaps
    sets = [s for s in group_sets(session.snapshots())[0] if s.source == series and s.complete]
    return [stand_in(s) for s in sets]


def _recoverable(session: Session, series: str) -> list[tuple[datetime, datetime]]:
    """The intervals a database series can be recovered to (base + archived logs); none for dumps."""
    window = window_from_catalog(session.catalog, series)
    return list(window.intervals) if window is not None else []


def _last(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _log(options: RehearseOptions, line: str) -> None:
    if options.log is not None:
        options.log(line)
