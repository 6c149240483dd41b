#!/usr/bin/env python3
"""Database RTO: drtool's physical and logical backups and restores against the native tools.

    scripts/bench --databases [--maria-rows N] [--pg-scale S] [--json] [--work DIR]

MariaDB: sysbench-schema tables (``sbtest1..4``: id, k, c CHAR(120), pad CHAR(60)),
filled with the sequence engine (no sysbench needed).  PostgreSQL: ``pgbench -i -s S``.
Both in throwaway servers under --work (default /var/tmp/drtool-bench-db); drtool uses
its default key derivation and a local repository.

Measured, in one run on the machine as it is:

* backup night 1: ``drtool backup --source`` (physical: mariabackup / pg_basebackup
  streamed into the repository; logical: mariadb-dump and mydumper) vs the native tool writing
  into a local directory (``mariabackup --backup --target-dir``, ``pg_basebackup -D``);
* night 2 after updating 1 % of the rows: time and bytes stored (compressed,
  encrypted) as a share of the data size — MariaDB's physical night 2 is incremental
  (``mariabackup --incremental-lsn``); a second source on the same server with
  ``full_every = 1`` takes full nights into a repository of its own (in the same one it
  would deduplicate against the incremental's pages), for comparison.  Before each night
  MariaDB's dirty pages are flushed (a nightly backup runs hours after the day's changes,
  which are in the data files by then, not only in the redo log);
* restore: drtool physical (extract + prepare / unpack) and logical (load into a new
  database) vs the floor by hand: ``cp -a`` of the native backup (+ ``mariabackup
  --prepare`` for MariaDB: drtool's physical restore prepares, so the floor does too;
  neither starts the server); MariaDB physical twice: night 1 (a full) and night 2
  (the chain: full + incremental, each extracted, then prepared and applied);
* the durable floors: the native copy and the restore floor once more with ``sync -f`` of
  what they wrote (``mariabackup --target-dir`` and ``cp -a`` return with the copy in the page
  cache; drtool's backup returns with its packs fsync'ed, its physical MariaDB restore with
  the tree synced, as pgBackRest's do).  Night 1 is taken twice (each into an empty repository,
  the second the full nights' own) and the best kept, as the native copy is best of --repeat;
* cold: the native copy, night 1, the floor and the restore of night 1 once each with the page
  cache dropped before (root only), as a nightly run over a big server and a 3 a.m. restore read;
* the fixed cost of one drtool command (``snapshots``: start-up, key derivation,
  index), which every drtool figure above includes and the native tools do not pay;
* CPU seconds (user + sys, with child processes) of the native copy and of night 1,
  and the load average at the start and the end: the kernel shares the cores between
  sessions (autogroups), so on a busy host drtool's wall time is its CPU at a fraction
  of a core while the native copy mostly waits on the page cache and the disk.  System
  time is shown apart: on the bench's VM (Firecracker, free page reporting) writing into
  memory that sat free for a few seconds cost ~1.8 s of system time per GiB against
  ~0.35 s for memory freed a moment before, so the same native copy took 1.4 s or 9.0 s
  of CPU depending on what ran before it (docs/performance.md, 6 December, physrestore);
  compare steps by their user time, or run --repeat 2+ (the best run is kept);
* PITR replay rate: binlog written after the base, replayed by ``drtool restore
  --latest`` (MiB of binlog per second, the physical restore time subtracted); for
  PostgreSQL the WAL of a 5 % ``UPDATE`` after night 2, replayed by the server that
  ``restore --latest --start`` starts (through ``drtool-wal-fetch.sh``, from the restore's
  WAL prefetch), with how many of the planned files came from the prefetch; and the same
  restore without ``--start``, the server started with ``pg_ctl`` as an operator would
  (its first wal-fetch starts ``drtool pg wal-prefetch``), until it is out of recovery.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_databases_pg import pg_bench  # noqa: E402  (the PostgreSQL half)
from bench_databases_table import table  # noqa: E402  (the report's layout, kept apart)
from bench_db_common import (ROOT_PW, Drtool, best, clock, drop_caches, log, restore_floors, run,  # noqa: E402
                             spread_new_trees, sync_fs, timed)


# ----- MariaDB --------------------------------------------------------------------------------------
def mariadb_bench(work: Path, rows: int, logical: bool = True) -> dict[str, Any]:
    bench = MariaBench(work, logical)
    bench.start()
    try:
        bench.load(rows)
        bench.nights()
        bench.restores()
        return bench.out
    finally:
        bench.stop()


class MariaBench:
    """One throwaway MariaDB server and the figures measured against it, step by step."""

    def __init__(self, work: Path, logical: bool) -> None:
        self.work, self.logical, self.root = work, logical, work / "maria"
        self.data, self.sock, self.tmp = self.root / "data", self.root / "m.sock", self.root / "tmp"
        self.user = ["--user=root"] if os.geteuid() == 0 else []
        self.out: dict[str, Any] = {}
        self.server: subprocess.Popen[bytes] | None = None
        self.night2_id = ""

    def start(self) -> None:
        self.tmp.mkdir(parents=True)
        spread_new_trees(self.root)
        run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}",
             "--auth-root-authentication-method=normal", "--skip-test-db", f"--tmpdir={self.tmp}", *self.user])
        self.server = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.data}", f"--socket={self.sock}", "--skip-networking",
             f"--log-bin={self.data}/binlog", "--server-id=1", "--binlog-format=ROW",
             "--innodb-buffer-pool-size=256M", f"--tmpdir={self.tmp}", f"--pid-file={self.root}/m.pid",
             f"--log-error={self.root}/err.log", *self.user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            if subprocess.run(["mariadb", "--no-defaults", f"--socket={self.sock}", "-uroot", "-e", "SELECT 1"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        run(["mariadb", "--no-defaults", f"--socket={self.sock}", "-uroot", "-e",
             f"ALTER USER root@localhost IDENTIFIED BY '{ROOT_PW}'"])

    def stop(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(timeout=120)

    def sql(self, query: str, database: str = "") -> str:
        return run(["mariadb", "--no-defaults", f"--socket={self.sock}", "-uroot", f"-p{ROOT_PW}", "-N", "-e",
                    query, *([database] if database else [])]).stdout

    def load(self, rows: int) -> None:
        """sbtest tables, the drtool configuration, and two repositories (the full nights' own)."""
        self.sql("CREATE DATABASE sbtest")
        for t in range(1, 5):
            self.sql(f"CREATE TABLE sbtest{t} (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, "
                     f"pad CHAR(60) NOT NULL, KEY k_{t}(k)) ENGINE=InnoDB", "sbtest")
            self.sql(f"INSERT INTO sbtest{t} SELECT seq, FLOOR(RAND(seq)*{rows}), "
                     f"SUBSTRING(REPEAT(SHA2(seq, 256), 2), 1, 120), SUBSTRING(SHA2(seq * 7, 256), 1, 60) "
                     f"FROM seq_1_to_{rows}", "sbtest")
        size = int(self.sql("SELECT SUM(data_length + index_length) FROM information_schema.tables "
                            "WHERE table_schema = 'sbtest'").strip())
        log(f"MariaDB: 4 tables x {rows} rows, {size / 2**20:.0f} MiB (data + index)")
        self.out.update(data_bytes=size, rows=4 * rows)
        pw = self.root / "rootpw"
        pw.write_text(ROOT_PW + "\n")
        self.cnf = self.root / "client.cnf"
        self.cnf.write_text(f'[client]\npassword="{ROOT_PW}"\n')
        config = self.work / "drtool.toml"
        base = f'type = "mariadb"\nsocket = "{self.sock}"\nuser = "root"\npassword_file = "{pw}"\n'
        config.write_text(f'repository = "{self.work / "repo"}"\n[sources.phys]\n{base}method = "physical"\n'
                          f'[sources.physfull]\n{base}method = "physical"\nfull_every = 1\n'
                          f'[sources.dump]\n{base}dbname = "sbtest"\n'
                          f'[sources.md]\n{base}dbname = "sbtest"\nmethod = "mydumper"\nthreads = 2\n')
        self.dr = Drtool(self.work, config)
        self.dr("init")
        (self.work / "cmp").mkdir()
        self.full_dr = Drtool(self.work / "cmp", config)  # the full nights' own repository
        self.full_dr("init")
        self.settle()

    def settle(self) -> None:
        """Flush every dirty page (the checkpoint passes the current LSN), then flush as usual."""
        want = int(self.sql("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'").split()[1])
        self.sql("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001, innodb_max_dirty_pages_pct = 0")
        while int(self.sql("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_last_checkpoint'").split()[1]) < want:
            time.sleep(0.5)
        self.sql("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0, innodb_max_dirty_pages_pct = 90")

    def nights(self) -> None:
        """Native copy, night 1 (physical, logical), 1 % of the rows changed, night 2 (incremental and
        full, each in its own repository), then binlog written after night 2 for the replay rate."""
        out, dr, full_dr, native = self.out, self.dr, self.full_dr, self.root / "native"

        syncs: list[float] = []

        def native_backup(i: int) -> None:
            shutil.rmtree(native, ignore_errors=True)
            run(["mariabackup", f"--defaults-extra-file={self.cnf}", "--backup", f"--target-dir={native}",
                 f"--datadir={self.data}", f"--socket={self.sock}", "--user=root"])
            syncs.append(sync_fs(native))
        out["native_durable_s"] = best(native_backup)
        out["native_backup_s"] = out["native_durable_s"] - syncs[clock.kept]
        out["native_backup_cpu_s"], out["native_backup_sys_s"] = clock.cpu, clock.sys
        # night 1 twice, a full into each empty repository (the second is the full nights' own), the
        # best kept as the native copy's is: the same number of tries on both sides
        nights = [(timed(lambda: dr("backup", "--source", "phys")), clock.cpu, clock.sys),
                  (timed(lambda: full_dr("backup", "--source", "physfull")), clock.cpu, clock.sys)]
        out["physical_backup_runs_s"] = [wall for wall, _cpu, _sys in nights]
        out["physical_backup_s"], out["physical_backup_cpu_s"], out["physical_backup_sys_s"] = min(nights)
        out["physical_night1_stored"] = dr.stored("phys")
        self.cold_nights()
        out["fixed_s"] = timed(lambda: dr("snapshots", "--name", "phys", "--json"))
        self.logical_night("1")
        for t in range(1, 5):  # 1 % of the rows, scattered
            self.sql(f"UPDATE sbtest{t} SET k = k + 1, c = REVERSE(c) WHERE id % 100 = 0", "sbtest")
        self.settle()
        out["physical_night2_s"] = timed(lambda: dr("backup", "--source", "phys"))
        out["physical_night2_cpu_s"] = clock.cpu
        out["physical_night2_stored"] = dr.stored("phys")
        night2 = json.loads(dr("snapshots", "--name", "phys", "--json"))[-1]
        out["physical_night2_subpage"] = night2["meta"].get("subpage")
        self.night2_id = night2["id"]
        out["physical_night2_type"] = night2["meta"].get("backup_type", "full")
        out["physical_night2_streamed"] = night2["meta"].get("dump_bytes")
        out["physical_night2_full_s"] = timed(lambda: full_dr("backup", "--source", "physfull"))
        out["physical_night2_full_stored"] = full_dr.stored("physfull")
        shutil.rmtree(self.work / "cmp", ignore_errors=True)  # room for the restores
        self.logical_night("2")
        for t in range(1, 5):
            self.sql(f"UPDATE sbtest{t} SET k = k + 1 WHERE id % 20 = 1", "sbtest")
        self.sql("FLUSH BINARY LOGS")
        dr("mariadb", "binlog-push", "--source", "phys")

    def cold_nights(self) -> None:
        """Night 1 and the native copy once each with the page cache dropped before (a big server's
        files are not in memory when its nightly backup starts), into a repository made for it."""
        native, cold_work = self.root / "native-cold", self.work / "cold"
        if not drop_caches():
            return
        self.out["native_cold_s"] = timed(lambda: run(
            ["mariabackup", f"--defaults-extra-file={self.cnf}", "--backup", f"--target-dir={native}",
             f"--datadir={self.data}", f"--socket={self.sock}", "--user=root"]))
        self.out["native_cold_durable_s"] = self.out["native_cold_s"] + sync_fs(native)
        shutil.rmtree(native)
        cold_work.mkdir()
        cold_dr = Drtool(cold_work, self.work / "drtool.toml")
        cold_dr("init")
        drop_caches()
        self.out["physical_cold_s"] = timed(lambda: cold_dr("backup", "--source", "physfull"))
        shutil.rmtree(cold_work)

    def logical_night(self, night: str) -> None:
        if not self.logical:
            return
        key = "backup" if night == "1" else "night2"
        self.out[f"logical_{key}_s"] = timed(lambda: self.dr("backup", "--source", "dump"))
        self.out[f"logical_night{night}_stored"] = self.dr.stored("dump")
        self.out[f"mydumper_{key}_s"] = timed(lambda: self.dr("backup", "--source", "md"))
        self.out[f"mydumper_night{night}_stored"] = self.dr.stored("md")

    def restores(self) -> None:
        """The floor by hand, physical restores of night 1 (full) and night 2 (the chain), the
        latest point (binlog replay), and the logical loads."""
        out, dr, root, copy = self.out, self.dr, self.root, self.root / "floor"
        night1, phys = json.loads(dr("snapshots", "--name", "phys", "--json"))[0]["id"], self.night2_id

        def prepare(made: Path) -> None:
            run(["mariabackup", "--no-defaults", "--prepare", f"--target-dir={made}"])
        restore_floors(out, root / "native", copy, prepare, lambda: dr(
            "restore", night1[:12], "--source", "phys", "--target", str(root / "r-cold")), root / "r-cold")
        out["physical_full_restore_s"] = best(lambda i: dr("-v", "restore", night1[:12], "--source", "phys",
                                                           "--target", str(root / f"r-full{i}")), root / "r-full")
        out["physical_full_restore_cpu_s"], out["physical_full_restore_sys_s"] = clock.cpu, clock.sys
        out["physical_full_restore_stages"] = dr.stage_seconds()
        shutil.rmtree(f"{root / 'r-full'}{clock.repeat - 1}", ignore_errors=True)
        out["physical_restore_s"] = best(lambda i: dr("-v", "restore", phys[:12], "--source", "phys",
                                                      "--target", str(root / f"r-phys{i}")), root / "r-phys")
        out["physical_restore_cpu_s"], out["physical_restore_sys_s"] = clock.cpu, clock.sys
        out["physical_restore_stages"] = dr.stage_seconds()
        shutil.rmtree(f"{root / 'r-phys'}{clock.repeat - 1}", ignore_errors=True)
        plan = json.loads(dr("restore", "--source", "phys", "--latest", "--target", "/nonexistent",
                             "--dry-run", "--json"))
        out["replay_bytes"] = plan["segment_bytes"]
        out["physical_latest_s"] = timed(lambda: dr("restore", "--source", "phys", "--latest",
                                                    "--target", str(root / "r-latest")))
        if self.logical:
            dump = json.loads(dr("snapshots", "--name", "dump", "--json"))[-1]["id"]
            out["logical_restore_s"] = timed(lambda: dr("restore", dump[:12], "--source", "dump",
                                                        "--target-db", "sbtest_restored"))
            md = json.loads(dr("snapshots", "--name", "md", "--json"))[-1]["id"]
            out["mydumper_restore_s"] = timed(lambda: dr("restore", md[:12], "--source", "md",
                                                         "--target-db", "sb_md"))
            out["mydumper_table_restore_s"] = timed(lambda: dr("restore", md[:12], "--source", "md", "--table",
                                                               "sbtest.sbtest1", "--target-db", "sb_md1"))
        replay = out["physical_latest_s"] - out["physical_restore_s"]
        out["replay_mib_s"] = out["replay_bytes"] / 2**20 / replay if replay > 0 else None



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench --databases", description=__doc__.splitlines()[0])
    ap.add_argument("--maria-rows", type=int, default=2_500_000, help="rows per sbtest table (4 tables; "
                    "2.5M ≈ 2 GiB)")
    ap.add_argument("--pg-scale", type=int, default=130, help="pgbench scale (130 ≈ 2 GiB)")
    ap.add_argument("--skip", choices=("mariadb", "postgresql", "logical"), action="append", default=[],
                    help="leave out a server, or MariaDB's logical dumps and loads (mariadb-dump, mydumper: slow at full size)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/var/tmp")) / "drtool-bench-db")
    ap.add_argument("--repeat", type=int, default=1, help="time restores and the native/floor runs this "
                    "often and keep the best (a shared host)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep --work (servers stopped; repositories, "
                    "catalogs and native copies stay) for profiling a step by hand")
    args = ap.parse_args(argv)
    clock.repeat = max(1, args.repeat)
    if args.work.exists():
        shutil.rmtree(args.work)
    results: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    try:
        if "mariadb" not in args.skip:
            (args.work / "m").mkdir(parents=True)
            results["mariadb"] = mariadb_bench(args.work / "m", args.maria_rows, "logical" not in args.skip)
            if not args.keep:
                shutil.rmtree(args.work / "m", ignore_errors=True)  # ~5 copies of the data: room for the next
        if "postgresql" not in args.skip:
            (args.work / "p").mkdir(parents=True)
            results["postgresql"] = pg_bench(args.work / "p", args.pg_scale)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2) if args.json else
          table(results.get("mariadb"), results.get("postgresql")) + f"\n\nload average {results['load_average_start']:.1f} "
          f"at the start, {results['load_average_end']:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
