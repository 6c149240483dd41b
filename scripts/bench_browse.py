#!/usr/bin/env python3
"""Benchmark browsing (find, ls -R, dump, mount) against restic, and the backup overhead of the
per-file index against a drtool without it, on the same data in one run.

    scripts/bench --browse [--files N] [--snapshots S] [--big-mib M] [--baseline DIR] [--json]
    scripts/bench --browse --work DIR --files N --browse-only   (find and ls again on a kept DIR)

A tree of N small files (0.5-8 KiB, 64 per directory) is backed up S times by drtool and
restic, ~1 % of the files rewritten between snapshots.  ``--baseline DIR`` (a drtool checkout
without the index, e.g. the main branch) backs up the same sequence into its own repository,
so the index's cost is the difference.  Then: ``find`` of one name across all snapshots, ``ls -R``
of the last snapshot, and a big random file read by ``dump``, by ``cat`` from ``drtool mount``
and by ``restore``.  Figures are medians of 3 runs where cheap.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-only-not-a-secret"


def log(msg: str) -> None:
    print(f"[bench-browse {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(argv: list[str], env: dict[str, str], stdout=subprocess.DEVNULL) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, cwd="/")  # not this checkout
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    return time.perf_counter() - start


def median(argv: list[str], env: dict[str, str], runs: int = 3) -> float:
    return statistics.median(timed(argv, env) for _ in range(runs))


def make_tree(top: Path, files: int, rng: random.Random) -> list[Path]:
    paths = []
    for i in range(files):
        folder = top / f"d{i // 4096:02d}" / f"s{(i // 64) % 64:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"file{i:07d}.txt"
        path.write_bytes(rng.randbytes(rng.randint(512, 8192)))
        paths.append(path)
    return paths


def environments(work: Path, baseline: Path | None) -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DRTOOL_", "RESTIC_"))}
    envs = {
        "drtool": dict(base, DRTOOL_REPOSITORY=str(work / "drtool-repo"), DRTOOL_PASSWORD=PASSWORD,
                       DRTOOL_CATALOG=str(work / "drtool-catalog.sqlite"), PYTHONPATH=str(ROOT)),
        "restic": dict(base, RESTIC_REPOSITORY=str(work / "restic-repo"), RESTIC_PASSWORD=PASSWORD,
                       RESTIC_CACHE_DIR=str(work / "restic-cache")),
    }
    if baseline is not None:
        envs["baseline"] = dict(base, DRTOOL_REPOSITORY=str(work / "baseline-repo"), DRTOOL_PASSWORD=PASSWORD,
                                DRTOOL_CATALOG=str(work / "baseline-catalog.sqlite"), PYTHONPATH=str(baseline))
    return envs


def drtool(env: dict[str, str]) -> list[str]:
    """The drtool of this checkout, or the baseline's (its own .venv: an editable install of this
    checkout would win over PYTHONPATH)."""
    python = Path(env["PYTHONPATH"]) / ".venv" / "bin" / "python"
    return [str(python) if python.exists() else sys.executable, "-m", "drtool"]


def versions_rows(catalog: Path) -> int:
    import sqlite3
    with sqlite3.connect(catalog) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM file_versions").fetchone()[0])


def backups(args: argparse.Namespace, work: Path, envs: dict[str, dict[str, str]]) -> dict[str, object]:
    rng = random.Random(7)
    src = work / "src"
    paths = make_tree(src, args.files, rng)
    times: dict[str, list[float]] = {name: [] for name in envs}
    rows = []
    for name, env in envs.items():
        cmd = ["restic", "init"] if name == "restic" else [*drtool(env), "init"]
        timed(cmd, env)
    for n in range(args.snapshots):
        if n:
            for path in rng.sample(paths, max(1, len(paths) // 100)):
                path.write_bytes(rng.randbytes(rng.randint(512, 8192)))
        for name, env in envs.items():
            cmd = ["restic", "backup", "-q", str(src)] if name == "restic" else \
                [*drtool(env), "backup", str(src), "--name", "small"]
            times[name].append(timed(cmd, env))
        rows.append(versions_rows(Path(envs["drtool"]["DRTOOL_CATALOG"])))
        log(f"snapshot {n + 1}/{args.snapshots}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            + f", index rows {rows[-1]}")
    growth = [b - a for a, b in zip(rows, rows[1:])]
    result: dict[str, object] = {
        "backup_first_s": {k: v[0] for k, v in times.items()},
        "backup_incremental_median_s": {k: statistics.median(v[1:]) for k, v in times.items() if len(v) > 1},
        "index_rows_first": rows[0], "index_rows_per_later_snapshot_median": statistics.median(growth or [0]),
        "changed_files_per_snapshot": max(1, len(paths) // 100),
        "catalog_mib": os.path.getsize(envs["drtool"]["DRTOOL_CATALOG"]) / 2**20,
    }
    result.update(browsing(args, envs))
    return result


def browsing(args: argparse.Namespace, envs: dict[str, dict[str, str]]) -> dict[str, object]:
    """``find`` of one name across all snapshots and ``ls -R`` of the last, drtool and restic."""
    target = f"file{args.files // 2:07d}.txt"  # the middle file of make_tree
    return {"find_s": {"drtool": median([*drtool(envs["drtool"]), "find", target], envs["drtool"]),
                       "restic": median(["restic", "find", target], envs["restic"])},
            "ls_R_s": {"drtool": median([*drtool(envs["drtool"]), "ls", "-R", "latest", "--name", "small"],
                                        envs["drtool"]),
                       "restic": median(["restic", "ls", "latest"], envs["restic"])}}


def big_file(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, float]:
    big = work / "big" / "big.bin"
    big.parent.mkdir()
    with open(big, "wb") as out:
        for _ in range(args.big_mib):
            out.write(os.urandom(2**20))
    timed([*drtool(env), "backup", str(big.parent), "--name", "big"], env)
    size = big.stat().st_size
    dump = median([*drtool(env), "dump", "latest", "big/big.bin", "--name", "big"], env)

    def restore_once() -> float:
        target = work / "restored"
        shutil.rmtree(target, ignore_errors=True)
        return timed([*drtool(env), "restore", "latest", "--name", "big", "--target", str(target)], env)
    restore = statistics.median(restore_once() for _ in range(3))
    mnt = work / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([*drtool(env), "mount", str(mnt)], env=env, stderr=subprocess.DEVNULL, cwd="/")
    try:
        for _ in range(300):
            if os.path.ismount(mnt):
                break
            time.sleep(0.1)
        path = mnt / "latest" / "big" / "big" / "big.bin"
        cat = median(["cat", str(path)], env)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        proc.wait(timeout=60)
    mib = size / 2**20
    return {"big_mib": mib, "dump_mib_s": mib / dump, "restore_mib_s": mib / restore, "mount_cat_mib_s": mib / cat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--baseline", type=Path, help="a drtool checkout without the file index")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--browse-only", action="store_true",
                        help="time find and ls -R again on the repositories a kept --work DIR holds")
    args = parser.parse_args()
    if args.browse_only:
        if not args.work:
            parser.error("--browse-only needs the --work DIR of an earlier run")
        result = browsing(args, environments(args.work, None))
        print(json.dumps(result, indent=2) if args.json else "\n".join(
            f"{key}: drtool {v['drtool']:.2f} s, restic {v['restic']:.2f} s, ratio {v['drtool'] / v['restic']:.2f}"
            for key, v in result.items()))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="drtool-bench-browse-"))
    work.mkdir(parents=True, exist_ok=True)
    envs = environments(work, args.baseline)
    try:
        result = {"files": args.files, "snapshots": args.snapshots,
                  "restic": subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()}
        result.update(backups(args, work, envs))
        result.update(big_file(args, work, envs["drtool"]))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else _table(result))


def _table(r: dict) -> str:  # type: ignore[type-arg]
    lines = [f"{r['files']} small files, {r['snapshots']} snapshots, ~1 % changed between them; {r['restic']}",
             "| figure | drtool | restic | ratio |", "|---|---|---|---|"]
    for key, label in (("find_s", "find one name, all snapshots (s)"), ("ls_R_s", "ls -R latest (s)"),
                       ("backup_first_s", "first backup (s)"),
                       ("backup_incremental_median_s", "incremental backup, median (s)")):
        d, x = r[key]["drtool"], r[key]["restic"]
        lines.append(f"| {label} | {d:.2f} | {x:.2f} | {d / x:.2f} |")
    if "baseline" in r["backup_first_s"]:
        for key in ("backup_first_s", "backup_incremental_median_s"):
            d, b = r[key]["drtool"], r[key]["baseline"]
            lines.append(f"| {key}: with index / without | {d:.2f} | {b:.2f} (baseline) | {d / b:.2f} |")
    lines += [f"index rows after the first snapshot: {r['index_rows_first']}, per later snapshot (median): "
              f"{r['index_rows_per_later_snapshot_median']} for {r['changed_files_per_snapshot']} changed files; "
              f"catalog {r['catalog_mib']:.1f} MiB",
              f"{r['big_mib']:.0f} MiB random file: dump {r['dump_mib_s']:.0f} MiB/s, mount cat "
              f"{r['mount_cat_mib_s']:.0f} MiB/s, restore {r['restore_mib_s']:.0f} MiB/s "
              f"(dump/restore {r['dump_mib_s'] / r['restore_mib_s']:.2f}, cat/restore "
              f"{r['mount_cat_mib_s'] / r['restore_mib_s']:.2f})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
