#!/usr/bin/env python3
"""The blob index at repository scale: a backup against a synthetic index of millions of blobs.

    .venv/bin/python scripts/bench_index.py --blobs 20000000 --gib 1 [--json] [--work DIR]
    .venv/bin/python scripts/bench_index.py --rounds 0 --work DIR      (the lookups only)
    scripts/bench --index                      (the same, with the defaults)

1. A repository whose ``index/`` holds ``--blobs`` synthetic entries (ids
   from BLAKE2b of a counter, fake packs of 16 blobs, 4,096 packs per index
   object as prune writes them), and an empty repository.
2. Per round (``--rounds``), ``--gib`` GiB of fresh incompressible files
   (random data, 32 MiB each), backed up into a fresh empty repository and
   then into the large one: the time ratio is large ÷ empty.
3. Each run is the ``drtool`` CLI in its own process: peak RSS from
   ``wait4`` (it counts the mapped cache's resident pages), and the peak of
   ``RssAnon`` (heap: what an in-memory index would have used) sampled from
   /proc every 20 ms.  The first run against the large repository (a
   backup of one small file) builds the disk cache, or brings it up to date.
4. Lookups against the built cache in this process: median ns per lookup
   of present and absent ids on the path a backup takes (``Repository.add_blob``
   asks a ``LayeredIndex``: the cache, then this run's overlay), of ids in
   the overlay, of the cache alone, and through ``has_all``, next to a
   ``dict`` lookup on the same machine at the same time (the machine's
   load shows in that reference); then again without the exact id table
   (``DRTOOL_INDEX_TABLE=off``: the filter, then LMDB), then with neither
   (plain LMDB), and the filter's and the table's size, the filter's false
   positives and the share of lookups the table sent to LMDB.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PASSPHRASE = "bench-index"
PACKS_PER_OBJECT, BLOBS_PER_PACK = 4096, 16
_HEADER = struct.Struct("<32sI")


def blob_id(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "little"), digest_size=32).digest()


def make_index_objects(repo_dir: Path, blobs: int, env: dict[str, str]) -> float:
    """Write synthetic index objects (the repository format: pack header + trailer entries)."""
    from drtool.backends.local import LocalBackend
    from drtool.repository.objects import INDEX, INDEX_KIND
    from drtool.repository.packfile import ENTRY
    from drtool.repository.repo import Repository
    started = time.perf_counter()
    repo = Repository.open(LocalBackend(str(repo_dir)), PASSPHRASE.encode())
    pack, n, entry = 0, 0, ENTRY.pack
    while n < blobs:
        parts = []
        for _ in range(PACKS_PER_OBJECT):
            if n >= blobs:
                break
            count = min(BLOBS_PER_PACK, blobs - n)
            parts.append(_HEADER.pack(hashlib.blake2b(b"pack%d" % pack, digest_size=32).digest(), count))
            parts.extend(entry(0, blob_id(n + i), i * 70_000, 70_000, 0, 1 << 20) for i in range(count))
            pack, n = pack + 1, n + count
        repo.put_object(INDEX, INDEX_KIND, b"".join(parts))
    repo.close()
    return time.perf_counter() - started


def run(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Wall time, peak RSS (wait4) and sampled peak RssAnon / RssFile of one CLI run."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        key = line.split(":", 1)[0]
                        if key in peaks:
                            peaks[key] = max(peaks[key], int(line.split()[1]))
            except (OSError, ValueError):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if status:
        raise SystemExit(f"{argv} failed: {err.decode()[-2000:]}")
    summary = json.loads(out).get("summary", {}) if out.strip().startswith(b"{") else {}
    return {"seconds": round(seconds, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "major_faults": usage.ru_majflt, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "peak_anon_mib": round(peaks["RssAnon"] / 1024, 1), "peak_file_mib": round(peaks["RssFile"] / 1024, 1),
            "bytes_added": summary.get("bytes_added")}


def lookups(repo_id: str, blobs: int, samples: int = 100_000) -> dict[str, Any]:
    """``present_ns`` / ``absent_ns``: the path a backup takes (``Repository.add_blob`` asks
    ``repo.index``, a ``LayeredIndex``: the cache, then this run's overlay, here holding
    ``OVERLAY_ENTRIES // 2`` entries of packs this run wrote); ``disk_*``: the cache alone."""
    from drtool.repository.diskindex import DiskIndex
    from drtool.repository.layered import OVERLAY_ENTRIES, LayeredIndex
    from drtool.repository.packfile import ENTRY
    disk = DiskIndex.open(repo_id)
    assert disk is not None
    rng = random.Random(1)
    present = [blob_id(rng.randrange(blobs)) for _ in range(samples)]
    absent = [os.urandom(32) for _ in range(samples)]
    layered = LayeredIndex(disk)
    own = [os.urandom(32) for _ in range(OVERLAY_ENTRIES // 2)]
    for start in range(0, len(own), BLOBS_PER_PACK):
        entries = b"".join(ENTRY.pack(0, i, 0, 1, 0, 1) for i in own[start:start + BLOBS_PER_PACK])
        layered.add_packed(os.urandom(32), entries)
    reference = {blob_id(i): i for i in range(200_000)}
    ref_keys = list(reference)

    def median_ns(lookup: Any, keys: list[bytes]) -> float:
        """Median per lookup over batches of 1,000, in this thread's CPU time: on a shared,
        overloaded machine wall time mostly measures the run queue (``wall`` reports it too)."""
        per_batch, walls = [], []
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            t0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            for key in batch:
                lookup(key)
            per_batch.append((time.thread_time_ns() - t0) / len(batch))
            walls.append((time.perf_counter_ns() - w0) / len(batch))
        wall_ns[lookup] = round(statistics.median(walls), 1)
        return round(statistics.median(per_batch), 1)

    hexes = [k.hex() for k in present]

    wall_ns: dict[Any, float] = {}

    def has_all_ns(keys: list[bytes]) -> float:
        per_batch = []
        for start in range(0, len(hexes), 1000):
            t0 = time.thread_time_ns()
            assert disk.has_all(hexes[start:start + 1000])
            per_batch.append((time.thread_time_ns() - t0) / 1000)
        return round(statistics.median(per_batch), 1)

    # First pass: each lookup touches pages this process has not mapped yet (a page fault each;
    # a major one when the page cache lost the file).  Second pass, same ids: the pages are
    # resident, as the B-tree's upper levels always are and a run's working set becomes.
    result: dict[str, Any] = {"first_touch": {}, "resident": {}}
    for phase in ("first_touch", "resident"):
        faults = resource.getrusage(resource.RUSAGE_SELF)
        result[phase] = {"present_ns": median_ns(layered.__contains__, present),
                         "present_wall_ns": wall_ns[layered.__contains__],
                         "absent_ns": median_ns(layered.__contains__, absent),
                         "own_ns": median_ns(layered.__contains__, own[:samples]),
                         "disk_present_ns": median_ns(disk.__contains__, present),
                         "disk_absent_ns": median_ns(disk.__contains__, absent),
                         "get_ns": median_ns(disk.get, present[:50_000]), "has_all_ns": has_all_ns(present)}
        after = resource.getrusage(resource.RUSAGE_SELF)
        result[phase]["page_faults"] = {"minor": after.ru_minflt - faults.ru_minflt,
                                        "major": after.ru_majflt - faults.ru_majflt}
    result["dict_reference_ns"] = median_ns(reference.get, ref_keys)
    result["cache_bytes"] = (disk.path / "data.mdb").stat().st_size
    result["cache_bytes_per_blob"] = round(result["cache_bytes"] / blobs, 1)
    bloom = disk.path / "ids.bloom"
    if bloom.exists() and disk._filter is not None:
        result["filter_bytes"] = bloom.stat().st_size
        result["filter_bytes_per_blob"] = round(bloom.stat().st_size / blobs, 2)
        result["filter_false_positives"] = sum(map(disk._filter.maybe, absent)) / len(absent)
    table = disk.path / "ids.table"
    if table.exists() and disk._table is not None:
        disk._txn()
        token = disk._local.token
        result["table_bytes"] = table.stat().st_size
        result["table_bytes_per_blob"] = round(table.stat().st_size / blobs, 1)
        result["table_unanswered"] = {  # sent to LMDB (overflowed buckets), of 100,000 each
            "present": sum(disk._table.answer(k, token) is None for k in present) / len(present),
            "absent": sum(disk._table.answer(k, token) is None for k in absent) / len(absent)}
    disk.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=20_000_000)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--work", help="keep the repositories and data here (default: a temporary directory)")
    parser.add_argument("--rounds", type=int, default=2, help="empty/large backup pairs (fresh data each)")
    parser.add_argument("--rebuild-cache", action="store_true", help="delete the index cache first (times the build)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="drtool-bench-index-"))
    work.mkdir(parents=True, exist_ok=True)
    base = {**os.environ, "DRTOOL_PASSWORD": PASSPHRASE, "PYTHONPATH": str(ROOT),
            "XDG_CACHE_HOME": str(work / "cache")}
    drtool = [sys.executable, "-m", "drtool"]
    results: dict[str, Any] = {"blobs": args.blobs, "gib": args.gib,
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    small = work / "small"
    small.mkdir(exist_ok=True)
    (small / "one").write_bytes(os.urandom(4096))
    large = {**base, "DRTOOL_REPOSITORY": str(work / "repo-large"), "DRTOOL_CATALOG": str(work / "catalog-large.sqlite")}
    if not (work / "repo-large").exists():
        subprocess.run([*drtool, "init"], env=large, check=True, capture_output=True)
        results["make_index_seconds"] = round(make_index_objects(work / "repo-large", args.blobs, large), 1)
    if args.rebuild_cache:
        shutil.rmtree(work / "cache", ignore_errors=True)
    # the first run against the large repository builds the cache (a backup of one small file)
    results["large_cache_build"] = run([*drtool, "backup", str(small), "--name", "small", "--json"], large)
    results["rounds"] = []
    for r in range(args.rounds):  # fresh data and a fresh empty repository each round; empty first
        data = work / f"data-{r}"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        for i in range(max(1, int(args.gib * 32))):
            (data / f"f{i:03d}").write_bytes(os.urandom(32 << 20))
        empty = {**base, "DRTOOL_REPOSITORY": str(work / f"repo-empty-{r}"),
                 "DRTOOL_CATALOG": str(work / f"catalog-empty-{r}.sqlite")}
        shutil.rmtree(work / f"repo-empty-{r}", ignore_errors=True)
        subprocess.run([*drtool, "init"], env=empty, check=True, capture_output=True)
        subprocess.run(["cat", *sorted(map(str, data.iterdir()))], stdout=subprocess.DEVNULL, check=True)
        one = {"empty_backup": run([*drtool, "backup", str(data), "--name", "data", "--json"], empty),
               "large_backup": run([*drtool, "backup", str(data), "--name", f"data-{r}", "--json"], large)}
        one["time_ratio"] = round(one["large_backup"]["seconds"] / one["empty_backup"]["seconds"], 2)
        one["cpu_ratio"] = round(one["large_backup"]["cpu_seconds"] / one["empty_backup"]["cpu_seconds"], 2)
        results["rounds"].append(one)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(work / f"repo-empty-{r}", ignore_errors=True)
    if results["rounds"]:  # --rounds 0: the cache and the lookups only
        results["median_time_ratio"] = statistics.median(one["time_ratio"] for one in results["rounds"])
        results["median_cpu_ratio"] = statistics.median(one["cpu_ratio"] for one in results["rounds"])
    repo_id = next((work / "cache" / "drtool").iterdir()).name
    for entry in (work / "cache" / "drtool").iterdir():
        if (entry / "index" / "data.mdb").stat().st_size > (work / "cache" / "drtool" / repo_id / "index" /
                                                            "data.mdb").stat().st_size:
            repo_id = entry.name
    os.environ["XDG_CACHE_HOME"] = base["XDG_CACHE_HOME"]
    results["lookups"] = lookups(repo_id, args.blobs)
    os.environ["DRTOOL_INDEX_TABLE"] = "off"  # the same lookups without the exact id table
    results["lookups_without_table"] = lookups(repo_id, args.blobs)
    os.environ["DRTOOL_INDEX_FILTER"] = "off"  # and without the absent-id filter: plain LMDB
    results["lookups_without_filter"] = lookups(repo_id, args.blobs)
    del os.environ["DRTOOL_INDEX_FILTER"], os.environ["DRTOOL_INDEX_TABLE"]
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
