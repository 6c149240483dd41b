#!/usr/bin/env python3
"""The PostgreSQL half of ``scripts/bench --databases`` (what it measures: scripts/bench_databases.py).

``pgbench -i -s S`` in a throwaway server with its WAL archived by drtool; pg_basebackup
against drtool's base backup; restores against ``cp -a``; WAL replay with ``--start`` and
with the server started by the operator.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench_db_common import (PY, Drtool, best, clock, drop_caches, free_port, log, restore_floors, run,
                             spread_new_trees, timed)


def pg_bindir() -> str:
    out = run(["pg_config", "--bindir"]).stdout.strip()
    for folder in [out, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        if folder and os.access(os.path.join(folder, "initdb"), os.X_OK):
            return str(folder)
    raise SystemExit("bench: PostgreSQL server binaries not found")


def pg_bench(work: Path, scale: int) -> dict[str, Any]:
    bindir, root = pg_bindir(), work / "pg"
    as_pg = ["unshare", "--user", "--map-user=1000", "--map-group=1000"] if os.geteuid() == 0 else []
    data, port = root / "data", free_port()
    root.mkdir(parents=True)
    spread_new_trees(root)
    pw = root / "pgpw"
    pw.write_text("pgpw\n")
    run([*as_pg, f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"])
    config = work / "drtool.toml"
    config.write_text(f'repository = "{work / "repo"}"\n[sources.pg]\ntype = "postgresql"\nmethod = "basebackup"\n'
                      f'host = "{root}"\nport = {port}\nuser = "postgres"\nbindir = "{bindir}"\n'
                      f'archive_async = true\nspool_dir = "{root / "spool"}"\n')
    dr = Drtool(work, config)
    dr("init")
    with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(f"\nport = {port}\nlisten_addresses = ''\nunix_socket_directories = '{root}'\n"
                   f"wal_level = replica\narchive_mode = on\nmax_wal_size = 4GB\n"
                   f"archive_command = '{PY} -m drtool pg wal-push --source pg %p'\n")
    run([*as_pg, f"{bindir}/pg_ctl", "-D", str(data), "-w", "-l", str(root / "log"), "start"], dr.env)
    try:
        psql = [*as_pg, f"{bindir}/psql", "-h", str(root), "-p", str(port), "-U", "postgres", "-At", "-c"]
        run([*as_pg, f"{bindir}/pgbench", "-i", "-s", str(scale), "-h", str(root), "-p", str(port),
             "-U", "postgres", "postgres"])
        size = int(run([*psql, "SELECT pg_database_size('postgres')"]).stdout.strip())
        log(f"PostgreSQL: pgbench -i -s {scale}, {size / 2**20:.0f} MiB")
        out: dict[str, Any] = {"data_bytes": size, "scale": scale}
        native = root / "native"
        def native_backup(i: int) -> None:
            shutil.rmtree(native, ignore_errors=True)
            run([*as_pg, f"{bindir}/pg_basebackup", "-D", str(native), "-h", str(root), "-p", str(port),
                 "-U", "postgres", "-X", "none", "-c", "fast"])
        out["native_backup_s"] = best(native_backup)
        out["native_backup_cpu_s"], out["native_backup_sys_s"] = clock.cpu, clock.sys
        out["physical_backup_s"] = timed(lambda: dr("backup", "--source", "pg"))
        out["physical_backup_cpu_s"], out["physical_backup_sys_s"] = clock.cpu, clock.sys
        out["physical_night1_stored"] = dr.stored("pg")
        out["fixed_s"] = timed(lambda: dr("snapshots", "--name", "pg", "--json"))
        if drop_caches():  # once each cold, drtool into a repository of its own (pg_basebackup syncs its copy)
            out["native_cold_s"] = out["native_cold_durable_s"] = timed(lambda: native_backup(clock.repeat))
            (work / "cold").mkdir()
            cold_dr = Drtool(work / "cold", config)
            cold_dr("init")
            drop_caches()
            out["physical_cold_s"] = timed(lambda: cold_dr("backup", "--source", "pg"))
            shutil.rmtree(work / "cold")
        run([*psql, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0"])
        out["physical_night2_s"] = timed(lambda: dr("backup", "--source", "pg"))
        out["physical_night2_stored"] = dr.stored("pg")
        night1, snap = (item["id"] for item in json.loads(dr("snapshots", "--name", "pg", "--json")))
        restore_floors(out, native, root / "floor", None, lambda: dr(
            "restore", night1[:12], "--source", "pg", "--target", str(root / "r-cold"), prefix=as_pg), root / "r-cold")
        for key, snapshot in (("physical_full_restore", night1), ("physical_restore", snap)):
            out[f"{key}_s"] = best(lambda i: dr("-v", "restore", snapshot[:12], "--source", "pg",
                                                "--target", str(root / f"r-{key}{i}"), prefix=as_pg),
                                   root / f"r-{key}")
            out[f"{key}_cpu_s"], out[f"{key}_sys_s"] = clock.cpu, clock.sys
            out[f"{key}_stages"] = dr.stage_seconds()
            shutil.rmtree(f"{root / f'r-{key}'}{clock.repeat - 1}", ignore_errors=True)
        pg_replay(out, dr, psql, as_pg, bindir, root)
        return out
    finally:
        subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True)


def pg_replay(out: dict[str, Any], dr: Drtool, psql: list[str], as_pg: list[str], bindir: str, root: Path) -> None:
    """WAL after night 2 (a 5 % UPDATE: full-page images of most of pgbench_accounts), archived, then
    ``restore --latest --start``: the server replays it through drtool-wal-fetch.sh, from this
    restore's prefetch; the rate is the WAL over the time beyond night 2's restore."""
    run([*psql, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 20 = 0"])
    last = run([*psql, "SELECT pg_walfile_name(pg_current_wal_lsn())"]).stdout.strip()
    run([*psql, "SELECT pg_switch_wal()"])
    deadline = time.monotonic() + 600
    while run([*psql, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"]).stdout.strip() < last:
        if time.monotonic() > deadline:
            raise RuntimeError(f"WAL file {last} was not archived within 10 minutes")
        time.sleep(0.5)
    plan = json.loads(dr("restore", "--source", "pg", "--latest", "--target", "/nonexistent", "--dry-run", "--json"))
    out["replay_bytes"], out["log_kind"] = plan["segment_bytes"], "WAL"
    latest = root / "r-latest"
    try:
        report: dict[str, Any] = {}

        def restore() -> None:
            report.update(json.loads(dr("restore", "--source", "pg", "--latest", "--target", str(latest), "--start",
                                        "--port", str(free_port()), "--json", prefix=as_pg)))
        out["physical_latest_s"] = timed(restore)
        out["prefetch"] = report.get("prefetch")
    finally:
        subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", str(latest), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(latest, ignore_errors=True)
    replay = out["physical_latest_s"] - out["physical_restore_s"]
    out["replay_mib_s"] = out["replay_bytes"] / 2**20 / replay if replay > 0 else None
    operator_replay(out, dr, as_pg, bindir, root / "r-operator")


def operator_replay(out: dict[str, Any], dr: Drtool, as_pg: list[str], bindir: str, target: Path) -> None:
    """The same ``--latest`` restore without ``--start``, the server then started with ``pg_ctl`` as an
    operator would: its first wal-fetch starts ``drtool pg wal-prefetch``.  Timed from the restore's
    start until the server is out of recovery."""
    port = str(free_port())
    in_recovery = [*as_pg, f"{bindir}/psql", "-h", str(target), "-p", port, "-U", "postgres", "-d", "postgres",
                   "-Atc", "SELECT pg_is_in_recovery()"]

    def restore_and_start() -> None:
        dr("restore", "--source", "pg", "--latest", "--target", str(target), "--port", port, prefix=as_pg)
        run([*as_pg, f"{bindir}/pg_ctl", "-D", str(target), "-l", str(target / "server.log"), "-w", "-t", "600",
             "start"])
        deadline = time.monotonic() + 600
        while subprocess.run(in_recovery, capture_output=True, text=True).stdout.strip() != "f":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server in {target} was still recovering after 10 minutes")
            time.sleep(0.1)
    try:
        out["operator_latest_s"] = timed(restore_and_start)
        log, done, until = target / "drtool-wal-prefetch.log", [], time.monotonic() + 10
        while not done and time.monotonic() < until:  # the process notices the promotion, then logs
            time.sleep(0.2)
            text = log.read_text() if log.exists() else ""
            done = [json.loads(line)["message"] for line in text.splitlines() if "WAL prefetch for" in line]
        out["operator_prefetch"] = done[-1] if done else "no prefetch logged"
    finally:
        subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", str(target), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(target, ignore_errors=True)
    replay = out["operator_latest_s"] - out["physical_restore_s"]
    out["operator_replay_mib_s"] = out["replay_bytes"] / 2**20 / replay if replay > 0 else None
