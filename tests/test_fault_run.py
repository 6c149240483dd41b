"""Backups and restores through tests/fault_proxy.py at a 10 % fault rate.

Every request kind (PUT, multipart, GET, ranged GET, LIST, HEAD, DELETE)
may get any fault kind (500, 503, 403, 501, reset, stall, truncated body,
200 carrying an error).  Each run must end in success or a clean non-zero
exit (one error line, no traceback).  Afterwards, without faults,
``check --read-data`` passes and every committed snapshot -- including any
whose backup reported failure after its snapshot object landed -- restores
byte for byte.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DrEnv, make_env
from fault_proxy import FAULTS, FaultProxy
from s3server import DUMMY_ENV, MotoServer, create_bucket, moto_server  # noqa: F401 - fixture

FAULT_RATE = 0.10
PER_KIND = 1 - (1 - FAULT_RATE) ** (1 / len(FAULTS))  # one rule per fault kind, ~10 % overall
MiB = 1024 * 1024


def s3_config(path: Path, endpoint: str) -> Path:
    path.write_text(f"""
[s3]
endpoint_url = "{endpoint}"
addressing_style = "path"
connect_timeout = 1.0
read_timeout = 0.7
max_attempts = 3
read_attempts = 3
read_retry_backoff = 0.05
multipart_threshold = {5 * MiB}
multipart_chunksize = {5 * MiB}
""")
    return path


@pytest.fixture
def s3_env(tmp_path: Path, moto_server: MotoServer) -> Iterator[tuple[DrEnv, FaultProxy]]:
    proxy = FaultProxy(moto_server.url, stall_seconds=1.0, seed=20240301).start()
    bucket = create_bucket(moto_server.url)
    env = make_env(tmp_path / "dr")
    env.env.update(DUMMY_ENV, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   AWS_EC2_METADATA_DISABLED="true", DRTOOL_REPOSITORY=f"s3://{bucket}/repo",
                   DRTOOL_CONFIG=str(s3_config(tmp_path / "drtool.toml", proxy.url)))
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.env.pop(key, None)
    try:
        yield env, proxy
    finally:
        proxy.stop()


def cli(env: DrEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drtool", *args], env=env.env, cwd=env.tmp,
                          capture_output=True, text=True, timeout=120)


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    """Success, or exactly one error line and no traceback."""
    if proc.returncode == 0:
        return
    errors = [line for line in proc.stderr.splitlines() if line.startswith("drtool: error")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


def mutate(src: Path, rng: random.Random, round_: int) -> dict[str, bytes]:
    src.mkdir(exist_ok=True)
    existing = sorted(src.iterdir())
    if existing and round_ % 2:
        existing[rng.randrange(len(existing))].unlink()
    size = 11 * MiB if round_ in (1, 4) else rng.randrange(200_000, 1_500_000)  # multipart rounds
    (src / f"r{round_}.bin").write_bytes(rng.randbytes(size))
    (src / "log.txt").write_text(f"round {round_}\n" * 5000)
    return {p.name: p.read_bytes() for p in src.iterdir()}


def restored(target: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (target / "src").iterdir()}


def persist(env: DrEnv, *args: str, tries: int = 5) -> list[subprocess.CompletedProcess[str]]:
    """Run a command until it succeeds, as cron or an operator would; every attempt must be clean.

    403 and 501 faults are not retried by the client, so at 10 % of all
    requests a run of a few dozen requests fails more often than not.
    """
    attempts = []
    for _ in range(tries):
        proc = cli(env, *args)
        assert_clean(proc)
        attempts.append(proc)
        if proc.returncode == 0:
            break
    return attempts


def test_backups_and_restores_at_10_percent_faults(s3_env: tuple[DrEnv, FaultProxy], tmp_path: Path) -> None:
    env, proxy = s3_env
    init = cli(env, "init")
    assert init.returncode == 0, init.stderr
    for fault in FAULTS:
        proxy.add("*", fault, rate=PER_KIND)
    rng = random.Random(7)
    src = tmp_path / "src"
    expected: dict[str, dict[str, bytes]] = {}  # tag -> tree
    restores: list[tuple[str, Path]] = []  # (snapshot id, target) of restores that reported success
    runs: list[int] = []
    for round_ in range(5):
        expected[f"r{round_}"] = mutate(src, rng, round_)
        backups = persist(env, "backup", str(src), "--name", "files", "--tag", f"r{round_}")
        target = tmp_path / f"restore-{round_}"
        restores_ = persist(env, "restore", "latest", "--target", str(target), "--json")
        if restores_[-1].returncode == 0:
            restores.append((json.loads(restores_[-1].stdout)["snapshot"], target))
        runs += [p.returncode for p in backups + restores_]
    injected, requests = len(proxy.injected), len(proxy.requests)
    proxy.reset()  # faults off: the repository must be intact
    check = cli(env, "check", "--read-data", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    snaps = json.loads(cli(env, "snapshots", "--json").stdout)
    print(f"\n{injected} faults in {requests} requests; {len(runs)} runs, {runs.count(0)} succeeded, "
          f"the rest failed cleanly; {len(snaps)} snapshot(s) committed, {len(restores)} restores verified")
    assert injected > 0 and snaps
    tag_of = {s["id"]: s["tags"][0] for s in snaps}
    for snap_id, target in restores:  # restores that succeeded under faults were exact
        assert restored(target) == expected[tag_of[snap_id]]
    for snap in snaps:
        target = tmp_path / f"final-{snap['short_id']}"
        final = cli(env, "restore", snap["id"], "--target", str(target))
        assert final.returncode == 0, final.stderr
        assert restored(target) == expected[tag_of[snap["id"]]]
