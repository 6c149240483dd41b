"""An interrupted backup (kill -9 at named points or at random) leaves no snapshot,
and the next backup and check succeed."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DrEnv


def make_source(root: Path, files: int = 20, size: int = 400_000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(5)
    for i in range(files):
        (root / f"f{i:03d}.bin").write_bytes(rng.randbytes(size))
    return root


@pytest.mark.parametrize("point", ["backup-before-flush", "backup-before-snapshot"])
def test_crash_before_commit_leaves_no_snapshot(repo_env: DrEnv, tmp_path: Path, point: str) -> None:
    src = make_source(tmp_path / "src")
    proc = repo_env.spawn("backup", str(src), "--name", "n", env={"DRTOOL_CRASH_AT": point})
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(repo_env.run("snapshots", "--json").out) == []
    check = repo_env.run("check", "--read-data", "--json")
    assert check.code == 0, check.out
    # the killed process left its lock behind; a lock of a dead local process is ignored
    locks = list((repo_env.repo / "locks").iterdir())
    assert len(locks) == 1
    second = repo_env.run("backup", str(src), "--name", "n", "--json")
    assert second.code == 0, second.err
    out = tmp_path / "out"
    assert repo_env.run("restore", "latest", "--target", str(out)).code == 0
    for f in src.iterdir():
        assert (out / "src" / f.name).read_bytes() == f.read_bytes()
    assert repo_env.run("check", "--read-data").code == 0


def test_crash_after_commit_keeps_the_snapshot(repo_env: DrEnv, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", files=5)
    proc = repo_env.spawn("backup", str(src), "--name", "n", env={"DRTOOL_CRASH_AT": "backup-after-snapshot"})
    assert proc.returncode == -signal.SIGKILL
    snaps = json.loads(repo_env.run("snapshots", "--json").out)
    assert len(snaps) == 1
    assert repo_env.run("check", "--read-data").code == 0


def test_random_sigkill_during_backup_never_corrupts(repo_env: DrEnv, tmp_path: Path) -> None:
    """Kill backups at random moments; committed snapshots always restore exactly."""
    src = make_source(tmp_path / "src", files=30, size=600_000)
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    committed = json.loads(repo_env.run("snapshots", "--json").out)
    rng = random.Random(11)
    for round_ in range(6):
        (src / f"new{round_}.bin").write_bytes(os.urandom(2_000_000))
        proc = subprocess.Popen([sys.executable, "-m", "drtool", "backup", str(src), "--name", "n"],
                                env=repo_env.env, cwd=repo_env.tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    now = json.loads(repo_env.run("snapshots", "--json").out)
    assert {s["id"] for s in committed} <= {s["id"] for s in now}
    check = repo_env.run("check", "--read-data", "--json")
    assert check.code == 0, check.out
    for snap in now:
        out = tmp_path / f"out-{snap['id'][:8]}"
        assert repo_env.run("restore", snap["id"], "--target", str(out)).code == 0
        for f in (out / "src").iterdir():
            assert f.read_bytes() == (src / f.name).read_bytes()
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
