#!/usr/bin/env python3
"""WAL archiving throughput: can drtool keep up with a busy PostgreSQL?

    scripts/bench --archive [--segments N] [--seconds S] [--clients C] [--json]

1. Per-segment cost: N real 16 MiB WAL segments (from ``pgbench -i``) pushed
   by one ``drtool pg wal-push`` process each, as a synchronous
   archive_command does: latency per segment, segments per second.
2. The same segments stored by the asynchronous worker (``archive_async``):
   segments per second from the first archive_command to the last verdict.
3. A throwaway server under ``pgbench -c C`` for S seconds, once with each
   mode: WAL segments written, archived, failed, and the archive lag (completed
   segments not yet archived: sampled every 0.25 s; max and mean).

Default key-derivation parameters, a local repository, the machine as it is.
Runs as root: the server runs in a user namespace (PostgreSQL refuses root).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PASSWORD = "bench-only-not-a-secret"
SEGMENT = 16 * 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench-archive {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pg_bindir() -> str:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
    for folder in [out, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if folder and os.access(os.path.join(folder, "initdb"), os.X_OK):
            return folder
    sys.exit("bench: PostgreSQL server binaries not found (install postgresql)")


def prefix() -> list[str]:
    return ["unshare", "--user", "--map-user=1000", "--map-group=1000"] if os.geteuid() == 0 else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A throwaway cluster archiving with drtool (sync or async) into ``work/repo``."""

    def __init__(self, work: Path, mode: str, bindir: str) -> None:
        self.work, self.mode, self.bindir = work, mode, bindir
        self.root = Path(tempfile.mkdtemp(prefix="drbench-", dir="/tmp"))
        self.port = free_port()
        self.env = drtool_env(work, mode, self.root)

    def start(self, archive: bool) -> None:
        data = self.root / "data"
        run([*prefix(), f"{self.bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"])
        command = f"{PY} -m drtool pg wal-push --source bench %p"
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = ''\nunix_socket_directories = '{self.root}'\n"
                       f"wal_level = replica\nmax_wal_size = 1GB\nfsync = off\n"
                       f"archive_mode = {'on' if archive else 'off'}\narchive_command = '{command}'\n")
        run([*prefix(), f"{self.bindir}/pg_ctl", "-D", str(data), "-l", str(self.root / "log"), "-w", "start"],
            env=self.env)

    def psql(self, sql: str) -> str:
        return run([f"{self.bindir}/psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-At",
                    "-c", sql]).strip()

    def pgbench(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([f"{self.bindir}/pgbench", "-h", str(self.root), "-p", str(self.port),
                                 "-U", "postgres", *args, "postgres"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        subprocess.run([*prefix(), f"{self.bindir}/pg_ctl", "-D", str(self.root / "data"), "-m", "immediate",
                        "-w", "stop"], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(f"bench: {' '.join(argv[:3])} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def drtool_env(work: Path, mode: str, spool_root: Path) -> dict[str, str]:
    config = work / f"drtool-{mode}.toml"
    extra = f'archive_async = true\nspool_dir = "{spool_root}/spool"\n' if mode == "async" else ""
    config.write_text(f'repository = "{work}/repo-{mode}"\npassword_file = "{work}/passphrase"\n'
                      f'catalog = "{work}/catalog-{mode}.sqlite"\n\n[sources.bench]\ntype = "postgresql"\n'
                      f'method = "basebackup"\n{extra}')
    return {**os.environ, "DRTOOL_CONFIG": str(config), "PYTHONPATH": str(REPO_ROOT)}


def init_repo(work: Path, mode: str) -> None:
    shutil.rmtree(work / f"repo-{mode}", ignore_errors=True)
    run([PY, "-m", "drtool", "init"], env=drtool_env(work, mode, work))


def real_segments(work: Path, bindir: str, count: int) -> list[Path]:
    """``count`` WAL segments written by ``pgbench -i`` (real records, not random bytes)."""
    server = Server(work, "sync", bindir)
    try:
        server.start(archive=False)
        scale = max(10, count * 2)
        run([f"{bindir}/pgbench", "-h", str(server.root), "-p", str(server.port), "-U", "postgres", "-i",
             "-s", str(scale), "-q", "postgres"])
        server.psql("CHECKPOINT")
        names = sorted(n for n in os.listdir(server.root / "data" / "pg_wal") if len(n) == 24)
        out = work / "segments"
        shutil.rmtree(out, ignore_errors=True)
        (out / "archive_status").mkdir(parents=True)
        chosen = []
        for name in names[1:count + 1]:
            shutil.copy(server.root / "data" / "pg_wal" / name, out / name)
            chosen.append(out / name)
        return chosen
    finally:
        server.stop()


def bench_sync(work: Path, segments: list[Path]) -> dict[str, float]:
    init_repo(work, "sync")
    env = drtool_env(work, "sync", work)
    latencies = []
    for path in segments:
        started = time.monotonic()
        run([PY, "-m", "drtool", "pg", "wal-push", "--source", "bench", str(path)], env=env)
        latencies.append(time.monotonic() - started)
    return {"latency_median_s": statistics.median(latencies), "latency_max_s": max(latencies),
            "segments_per_s": len(segments) / sum(latencies)}


def bench_async(work: Path, segments: list[Path]) -> dict[str, float]:
    init_repo(work, "async")
    spool = Path(tempfile.mkdtemp(prefix="drbench-spool-", dir="/tmp"))
    env = drtool_env(work, "async", spool)
    for path in segments:
        (path.parent / "archive_status" / f"{path.name}.ready").touch()
    started = time.monotonic()
    latencies = []
    try:
        for path in segments:  # archive_command, one file after another, as PostgreSQL calls it
            one = time.monotonic()
            run([PY, "-m", "drtool", "pg", "wal-push", "--source", "bench", str(path)], env=env)
            latencies.append(time.monotonic() - one)
            os.rename(path.parent / "archive_status" / f"{path.name}.ready",
                      path.parent / "archive_status" / f"{path.name}.done")
        total = time.monotonic() - started
    finally:
        subprocess.run(["fuser", "-k", str(spool / "spool" / "worker.lock")], capture_output=True, check=False)
        shutil.rmtree(spool, ignore_errors=True)
    return {"latency_median_s": statistics.median(latencies), "latency_max_s": max(latencies),
            "segments_per_s": len(segments) / total}


def bench_load(work: Path, bindir: str, mode: str, seconds: float, clients: int) -> dict[str, Any]:
    init_repo(work, mode)
    server = Server(work, mode, bindir)
    lags: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            try:
                current, archived = server.psql(
                    "SELECT pg_walfile_name(pg_current_wal_lsn()) || ' ' || coalesce(last_archived_wal, '') "
                    "FROM pg_stat_archiver").split(" ")
            except (ValueError, SystemExit):
                continue
            if len(archived) >= 24:
                lags.append(int(current[8:], 16) - int(archived[8:24], 16) - 1)

    try:
        server.start(archive=True)
        run([f"{bindir}/pgbench", "-h", str(server.root), "-p", str(server.port), "-U", "postgres", "-i", "-s", "10",
             "-q", "postgres"])
        server.psql("SELECT pg_switch_wal()")
        time.sleep(5)
        start_lsn = server.psql("SELECT pg_current_wal_lsn()")
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        bench = server.pgbench("-c", str(clients), "-j", "2", "-T", str(int(seconds)), "-n")
        bench.wait()
        done.set()
        written = int(server.psql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start_lsn}')"))
        archived, failed = server.psql("SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver").split()
        return {"wal_mib_per_s": written / seconds / 2**20, "segments_written": written / SEGMENT,
                "archived": int(archived), "failed": int(failed), "lag_max": max(lags, default=-1),
                "lag_mean": statistics.mean(lags) if lags else -1.0, "samples": len(lags)}
    finally:
        done.set()
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench --archive", description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/var/tmp")) / "drtool-bench-archive")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bindir = pg_bindir()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    (args.work / "passphrase").write_text(PASSWORD + "\n")
    log(f"making {args.segments} real WAL segments with pgbench -i")
    segments = real_segments(args.work, bindir, args.segments)
    log("synchronous wal-push, one process per segment")
    results: dict[str, Any] = {"sync": bench_sync(args.work, segments)}
    log("asynchronous archiving (archive_async)")
    results["async"] = bench_async(args.work, segments)
    for mode in ("sync", "async"):
        log(f"pgbench -c {args.clients} for {args.seconds:g}s, {mode} archiving")
        results[f"load_{mode}"] = bench_load(args.work, bindir, mode, args.seconds, args.clients)
    shutil.rmtree(args.work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"machine: {os.cpu_count()} cores; default Argon2id; local repository; {args.segments} real segments")
    print(f"{'mode':<6} {'latency median (s)':>19} {'latency max (s)':>16} {'segments/s':>11}")
    for mode in ("sync", "async"):
        r = results[mode]
        print(f"{mode:<6} {r['latency_median_s']:>19.3f} {r['latency_max_s']:>16.3f} {r['segments_per_s']:>11.2f}")
    print(f"\nunder pgbench -c {args.clients}, {args.seconds:g}s:")
    print(f"{'mode':<6} {'WAL MiB/s':>10} {'segments':>9} {'archived':>9} {'failed':>7} {'lag max':>8} {'lag mean':>9}")
    for mode in ("sync", "async"):
        r = results[f"load_{mode}"]
        print(f"{mode:<6} {r['wal_mib_per_s']:>10.2f} {r['segments_written']:>9.1f} {r['archived']:>9} "
              f"{r['failed']:>7} {r['lag_max']:>8} {r['lag_mean']:>9.2f}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
