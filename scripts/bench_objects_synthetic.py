#!/usr/bin/env python3
"""The metadata path of an object-store source at millions of objects, without a server.

    .venv/bin/python scripts/bench_objects_synthetic.py --objects 1000000 [--json]

A generated store (``SyntheticStore``: the S3 source client's interface,
keys ``media/DDDDD/NNNNNNNN.jpg``, 100 per directory, each body 64 unique
bytes) is backed up by drtool's real tree builder, chunk pipeline and local
repository, each run in its own process so its peak RSS is its own:

1. a first backup (every object "fetched" from memory),
2. an unchanged re-run (nothing fetched: the parent-snapshot rule),

reporting seconds, µs per object and peak RSS per run, so memory against
object count can be read off two sizes (``--objects`` and a tenth of it).
The network is not in these figures: see scripts/bench_objects.py (moto).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PASSPHRASE = b"bench"
MTIME_NS = 1_700_000_000 * 1_000_000_000


class SyntheticStore:
    """``count`` objects listed in key order; bodies made on demand (nothing held)."""

    scheme, bucket = "s3", "synthetic"

    def __init__(self, count: int, connections: int = 8) -> None:
        from drtool.backends.s3_source import SourceStats
        self.count, self.connections, self.stats = count, connections, SourceStats()

    def check_bucket(self) -> None:
        pass

    def iter_objects(self, prefix: str) -> Iterator[Any]:
        from drtool.backends.s3_source import ListedObject
        for i in range(self.count):
            yield ListedObject(f"{prefix}{i // 100:05d}/{i:08d}.jpg", 64, f"{i:032x}", MTIME_NS)

    def open_object(self, key: str) -> Any:
        from drtool.backends.s3_source import FetchedObject
        i = int(key.rsplit("/", 1)[1].split(".")[0])
        body = i.to_bytes(8, "big") * 8
        self.stats.gets += 1
        return FetchedObject(io.BytesIO(body), 64, f"{i:032x}", MTIME_NS, "image/jpeg", {"n": str(i)}, key)

    def close(self) -> None:
        pass


def one_backup(repo: str, catalog: str, count: int) -> dict[str, Any]:
    from drtool import api
    from drtool.backup.objectstore import backup_object_store
    from drtool.sources.objectstore import ObjectStoreSource
    store = SyntheticStore(count)
    with api.open_repository(repo, PASSPHRASE, catalog=catalog) as session:
        start = time.monotonic()
        result = backup_object_store(session, ObjectStoreSource("media", "s3", "synthetic", prefix="media/"),
                                     client_factory=lambda _src: store)  # type: ignore[arg-type,return-value]
        took = time.monotonic() - start
    return {"seconds": round(took, 2), "us_per_object": round(took / count * 1e6, 1),
            "fetched": store.stats.gets, "unchanged": result.snapshot.summary["files_unchanged"],
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as work:
        repo, catalog = f"{work}/repo", f"{work}/catalog.sqlite"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DRTOOL_PASSWORD": PASSPHRASE.decode(),
               "DRTOOL_REPOSITORY": repo, "DRTOOL_CATALOG": catalog}
        subprocess.run([sys.executable, "-m", "drtool", "init"], env=env, check=True, capture_output=True)
        runs = {}
        for label in ("first", "unchanged"):
            out = subprocess.run([sys.executable, __file__, "--phase", repo, catalog, str(count)], env=env,
                                 check=True, capture_output=True, text=True)
            runs[label] = json.loads(out.stdout)
        runs["repository_bytes_per_object"] = round(
            sum(p.stat().st_size for p in Path(repo).rglob("*") if p.is_file()) / count, 1)
        return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--phase", nargs=3, metavar=("REPO", "CATALOG", "COUNT"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.phase:
        print(json.dumps(one_backup(opts.phase[0], opts.phase[1], int(opts.phase[2]))))
        return
    report = {str(n): measure(n) for n in (opts.objects // 10, opts.objects)}
    print(json.dumps(report, indent=2) if opts.json else
          "\n".join(f"{n} objects: {runs}" for n, runs in report.items()))


if __name__ == "__main__":
    main()
