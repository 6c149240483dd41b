"""Every bad input gets one line, a documented exit code, no traceback, no lie."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import subprocess

from conftest import DrEnv, spawn_without_override


def assert_one_line(err: str) -> None:
    """Exactly one error line (informational lines such as 'restoring …' may precede it)."""
    lines = [line for line in err.strip().splitlines() if line.startswith("drtool: error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err


def test_wrong_passphrase_exits_12(repo_env: DrEnv) -> None:
    result = repo_env.run("snapshots", env={"DRTOOL_PASSWORD": "wrong"})
    assert result.code == 12
    assert_one_line(result.err)
    assert "wrong passphrase" in result.err
    assert "wrong" not in result.err.replace("wrong passphrase", "")  # the secret is not echoed


def test_missing_repository_exits_10(dr: DrEnv) -> None:
    result = dr.run("snapshots")
    assert result.code == 10
    assert_one_line(result.err)
    assert "drtool init" in result.err


def test_no_repository_given_is_usage_error(dr: DrEnv) -> None:
    result = dr.run("snapshots", env={"DRTOOL_REPOSITORY": ""})
    assert result.code == 2
    assert "--repo" in result.err


def test_init_twice_refuses(repo_env: DrEnv) -> None:
    result = repo_env.run("init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1")
    assert result.code == 1 and "already exists" in result.err


def test_corrupted_key_slot(repo_env: DrEnv) -> None:
    (key,) = list((repo_env.repo / "keys").iterdir())
    key.write_bytes(b"{not json")
    result = repo_env.run("snapshots")
    assert result.code == 1
    assert_one_line(result.err)
    assert "key slot" in result.err and "damaged" in result.err


def test_unwritable_restore_target(repo_env: DrEnv, tmp_path: Path) -> None:
    src = repo_env.tmp / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo_env.run("backup", str(src), "--name", "n")
    target = repo_env.tmp / "ro"
    target.mkdir()
    target.chmod(0o555)
    result = spawn_without_override(repo_env, "restore", "latest", "--target", str(target / "sub"))
    assert result.returncode == 1
    assert_one_line(result.stderr)
    assert "not writable" in result.stderr


def test_restore_into_full_disk_leaves_no_complete_looking_file(repo_env: DrEnv, tmp_path: Path,
                                                                 tiny_fs: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("small")
    (src / "zbig.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    repo_env.run("backup", str(src), "--name", "n")
    result = repo_env.run("restore", "latest", "--target", str(tiny_fs))
    assert result.code == 1
    assert_one_line(result.err)
    assert "full" in result.err
    assert not (tiny_fs / "src" / "zbig.bin").exists()
    assert not [p for p in (tiny_fs / "src").iterdir() if p.name.startswith(".drtool-part")]


def test_restore_onto_read_only_mount(repo_env: DrEnv, tmp_path: Path, tiny_fs: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo_env.run("backup", str(src), "--name", "n")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    result = repo_env.run("restore", "latest", "--target", str(tiny_fs / "out"))
    assert result.code == 1
    assert_one_line(result.err)
    assert "Read-only file system" in result.err


def test_read_only_file_system_target(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo_env.run("backup", str(src), "--name", "n")
    result = repo_env.run("restore", "latest", "--target", "/proc/drtool-restore")
    assert result.code == 1
    assert_one_line(result.err)
    assert "not writable" in result.err


def test_unreadable_source_file_exits_3_and_lists_it(repo_env: DrEnv) -> None:
    src = repo_env.tmp / "src"
    src.mkdir()
    (src / "ok").write_text("fine")
    (src / "secret").write_text("no access")
    bad = src / "bad"
    bad.mkdir()
    (bad / "inside").write_text("x")
    bad.chmod(0o000)
    (src / "secret").chmod(0o000)
    result = spawn_without_override(repo_env, "backup", str(src), "--name", "n", "--json")
    bad.chmod(0o755)
    assert result.returncode == 3, result.stderr
    assert "bad" in result.stderr and "secret" in result.stderr
    snap = json.loads(result.stdout)
    assert snap["summary"]["unreadable"] == 2 and len(snap["unreadable"]) == 2


def test_failed_dump_command_writes_no_snapshot(repo_env: DrEnv) -> None:
    result = repo_env.run("backup", "--from-command", "echo partial; echo 'pg_dump: connection refused' >&2; exit 3",
                          "--name", "db/x")
    assert result.code == 1
    assert_one_line(result.err)
    assert "status 3" in result.err and "connection refused" in result.err
    assert json.loads(repo_env.run("snapshots", "--json").out) == []
    assert repo_env.run("check").code == 0


def test_missing_command_writes_no_snapshot(repo_env: DrEnv) -> None:
    result = repo_env.run("backup", "--from-command", "/no/such/dumper", "--name", "db/x")
    assert result.code == 1
    assert json.loads(repo_env.run("snapshots", "--json").out) == []


@pytest.mark.parametrize("when", ["yesterday-ish", "2026-13-01", "", "12:00:99"])
def test_nonsense_point_in_time_is_usage_error(repo_env: DrEnv, tmp_path: Path, when: str) -> None:
    result = repo_env.run("restore", "--point-in-time", when, "--target", str(tmp_path / "o"))
    assert result.code == 2
    assert_one_line(result.err)


def test_time_before_first_backup(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    repo_env.run("backup", str(src), "--name", "n")
    result = repo_env.run("restore", "--point-in-time", "2001-01-01T00:00Z", "--target", str(tmp_path / "o"))
    assert result.code == 1
    assert "no snapshot" in result.err and "the first is from" in result.err


def test_unknown_snapshot_id(repo_env: DrEnv, tmp_path: Path) -> None:
    result = repo_env.run("restore", "deadbeef", "--target", str(tmp_path / "o"))
    assert result.code == 1 and "no snapshot" in result.err


def test_lock_held_exits_11(repo_env: DrEnv, tmp_path: Path) -> None:
    session = repo_env.session()
    lock = session.lock("prune", exclusive=True)
    try:
        src = tmp_path / "src"
        src.mkdir()
        result = repo_env.run("backup", str(src), "--name", "n")
    finally:
        lock.release()
        session.close()
    assert result.code == 11
    assert_one_line(result.err)
    assert "locked" in result.err


def test_malformed_config_file(repo_env: DrEnv, tmp_path: Path) -> None:
    config = tmp_path / "drtool.toml"
    config.write_text("repository = [unclosed\n")
    result = repo_env.run("--config", str(config), "snapshots")
    assert result.code == 2
    assert_one_line(result.err)
    assert "not valid TOML" in result.err


def test_password_command_and_file(repo_env: DrEnv, tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    pwfile.write_text("correct horse battery staple\n")
    assert repo_env.run("snapshots", env={"DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_FILE": str(pwfile)}).code == 0
    assert repo_env.run("snapshots", env={"DRTOOL_PASSWORD": "",
                                          "DRTOOL_PASSWORD_COMMAND": f"cat {pwfile}"}).code == 0
    failing = repo_env.run("snapshots", env={"DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_COMMAND": "false"})
    assert failing.code == 2


def test_usage_errors_exit_2(repo_env: DrEnv) -> None:
    assert repo_env.run("backup", "--name", "x").code == 2  # neither paths nor command
    assert repo_env.run("restore").code == 2  # --target missing
    assert repo_env.run("no-such-command").code == 2


def test_init_killed_before_config_can_be_rerun(dr: DrEnv) -> None:
    """A key slot without a config is an interrupted init: init again succeeds."""
    first = dr.run("init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1")
    assert first.code == 0
    (dr.repo / "config").unlink()  # what a kill between the two writes leaves
    assert dr.run("snapshots").code == 10
    again = dr.run("init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1")
    assert again.code == 0, again.err
    assert len(list((dr.repo / "keys").iterdir())) == 1
    assert dr.run("snapshots").code == 0


def test_init_refuses_data_without_config(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo_env.run("backup", str(src), "--name", "n")
    (repo_env.repo / "config").unlink()
    result = repo_env.run("init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1")
    assert result.code == 1 and "holds repository data" in result.err


def test_backup_into_a_full_repository_disk_commits_nothing(tmp_path: Path, tiny_fs: Path) -> None:
    """ENOSPC while a pack is streamed to disk: one line, exit 1, no pack, no temp file, no snapshot."""
    from conftest import fast_init, make_env
    env = make_env(tmp_path / "env")
    env.env["DRTOOL_REPOSITORY"] = str(tiny_fs / "repo")
    fast_init(str(tiny_fs / "repo"), str(env.catalog))
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))  # more than the 2 MiB disk holds
    result = env.run("backup", str(src), "--name", "n")
    assert result.code == 1
    assert_one_line(result.err)
    assert "repository disk is full" in result.err
    leftovers = [p for p in (tiny_fs / "repo").rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
    assert leftovers == []
    assert not list((tiny_fs / "repo" / "snapshots").glob("*"))
    assert not [p for p in (tiny_fs / "repo" / "packs").rglob("*") if p.is_file()]
