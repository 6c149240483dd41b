"""Locks in an emergency (issue #15, item 6): read-only repositories restore and check without a
lock; a dead holder's lock is stale at once, also when its pid was reused or the host rebooted;
``drtool unlock`` removes what an error called stale."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DrEnv
from drtool.repository.locks import LOCK_KIND, boot_id, process_start_time, read_locks


def backed_up(env: DrEnv, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f.txt").write_text("needed in an emergency\n")
    assert env.run("backup", str(src), "--name", "n").code == 0
    return src


@pytest.fixture
def read_only_copy(repo_env: DrEnv, tmp_path: Path) -> Iterator[Path]:
    """The repository through a read-only bind mount (as a DR site mounts its copy)."""
    if os.geteuid() != 0:
        pytest.fail("the read-only repository test needs root for a bind mount (CI runs as root)")
    mount = tmp_path / "ro-repo"
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(repo_env.repo), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_repository_restores_and_checks_without_a_lock(repo_env: DrEnv, tmp_path: Path,
                                                                  read_only_copy: Path) -> None:
    backed_up(repo_env, tmp_path)
    env = {"DRTOOL_REPOSITORY": str(read_only_copy)}
    restored = repo_env.run("restore", "latest", "--target", str(tmp_path / "out"), env=env)
    assert restored.code == 0, restored.err
    assert "the repository is read-only here" in restored.err and "runs without a lock" in restored.err
    assert (tmp_path / "out" / "src" / "f.txt").read_text() == "needed in an emergency\n"
    checked = repo_env.run("check", "--read-data", env=env)
    assert checked.code == 0, checked.out + checked.err
    assert "no errors found" in checked.out
    refused = repo_env.run("backup", str(tmp_path / "src"), "--name", "n", env=env)
    assert refused.code == 1
    assert "Read-only file system" in refused.err and "restore and check work on a read-only repository" in refused.err
    assert refused.err.count("drtool: error") == 1
    assert not list((repo_env.repo / "locks").iterdir())  # nothing was left behind in the real one


def test_no_lock_restores_past_an_exclusive_lock_and_is_refused_for_writers(repo_env: DrEnv, tmp_path: Path) -> None:
    backed_up(repo_env, tmp_path)
    with repo_env.session() as session:
        held = session.lock("prune", exclusive=True)
        try:
            blocked = repo_env.run("restore", "latest", "--target", str(tmp_path / "a"))
            assert blocked.code == 11 and "repository is locked" in blocked.err
            free = repo_env.run("--no-lock", "restore", "latest", "--target", str(tmp_path / "b"))
            assert free.code == 0, free.err
            writer = repo_env.run("--no-lock", "backup", str(tmp_path / "src"), "--name", "n")
            assert writer.code == 2 and "--no-lock is only for commands that never write" in writer.err
        finally:
            held.release()
    assert (tmp_path / "b" / "src" / "f.txt").exists()


def forge_lock(env: DrEnv, *, pid: int, start_time: int | None, boot: str | None, host: str | None = None,
               exclusive: bool = True, heartbeat: float | None = None) -> str:
    """A lock object as a killed prune (or an older drtool) left it."""
    now = time.time() if heartbeat is None else heartbeat
    body: dict[str, object] = {"host": host or socket.gethostname(), "pid": pid, "exclusive": exclusive,
                               "command": "prune", "created": now - 30, "heartbeat": now}
    if start_time is not None:
        body["start_time"] = start_time
    if boot is not None:
        body["boot_id"] = boot
    lock_id = secrets.token_hex(16)
    with env.session() as session:
        session.repo.put_object("locks", LOCK_KIND, json.dumps(body).encode(), object_id=lock_id)
    return lock_id


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "120"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_does_not_keep_a_dead_prune_lock_alive(repo_env: DrEnv, tmp_path: Path, live_pid: int) -> None:
    backed_up(repo_env, tmp_path)
    started = process_start_time(live_pid)
    assert started is not None
    lock_id = forge_lock(repo_env, pid=live_pid, start_time=started - 500, boot=boot_id())
    listed = repo_env.run("locks")
    assert f"STALE (process {live_pid} has ended and the pid now belongs to another program)" in listed.out
    began = time.monotonic()
    backup = repo_env.run("backup", str(tmp_path / "src"), "--name", "n")
    assert backup.code == 0, backup.err
    assert time.monotonic() - began < 30  # not "minutes until the heartbeat is old"
    assert f"ignoring stale exclusive lock {lock_id[:8]}" in backup.err and "'drtool unlock' removes it" in backup.err
    assert repo_env.run("restore", "latest", "--target", str(tmp_path / "out")).code == 0
    unlocked = repo_env.run("unlock")
    assert unlocked.code == 0 and f"removed exclusive lock {lock_id[:8]}" in unlocked.out
    assert "pid now belongs to another program" in unlocked.out
    with repo_env.session() as session:
        assert read_locks(session.repo) == []


def test_a_lock_from_before_a_reboot_is_stale(repo_env: DrEnv, tmp_path: Path, live_pid: int) -> None:
    backed_up(repo_env, tmp_path)
    forge_lock(repo_env, pid=live_pid, start_time=process_start_time(live_pid), boot="0" * 8 + "-old-boot")
    assert repo_env.run("backup", str(tmp_path / "src"), "--name", "n").code == 0
    unlocked = repo_env.run("unlock")
    assert "this host has rebooted since it was taken" in unlocked.out


def test_the_live_holder_and_old_lock_objects_are_still_respected(repo_env: DrEnv, tmp_path: Path,
                                                                   live_pid: int) -> None:
    backed_up(repo_env, tmp_path)
    live = forge_lock(repo_env, pid=live_pid, start_time=process_start_time(live_pid), boot=boot_id())
    blocked = repo_env.run("backup", str(tmp_path / "src"), "--name", "n")
    assert blocked.code == 11 and f"exclusive lock {live[:8]}" in blocked.err
    kept = repo_env.run("unlock")
    assert kept.code == 0 and "no stale locks" in kept.out and f"live: exclusive lock {live[:8]}" in kept.out
    with repo_env.session() as session:
        session.repo.backend.delete(f"locks/{live}")
    old = forge_lock(repo_env, pid=live_pid, start_time=None, boot=None)  # written by an older drtool
    assert repo_env.run("backup", str(tmp_path / "src"), "--name", "n").code == 11
    with repo_env.session() as session:
        session.repo.backend.delete(f"locks/{old}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    forge_lock(repo_env, pid=dead.pid, start_time=None, boot=None)  # older format, process gone
    assert repo_env.run("backup", str(tmp_path / "src"), "--name", "n").code == 0
    other = forge_lock(repo_env, pid=1, start_time=1, boot="x", host="another-host")
    assert repo_env.run("backup", str(tmp_path / "src"), "--name", "n").code == 11  # other hosts: heartbeat only
    assert f"live: exclusive lock {other[:8]}" in repo_env.run("unlock").out
    assert repo_env.run("unlock", "--force").code == 0
