"""Restore rehearsals: restore into a sandbox, validate, measure RTO and RPO.

A backup is only as good as its last successful restore.  A rehearsal runs
a runbook's steps (each: pick a recovery point, restore it into a fresh
sandbox, run the validations), measures

* RTO -- from the start of a step until its last validation passed (for a
  whole drill: from the drill's start until the last step was validated);
* RPO -- how much data the recovery point loses: the requested moment
  (now for ``latest``) minus the moment the restored data reflects;

compares them with the runbook's objectives, tears every sandbox down (also
on failure and Ctrl-C), and records the result twice: as a sealed
``rehearsals/`` object in the repository (so history survives the loss of
the catalog) and in the catalog (for queries).  The clock and the random
generator are injected so tests can pin RTO, RPO and ``random_within``.
"""
from __future__ import annotations

import json
import os
import random
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from drtool import __version__
from drtool.catalog.rehearsals import (RehearsalSummary, add_rehearsals, last_rehearsal,
                                       rehearsal_ids)
from drtool.errors import DrtoolError, SnapshotNotFound
from drtool.rehearse.runbook import Objectives, Runbook, Step
from drtool.rehearse.sandbox import (FILE_CHECKS, CheckResult, CheckRunner, Sandbox, SandboxContext,
                               make_sandbox, sandbox_root, sigterm_as_interrupt)
from drtool.core import stages
from drtool.core.session import Session
from drtool.repository.objects import REHEARSAL_KIND, REHEARSALS, object_name
from drtool.snapshot.model import Snapshot
from drtool.snapshot.sets import SnapshotSet, group_sets, stand_in
from drtool.snapshot.timeparse import format_duration, parse_point_in_time

__all__ = ["RehearseOptions", "RehearsalResult", "last_rehearsal", "rebuild_rehearsals", "rehearse",
           "RehearsalSummary"]

DOCUMENT_FORMAT = 1
LOG_LINES_SHOWN = 10
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def fmt_seconds(seconds: float | None) -> str:
    """Durations for people: 4.2s below a minute, else 1h 2m 3s."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_duration(timedelta(seconds=seconds))


@dataclass
class RehearseOptions:
    keep: bool = False
    seed: int | None = None
    sandbox_root: str | None = None
    #: configured sources (the config file's [sources] table): name → settings
    sources: dict[str, Any] = field(default_factory=dict)
    #: drtool.config.Settings, for database sandboxes that hand settings to a restore_command
    settings: Any = None
    clock: Clock = utc_now
    log: Callable[[str], None] | None = None


@dataclass
class StepResult:
    name: str
    source: str
    series: str
    sandbox: str
    recovery_point: str
    objectives: Objectives
    started: datetime
    status: str = "failed"
    target: datetime | None = None
    snapshot: Snapshot | None = None
    recovered_to: datetime | None = None
    validated: datetime | None = None
    restored: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None
    failed: list[str] = field(default_factory=list)
    kept: str | None = None
    server_log: str | None = None  # the end of a failed step's server log (the sandbox goes)
    shards: dict[str, Any] | None = None  # a snapshot set: which shards were restored, of how many
    warnings: list[str] = field(default_factory=list)  # e.g. the newest chain was passed over
    stages: list[dict[str, Any]] = field(default_factory=list)  # the database restore's stages: where RTO went

    @property
    def rto_seconds(self) -> float | None:
        if self.validated is None or self.recovered_to is None:
            return None
        return round((self.validated - self.started).total_seconds(), 3)

    @property
    def rpo_seconds(self) -> float | None:
        if self.target is None or self.recovered_to is None:
            return None
        return round(max(0.0, (self.target - self.recovered_to).total_seconds()), 3)

    def as_dict(self) -> dict[str, Any]:
        snap = self.snapshot
        return {"name": self.name, "source": self.source, "series": self.series,
                "sandbox": self.sandbox, "recovery_point": self.recovery_point,
                "target": _iso(self.target), "snapshot": snap.id if snap else None,
                "snapshot_time": _iso(snap.time) if snap else None,
                "recovered_to": _iso(self.recovered_to), "started": _iso(self.started),
                "validated": _iso(self.validated), "rto_seconds": self.rto_seconds,
                "rpo_seconds": self.rpo_seconds, "objectives": self.objectives.as_dict(),
                "status": self.status, "error": self.error, "restored": self.restored,
                "checks": [c.as_dict() for c in self.checks], "failed": self.failed,
                "kept": self.kept, "server_log": self.server_log, "shards": self.shards,
                "warnings": self.warnings, "stages": self.stages}


@dataclass
class RehearsalResult:
    runbook: Runbook
    host: str
    seed: int
    started: datetime
    steps: list[StepResult] = field(default_factory=list)
    recovered: datetime | None = None
    finished: datetime | None = None
    drill_failed: list[str] = field(default_factory=list)
    id: str = ""
    record_error: str | None = None
    sandbox_root: str = ""  # where the sandboxes went, and which setting said so

    @property
    def status(self) -> str:
        ok = self.steps and all(s.status == "passed" for s in self.steps) and not self.drill_failed
        return "passed" if ok else "failed"

    @property
    def rto_seconds(self) -> float | None:
        if self.recovered is None or any(s.rto_seconds is None for s in self.steps):
            return None
        return round((self.recovered - self.started).total_seconds(), 3)

    @property
    def rpo_seconds(self) -> float | None:
        values = [s.rpo_seconds for s in self.steps]
        return None if not values or None in values else max(v for v in values if v is not None)

    @property
    def failed_checks(self) -> list[str]:
        return [line for s in self.steps for line in s.failed] + self.drill_failed

    @property
    def warnings(self) -> list[str]:
        return [f"step {s.name!r}: {line}" for s in self.steps for line in s.warnings]

    def document(self) -> dict[str, Any]:
        """The JSON stored in the repository and the catalog (format 1)."""
        book = self.runbook
        return {"format": DOCUMENT_FORMAT, "runbook": book.name, "runbook_path": book.path,
                "description": book.description, "host": self.host, "seed": self.seed,
                "started": _iso(self.started), "finished": _iso(self.finished or self.started),
                "recovered": _iso(self.recovered), "status": self.status,
                "rto_seconds": self.rto_seconds, "rpo_seconds": self.rpo_seconds,
                "objectives": book.objectives.as_dict(), "failed_checks": self.failed_checks,
                "drill_failed": self.drill_failed, "warnings": self.warnings, "program_version": __version__,
                "variables": book.variables, "sandbox_root": self.sandbox_root,
                "steps": [s.as_dict() for s in self.steps]}

    def as_dict(self) -> dict[str, Any]:
        return dict(self.document(), id=self.id, record_error=self.record_error)


class _StageTimes(stages.StageWatcher):
    """Keeps a database restore's stages in the step's record and log: a drill's RTO broken down
    (extracting, preparing, replaying), so the drill lead sees which part to work on."""

    def __init__(self, res: StepResult, log: Callable[[str], None]) -> None:
        self._res, self._log = res, log

    def ended(self, stage: stages.Stage, ok: bool) -> None:
        self._res.stages.append({"stage": stage.text, "seconds": round(stage.seconds, 3),
                                 "bytes": stage.done_bytes, "detail": stage.detail, "ok": ok})
        self._log(stage.summary(ok))


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


class _Log:
    """Step-by-step log lines stamped with time since the rehearsal started."""

    def __init__(self, sink: Callable[[str], None] | None, clock: Clock, start: datetime) -> None:
        self.sink, self.clock, self.start = sink, clock, start

    def __call__(self, message: str) -> None:
        if self.sink is not None:
            elapsed = (self.clock() - self.start).total_seconds()
            self.sink(f"[{fmt_seconds(max(0.0, elapsed)):>8}] {message}")


class Rehearsal:
    """One run of one runbook against one open session."""

    def __init__(self, session: Session, runbook: Runbook, options: RehearseOptions) -> None:
        self.session = session
        self.book = runbook
        self.options = options
        self.clock = options.clock
        seed = options.seed if options.seed is not None else runbook.seed
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.rng = random.Random(self.seed)
        self.result = RehearsalResult(runbook, session.host, self.seed, self.clock())
        self.log = _Log(options.log, self.clock, self.result.started)
        self.snapset: SnapshotSet | None = None  # the step's snapshot set (a sharded source)
        self.members: list[Snapshot] = []  # the set's snapshots the step restores (all, or a sample)
        self.shard_numbers: list[int] = []  # and their shard numbers
        self.sandboxes: list[tuple[StepResult, Sandbox]] = []

    def run(self) -> RehearsalResult:
        book, result = self.book, self.result
        self.log(f"rehearsal {book.name} ({book.path}): {len(book.steps)} step(s), seed {self.seed}"
                 + "".join(f", {k}={v}" for k, v in sorted(book.variables.items())))
        root, why = sandbox_root(self.options.sandbox_root, self.options.settings)
        result.sandbox_root = f"{root} ({why})"
        self.log(f"sandboxes under {result.sandbox_root}")
        with sigterm_as_interrupt(), ExitStack() as stack:
            stack.callback(self._teardown)
            for index, step in enumerate(book.steps, 1):
                result.steps.append(self._run_step(index, step))
            result.recovered = self.clock()
        result.finished = self.clock()
        self._drill_objectives()
        self.log(f"rehearsal {book.name} {result.status.upper()}: RTO {fmt_seconds(result.rto_seconds)}"
                 f", RPO {fmt_seconds(result.rpo_seconds)}")
        return result

    # ----- one step ----------------------------------------------------------------
    def _run_step(self, index: int, step: Step) -> StepResult:
        series = _series(step.source, self.options.sources)
        res = StepResult(step.name, step.source, series, step.sandbox.type, step.point.describe(),
                         step.objectives, self.clock())
        where = f"step {index}/{len(self.book.steps)} {step.name}"
        self.log(f"{where}: source {step.source}" + (f" (series {series})" if series != step.source
                                                     else "") + f", recovery point {res.recovery_point}")
        phase = "choosing the recovery point"
        try:
            snap, res.target = self._pick(step, series, res.started)
            res.snapshot = snap
            self.log(f"{where}: snapshot {snap.short_id} of {snap.time.isoformat()} "
                     f"for target {res.target.isoformat()}")
            phase = "creating the sandbox"
            context = SandboxContext(series, _conf(step.source, self.options.sources), self.options.settings)
            sandbox = make_sandbox(step.sandbox, f"{self.book.name}-{step.name}",
                                   sandbox_root(self.options.sandbox_root, self.options.settings)[0], context)
            self.sandboxes.append((res, sandbox))
            sandbox.create()
            phase = "restoring"
            self._restore(where, res, sandbox, snap, any(c.type in FILE_CHECKS for c in step.checks))
            runner = CheckRunner(self.session, sandbox, snap, self.rng, self.clock, self._chained_env(),
                                 shards=self.members if self.snapset else None)
            phase = "checking the restored files"
            self._run_checks(where, step, res, runner, [c for c in step.checks if c.type in FILE_CHECKS])
            phase = f"starting the {sandbox.kind} sandbox"
            res.recovered_to = self._bring_up(where, step, res, sandbox, snap)
            phase = "validating"
            self._run_checks(where, step, res, runner, [c for c in step.checks if c.type not in FILE_CHECKS])
        except (DrtoolError, OSError) as exc:
            text = exc.one_line() if isinstance(exc, DrtoolError) else f"{exc.strerror or exc} ({exc.filename})"
            res.error = f"{phase}: {text}"
            res.failed.append(f"step {step.name!r} failed while {res.error}")
            self.log(f"{where}: FAILED while {res.error}")
            self._keep_server_log(where, res)
            done = {c.where for c in res.checks}
            res.checks += [CheckResult(c.name, c.type, "skipped", "not run: the step failed earlier", 0.0,
                                       c.where) for c in step.checks if c.where not in done]
        res.validated = self.clock()
        self._step_objectives(res)
        res.status = "failed" if res.failed else "passed"
        self.log(f"{where}: {res.status}, RTO {fmt_seconds(res.rto_seconds)}, "
                 f"RPO {fmt_seconds(res.rpo_seconds)}")
        return res

    def _keep_server_log(self, where: str, res: StepResult) -> None:
        """Copy the end of the step's server log into its result before any teardown."""
        sandbox = next((sb for r, sb in self.sandboxes if r is res), None)
        res.server_log = sandbox.server_log() if sandbox is not None else None
        if res.server_log:
            tail = res.server_log.strip().splitlines()[-LOG_LINES_SHOWN:]
            self.log(f"{where}: server log (last {len(tail)} lines; all kept in the rehearsal record):")
            for line in tail:
                self.log(f"{where}:   {line}")

    def _pick(self, step: Step, series: str, now: datetime) -> tuple[Snapshot, datetime]:
        """A snapshot of the series, or for a sharded source a complete snapshot set (one unit:
        ``self.snapset`` holds it, and the returned snapshot stands for it, at the set's time)."""
        snaps = self.session.snapshots(series)
        self.snapset = None
        if not snaps:
            sets = [s for s in group_sets(self.session.snapshots())[0] if s.source == series and s.complete]
            stand_ins = [stand_in(s) for s in sets]
            if stand_ins:
                snap, target = self._choose(step, series, now, stand_ins)
                self.snapset = sets[stand_ins.index(snap)]
                self.members = self._sample_shards(step, self.snapset)
                return snap, target
        return self._choose(step, series, now, snaps)

    def _sample_shards(self, step: Step, snapset: SnapshotSet) -> list[Snapshot]:
        """Every shard, or ``shards = K`` of them drawn with the drill's seed: a set of 256
        shards of 2 TB each cannot be restored whole every quarter, but any one of them can
        be, and which one is not known in advance."""
        if step.shards is None or step.shards >= snapset.shards:
            self.shard_numbers = sorted(snapset.members)
            return snapset.snapshots
        self.shard_numbers = sorted(self.rng.sample(sorted(snapset.members), step.shards))
        return [snapset.members[i] for i in self.shard_numbers]

    def _choose(self, step: Step, series: str, now: datetime, snaps: list[Snapshot]) -> tuple[Snapshot, datetime]:
        if not snaps:
            raise SnapshotNotFound(f"the repository has no snapshot named {series!r}")
        point = step.point
        if point.mode == "random_within":
            earliest = max(now - (point.window or timedelta()), snaps[0].time)
            span = max(0.0, (now - earliest).total_seconds())
            target = earliest + timedelta(seconds=self.rng.random() * span) if span else now
        elif point.mode == "point_in_time":
            when = point.when
            target = when if isinstance(when, datetime) else parse_point_in_time(str(when), now=now)
        else:
            return snaps[-1], now
        eligible = [s for s in snaps if s.time <= target]
        if not eligible:
            raise SnapshotNotFound(f"no snapshot named {series!r} at or before {target.isoformat()}; "
                                   f"the first is from {snaps[0].time.isoformat()}")
        return eligible[-1], target

    def _restore(self, where: str, res: StepResult, sandbox: Sandbox, snap: Snapshot, file_checks: bool) -> None:
        if not self.snapset and not file_checks and sandbox.restores_from_repository(snap):
            # bring_up reads it from the repository as 'drtool restore --source' does: a plain
            # copy first would restore it twice (and a TB-size mariabackup stream needs the disk)
            sandbox.snapshot = snap
            os.makedirs(sandbox.data_dir, exist_ok=True)  # empty: command validations still run there
            res.restored = {"files": int(snap.summary.get("files", 0)), "dirs": int(snap.summary.get("dirs", 0)),
                            "bytes": int(snap.summary.get("size", 0))}
            self.log(f"{where}: snapshot {snap.short_id} is restored by the {sandbox.kind} restore below "
                     f"(no plain copy of its files first: the step has no file-level checks)")
            return
        members = self.members if self.snapset else [snap]
        if self.snapset:
            numbers = self.shard_numbers
            res.shards = {"restored": numbers, "of": self.snapset.shards}
            which = (f"{self.snapset.shards} shards" if len(numbers) == self.snapset.shards else
                     f"shards {', '.join(map(str, numbers))} of {self.snapset.shards}, drawn at random")
        self.log(f"{where}: restoring into {sandbox.kind} sandbox {sandbox.path}"
                 + (f" (snapshot set {self.snapset.id}, {which})" if self.snapset else ""))
        res.restored = {"files": 0, "dirs": 0, "bytes": 0}
        for member in members:
            restored = sandbox.restore_files(self.session, member)
            for key in res.restored:
                res.restored[key] += getattr(restored, key)
        self.log(f"{where}: restored {res.restored['files']} file(s), {res.restored['dirs']} dir(s), "
                 f"{res.restored['bytes'] / 2**20:.1f} MiB")

    def _bring_up(self, where: str, step: Step, res: StepResult, sandbox: Sandbox,
                  snap: Snapshot) -> datetime:
        if sandbox.kind != "directory":
            self.log(f"{where}: starting the {sandbox.kind} sandbox server")
        assert res.target is not None
        try:
            with stages.watching(_StageTimes(res, lambda line: self.log(f"{where}: {line}"))):
                recovered = sandbox.bring_up(self.session, snap, res.target, step.point.mode == "latest")
        finally:
            res.warnings += sandbox.warnings
            for line in sandbox.warnings:
                self.log(f"{where}: WARNING: {line}")
        if recovered != snap.time:
            self.log(f"{where}: data recovered to {recovered.isoformat()}")
        return recovered

    def _run_checks(self, where: str, step: Step, res: StepResult, runner: CheckRunner,
                    checks: list[Any]) -> None:
        for check in checks:
            outcome = runner.run(check)
            res.checks.append(outcome)
            mark = "ok" if outcome.status == "passed" else "FAILED"
            self.log(f"{where}: check {check.name}: {mark} ({fmt_seconds(outcome.seconds)}) "
                     f"{outcome.detail}")
            if outcome.status != "passed":
                res.failed.append(f"step {step.name!r}: check {check.name!r} failed ({check.where}): "
                                  f"{outcome.detail}")

    def _chained_env(self) -> dict[str, str]:
        """Earlier steps' sandboxes, for whole-site checks that span steps."""
        env: dict[str, str] = {}
        for res, sandbox in self.sandboxes:
            key = "".join(c if c.isalnum() else "_" for c in res.name.upper())
            env[f"DRTOOL_STEP_{key}_DIR"] = sandbox.data_dir
        return env

    # ----- objectives and teardown --------------------------------------------------
    def _step_objectives(self, res: StepResult) -> None:
        if res.recovered_to is None:
            return
        res.failed += _missed(f"step {res.name!r}", res.objectives, res.rto_seconds, res.rpo_seconds)
        for line in res.failed[-2:]:
            if line.startswith(f"step {res.name!r}: objective"):
                self.log(line)

    def _drill_objectives(self) -> None:
        if len(self.book.steps) < 2:
            return  # a one-step runbook's objectives were checked on the step
        result = self.result
        if result.rto_seconds is None:
            return
        result.drill_failed = _missed(f"drill {self.book.name!r}", self.book.objectives,
                                      result.rto_seconds, result.rpo_seconds)
        for line in result.drill_failed:
            self.log(line)

    def _teardown(self) -> None:
        for res, sandbox in reversed(self.sandboxes):
            if not sandbox.path:
                continue
            if self.options.keep:
                res.kept = sandbox.describe()
                self.log(f"kept {res.name}: {res.kept}")
                continue
            try:
                sandbox.teardown()
                self.log(f"removed the sandbox of {res.name}")
            except (OSError, DrtoolError) as exc:
                res.failed.append(f"step {res.name!r}: sandbox {sandbox.path} could not be removed: {exc}")
                self.log(res.failed[-1])


def _missed(label: str, objectives: Objectives, rto: float | None, rpo: float | None) -> list[str]:
    lines = []
    for name, measured, goal in (("RTO", rto, objectives.rto), ("RPO", rpo, objectives.rpo)):
        if goal is not None and measured is not None and measured > goal.total_seconds():
            lines.append(f"{label}: objective {name} missed: measured {fmt_seconds(measured)}, "
                         f"objective {fmt_seconds(goal.total_seconds())}")
    return lines


def _conf(source: str, sources: dict[str, Any]) -> dict[str, Any] | None:
    conf = sources.get(source)
    return conf if isinstance(conf, dict) else None


def _series(source: str, sources: dict[str, Any]) -> str:
    """The snapshot series of a source: configured sources name their snapshots after
    themselves (a multi-database source's series are "NAME/db": name those directly)."""
    conf = _conf(source, sources)
    if conf is not None and isinstance(conf.get("name"), str):
        return str(conf["name"])
    return source


# ----- public entry points ----------------------------------------------------------
def rehearse(session: Session, runbook: Runbook, options: RehearseOptions | None = None) -> RehearsalResult:
    """Run ``runbook``; record the result in the repository and catalog; return it."""
    options = options or RehearseOptions()
    result = Rehearsal(session, runbook, options).run()
    try:
        result.id = record(session, result.document())
    except DrtoolError as exc:
        result.record_error = exc.one_line()
    return result


def record(session: Session, document: dict[str, Any]) -> str:
    """Store a rehearsal document as a sealed object, then index it in the catalog."""
    raw = json.dumps(document, sort_keys=True).encode()
    object_id = session.repo.put_object(REHEARSALS, REHEARSAL_KIND, raw)
    add_rehearsals(session.catalog, [dict(document, id=object_id)])
    return object_id


@dataclass
class RehearsalRebuild:
    added: int
    total: int
    damaged: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rebuild_rehearsals(session: Session) -> RehearsalRebuild:
    """Refill the catalog's rehearsal history from the repository's ``rehearsals/`` objects.

    Idempotent and cheap when nothing is missing (one LIST), so history
    commands call it too; rows are only added, never dropped, so a catalog
    shared with a copy of the repository keeps its history.
    """
    repo = session.repo
    ids = repo.list_objects(REHEARSALS)
    missing = sorted(set(ids) - rehearsal_ids(session.catalog))
    docs, damaged = [], []
    for object_id in missing:
        try:
            doc = json.loads(repo.get_object(REHEARSALS, REHEARSAL_KIND, object_id))
            if not isinstance(doc, dict) or "steps" not in doc:
                raise ValueError("not a rehearsal document")
            docs.append(dict(doc, id=object_id))
        except (DrtoolError, ValueError) as exc:
            damaged.append(f"{object_name(REHEARSALS, object_id)}: {exc}")
    added = add_rehearsals(session.catalog, docs)
    return RehearsalRebuild(added, len(ids), damaged)
