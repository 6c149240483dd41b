"""Restore target faults: a full disk (no space, no inodes), then a resumed restore.

Promises: a clean one-line error; every file under its real name is complete;
no ``.drtool-part-*`` temporary is left behind; after space is freed the
same restore command completes and does not download files already restored.

Not covered: EIO from the target disk (needs a device-mapper ``error`` target
or a FUSE file system -- too heavy for CI); EIO while *reading a source* is in
tests/test_fs_edge.py.  A read-only target is in tests/test_bad_input.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DrEnv
from drtool import api

MiB = 1024 * 1024
PART = ".drtool-part-"


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.fail("restore fault tests need root to mount a tmpfs (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(PART)]


def complete_files(restored: Path, src: Path) -> list[str]:
    """Names restored under their real name; each must equal its source byte for byte."""
    names = []
    for path in restored.rglob("*"):
        if path.is_file() and not path.name.startswith(PART):
            rel = path.relative_to(restored)
            assert path.read_bytes() == (src / rel).read_bytes(), f"{rel} is incomplete or wrong"
            names.append(str(rel))
    return sorted(names)


def timed_restore(env: DrEnv, target: Path) -> tuple[api._restore.RestoreResult, int, int]:
    """Restore latest in-process; return the result and the bytes and GETs it downloaded."""
    with env.session() as session:
        session.repo.load_index()
        stats = session.repo.backend.stats
        before = (stats.bytes_down, stats.gets)
        result = api.restore(session, "latest", str(target))
        return result, stats.bytes_down - before[0], stats.gets - before[1]


def test_disk_full_then_more_space_resumes_without_downloading_again(repo_env: DrEnv,
                                                                     tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.bin", "b.bin"):
        (src / name).write_bytes(os.urandom(4 * MiB + 300_000))
    (src / "z-big.bin").write_bytes(os.urandom(6 * MiB))
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    _full, full_bytes, full_gets = timed_restore(repo_env, tmp_path / "reference")
    with tmpfs(tmp_path / "small", "size=11m") as mount:
        first = repo_env.run("restore", "latest", "--target", str(mount / "out"))
        assert first.code == 1
        errors = [line for line in first.err.splitlines() if line.startswith("drtool: error")]
        assert len(errors) == 1 and "full" in errors[0] and "Traceback" not in first.err
        assert leftovers(mount) == []
        done = complete_files(mount / "out" / "src", src)
        assert len(done) < 3  # which file hit the wall depends on the restore's parallelism
        remount(mount, "size=40m")
        result, resume_bytes, resume_gets = timed_restore(repo_env, mount / "out")
        assert result.files_skipped_existing == len(done)
        assert complete_files(mount / "out" / "src", src) == ["a.bin", "b.bin", "z-big.bin"]
        assert leftovers(mount) == []
    print(f"\nfull restore: {full_bytes / MiB:.1f} MiB in {full_gets} GETs; resume after disk full "
          f"({len(done)} file(s) kept): {resume_bytes / MiB:.1f} MiB in {resume_gets} GETs")
    if done:
        assert resume_bytes < full_bytes


def test_out_of_inodes_then_resume(repo_env: DrEnv, tmp_path: Path) -> None:
    """ENOSPC from creating files (no inodes left) rather than from writing them."""
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(30):
            (src / f"d{d}" / f"f{f:02d}").write_bytes(os.urandom(2000 + f))
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    with tmpfs(tmp_path / "few-inodes", "size=16m,nr_inodes=60") as mount:
        first = repo_env.run("restore", "latest", "--target", str(mount / "out"), "--json")
        assert first.code == 1, first.err
        assert "full" in first.err and "Traceback" not in first.err
        assert leftovers(mount) == []
        done = complete_files(mount / "out" / "src", src)
        assert 0 < len(done) < 120
        remount(mount, "nr_inodes=1000")
        second = repo_env.run("restore", "latest", "--target", str(mount / "out"), "--json")
        assert second.code == 0, second.err
        assert json.loads(second.out)["files_skipped_existing"] == len(done)
        assert len(complete_files(mount / "out" / "src", src)) == 120
        assert leftovers(mount) == []


def test_killed_restore_leaves_no_temporaries_after_the_rerun(repo_env: DrEnv, tmp_path: Path) -> None:
    """SIGKILL cannot clean up; the next restore into the same target must."""
    src = tmp_path / "src"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(4):
            (src / f"d{d}" / f"f{f}.bin").write_bytes(os.urandom(3 * MiB))
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    target = tmp_path / "out"
    started = time.monotonic()
    assert repo_env.spawn("restore", "latest", "--target", str(tmp_path / "timing")).returncode == 0
    duration = time.monotonic() - started
    killed_with_parts = 0
    for fraction in (0.5, 0.6, 0.7, 0.8, 0.9):
        proc = subprocess.Popen([sys.executable, "-m", "drtool", "restore", "latest", "--target", str(target)],
                                env=repo_env.env, cwd=repo_env.tmp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_with_parts += bool(leftovers(target))
        if (target / "src").exists():
            complete_files(target / "src", src)
    (target / "src" / "d1").mkdir(parents=True, exist_ok=True)
    (target / "src" / "d1" / (PART + "0123456789ab")).write_bytes(b"as a power cut leaves it")
    result = repo_env.run("restore", "latest", "--target", str(target), "--json")
    assert result.code == 0, result.err
    print(f"\nkilled restores that left temporaries: {killed_with_parts} of 5")
    assert leftovers(target) == []
    assert len(complete_files(target / "src", src)) == 12
