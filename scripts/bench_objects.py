#!/usr/bin/env python3
"""Per-object costs of an object-store source (docs/scale.md, "Object-store sources").

    .venv/bin/python scripts/bench_objects.py [--objects 20000] [--size 2048] [--json]

A throwaway moto server on a free loopback port; ``--objects`` random
objects of ``--size`` bytes under ``media/`` (100 per directory); then, each
as its own ``drtool`` process against a local repository:

1. the listing alone (ListObjectsV2, 1,000 keys a page), timed;
2. a first backup: every object fetched;
3. an unchanged re-run: nothing fetched;
4. a re-run after 1 % of the objects were rewritten: only those fetched.

Reported: wall time and peak RSS of each backup, GETs and LISTs (counted by
drtool's S3 client and kept in the snapshot's ``meta.requests``),
repository and catalog bytes per object.  restic and borg cannot read a
bucket, so there is no ratio here; the figures are per object, for the
arithmetic in docs/scale.md.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DUMMY = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
         "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
         "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **DUMMY})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto did not start")


def client(url: str) -> Any:
    import boto3
    from botocore.config import Config
    return boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench-secret",
                                 region_name="us-east-1").client(
        "s3", endpoint_url=url, config=Config(max_pool_connections=16))


def fill(url: str, bucket: str, keys: list[str], size: int) -> None:
    s3 = client(url)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=os.urandom(size),
                                              ContentType="image/jpeg", Metadata={"sha1": k[-12:]}), keys))


def run_drtool(env: dict[str, str], *args: str, python: list[str] | None = None
               ) -> tuple[dict[str, Any], float, float]:
    """(JSON output, seconds, peak RSS MiB of this one child, from wait4)."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, *(python or []), "-m", "drtool", *args, "--json"], env=env,
                                stdout=out,
                                stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        took = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"drtool {' '.join(args)} failed: {err.read().decode().strip()}")
        return json.loads(out.read()), took, usage.ru_maxrss / 1024


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def backups(env: dict[str, str], url: str, keys: list[str], size: int, profile: str | None,
            work: Path) -> dict[str, Any]:
    """The three backups: first, unchanged, 1 % of the objects rewritten."""
    runs: dict[str, Any] = {}
    for label in ("first", "unchanged", "one_percent_changed"):
        if label == "one_percent_changed":
            fill(url, "media", keys[::100], size)
        repo_before = tree_bytes(work / "repo")
        python = ["-m", "cProfile", "-o", profile] if profile and label == "unchanged" else []
        out, took, rss = run_drtool(env, "backup", "--source", "media", python=python)
        snap = out["sources"]["media"][0]
        req = snap["meta"]["requests"]
        runs[label] = {"seconds": round(took, 2), "peak_rss_mib": round(rss, 1),
                       "gets": req["gets"], "lists": req["lists"], "files_read": snap["summary"]["files_read"],
                       "repository_bytes_added": tree_bytes(work / "repo") - repo_before}
    return runs


def per_object(n: int, size: int, runs: dict[str, Any], catalog_growth: int) -> dict[str, float]:
    return {
        "gets_per_object_first": round(runs["first"]["gets"] / n, 3),
        "gets_per_object_unchanged": round(runs["unchanged"]["gets"] / n, 3),
        "repository_bytes_per_object_first": round(runs["first"]["repository_bytes_added"] / n, 1),
        "metadata_bytes_per_object_first": round((runs["first"]["repository_bytes_added"] - n * size) / n, 1),
        "repository_bytes_per_object_unchanged_run": round(runs["unchanged"]["repository_bytes_added"] / n, 2),
        "catalog_bytes_per_object": round(catalog_growth / n, 2),
        "ms_per_object_first": round(runs["first"]["seconds"] / n * 1000, 3),
        "ms_per_object_unchanged": round(runs["unchanged"]["seconds"] / n * 1000, 3),
    }


def timed_listing(url: str) -> tuple[int, float]:
    """Keys listed by drtool's own client, and the seconds it took (no backup around it)."""
    sys.path.insert(0, str(ROOT))
    os.environ.update(DUMMY)
    from drtool.backends.s3_source import S3SourceClient
    lister = S3SourceClient(url, "media", addressing_style="path")
    start = time.monotonic()
    listed = sum(1 for _ in lister.iter_objects("media/"))
    return listed, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the unchanged re-run into FILE")
    opts = parser.parse_args()
    proc, url = start_moto()
    work = Path(tempfile.mkdtemp(prefix="bench-objects-"))
    try:
        client(url).create_bucket(Bucket="media")
        keys = [f"media/{i // 100:05d}/{i:08d}.jpg" for i in range(opts.objects)]
        start = time.monotonic()
        fill(url, "media", keys, opts.size)
        fill_s = time.monotonic() - start
        (work / "drtool.toml").write_text(f'[sources.media]\ntype = "s3"\nendpoint = "{url}"\n'
                                          f'bucket = "media"\nprefix = "media/"\naddressing_style = "path"\n')
        env = {**os.environ, **DUMMY, "DRTOOL_REPOSITORY": str(work / "repo"), "DRTOOL_PASSWORD": "bench",
               "DRTOOL_CATALOG": str(work / "catalog.sqlite"), "DRTOOL_CONFIG": str(work / "drtool.toml"),
               "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(work / "state")}
        subprocess.run([sys.executable, "-m", "drtool", "init"], env=env, check=True, capture_output=True)
        listed, list_s = timed_listing(url)
        catalog_before = (work / "catalog.sqlite").stat().st_size
        runs = backups(env, url, keys, opts.size, opts.profile, work)
        n = opts.objects
        report = {"objects": n, "object_bytes": opts.size, "listed": listed, "fill_seconds": round(fill_s, 1),
                  "listing_seconds": round(list_s, 2), "listing_us_per_object": round(list_s / n * 1e6, 1),
                  "runs": runs,
                  **per_object(n, opts.size, runs, (work / "catalog.sqlite").stat().st_size - catalog_before)}
        print(json.dumps(report, indent=2) if opts.json else
              "\n".join(f"{key}: {value}" for key, value in report.items()))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
