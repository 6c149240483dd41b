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
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_databases_table import table  # noqa: E402  (the report's layout, kept apart)
PY = sys.executable
PASSWORD = "bench-only-not-a-secret"
ROOT_PW = "bench-root-pw"


def log(msg: str) -> None:
    print(f"[bench-db {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spread_new_trees(folder: Path) -> None:
    """Every tree made in ``folder`` (copies, restore targets) starts in a block group of its own
    (``chattr +T``: ext4's Orlov allocator spreads the subdirectories of a "top" directory).

    Why: on an ext4 without a journal (this bench's VM) creating a file first
    skips every inode of its group deleted moments before, reading each one's
    inode-table block to find out (``bench_data.forget_deleted_inodes``; here
    creates were still slow 40 s after a removal).  Right after the bench
    removed a 1,000-file copy beside it, a restore or ``cp -a`` spent
    0.3-0.9 s more creating files, by how many deletes happened to be
    recent: the floor varied 0.6-3.2 s.  A production file system has a
    journal, and no such scan.
    """
    if subprocess.run(["chattr", "+T", str(folder)], capture_output=True).returncode != 0:
        log(f"note: chattr +T {folder} failed: file creation may be slowed by recent deletes beside it")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return proc


LAST_CPU = 0.0  # CPU seconds (user + sys) of the child processes of the last timed() or best() run
LAST_SYS = 0.0  # ... of which system time: on the bench's VM mostly page-cache writes (see the docstring)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def children_sys() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of ``fn()``; its children's CPU seconds go to LAST_CPU.  On a shared host
    the kernel shares the cores between sessions (autogroups), so under load a wall-clock
    ratio is mostly a ratio of CPU seconds: the bench reports both."""
    global LAST_CPU, LAST_SYS
    before, sys_before, start = children_cpu(), children_sys(), time.monotonic()
    fn()
    wall = time.monotonic() - start
    LAST_CPU, LAST_SYS = children_cpu() - before, children_sys() - sys_before
    return wall


REPEAT = 1  # --repeat: restores and the native/floor runs are timed this often, the best kept


def best(fn: Callable[[int], Any], *made: Path) -> float:
    """The best of ``REPEAT`` timed runs of ``fn(i)`` (a fresh target per run): on a shared
    host the minimum is the figure least disturbed by other jobs.  ``made``: what a run
    creates (suffixed with ``i``), removed after every run but the last (disk space)."""
    global LAST_CPU, LAST_SYS
    runs = []
    for i in range(REPEAT):
        runs.append((timed(lambda: fn(i)), LAST_CPU, LAST_SYS))
        if i + 1 < REPEAT:
            for path in made:
                shutil.rmtree(f"{path}{i}", ignore_errors=True)
    wall, LAST_CPU, LAST_SYS = min(runs)
    global LAST_BEST
    LAST_BEST = runs.index(min(runs))
    return wall


LAST_BEST = 0  # which run of the last best() was kept


def sync_fs(path: Path) -> float:
    """Seconds of ``sync -f`` (syncfs) on ``path``'s file system: what a copy costs to be on disk.
    drtool's backups (packs fsync'ed before the index) and its physical MariaDB restore (the tree
    synced before it says done, as pgBackRest's restore) end durable; mariabackup's target and
    ``cp -a`` end in the page cache, so the durable floor adds this."""
    start = time.monotonic()
    run(["sync", "-f", str(path)])
    return time.monotonic() - start


def restore_floors(out: dict[str, Any], native: Path, copy: Path, prepare: Callable[[Path], None] | None,
                   cold_restore: Callable[[], Any], cold_target: Path) -> None:
    """The restore floor by hand (``cp -a`` of the native copy [+ ``prepare``]), best of
    ``REPEAT``, with and without ``sync -f``; then, caches dropped before each, the floor and
    drtool's ``cold_restore`` once (the backup copy and the repository read from disk)."""
    syncs: list[float] = []

    def floor(i: int) -> None:
        run(["cp", "-a", str(native), f"{copy}{i}"])
        if prepare:
            prepare(Path(f"{copy}{i}"))
        syncs.append(sync_fs(Path(f"{copy}{i}")))
    out["floor_durable_s"] = best(floor, copy)
    out["floor_restore_s"] = out["floor_durable_s"] - syncs[LAST_BEST]
    out["floor_restore_cpu_s"], out["floor_restore_sys_s"] = LAST_CPU, LAST_SYS
    shutil.rmtree(f"{copy}{REPEAT - 1}", ignore_errors=True)
    if drop_caches():
        out["floor_cold_s"] = timed(lambda: floor(REPEAT))
        shutil.rmtree(f"{copy}{REPEAT}", ignore_errors=True)
        drop_caches()
        out["physical_full_cold_s"] = timed(cold_restore)
        shutil.rmtree(cold_target, ignore_errors=True)


def drop_caches() -> bool:
    """Write back and drop the page cache (root only): a nightly backup of a big server, and a
    restore at 3 a.m., read cold.  False where it cannot be done (the cold figures are skipped)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


class Drtool:
    def __init__(self, work: Path, config: Path) -> None:
        self.repo, self.env = work / "repo", dict(os.environ)
        pw = work / "password"
        pw.write_text(PASSWORD + "\n")
        self.env.update(DRTOOL_REPOSITORY=str(self.repo), DRTOOL_PASSWORD_FILE=str(pw),
                        DRTOOL_CATALOG=str(work / "catalog.sqlite"), DRTOOL_CONFIG=str(config),
                        PYTHONPATH=str(REPO_ROOT), XDG_STATE_HOME=str(work / "state"))
        self.env.pop("DRTOOL_PASSWORD", None)
        self.stderrs: list[str] = []

    def __call__(self, *args: str, prefix: list[str] | None = None) -> str:
        proc = run([*(prefix or []), PY, "-m", "drtool", *args], self.env)
        self.stderrs = [*self.stderrs[-REPEAT:], proc.stderr]
        for line in proc.stderr.splitlines():
            if "INFO" in line or "warning" in line:
                log(line)
        return proc.stdout

    def stage_seconds(self) -> dict[str, float]:
        """The restore stages (``-v`` logs "STAGE: done in N.Ns") of the run the last best() kept,
        summed by kind: where a restore's time goes (extracting the streams, rebuilding pages,
        --prepare, replay)."""
        kinds = {"extracting": "extract", "rebuilding": "rebuild", "preparing": "prepare", "applying": "prepare",
                 "replaying": "replay", "syncing": "sync"}
        out: dict[str, float] = {}
        kept = self.stderrs[-REPEAT:][LAST_BEST]
        for match in re.finditer(r"INFO: (\w+) .*?: done in (\d+\.\d+)s", kept):
            kind = kinds.get(match.group(1))
            if kind:
                out[kind] = out.get(kind, 0.0) + float(match.group(2))
        return out

    def stored(self, source: str) -> int:
        """Bytes the newest snapshot of ``source`` added to the repository (compressed, encrypted)."""
        snaps = json.loads(self("snapshots", "--name", source, "--json"))
        return int(snaps[-1]["summary"]["bytes_added"])


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
        out["native_backup_s"] = out["native_durable_s"] - syncs[LAST_BEST]
        out["native_backup_cpu_s"], out["native_backup_sys_s"] = LAST_CPU, LAST_SYS
        # night 1 twice, a full into each empty repository (the second is the full nights' own), the
        # best kept as the native copy's is: the same number of tries on both sides
        nights = [(timed(lambda: dr("backup", "--source", "phys")), LAST_CPU, LAST_SYS),
                  (timed(lambda: full_dr("backup", "--source", "physfull")), LAST_CPU, LAST_SYS)]
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
        out["physical_night2_cpu_s"] = LAST_CPU
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
        out["physical_full_restore_cpu_s"], out["physical_full_restore_sys_s"] = LAST_CPU, LAST_SYS
        out["physical_full_restore_stages"] = dr.stage_seconds()
        shutil.rmtree(f"{root / 'r-full'}{REPEAT - 1}", ignore_errors=True)
        out["physical_restore_s"] = best(lambda i: dr("-v", "restore", phys[:12], "--source", "phys",
                                                      "--target", str(root / f"r-phys{i}")), root / "r-phys")
        out["physical_restore_cpu_s"], out["physical_restore_sys_s"] = LAST_CPU, LAST_SYS
        out["physical_restore_stages"] = dr.stage_seconds()
        shutil.rmtree(f"{root / 'r-phys'}{REPEAT - 1}", ignore_errors=True)
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


# ----- PostgreSQL ----------------------------------------------------------------------------------
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
        out["native_backup_cpu_s"], out["native_backup_sys_s"] = LAST_CPU, LAST_SYS
        out["physical_backup_s"] = timed(lambda: dr("backup", "--source", "pg"))
        out["physical_backup_cpu_s"], out["physical_backup_sys_s"] = LAST_CPU, LAST_SYS
        out["physical_night1_stored"] = dr.stored("pg")
        out["fixed_s"] = timed(lambda: dr("snapshots", "--name", "pg", "--json"))
        if drop_caches():  # once each cold, drtool into a repository of its own (pg_basebackup syncs its copy)
            out["native_cold_s"] = out["native_cold_durable_s"] = timed(lambda: native_backup(REPEAT))
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
            out[f"{key}_cpu_s"], out[f"{key}_sys_s"] = LAST_CPU, LAST_SYS
            out[f"{key}_stages"] = dr.stage_seconds()
            shutil.rmtree(f"{root / f'r-{key}'}{REPEAT - 1}", ignore_errors=True)
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
    global REPEAT
    REPEAT = max(1, args.repeat)
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
