#!/usr/bin/env python3
"""Benchmark drtool against restic on a throwaway S3 server, in one run.

    scripts/bench --s3 [--latency-ms N] [--scale S] [--tools drtool,restic] [--json]
                       [--profile DIR] [--keep] [--work DIR]

For each tool: a fresh moto server (``python -m moto.server`` on a free
loopback port), the counting and delaying proxy ``scripts/s3_proxy.py`` (tests/fault_proxy.py) in
front of it (``--latency-ms`` added to every request; 0 by default), then
``init``, a backup of night 1 of ../shared/bench/make_dataset.py and a
restore of it, verified against the source.  Reported per tool: wall time,
peak RSS, requests per GiB (PUTs during the backup, GETs during the
restore, counted by the proxy, so both tools are counted the same way), the
objects and bytes stored; and drtool's ratios to restic.  ``--profile DIR``
runs drtool's commands under py-spy (``pip install py-spy``) and leaves
flame graphs there.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the local bench's process, data set and verification helpers)

HERE = Path(__file__).resolve().parent
GIB = 1 << 30
MIB = 1 << 20
DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
             "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
TOOLS = ("drtool", "restic")


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    digits: int
    target: str  # "ratio<=X", "ratio>=X" (speed), "abs<=X", or ""


FIGURES = (
    Figure("backup_s", "backup to S3 (s)", 2, "ratio<=0.5"),
    Figure("restore_s", "restore from S3 (s)", 2, "ratio<=0.5"),
    Figure("rss_backup_mib", "backup peak RSS (MiB)", 1, "abs<=300"),
    Figure("rss_restore_mib", "restore peak RSS (MiB)", 1, "abs<=200"),
    Figure("puts_per_gib", "backup PUTs per GiB", 1, "abs<=80"),
    Figure("gets_per_gib", "restore GETs per GiB", 1, ""),
    Figure("objects", "objects stored", 0, ""),
    Figure("stored_mib", "MiB stored", 1, ""),
)


@dataclass
class Result:
    name: str
    figures: dict[str, float] = field(default_factory=dict)
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    verified: Optional[bool] = None
    error: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # step -> tool / moto / proxy CPU s


class S3Lab:
    """A moto server and the proxy in front of it, both child processes, stopped by ``close``."""

    def __init__(self, work: Path, latency_ms: float) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        port = _free_port()
        env = {**os.environ, **DUMMY_ENV}
        self.moto_url = f"http://127.0.0.1:{port}"
        self._spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env)
        _wait_http(self.moto_url + "/moto-api/")
        port_file = work / f"proxy-port-{uuid.uuid4().hex[:8]}"
        self._spawn([sys.executable, str(HERE / "s3_proxy.py"), self.moto_url,
                     "--latency-ms", str(latency_ms), "--port-file", str(port_file)], env)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the S3 proxy did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        port_file.unlink()
        self.bucket = f"bench-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=self.bucket)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self.procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def client(self) -> Any:
        import boto3
        return boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench-secret",
                                     region_name="us-east-1").client("s3", endpoint_url=self.moto_url)

    def stats(self, reset: bool = False) -> dict[str, Any]:
        req = urllib.request.Request(self.url + ("/_proxy/reset" if reset else "/_proxy/stats"),
                                     method="POST" if reset else "GET")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stored(self, prefix: str) -> tuple[int, int]:
        count = size = 0
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                            Prefix=prefix):
            for item in page.get("Contents", []) or []:
                count += 1
                size += int(item["Size"])
        return count, size

    def server_cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) the moto server and the proxy have used so far: they
        share the machine's cores with the tool, so a step's wall time cannot fall below
        (the tool's CPU + theirs) / cores; the report shows that floor beside each result."""
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = {}
        for role, proc in zip(("moto", "proxy"), self.procs):
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu[role] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return cpu

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in time")


class S3Drtool(bench.Drtool):
    def __init__(self, work: Path, lab: S3Lab, profile: Optional[Path]) -> None:
        super().__init__(work)
        self.lab = lab
        self.profile = profile

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(DUMMY_ENV, DRTOOL_REPOSITORY=f"s3://{self.lab.bucket}/drtool",
                   AWS_ENDPOINT_URL=self.lab.url)
        return env

    def wrap(self, argv: list[str], what: str) -> list[str]:
        if self.profile is None:
            return argv
        self.profile.mkdir(parents=True, exist_ok=True)
        return ["py-spy", "record", "--idle", "--threads", "-r", "50", "--format", "raw", "-o",
                str(self.profile / f"drtool-{what}.folded"), "--"] + argv


class S3Restic(bench.Restic):
    def __init__(self, work: Path, lab: S3Lab) -> None:
        super().__init__(work)
        self.lab = lab

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(DUMMY_ENV, RESTIC_REPOSITORY=f"s3:{self.lab.url}/{self.lab.bucket}/restic")
        return env

    def wrap(self, argv: list[str], what: str) -> list[str]:
        return argv


def run_tool(name: str, args: argparse.Namespace, data: Path, logs: Path) -> Result:
    res = Result(name)
    lab = S3Lab(args.work, args.latency_ms)
    tool: Any = (S3Drtool(args.work, lab, args.profile) if name == "drtool"
                 else S3Restic(args.work, lab))
    prefix = "drtool/" if name == "drtool" else "restic/"
    f = res.figures
    try:
        tool.reset()
        source = data / "night1"
        src_bytes = bench.du_bytes(source)
        bench.read_tree(source)
        bench.step(tool, res, "init", tool.init_cmd(), logs, args.timeout)
        lab.stats(reset=True)
        before = lab.server_cpu()
        run = bench.step(tool, res, "backup", tool.wrap(tool.backup_cmd(source, "night1"), "backup"),
                         logs, args.timeout)
        res.cpu["backup"] = _step_cpu(run, before, lab.server_cpu())
        counts = lab.stats()
        res.requests["backup"] = counts["requests"]
        f["backup_s"], f["rss_backup_mib"] = run.seconds, run.maxrss_mib
        puts = sum(counts["requests"].get(k, 0) for k in ("put", "put_if_absent", "part", "initiate", "complete"))
        f["puts_per_gib"] = puts / (src_bytes / GIB)
        f["objects"], stored = lab.stored(prefix)
        f["stored_mib"] = stored / MIB
        bench.forget_deleted_inodes(keep_warm=tool.home)
        tool.restore_dir.mkdir(parents=True, exist_ok=True)
        argv, cwd = tool.restore_cmd("night1")
        lab.stats(reset=True)
        before = lab.server_cpu()
        run = bench.step(tool, res, "restore", tool.wrap(argv, "restore"), logs, args.timeout, cwd)
        res.cpu["restore"] = _step_cpu(run, before, lab.server_cpu())
        counts = lab.stats()
        res.requests["restore"] = counts["requests"]
        gets = sum(counts["requests"].get(k, 0) for k in ("get", "range_get"))
        f["restore_s"], f["rss_restore_mib"] = run.seconds, run.maxrss_mib
        f["gets_per_gib"] = gets / (src_bytes / GIB)
        res.verified, msg = bench.verify_restore(tool.restore_dir, source)
        if msg:
            res.notes.append(msg)
        bench.log(f"{name}: restore verified: {res.verified}")
    except (bench.StepError, subprocess.CalledProcessError, OSError, RuntimeError) as exc:
        res.error = str(exc)
        bench.log(f"{name}: ERROR {exc}")
    finally:
        lab.close()
        if not args.keep:
            shutil.rmtree(tool.home, ignore_errors=True)
    return res


def _step_cpu(run: "bench.Run", before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {"wall": run.seconds, "tool": run.user_s + run.sys_s,
            **{role: after[role] - before[role] for role in after}}


def cpu_floor_lines(results: dict[str, Result]) -> list[str]:
    """Where each step's wall time stands against the CPU the whole set-up needed.

    On a machine of C cores, a step in which the tool, moto and the proxy used T seconds
    of CPU between them cannot take less than T / C of wall time.  For drtool's speed
    targets (≤ 0.5 × restic's wall) the line also says how much CPU the target leaves
    drtool once the servers' share of its own run is paid."""
    cores = len(os.sched_getaffinity(0))
    lines = [f"CPU accounting ({cores} cores; user + system seconds of the tool and of the servers"
             " during each step):"]
    restic = results.get("restic")
    for name, res in results.items():
        for phase, cpu in res.cpu.items():
            total = cpu["tool"] + cpu["moto"] + cpu["proxy"]
            line = (f"  {name} {phase}: wall {cpu['wall']:.2f} s; CPU tool {cpu['tool']:.2f} + moto "
                    f"{cpu['moto']:.2f} + proxy {cpu['proxy']:.2f} = {total:.2f} s; "
                    f"floor on {cores} cores {total / cores:.2f} s")
            if name == "drtool" and restic is not None and phase in restic.cpu:
                target = 0.5 * restic.cpu[phase]["wall"]
                budget = cores * target - cpu["moto"] - cpu["proxy"]
                line += (f"; target 0.5 x restic = {target:.2f} s leaves drtool {max(budget, 0):.2f} s of CPU"
                         f" (it used {cpu['tool']:.2f})")
            lines.append(line)
    return lines


def judge(fig: Figure, results: dict[str, Result]) -> dict[str, Any]:
    d = results["drtool"].figures.get(fig.key) if "drtool" in results else None
    r = results["restic"].figures.get(fig.key) if "restic" in results else None
    ratio = d / r if d is not None and r else None
    status = "n/a"
    if fig.target and d is not None:
        kind, _, limit = fig.target.partition("<=")
        if kind == "abs":
            status = "PASS" if d <= float(limit) else "FAIL"
        elif ratio is not None:
            status = "PASS" if ratio <= float(limit) else "FAIL"
    if fig.key == "restore_s" and "drtool" in results and results["drtool"].verified is False:
        status = "FAIL"
    return {"key": fig.key, "label": fig.label, "drtool": d, "restic": r, "ratio": ratio,
            "target": fig.target.replace("ratio", "x restic ").replace("abs", ""), "status": status}


def render(rows: list[dict[str, Any]], results: dict[str, Result]) -> str:
    table = [["figure", "drtool", "restic", "drtool÷restic", "target", "result"]]
    for fig, row in zip(FIGURES, rows):
        def fmt(v: Optional[float], name: str) -> str:
            if name not in results:
                return "-"
            return ("error" if results[name].error else "-") if v is None else f"{v:.{fig.digits}f}"
        table.append([fig.label, fmt(row["drtool"], "drtool"), fmt(row["restic"], "restic"),
                      "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}",
                      row["target"] or "-", row["status"]])
    verified = {None: "-", True: "yes", False: "NO"}
    table.append(["restore verified", *(verified[results[n].verified] if n in results else "-"
                                        for n in TOOLS), "", "identical", ""])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench --s3", description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=0.0, help="added to every S3 request")
    ap.add_argument("--scale", type=float, default=1.0, help="data set scale (1.0 = ~1 GiB/night)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma list of drtool,restic")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/var/tmp")) / "drtool-bench")
    ap.add_argument("--keep", action="store_true", help="keep restores")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy flame graphs of drtool here")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args(argv)
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not args.tool_list or any(t not in TOOLS for t in args.tool_list):
        ap.error(f"--tools: choose from {','.join(TOOLS)}")
    if args.latency_ms < 0:
        ap.error("--latency-ms must not be negative")
    args.smallfiles = None
    args.work = args.work.resolve()
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    bench.claim_work_dir(args.work)
    logs = args.work / "logs"
    logs.mkdir(exist_ok=True)
    data = bench.dataset(args.work, args)
    results = {name: run_tool(name, args, data, logs) for name in TOOLS if name in args.tool_list}
    rows = [judge(fig, results) for fig in FIGURES]
    if args.json:
        print(json.dumps({"mode": "s3", "latency_ms": args.latency_ms, "scale": args.scale,
                          "rows": rows, "tools": {n: vars(r) for n, r in results.items()}}, indent=2))
        return 0
    print(f"S3 bench: moto server behind a proxy adding {args.latency_ms:g} ms per request; "
          f"night 1 at scale {args.scale:g}; {os.cpu_count()} cores")
    for name in results:
        print(f"  {name}: {bench.capture([name, 'version'] if name == 'restic' else [sys.executable, '-m', 'drtool', '--version'])}")
    print()
    print(render(rows, results))
    print("\nrequests (proxy counts):")
    for name, res in results.items():
        for phase, counts in res.requests.items():
            print(f"  {name} {phase}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for note in ([f"ERROR {res.error}"] if res.error else []) + res.notes:
            print(f"  {name}: {note}")
    print()
    print("\n".join(cpu_floor_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
