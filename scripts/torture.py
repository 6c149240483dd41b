#!/usr/bin/env python3
"""Randomized torture run: kill -9 and named crash points during every kind of
operation, then prove that nothing committed was lost.

    scripts/torture [--minutes N] [--seed S] [--work DIR] [--keep] [--no-s3] [--json FILE]

Local phase (~75 % of the time): backup of a changing tree, restore, forget,
prune (grace 0s), copy to a second repository, catalog rebuild and
``pg wal-push``, each a subprocess left alone, SIGKILLed at a random moment or
killed at a ``DRTOOL_CRASH_AT`` point.  After every kill ``check --read-data``
must pass, every snapshot committed before must still be listed (unless a
forget may have removed it) and restore byte for byte (new ones and a sample
of old ones; all at the end), acknowledged WAL files must fetch back intact.
S3 phase (~25 %): the same against moto behind tests/fault_proxy.py failing
10 % of requests with every fault kind (verification runs without faults).
Finally prune runs until nothing is condemned.  Exit 1 on any loss or broken
invariant.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from drtool import api  # noqa: E402
from drtool.api.maintenance import DataSubset  # noqa: E402
from drtool.snapshot.logwindow import WAL  # noqa: E402
from drtool.errors import DrtoolError, LockHeld  # noqa: E402
from drtool.databases import logarchive  # noqa: E402
from drtool.core.session import OpenOptions  # noqa: E402
from torture_s3 import AWS_ENV, create_bucket, start_moto  # noqa: E402  (scripts/torture_s3.py)

PASSWORD = "torture passphrase"
CRASH_POINTS = {
    "backup": ["backup-before-flush", "backup-before-snapshot", "backup-after-snapshot"],
    "prune": ["prune-after-repack", "prune-after-index-write", "prune-after-record",
              "prune-after-index-delete", "prune-mid-pack-delete", "prune-after-pack-delete"],
    "forget": ["forget-mid-delete"], "rebuild": ["rebuild-after-clear"],
    "wal": ["wal-push-after-put"], "copy": ["copy-before-snapshot"], "restore": [],
}
WAL_SOURCE = "torture"
MiB = 1024 * 1024


# ----- bookkeeping -----------------------------------------------------------------------------
@dataclass
class Tally:
    runs: int = 0
    kills: int = 0
    crash_points: int = 0
    faults: int = 0
    clean_failures: int = 0
    checks: int = 0
    verified: int = 0
    wal_verified: int = 0
    forgotten: int = 0
    lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def row(self, label: str) -> str:
        return (f"{label:8} {self.runs:6} {self.kills:6} {self.crash_points:7} {self.faults:7} "
                f"{self.clean_failures:9} {self.checks:7} {self.verified:9} {len(self.lost):5}")


HEADER = (f"{'phase':8} {'runs':>6} {'kills':>6} {'crashpt':>7} {'faults':>7} {'cleanfail':>9} "
          f"{'checks':>7} {'verified':>9} {'lost':>5}")


def digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class Source:
    """A tree that changes every generation; its digest per generation is the expectation."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng, self.generation = root, rng, 0
        for d in range(4):
            (root / f"dir{d}").mkdir(parents=True, exist_ok=True)

    def mutate(self) -> tuple[str, dict[str, str]]:
        self.generation += 1
        rng = self.rng
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        for path in rng.sample(files, min(len(files), rng.randint(0, 2))):
            path.unlink()
        for _ in range(rng.randint(1, 4)):
            folder = self.root / f"dir{rng.randrange(4)}"
            name = folder / f"f{rng.randrange(40):02d}.{'txt' if rng.random() < 0.3 else 'bin'}"
            if name.suffix == ".txt":
                name.write_text(f"generation {self.generation} line\n" * rng.randint(100, 50_000))
            else:
                size = rng.choice([20_000, 300_000, 1 * MiB, 3 * MiB]) + rng.randrange(5000)
                name.write_bytes(rng.randbytes(size))
        total = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        while total > 24 * MiB:  # keep the repository (and check --read-data) small
            victim = max((p for p in self.root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
            total -= victim.stat().st_size
            victim.unlink()
        return f"g{self.generation}", digest_tree(self.root)


# ----- one repository under test ------------------------------------------------------------------
class Lab:
    """A repository, how to reach it, and the ledger of what it must still hold."""

    def __init__(self, name: str, work: Path, url: str, tally: Tally, rng: random.Random,
                 expected: dict[str, dict[str, str]], backend_options: dict[str, Any] | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.name, self.work, self.url, self.tally, self.rng = name, work, url, tally, rng
        work.mkdir(parents=True, exist_ok=True)
        self.expected = expected  # tag -> digest (shared with a copy's destination)
        self.backend_options = backend_options or {}
        self.catalog = str(work / f"{name}-catalog.sqlite")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DRTOOL_")}
        self.env.update(PYTHONPATH=str(ROOT), DRTOOL_REPOSITORY=url, DRTOOL_PASSWORD=PASSWORD,
                        DRTOOL_CATALOG=self.catalog, XDG_STATE_HOME=str(work / "state"), **(extra_env or {}))
        self.keep: set[str] = set()
        self.known: dict[str, str] = {}  # snapshot id -> generation tag
        self.verified: set[str] = set()
        self.wal: dict[str, str] = {}  # acknowledged WAL name -> sha256
        self.durations: dict[str, float] = {}

    def session(self) -> api.Session:
        return api.open_repository(self.url, PASSWORD.encode(), catalog=self.catalog,
                                   backend_options=self.backend_options)

    def with_session(self, action: Callable[[api.Session], Any]) -> Any:
        """Run an in-process action; a lock left by a killed process is cleared once."""
        for attempt in range(2):
            try:
                with self.session() as session:
                    return action(session)
            except LockHeld:
                if attempt:
                    raise
                self.cli(["unlock", "--force"], timeout=120)

    def cli(self, args: list[str], env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "drtool", *args], env={**self.env, **(env or {})},
                              cwd=self.work, capture_output=True, text=True, timeout=timeout)

    # -- ledger ------------------------------------------------------------------------------------
    def observe(self, forgot: bool) -> None:
        """Reconcile the ledger with the repository's snapshot list."""
        listed = {s.id: s for s in self.with_session(lambda s: s.snapshots())}
        for sid, tag in list(self.known.items()):
            if sid in listed:
                continue
            del self.known[sid]
            if forgot and tag not in self.keep:
                self.tally.forgotten += 1
            else:
                self.tally.lost.append(f"{self.name}: committed snapshot {sid[:8]} ({tag}) disappeared")
        for sid, snap in listed.items():
            if sid not in self.known:
                tag = next((t for t in snap.tags if t in self.expected), None)
                if tag is None:
                    self.tally.problems.append(f"{self.name}: snapshot {sid[:8]} has no known generation")
                    continue
                self.known[sid] = tag

    def verify(self, ids: list[str]) -> None:
        """Restore each snapshot in-process and compare it with its generation's digest."""
        for sid in ids:
            target = Path(tempfile.mkdtemp(prefix="verify-", dir=self.work))
            try:
                self.with_session(lambda s: api.restore(s, sid, str(target)))
                got = digest_tree(target / "src")
            except DrtoolError as exc:
                got = {"<error>": exc.one_line()}
            finally:
                shutil.rmtree(target, ignore_errors=True)
            if got != self.expected[self.known[sid]]:
                self.tally.lost.append(f"{self.name}: snapshot {sid[:8]} ({self.known[sid]}) does not "
                                       f"restore identically: {str(got)[:200]}")
                del self.known[sid]
                continue
            self.verified.add(sid)
            self.tally.verified += 1

    def check(self) -> None:
        report = self.with_session(lambda s: api.check(s, DataSubset.everything()))
        if report.ok:
            self.tally.checks += 1
        else:
            self.tally.problems.append(f"{self.name}: check --read-data failed: {report.errors[:3]}")

    def verify_wal(self, names: list[str]) -> None:
        options = OpenOptions(self.url, PASSWORD.encode(), backend_options=self.backend_options)
        repo = logarchive.open_repository_only(options)
        try:
            for name in names:
                try:
                    data = logarchive.fetch_segment(repo, WAL, WAL_SOURCE, name)
                    ok = hashlib.sha256(data).hexdigest() == self.wal[name]
                except DrtoolError as exc:
                    ok, data = False, exc.one_line().encode()
                if ok:
                    self.tally.wal_verified += 1
                else:
                    self.tally.lost.append(f"{self.name}: acknowledged WAL {name} is gone or wrong: {data[:80]!r}")
                    del self.wal[name]
        finally:
            repo.close()
            repo.backend.close()

    def after_kill(self, forgot: bool) -> None:
        """The promises, checked right after a crash."""
        self.observe(forgot)
        self.check()
        fresh = [sid for sid in self.known if sid not in self.verified]
        older = [sid for sid in self.known if sid in self.verified]
        self.verify(fresh + self.rng.sample(older, min(2, len(older))))
        self.verify_wal(self.rng.sample(sorted(self.wal), min(3, len(self.wal))))


# ----- running killable commands ----------------------------------------------------------------------
@dataclass
class Outcome:
    code: int
    out: str
    err: str
    killed: bool


def run_killable(lab: Lab, kind: str, args: list[str], kill_rate: float = 0.5,
                 env: dict[str, str] | None = None) -> Outcome:
    """Run a command; maybe SIGKILL it at a random moment or at one of its crash points."""
    rng, extra = lab.rng, dict(env or {})
    roll = rng.random()
    timed_kill = roll < kill_rate * 0.7
    if not timed_kill and roll < kill_rate and CRASH_POINTS[kind]:
        extra["DRTOOL_CRASH_AT"] = rng.choice(CRASH_POINTS[kind])
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "drtool", *args], env={**lab.env, **extra},
                                cwd=lab.work, stdout=out, stderr=err, text=True)
        if timed_kill:
            try:
                proc.wait(timeout=rng.uniform(0.25, 1.1) * lab.durations.get(kind, 1.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            lab.tally.problems.append(f"{lab.name}: {kind} hung for 300s: {args}")
        out.seek(0)
        err.seek(0)
        outcome = Outcome(proc.returncode, out.read(), err.read(), proc.returncode == -signal.SIGKILL)
    lab.tally.runs += 1
    if outcome.killed:
        if "DRTOOL_CRASH_AT" in extra:
            lab.tally.crash_points += 1
        else:
            lab.tally.kills += 1
    elif outcome.code == 0:
        seconds = time.monotonic() - started
        lab.durations[kind] = 0.7 * lab.durations.get(kind, seconds) + 0.3 * seconds
    else:
        judge_failure(lab, kind, outcome)
    return outcome


def judge_failure(lab: Lab, kind: str, outcome: Outcome) -> None:
    """A non-zero exit must be one clean error line, never a traceback."""
    errors = [line for line in outcome.err.splitlines() if line.startswith("drtool: error")]
    if len(errors) == 1 and "Traceback" not in outcome.err and "internal error" not in outcome.err:
        lab.tally.clean_failures += 1
    else:
        lab.tally.problems.append(f"{lab.name}: {kind} exit {outcome.code} not clean: {outcome.err[-400:]}")


# ----- operations ---------------------------------------------------------------------------------
def op_backup(lab: Lab, source: Source, kill_rate: float) -> Outcome:
    tag, digest = source.mutate()
    lab.expected[tag] = digest
    tags = ["--tag", tag]
    if source.generation % 5 == 0:
        lab.keep.add(tag)
        tags += ["--tag", "keep"]
    return run_killable(lab, "backup", ["backup", str(source.root), "--name", "files", *tags], kill_rate)


def op_restore(lab: Lab, kill_rate: float) -> Outcome | None:
    if not lab.known:
        return None
    sid = lab.rng.choice(sorted(lab.known))
    target = Path(tempfile.mkdtemp(prefix="restore-", dir=lab.work))
    try:
        outcome = run_killable(lab, "restore", ["restore", sid, "--target", str(target)], kill_rate)
        if outcome.code == 0:
            if digest_tree(target / "src") != lab.expected[lab.known[sid]]:
                lab.tally.lost.append(f"{lab.name}: restore of {sid[:8]} reported success with wrong data")
            else:
                lab.tally.verified += 1
        return outcome
    finally:
        shutil.rmtree(target, ignore_errors=True)


def op_wal(lab: Lab, kill_rate: float) -> Outcome:
    """Push a new WAL file; retry until acknowledged, as PostgreSQL retries archive_command."""
    name = f"00000001{len(lab.wal) // 256:08X}{len(lab.wal) % 256:08X}"
    path = lab.work / "pg_wal" / name
    path.parent.mkdir(exist_ok=True)
    payload = lab.rng.randbytes(MiB)
    path.write_bytes(payload)
    args = ["pg", "wal-push", "--source", WAL_SOURCE, str(path)]
    first = final = run_killable(lab, "wal", args, kill_rate)
    for _ in range(3):
        if final.code == 0:
            break
        final = run_killable(lab, "wal", args, 0.0)  # a push after a crash: already-archived is success
    if final.code == 0:
        lab.wal[name] = hashlib.sha256(payload).hexdigest()
    else:
        lab.tally.problems.append(f"{lab.name}: wal-push of {name} never succeeded: {final.err[-300:]}")
    return first


def copy_available(lab: Lab) -> bool:
    return lab.cli(["copy", "--help"], timeout=60).returncode == 0


def op_copy(lab: Lab, mirror: Lab, kill_rate: float) -> Outcome:
    env = {"DRTOOL_TO_CATALOG": mirror.catalog}
    return run_killable(lab, "copy", ["copy", "--to", mirror.url], kill_rate, env)


SIMPLE_OPS = {"forget": ["forget", "--name", "files", "--keep-last", "3", "--keep-tag", "keep"],
              "prune": ["prune", "--grace", "0s", "--max-unused", "0"], "rebuild": ["catalog", "rebuild"]}


def one_local_op(lab: Lab, source: Source, mirror: Lab | None, kill_rate: float) -> tuple[str, Outcome | None]:
    ops = ["backup"] * 7 + ["restore"] * 3 + ["forget"] * 2 + ["prune"] * 3 + ["rebuild"] * 2 + ["wal"] * 2
    ops += ["copy"] * 2 if mirror is not None else []
    kind = lab.rng.choice(ops) if lab.known else "backup"
    if kind in SIMPLE_OPS:
        return kind, run_killable(lab, kind, SIMPLE_OPS[kind], kill_rate)
    if kind == "backup":
        return kind, op_backup(lab, source, kill_rate)
    if kind == "restore":
        return kind, op_restore(lab, kill_rate)
    if kind == "wal":
        return kind, op_wal(lab, kill_rate)
    assert mirror is not None
    return kind, op_copy(lab, mirror, kill_rate)


def one_s3_op(lab: Lab, source: Source) -> Outcome | None:
    kind = lab.rng.choice(["backup"] * 6 + ["restore"] * 3 + ["prune"]) if lab.known else "backup"
    if kind == "backup":
        return op_backup(lab, source, 0.3)
    if kind == "restore":
        return op_restore(lab, 0.3)
    return run_killable(lab, "prune", SIMPLE_OPS["prune"], 0.3)


# ----- phases -----------------------------------------------------------------------------------
def init_lab(lab: Lab) -> None:
    result = lab.cli(["init"])
    if result.returncode != 0:
        raise SystemExit(f"torture: cannot create the {lab.name} repository: {result.stderr.strip()}")


def local_phase(work: Path, rng: random.Random, tally: Tally, deadline: float, min_runs: int = 0) -> list[Lab]:
    expected: dict[str, dict[str, str]] = {}
    lab = Lab("local", work, str(work / "repo"), tally, rng, expected)
    init_lab(lab)
    source = Source(work / "src", rng)
    mirror = Lab("mirror", work, str(work / "mirror"), tally, rng, expected) if copy_available(lab) else None
    quiet = runs = 0
    while time.monotonic() < deadline or runs < min_runs:
        kind, outcome = one_local_op(lab, source, mirror, kill_rate=0.5)
        if outcome is None:
            continue
        runs += 1
        touched = [lab] + ([mirror] if kind == "copy" and mirror and mirror_exists(mirror) else [])
        for each in touched:
            if outcome.killed:
                each.after_kill(forgot=kind == "forget" and each is lab)
            else:
                each.observe(forgot=kind == "forget" and each is lab)
        quiet = 0 if outcome.killed else quiet + 1
        if quiet >= 8:
            lab.check()
            quiet = 0
    labs = [lab] + ([mirror] if mirror and mirror_exists(mirror) else [])
    for each in labs:
        finish(each)
    return labs


def mirror_exists(mirror: Lab) -> bool:
    return (Path(mirror.url) / "config").exists()


class FaultSwitch:
    """10 % of all requests fail, spread evenly over every fault kind of the proxy."""

    def __init__(self, proxy: Any, faults: tuple[str, ...], tally: Tally, rate: float = 0.10) -> None:
        self.proxy, self.faults, self.tally = proxy, faults, tally
        self.per_kind = 1 - (1 - rate) ** (1 / len(faults))

    def on(self) -> None:
        for fault in self.faults:
            self.proxy.add("*", fault, rate=self.per_kind)

    def off(self) -> None:
        self.tally.faults += len(self.proxy.injected)
        self.proxy.reset()


def s3_phase(work: Path, rng: random.Random, tally: Tally, deadline: float, min_runs: int = 0) -> list[Lab]:
    from fault_proxy import FAULTS, FaultProxy

    work.mkdir(parents=True, exist_ok=True)
    moto, moto_url = start_moto(work)
    proxy = FaultProxy(moto_url, stall_seconds=1.0, seed=rng.randrange(2 ** 32)).start()
    try:
        aws = dict(AWS_ENV)
        os.environ.update(aws)  # the in-process verification sessions use boto3's standard chain
        for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            os.environ.pop(key, None)
        options: dict[str, Any] = {"endpoint_url": proxy.url, "addressing_style": "path",
                                   "connect_timeout": 1.0, "read_timeout": 0.7, "max_attempts": 3,
                                   "read_attempts": 3, "read_retry_backoff": 0.05,
                                   "multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}
        config = work / "drtool-s3.toml"
        config.write_text("[s3]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()))
        lab = Lab("s3", work, f"s3://{create_bucket(moto_url)}/repo", tally, rng, {}, options,
                  {**aws, "DRTOOL_CONFIG": str(config)})
        init_lab(lab)
        source = Source(work / "src", rng)
        switch = FaultSwitch(proxy, FAULTS, tally)
        runs = 0
        while time.monotonic() < deadline or runs < min_runs:
            runs += 1
            switch.on()
            outcome = one_s3_op(lab, source)
            switch.off()  # the promises are checked without faults
            if outcome is not None and outcome.killed:
                lab.after_kill(forgot=False)
            elif outcome is not None:
                lab.observe(forgot=False)
        finish(lab)
        return [lab]
    finally:
        proxy.stop()
        moto.terminate()
        moto.wait(timeout=30)


# ----- the end: everything restores, and leftovers are only what prune removes -------------------------
def finish(lab: Lab) -> None:
    lab.observe(forgot=False)
    lab.check()
    lab.verify(sorted(lab.known))
    lab.verify_wal(sorted(lab.wal))
    condemned = -1
    for _ in range(5):  # mark, sweep, and sweep what a repack condemned
        result = lab.cli(["prune", "--grace", "0s", "--max-unused", "0", "--json"])
        if result.returncode != 0:
            lab.tally.problems.append(f"{lab.name}: final prune failed: {result.stderr[-300:]}")
            return
        report = json.loads(result.stdout)
        condemned = report["packs_condemned"] + report["packs_pending"]
        if condemned == 0:
            break
    report = lab.with_session(lambda s: api.check(s, DataSubset.everything()))
    unindexed = [w for w in report.warnings if "not in any index" in w]
    if condemned or unindexed or not report.ok:
        lab.tally.problems.append(f"{lab.name}: after the final prune {condemned} pack(s) still condemned, "
                                  f"{len(unindexed)} unindexed, check ok={report.ok}")
    lab.observe(forgot=False)
    lab.verify(sorted(lab.known))


def stray_temporaries(labs: list[Lab]) -> int:
    """Temp files of puts killed mid-write (local backend); listing ignores them."""
    count = 0
    for lab in labs:
        if "://" not in lab.url and Path(lab.url).is_dir():
            count += sum(1 for p in Path(lab.url).rglob(".tmp-*"))
    return count


# ----- entry point ---------------------------------------------------------------------------------
def summary(phases: dict[str, Tally], labs: list[Lab], args: argparse.Namespace, work: Path,
            copy: bool) -> dict[str, Any]:
    total = Tally()
    for tally in phases.values():
        for name, value in tally.__dict__.items():
            setattr(total, name, getattr(total, name) + value)
    lines = [f"drtool torture: seed {args.seed}, {args.minutes} minute(s), work {work}", HEADER]
    lines += [tally.row(name) for name, tally in phases.items()] + [total.row("total")]
    lines.append(f"snapshots forgotten by forget: {total.forgotten}; WAL files verified: "
                 f"{total.wal_verified}; copy: {'exercised' if copy else 'not available'}")
    lines.append(f"temp files of killed puts still present (prune removes them after its grace period): "
                 f"{stray_temporaries(labs)}")
    lines += [f"LOST: {line}" for line in total.lost] + [f"PROBLEM: {line}" for line in total.problems]
    lines.append(f"data lost: {len(total.lost)}")
    print("\n".join(lines), flush=True)
    data = {name: dict(t.__dict__) for name, t in phases.items()}
    data["total"] = dict(total.__dict__, data_lost=len(total.lost))
    return data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/torture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="duration of the random phases")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed; default: random)")
    parser.add_argument("--work", help="work directory (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 + fault proxy phase")
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    parser.add_argument("--min-runs", type=int, default=0, metavar="N",
                        help="run at least N operations per phase, however slow the machine (short CI runs)")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2 ** 31)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="drtool-torture-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    budget = args.minutes * 60
    s3_time = 0.0 if args.no_s3 else max(8.0, budget * 0.25)
    phases: dict[str, Tally] = {"local": Tally()}
    labs: list[Lab] = []
    print(f"drtool torture: seed {args.seed}, work {work} (host {socket.gethostname()})", flush=True)
    try:
        labs += local_phase(work / "local", rng, phases["local"], started + max(5.0, budget - s3_time), args.min_runs)
        copy = any(lab.name == "mirror" for lab in labs) or copy_available(labs[0])
        if not args.no_s3:
            phases["s3"] = Tally()
            labs += s3_phase(work / "s3", rng, phases["s3"], time.monotonic() + s3_time, args.min_runs)
        data = summary(phases, labs, args, work, copy)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 1 if data["total"]["data_lost"] or data["total"]["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
