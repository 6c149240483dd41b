"""Every bad input gets one line, a documented exit code, no traceback, no lie."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import subprocess

from conftest import PASSWORD, DrEnv, spawn_without_override


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
    result = repo_env.run("init")
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


@pytest.mark.parametrize("under, code, said", [("device", 1, "is not a directory"),
                                                ("below a file", 1, "is not a directory"),
                                                ("file", 2, "is a file")])  # a usage error, from the option
def test_a_restore_target_that_is_not_a_directory_is_named_as_such(repo_env: DrEnv, under: str, code: int,
                                                                     said: str) -> None:
    """A device or a file as --target (or a folder below a file): said so, not "File exists"."""
    src = repo_env.tmp / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    plain = repo_env.tmp / "plain"
    plain.write_text("not a folder")
    target = {"device": "/dev/full", "file": str(plain), "below a file": str(plain / "sub")}[under]
    result = spawn_without_override(repo_env, "restore", "latest", "--target", target)
    assert result.returncode == code, result.stderr
    assert said in result.stderr and "File exists" not in result.stderr and "Traceback" not in result.stderr
    if code == 1:
        assert_one_line(result.stderr)
    assert plain.read_text() == "not a folder"


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
    first = dr.run("init")
    assert first.code == 0
    (dr.repo / "config").unlink()  # what a kill between the two writes leaves
    assert dr.run("snapshots").code == 10
    again = dr.run("init")
    assert again.code == 0, again.err
    assert len(list((dr.repo / "keys").iterdir())) == 1
    assert dr.run("snapshots").code == 0


def test_init_refuses_data_without_config(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo_env.run("backup", str(src), "--name", "n")
    (repo_env.repo / "config").unlink()
    result = repo_env.run("init")
    assert result.code == 1 and "holds repository data" in result.err


def test_backup_into_a_full_repository_disk_commits_nothing(tmp_path: Path, tiny_fs: Path) -> None:
    """ENOSPC while a pack is streamed to disk: one line, exit 1, no pack, no temp file, no snapshot."""
    from conftest import init_repo, make_env
    env = make_env(tmp_path / "env")
    env.env["DRTOOL_REPOSITORY"] = str(tiny_fs / "repo")
    init_repo(str(tiny_fs / "repo"), str(env.catalog))
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


# ----- issue #15, item 8: no "success" with nothing done ----------------------------------------
def test_include_that_matches_nothing_is_an_error(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "photos").mkdir(parents=True)
    (src / "photos" / "a.jpg").write_bytes(b"jpeg")
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    target = tmp_path / "out"
    for args in ([], ["--dry-run"]):
        result = repo_env.run("restore", "latest", "--target", str(target), "--include", "src/photo", *args)
        assert result.code == 1
        assert_one_line(result.err)
        assert "--include 'src/photo' matches nothing in snapshot" in result.err
        assert "src holds: photos" in result.err
        assert not target.exists() or not any(target.iterdir())
    wrong_kind = repo_env.run("restore", "latest", "--target", str(target), "--include", "src/photos/a.jpg/x")
    assert wrong_kind.code == 1 and "is not a directory" in wrong_kind.err
    parent = repo_env.run("restore", "latest", "--target", str(target), "--include", "../src")
    assert parent.code == 2 and "is not a path inside the snapshot" in parent.err
    ok = repo_env.run("restore", "latest", "--target", str(target), "--include", "/src/photos/")
    assert ok.code == 0 and (target / "src" / "photos" / "a.jpg").read_bytes() == b"jpeg"


def test_an_empty_or_missing_snapshot_argument_is_a_usage_error(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    empty = repo_env.run("restore", "", "--target", str(tmp_path / "out"))
    assert empty.code == 2 and "an empty snapshot id was given" in empty.err
    none = repo_env.run("restore", "--target", str(tmp_path / "out"))
    assert none.code == 2 and "give a snapshot id, 'latest', or --point-in-time" in none.err
    assert not (tmp_path / "out").exists()
    forget = repo_env.run("forget", " ")
    assert forget.code == 2 and "an empty snapshot id" in forget.err
    assert len(json.loads(repo_env.run("snapshots", "--json").out)) == 1


def test_source_root_deleted_during_the_backup_writes_no_snapshot(repo_env: DrEnv, tmp_path: Path) -> None:
    """rm -rf racing the backup: the walk saw a few files of a tree that is gone; no 'success'."""
    import shutil

    from drtool import api
    from drtool.errors import SourceError
    src = tmp_path / "src"
    for d in range(30):
        (src / f"d{d:02}").mkdir(parents=True)
        for f in range(100):
            (src / f"d{d:02}" / f"f{f}").write_text(f"{d}/{f}\n")
    deleted = []

    def rm_rf_after_a_few_files(stats: object) -> None:
        if not deleted and getattr(stats, "files_read", 0) >= 7:
            shutil.rmtree(src)
            deleted.append(True)

    with repo_env.session() as session:
        with pytest.raises(SourceError) as caught:
            api.backup(session, [str(src)], "n", progress=rm_rf_after_a_few_files)
    assert caught.value.exit_code == 1
    assert f"backup path {src} vanished during the backup" in str(caught.value)
    assert "no snapshot was written" in str(caught.value)
    assert json.loads(repo_env.run("snapshots", "--json").out) == []
    assert repo_env.run("check").code == 0


# ----- issue #15, item 9: a message instead of "internal error" --------------------------------
def test_config_file_that_is_not_utf8(repo_env: DrEnv, tmp_path: Path) -> None:
    config = tmp_path / "drtool.toml"
    config.write_bytes(b'repository = "/srv/r\xe9po"\n')  # saved as Latin-1
    result = repo_env.run("--config", str(config), "snapshots")
    assert result.code == 2
    assert_one_line(result.err)
    assert "is not valid UTF-8 (byte 0xe9 at offset 20)" in result.err


def test_repo_pointing_at_a_regular_file(dr: DrEnv, tmp_path: Path) -> None:
    afile = tmp_path / "not-a-repo"
    afile.write_text("hello")
    for args in (["snapshots"], ["init"]):
        result = dr.run("--repo", str(afile), *args)
        assert result.code == 10, result.err
        assert_one_line(result.err)
        assert f"{afile} is a file, not a directory" in result.err
    assert afile.read_text() == "hello"


def test_catalog_settings_that_cannot_work(repo_env: DrEnv, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "catalog.sqlite"
    result = repo_env.run("snapshots", env={"DRTOOL_CATALOG": str(missing)})
    assert result.code == 2
    assert_one_line(result.err)
    assert f"the catalog's directory {missing.parent} does not exist" in result.err
    assert not missing.parent.exists()  # not created behind the operator's back
    for url, text in (("mysql://x", "unsupported catalog URL scheme 'mysql'"),
                      ("postgresql+nosuchdriver://u:secret@h/db", "the catalog URL cannot be used")):
        bad = repo_env.run("snapshots", env={"DRTOOL_CATALOG": url})
        assert bad.code == 2, bad.err
        assert_one_line(bad.err)
        assert text in bad.err and "secret" not in bad.err


def test_a_restic_repository_is_named_as_such(dr: DrEnv, tmp_path: Path) -> None:
    restic_repo = tmp_path / "restic-repo"
    made = subprocess.run(["restic", "init", "--repo", str(restic_repo)], capture_output=True, text=True,
                          env={**os.environ, "RESTIC_PASSWORD": "restic's own"}, check=False)
    assert made.returncode == 0, made.stderr
    for args in (["snapshots"], ["restore", "latest", "--target", str(tmp_path / "out")]):
        result = dr.run("--repo", str(restic_repo), *args)
        assert result.code == 10
        assert_one_line(result.err)
        assert "is a restic repository, not a drtool one" in result.err


def test_copy_into_the_source_repository_is_refused(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    before = sorted(str(p.relative_to(repo_env.repo)) for p in repo_env.repo.rglob("*"))
    for to in (repo_env.repo / "snapshots", repo_env.repo, tmp_path):
        result = repo_env.run("copy", "--to", str(to))
        assert result.code == 2, result.err
        assert_one_line(result.err)
        assert "overlaps the source repository" in result.err
    assert sorted(str(p.relative_to(repo_env.repo)) for p in repo_env.repo.rglob("*")) == before
    assert repo_env.run("check", "--read-data").code == 0


def test_interrupt_during_start_up_is_one_line_and_exit_130(repo_env: DrEnv) -> None:
    """SIGINT while drtool imports its modules, derives the key or runs the password command."""
    import signal
    import sys
    import time
    env = {**repo_env.env, "DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_COMMAND": "sh -c 'sleep 1.5; echo pw'"}
    outcomes = []
    # Before drtool's first line runs, Python's own start-up (site) answers SIGINT with its own
    # fatal error; drtool cannot help that.  Count the delays from when the interpreter is up,
    # measured now, so a loaded machine does not move the signal into Python's start-up.
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
    interpreter_up = time.monotonic() - began
    for delay in (0.15, 0.25, 0.4, 0.6, 0.9, 1.2):
        delay += interpreter_up
        proc = subprocess.Popen([sys.executable, "-m", "drtool", "snapshots"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        outcomes.append((delay, proc.returncode, err))
        assert "Traceback" not in err, (delay, err)
        assert proc.returncode == 130, (delay, proc.returncode, err)
        assert len([line for line in err.splitlines() if line.startswith("drtool:")]) == 1, err
        assert "interrupted" in err
    assert len(outcomes) == 6


def test_an_ignored_interrupt_stays_ignored(repo_env: DrEnv, tmp_path: Path) -> None:
    """Started with SIGINT ignored (``cmd &`` in a script, ``nohup``), drtool is not stopped by it,
    neither during start-up nor while the command runs: Ctrl-C at the terminal is not for it."""
    import signal
    import sys
    import time
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD)
    env = {**repo_env.env, "DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_COMMAND": f"sh -c 'sleep 1.5; cat {secret}'"}
    proc = subprocess.Popen([sys.executable, "-m", "drtool", "snapshots"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    for delay in (0.4, 0.6, 0.8):  # start-up, then the password command running
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "interrupted" not in err and " n " in out, (out, err)
