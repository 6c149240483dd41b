#!/usr/bin/env python3
"""Cold-cache many-files benchmark: drtool against restic on a tree of tiny files.

    scripts/bench --cold [--files N] [--tools drtool,restic] [--json] [--work DIR] [--keep]

A nightly run over a large store finds its files out of the page cache.
This mode generates N tiny files (512 B - 8 KiB, 4,096 directories: the
``--smallfiles`` tree of ../shared/bench/make_dataset.py), and for each tool
runs init, a first backup and an unchanged second backup, each after
``sync; echo 3 > /proc/sys/vm/drop_caches`` (root only: the page, dentry and
inode caches are empty, for the source and for the tool's own repository and
caches alike). The tree is backed up where it was generated, not copied.
Figures: wall time and peak RSS (rusage of the reaped child) of each backup, and
the peak of its private memory (RssAnon sampled every 20 ms): the difference is
mostly mapped files -- libraries, and drtool's memory-mapped index cache,
whose pages are the kernel's page cache (shared, reclaimable).
Targets (issue 21): first backup <= 0.5x restic and <= 300 MiB, re-run <= 0.4x restic.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: tools, runs, data set cache, table)
from bench import (MIB, TOOL_CLASSES, Figure, StepError, Tool, ToolResult, du_bytes, judge, log,  # noqa: E402
                   machine_facts, render_table, step)

COLD_FIGURES = (
    Figure("first_s", "first backup, cold (s)", 2, "restic", 0.5),
    Figure("second_s", "unchanged re-run, cold (s)", 2, "restic", 0.4),
    Figure("rss_first_mib", "peak RSS first backup (MiB)", 1, "abs", 300.0),
    Figure("anon_first_mib", "  of which private, first (MiB)", 1, None, None),
    Figure("rss_second_mib", "peak RSS re-run (MiB)", 1, None, None),
    Figure("anon_second_mib", "  of which private, re-run (MiB)", 1, None, None),
    Figure("repo_mib", "repo size (MiB)", 1, None, None),
)


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache and the dentry/inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def cold_step(tool: Tool, res: ToolResult, what: str, source: Path, logs: Path, timeout: float) -> bench.Run:
    drop_caches()
    return step(tool, res, what, tool.backup_cmd(source, what), logs, timeout)


def bench_cold(tool: Tool, source: Path, logs: Path, timeout: float) -> ToolResult:
    res = ToolResult(tool.name)
    f = res.figures
    try:
        tool.reset()
        step(tool, res, "init", tool.init_cmd(), logs, timeout)
        r1 = cold_step(tool, res, "first", source, logs, timeout)
        f["first_s"], f["rss_first_mib"], f["anon_first_mib"] = r1.seconds, r1.maxrss_mib, r1.peak_anon_mib
        res.notes.append(f"first: user {r1.user_s:.1f}s, sys {r1.sys_s:.1f}s, mapped files at the private peak {r1.peak_file_mib:.0f} MiB")
        r2 = cold_step(tool, res, "second", source, logs, timeout)
        f["second_s"], f["rss_second_mib"], f["anon_second_mib"] = r2.seconds, r2.maxrss_mib, r2.peak_anon_mib
        res.notes.append(f"second: user {r2.user_s:.1f}s, sys {r2.sys_s:.1f}s, mapped files at the private peak {r2.peak_file_mib:.0f} MiB")
        f["repo_mib"] = du_bytes(tool.repo) / MIB
    except (StepError, OSError) as e:
        res.error = str(e)
        log(f"{tool.name}: ERROR {e}")
    res.notes.extend(tool.extra_notes())
    return res


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench --cold", description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="(the mode switch; implied)")
    ap.add_argument("--files", type=int, default=1_000_000, help="number of tiny files (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/var/tmp")) / "drtool-bench")
    ap.add_argument("--keep", action="store_true", help="keep the repositories")
    ap.add_argument("--tools", default="drtool,restic", help="comma list of drtool,restic,borg")
    ap.add_argument("--timeout", type=float, default=7200)
    args = ap.parse_args(argv)
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not args.tool_list or any(t not in TOOL_CLASSES for t in args.tool_list):
        ap.error(f"--tools: choose from {','.join(TOOL_CLASSES)}")
    if args.files <= 0:
        ap.error("--files must be positive")
    args.work = args.work.resolve()
    args.smallfiles, args.scale = args.files, 1.0  # for bench.dataset()
    return args


def report(args: argparse.Namespace, facts: dict[str, Any], results: dict[str, ToolResult]) -> None:
    rows = [judge(fig, results, False) for fig in COLD_FIGURES]
    if args.json:
        print(json.dumps({"mode": "cold", "params": {"files": args.files, "seed": args.seed,
                                                     "tools": list(results)},
                          "machine": facts, "rows": rows,
                          "tools": {n: vars(r) for n, r in results.items()}}, indent=2))
        return
    print(f"machine: {facts['cores']} cores, {facts['cpu']}, {facts['memory']} RAM, "
          f"kernel {facts['kernel']}, RSS floor {facts['rss_floor_mib']} MiB")
    for name, ver in facts["versions"].items():
        print(f"  {name}: {ver}")
    print(f"data set: {args.files} tiny files, seed {args.seed}; caches dropped before each backup\n")
    print(render_table(COLD_FIGURES, rows, results, False))
    notes = [(n, x) for n, r in results.items() for x in ([f"ERROR {r.error}"] if r.error else []) + r.notes]
    if notes:
        print("\nnotes:")
        for name, note in notes:
            print(f"  {name}: {note}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench --cold: dropping the page cache needs root (/proc/sys/vm/drop_caches)")
    bench.claim_work_dir(args.work)
    logs = args.work / "logs-cold"
    logs.mkdir(exist_ok=True)
    # repositories under work/cold/: a nightly `scripts/bench` sharing the work dir resets work/<tool>
    tools = {n: TOOL_CLASSES[n](args.work / "cold") for n in args.tool_list}
    facts = machine_facts(tools, logs)
    source = bench.dataset(args.work, args) / "smallfiles"
    results: dict[str, ToolResult] = {}
    started = time.monotonic()
    for name, tool in tools.items():
        results[name] = bench_cold(tool, source, logs, args.timeout)
        if not args.keep:
            shutil.rmtree(tool.home, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f}s; logs of each command in {logs}")
    report(args, facts, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
