#!/usr/bin/env python3
"""Benchmark drtool against restic and borg on the same synthetic data set.

    scripts/bench [--scale S] [--smallfiles N] [--json] [--work DIR] [--keep]
                  [--tools drtool,restic,borg]

Nightly mode (default): every tool backs up the same SOURCE directory, rsync'ed
from night1 and then from night2 of ../shared/bench/make_dataset.py, and then
restores the latest snapshot, which is compared with night2.
Small-files mode (--smallfiles N): first backup and an unchanged second backup
of N small files. See docs/performance.md for what each figure means.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import (MAKE_DATASET, REPO_ROOT, dataset, du_bytes, find_restored_root,  # noqa: E402,F401
                        forget_deleted_inodes, generator_digest, log, read_tree, rsync, verify_restore)

ALL_TOOLS = ("drtool", "restic", "borg")
PASSWORD = "bench-only-not-a-secret"
MIB = 1 << 20


# ---------------------------------------------------------------- figures

@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit_digits: int
    base: Optional[str]  # "restic"/"borg": target is a ratio; "abs": absolute
    limit: Optional[float]

    def target_text(self) -> str:
        if self.base is None or self.limit is None:
            return "-"
        if self.base == "abs":
            return f"<= {self.limit:g} MiB"
        return f"<= {self.limit:.2f}x {self.base}"


NIGHTLY_FIGURES = (
    Figure("night1_s", "night 1 backup (s)", 2, "restic", 0.5),
    Figure("night2_s", "night 2 backup (s)", 2, "restic", 0.3),
    Figure("restore_s", "restore night 2 (s)", 2, "restic", 0.6),
    Figure("repo_mib", "repo size (MiB)", 1, "borg", 0.85),
    Figure("rss_backup_mib", "peak RSS backup (MiB)", 1, "abs", 300.0),
    Figure("rss_restore_mib", "peak RSS restore (MiB)", 1, None, None),
)
SMALLFILES_FIGURES = (
    Figure("first_s", "first backup (s)", 2, "restic", 0.7),
    Figure("second_s", "second backup, unchanged (s)", 2, "restic", 0.7),
    Figure("rss_backup_mib", "peak RSS backup (MiB)", 1, "restic", 0.75),
    Figure("repo_mib", "repo size (MiB)", 1, None, None),
)


@dataclass
class ToolResult:
    name: str
    figures: dict[str, float] = field(default_factory=dict)
    verified: Optional[bool] = None
    error: Optional[str] = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- processes

@dataclass
class Run:
    rc: int
    seconds: float
    maxrss_mib: float
    timed_out: bool
    stdout: Path
    stderr: Path
    user_s: float = 0.0
    sys_s: float = 0.0
    peak_anon_mib: float = 0.0  # private memory (RssAnon) of the child itself, sampled every 20 ms
    peak_file_mib: float = 0.0  # mapped files (RssFile) at that moment: libraries, mapped caches

    def tail(self, lines: int = 6) -> str:
        for path in (self.stderr, self.stdout):
            text = path.read_text(errors="replace").strip()
            if text:
                return " | ".join(text.splitlines()[-lines:])[-600:]
        return "(no output)"


class StepError(Exception):
    pass


def run_cmd(argv: list[str], env: dict[str, str], logbase: Path,
            cwd: Optional[Path] = None, timeout: float = 7200) -> Run:
    """Run argv, wall-timed; peak RSS comes from os.wait4's rusage.

    ru_maxrss of the reaped child is the largest RSS of the child or of any
    descendant it waited for (Linux), i.e. the biggest single process of the
    tree, not a sum."""
    out, err = logbase.with_suffix(".out"), logbase.with_suffix(".err")
    timed_out = threading.Event()

    def kill(pid: int) -> None:
        timed_out.set()
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    with open(out, "wb") as fo, open(err, "wb") as fe:
        start = time.monotonic()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=fo, stderr=fe, start_new_session=True)
        timer = threading.Timer(timeout, kill, (proc.pid,))
        timer.start()
        sampler = RssSampler(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            sampler.stop()
        seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(proc.returncode, seconds, usage.ru_maxrss / 1024, timed_out.is_set(), out, err,
               usage.ru_utime, usage.ru_stime, sampler.peak_anon_kib / 1024, sampler.file_at_peak_kib / 1024)


class RssSampler(threading.Thread):
    """Private memory of a running child: its peak ``RssAnon``, and ``RssFile`` at that moment.

    ``ru_maxrss`` counts mapped file pages too: shared libraries, and a
    memory-mapped on-disk index (drtool's LMDB cache, ~230 MiB at 1 M
    blobs) whose pages are the kernel's page cache, reclaimable and shared
    between processes. This splits the figure so a report can say which is
    which; the child's own pages only (not its descendants')."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_anon_kib = self.file_at_peak_kib = 0
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self._done.wait(self.interval):
            try:
                with open(path) as status:
                    fields = dict(line.split(":", 1) for line in status if line.startswith(("RssAnon", "RssFile")))
            except (OSError, ValueError):
                continue  # not started yet, or gone
            anon = int(fields.get("RssAnon", "0 kB").split()[0])
            if anon > self.peak_anon_kib:
                self.peak_anon_kib, self.file_at_peak_kib = anon, int(fields.get("RssFile", "0 kB").split()[0])

    def stop(self) -> None:
        self._done.set()
        self.join()


def capture(argv: list[str], env: Optional[dict[str, str]] = None) -> str:
    try:
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (p.stdout.strip() or p.stderr.strip()).splitlines()
    first = text[0] if text else ""
    return first if p.returncode == 0 else f"unavailable (rc {p.returncode}: {first[:120]})"


# ---------------------------------------------------------------- tools

class Tool:
    name = "?"
    ok_codes: tuple[int, ...] = (0,)

    def __init__(self, work: Path) -> None:
        self.home = work / self.name
        self.repo = self.home / "repo"
        self.restore_dir = self.home / "restore"

    def reset(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def version(self) -> str:
        raise NotImplementedError

    def init_cmd(self) -> list[str]:
        raise NotImplementedError

    def backup_cmd(self, source: Path, label: str) -> list[str]:
        raise NotImplementedError

    def restore_cmd(self, label: str) -> tuple[list[str], Optional[Path]]:
        """argv and cwd for restoring the latest snapshot into restore_dir."""
        raise NotImplementedError

    def extra_notes(self) -> list[str]:
        return []


class Restic(Tool):
    name = "restic"

    def env(self) -> dict[str, str]:
        return {**os.environ, "RESTIC_REPOSITORY": str(self.repo),
                "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(self.home / "cache")}

    def version(self) -> str:
        return capture(["restic", "version"])

    def init_cmd(self) -> list[str]:
        return ["restic", "init"]

    def backup_cmd(self, source: Path, label: str) -> list[str]:
        return ["restic", "backup", str(source)]

    def restore_cmd(self, label: str) -> tuple[list[str], Optional[Path]]:
        return ["restic", "restore", "latest", "--target", str(self.restore_dir)], None


class Borg(Tool):
    name = "borg"
    ok_codes = (0, 1)  # 1 = warning (e.g. file changed while reading)

    def env(self) -> dict[str, str]:
        return {**os.environ, "BORG_PASSPHRASE": PASSWORD,
                "BORG_BASE_DIR": str(self.home / "base")}

    def version(self) -> str:
        return capture(["borg", "--version"])

    def init_cmd(self) -> list[str]:
        return ["borg", "init", "--encryption=repokey-blake2", str(self.repo)]

    def backup_cmd(self, source: Path, label: str) -> list[str]:
        return ["borg", "create", "--compression", "zstd,3", f"{self.repo}::{label}", str(source)]

    def restore_cmd(self, label: str) -> tuple[list[str], Optional[Path]]:
        # borg stores paths without the leading "/" and extracts into the cwd.
        return ["borg", "extract", f"{self.repo}::{label}"], self.restore_dir


class Drtool(Tool):
    name = "drtool"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.catalog = self.home / "catalog.sqlite"  # recreated with home by reset()

    def argv(self) -> list[str]:
        exe = shutil.which("drtool") or str(REPO_ROOT / ".venv" / "bin" / "drtool")
        if os.access(exe, os.X_OK):
            return [exe]
        return [sys.executable, "-m", "drtool"]

    def env(self) -> dict[str, str]:
        # the blob index cache beside the catalog, like restic's cache: removed with the work dir
        env = {**os.environ, "DRTOOL_REPOSITORY": str(self.repo), "DRTOOL_PASSWORD": PASSWORD,
               "DRTOOL_CATALOG": str(self.catalog), "XDG_CACHE_HOME": str(self.catalog.parent / "cache")}
        if self.argv()[0] == sys.executable:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        return env

    def version(self) -> str:
        return capture(self.argv() + ["--version"], self.env())

    def init_cmd(self) -> list[str]:
        return self.argv() + ["init"]

    def backup_cmd(self, source: Path, label: str) -> list[str]:
        return self.argv() + ["backup", str(source), "--name", "bench"]

    def restore_cmd(self, label: str) -> tuple[list[str], Optional[Path]]:
        return self.argv() + ["restore", "latest", "--name", "bench",
                              "--target", str(self.restore_dir)], None

    def extra_notes(self) -> list[str]:
        if self.catalog.exists():
            return [f"catalog {du_bytes(self.catalog) / MIB:.1f} MiB (not in repo size)"]
        return []


TOOL_CLASSES: dict[str, type[Tool]] = {"drtool": Drtool, "restic": Restic, "borg": Borg}


# ---------------------------------------------------------------- benchmark

def step(tool: Tool, res: ToolResult, what: str, argv: list[str], logs: Path,
         timeout: float, cwd: Optional[Path] = None) -> Run:
    log(f"{tool.name}: {what}")
    os.sync()  # the set-up's dirty pages (rsync, the previous step) are written back outside the timing
    try:
        run = run_cmd(argv, tool.env(), logs / f"{tool.name}-{what}", cwd, timeout)
    except OSError as e:
        raise StepError(f"{what}: cannot run {argv[0]}: {e}") from e
    if run.timed_out:
        raise StepError(f"{what}: killed after {timeout:g}s timeout")
    if run.rc not in tool.ok_codes:
        raise StepError(f"{what}: exit {run.rc}: {run.tail()}")
    if run.rc != 0:
        res.notes.append(f"{what}: exit {run.rc} (warning): {run.tail(2)}")
    log(f"{tool.name}: {what} {run.seconds:.2f}s (user {run.user_s:.2f}s, sys {run.sys_s:.2f}s), "
        f"maxrss {run.maxrss_mib:.1f} MiB (private peak {run.peak_anon_mib:.1f} MiB)")
    return run


def bench_nightly(tool: Tool, data: Path, source: Path, logs: Path, timeout: float) -> ToolResult:
    res = ToolResult(tool.name)
    f = res.figures
    try:
        tool.reset()
        rsync(data / "night1", source)
        step(tool, res, "init", tool.init_cmd(), logs, timeout)
        r1 = step(tool, res, "night1", tool.backup_cmd(source, "night1"), logs, timeout)
        f["night1_s"], f["rss_backup_mib"] = r1.seconds, r1.maxrss_mib
        rsync(data / "night2", source)
        r2 = step(tool, res, "night2", tool.backup_cmd(source, "night2"), logs, timeout)
        f["night2_s"], f["rss_backup_mib"] = r2.seconds, max(r1.maxrss_mib, r2.maxrss_mib)
        f["repo_mib"] = du_bytes(tool.repo) / MIB
        forget_deleted_inodes(keep_warm=tool.home)
        tool.restore_dir.mkdir(parents=True, exist_ok=True)
        argv, cwd = tool.restore_cmd("night2")
        r3 = step(tool, res, "restore", argv, logs, timeout, cwd)
        f["restore_s"], f["rss_restore_mib"] = r3.seconds, r3.maxrss_mib
        res.verified, msg = verify_restore(tool.restore_dir, data / "night2")
        if msg:
            res.notes.append(msg)
        log(f"{tool.name}: restore verified: {res.verified}")
    except (StepError, subprocess.CalledProcessError, OSError) as e:
        res.error = str(e)
        log(f"{tool.name}: ERROR {e}")
    res.notes.extend(tool.extra_notes())
    return res


def bench_smallfiles(tool: Tool, data: Path, source: Path, logs: Path, timeout: float) -> ToolResult:
    res = ToolResult(tool.name)
    f = res.figures
    try:
        tool.reset()
        rsync(data / "smallfiles", source)
        step(tool, res, "init", tool.init_cmd(), logs, timeout)
        r1 = step(tool, res, "first", tool.backup_cmd(source, "first"), logs, timeout)
        f["first_s"], f["rss_backup_mib"] = r1.seconds, r1.maxrss_mib
        r2 = step(tool, res, "second", tool.backup_cmd(source, "second"), logs, timeout)
        f["second_s"], f["rss_backup_mib"] = r2.seconds, max(r1.maxrss_mib, r2.maxrss_mib)
        f["repo_mib"] = du_bytes(tool.repo) / MIB
    except (StepError, subprocess.CalledProcessError, OSError) as e:
        res.error = str(e)
        log(f"{tool.name}: ERROR {e}")
    res.notes.extend(tool.extra_notes())
    return res


# ---------------------------------------------------------------- report

def judge(fig: Figure, results: dict[str, ToolResult], nightly: bool) -> dict[str, Any]:
    def value(name: str) -> Optional[float]:
        r = results.get(name)
        return r.figures.get(fig.key) if r else None

    d = value("drtool")
    ratios = {b: (d / value(b)) if d is not None and value(b) else None for b in ("restic", "borg")}
    status = "n/a"
    if fig.base is not None and fig.limit is not None and "drtool" in results:
        if d is None:
            status = "FAIL"
        elif fig.base == "abs":
            status = "PASS" if d <= fig.limit else "FAIL"
        elif ratios[fig.base] is not None:
            status = "PASS" if ratios[fig.base] <= fig.limit else "FAIL"
        if nightly and fig.key == "restore_s" and results["drtool"].verified is False:
            status = "FAIL"
    return {"key": fig.key, "label": fig.label, "target": fig.target_text(),
            "values": {n: value(n) for n in results}, "ratio_restic": ratios["restic"],
            "ratio_borg": ratios["borg"], "status": status}


def cell(results: dict[str, ToolResult], name: str, v: Optional[float], digits: int) -> str:
    if name not in results:
        return "-"
    if v is None:
        return "error" if results[name].error else "-"
    return f"{v:.{digits}f}"


def render_table(figs: tuple[Figure, ...], rows: list[dict[str, Any]],
                 results: dict[str, ToolResult], nightly: bool) -> str:
    header = ["figure", *ALL_TOOLS, "drtool÷restic", "drtool÷borg", "target", "result"]
    table = [header]
    for fig, row in zip(figs, rows):
        ratio = lambda r: "n/a" if r is None else f"{r:.2f}"  # noqa: E731
        table.append([fig.label, *(cell(results, n, row["values"].get(n), fig.unit_digits)
                                   for n in ALL_TOOLS),
                      ratio(row["ratio_restic"]), ratio(row["ratio_borg"]),
                      row["target"], row["status"]])
    if nightly:
        vr = {None: "-", True: "yes", False: "NO"}
        table.append(["restore verified", *(("-" if n not in results else
                      "error" if results[n].verified is None and results[n].error
                      else vr[results[n].verified]) for n in ALL_TOOLS),
                      "", "", "identical", ""])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rss_floor_mib(logs: Path) -> float:
    """ru_maxrss of a no-op child: Linux charges the forking parent's (this
    script's) high-water RSS to the child at exec, so figures at or below this
    floor mean "at most this much", not an exact value."""
    return run_cmd(["true"], dict(os.environ), logs / "rss-floor").maxrss_mib


def machine_facts(tools: dict[str, Tool], logs: Path) -> dict[str, Any]:
    model, mem = "?", "?"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines()
                      if l.startswith("model name")), "?")
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "cpu": model, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "rsync": capture(["rsync", "--version"]),
            "rss_floor_mib": round(rss_floor_mib(logs), 1),
            "versions": {n: t.version() for n, t in tools.items()}}


def report(args: argparse.Namespace, facts: dict[str, Any], data: Path,
           results: dict[str, ToolResult]) -> None:
    nightly = not args.smallfiles
    figs = NIGHTLY_FIGURES if nightly else SMALLFILES_FIGURES
    rows = [judge(f, results, nightly) for f in figs]
    sizes = {d.name: du_bytes(d) / MIB for d in sorted(data.iterdir()) if d.is_dir()}
    if args.json:
        out = {"mode": "nightly" if nightly else "smallfiles",
               "params": {"scale": args.scale, "seed": args.seed, "smallfiles": args.smallfiles,
                          "work": str(args.work), "tools": list(results)},
               "machine": facts, "dataset_mib": sizes, "rows": rows,
               "tools": {n: vars(r) for n, r in results.items()}}
        print(json.dumps(out, indent=2))
        return
    print(f"machine: {facts['cores']} cores ({facts['usable_cores']} usable), {facts['cpu']}, "
          f"{facts['memory']} RAM, kernel {facts['kernel']}, python {facts['python']}, "
          f"RSS floor {facts['rss_floor_mib']} MiB")
    for name, ver in facts["versions"].items():
        print(f"  {name}: {ver}")
    mode = (f"nightly, scale {args.scale:g}" if nightly else f"smallfiles, {args.smallfiles} files")
    print(f"data set: {mode}, seed {args.seed}; "
          + ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items()) + "; warm page cache\n")
    print(render_table(figs, rows, results, nightly))
    notes = [(n, x) for n, r in results.items() for x in ([f"ERROR {r.error}"] if r.error else []) + r.notes]
    if notes:
        print("\nnotes:")
        for name, note in notes:
            print(f"  {name}: {note}")


# ---------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="data set scale (1.0 = ~1 GiB/night)")
    ap.add_argument("--seed", type=int, default=7, help="data set seed (default 7)")
    ap.add_argument("--smallfiles", type=int, metavar="N", help="small-files benchmark with N files")
    ap.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/var/tmp")) / "drtool-bench",
                    help="work dir: cached data sets, repos, logs (default $TMPDIR or /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restores")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma list of drtool,restic,borg")
    ap.add_argument("--timeout", type=float, default=7200, help="per-command timeout, seconds")
    args = ap.parse_args(argv)
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in args.tool_list if t not in ALL_TOOLS]
    if bad or not args.tool_list:
        ap.error(f"unknown tool(s) {bad}; choose from {','.join(ALL_TOOLS)}")
    if args.smallfiles is not None and args.smallfiles <= 0:
        ap.error("--smallfiles must be positive")
    args.work = args.work.resolve()
    return args


_WORK_LOCKS: list[Any] = []  # held open (locked) until the process exits


def claim_work_dir(work: Path) -> None:
    """Create WORK and hold an exclusive lock on it for this process's life: two benches sharing
    one work directory reset each other's repositories and data, and the figures of both are then
    wrong without any error."""
    work.mkdir(parents=True, exist_ok=True)
    handle = open(work / ".bench-lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"bench: another bench is using {work}; wait for it, or give this one --work DIR")
    _WORK_LOCKS.append(handle)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if not MAKE_DATASET.is_file():
        sys.exit(f"bench: data generator not found: {MAKE_DATASET}")
    claim_work_dir(args.work)
    logs = args.work / "logs"
    logs.mkdir(exist_ok=True)
    tools = {n: TOOL_CLASSES[n](args.work) for n in ALL_TOOLS if n in args.tool_list}
    facts = machine_facts(tools, logs)
    data = dataset(args.work, args)
    source = args.work / "source"
    bench = bench_smallfiles if args.smallfiles else bench_nightly
    results: dict[str, ToolResult] = {}
    for name, tool in tools.items():
        results[name] = bench(tool, data, source, logs, args.timeout)
        if not args.keep:
            shutil.rmtree(tool.home, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(source, ignore_errors=True)
    log(f"logs of each command in {logs}")
    report(args, facts, data, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
