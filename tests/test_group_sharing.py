"""One repository, two writers: the backup user and the database user (docs/operations.md).

As deployed: drtool installed by ``scripts/install``; the ``drtool`` system user
and its group made with the ``useradd`` / ``usermod`` lines the docs print;
``drtool init --group drtool`` run as ``drtool``; PostgreSQL running as
``postgres`` with the ``archive_command`` of docs/databases.md (PostgreSQL
runs it with umask 077); the nightly routine (``drtool-nightly``, a base
backup that waits for its WAL to be archived) as ``drtool``.  Both must
succeed, each must read what the other wrote, and without ``--group`` the
database user is locked out -- the control that shows the test can fail.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from dbservers import free_port, pg_bindir
from deployed import doc_command, doc_setting, install_drtool, os_user, run_as, shared_dir
from drtool.backends.capabilities import share_with_group, stage
from drtool.backends.local import LocalBackend
from drtool.errors import UsageError
from drtool.testing.memory import MemoryBackend

GROUP = "drtool"
SOURCE = "pg-main"  # the name docs/databases.md uses


@pytest.fixture(scope="module")
def drtool_bin() -> Iterator[Path]:
    yield from install_drtool()


def _documented_users() -> None:
    """The docs' useradd (when the user is missing) and usermod lines, as printed."""
    try:
        pwd.getpwnam(GROUP)
    except KeyError:
        line = doc_command("operations.md", r"^useradd --system .* drtool$")
        subprocess.run(line.split(), check=True, capture_output=True, timeout=60)
    line = doc_command("operations.md", r"^usermod -aG drtool postgres$")
    subprocess.run(line.split(), check=True, capture_output=True, timeout=60)
    assert "postgres" in grp.getgrnam(GROUP).gr_mem


def _config(root: Path, repo: Path, pg_root: Path, port: int, bindir: str) -> Path:
    """/etc/drtool/drtool.toml and the passphrase file: root:drtool, mode 0640."""
    (root / "passphrase").write_text(secrets.token_urlsafe(24) + "\n")
    config = root / "drtool.toml"
    config.write_text(f'repository = "{repo}"\npassword_file = "{root}/passphrase"\n\n'
                      f'[sources.{SOURCE}]\ntype = "postgresql"\nmethod = "basebackup"\nhost = "{pg_root}"\n'
                      f'port = {port}\nuser = "postgres"\nbindir = "{bindir}"\n')
    gid = grp.getgrnam(GROUP).gr_gid
    for path in (root / "passphrase", config):
        os.chown(path, 0, gid)
        os.chmod(path, 0o640)
    return config


def _env(drtool_bin: Path, bindir: str, config: Path, state: Path) -> dict[str, str]:
    return {"PATH": f"{drtool_bin}:{bindir}:/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC",
            "DRTOOL_CONFIG": str(config), "XDG_STATE_HOME": str(state)}


def _archive_command(config: Path, passphrase: Path) -> str:
    command = doc_setting("databases.md", "archive_command")
    return (command.replace("/etc/drtool/drtool.toml", str(config))
            .replace("/etc/drtool/passphrase", str(passphrase)))


def _start_postgres(pg_root: Path, port: int, env: dict[str, str], archive_command: str) -> None:
    datadir = pg_root / "data"
    run_as("postgres", ["initdb", "-D", str(datadir), "-U", "postgres", "--auth=trust", "--no-sync"], env,
           check=True)
    with open(datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(f"\nport = {port}\nlisten_addresses = ''\nunix_socket_directories = '{pg_root}'\n"
                   f"wal_level = replica\narchive_mode = on\narchive_command = '{archive_command}'\n"
                   "max_wal_senders = 4\nfsync = off\n")
    run_as("postgres", ["pg_ctl", "-D", str(datadir), "-l", str(pg_root / "server.log"), "-w", "start"], env,
           check=True)


def _psql(pg_root: Path, port: int, env: dict[str, str], sql: str) -> str:
    proc = run_as("postgres", ["psql", "-h", str(pg_root), "-p", str(port), "-U", "postgres", "-Atc", sql],
                  env, check=True)
    return proc.stdout.strip()


def _assert_group_shared(repo: Path) -> None:
    gid = grp.getgrnam(GROUP).gr_gid
    paths = [repo, *repo.rglob("*")]
    assert len(paths) > 10
    for path in paths:
        info = path.lstat()
        assert info.st_gid == gid, f"{path} belongs to group {info.st_gid}, not {GROUP}"
        if stat.S_ISDIR(info.st_mode):
            assert stat.S_IMODE(info.st_mode) == 0o2770, f"{path}: mode {oct(info.st_mode)}"
        else:
            assert stat.S_IMODE(info.st_mode) == 0o640, f"{path}: mode {oct(info.st_mode)}"


@pytest.mark.slow
def test_archive_as_postgres_and_nightly_backup_as_drtool_share_one_repository(drtool_bin: Path) -> None:
    os_user("postgres")
    _documented_users()
    root = shared_dir("drgrp-", GROUP)  # plays /srv/backup and /etc/drtool
    os.chmod(root, 0o750)
    os.chown(root, os_user(GROUP).pw_uid, grp.getgrnam(GROUP).gr_gid)
    pg_root = shared_dir("drgrp-pg-", "postgres")
    bindir, port = pg_bindir(), free_port()
    config = _config(root, root / "repo", pg_root, port, bindir)
    (root / "state-drtool").mkdir()
    os.chown(root / "state-drtool", os_user(GROUP).pw_uid, -1)
    as_drtool = _env(drtool_bin, bindir, config, root / "state-drtool")
    as_postgres = _env(drtool_bin, bindir, config, pg_root / "state")
    try:
        init = doc_command("operations.md", r"^runuser -u drtool -- drtool init --group drtool$")
        proc = run_as(GROUP, init.split()[4:], as_drtool)
        assert proc.returncode == 0, proc.stderr
        assert "shared with group drtool" in proc.stdout
        _start_postgres(pg_root, port, as_postgres, _archive_command(config, root / "passphrase"))
        _psql(pg_root, port, as_postgres, "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
        # The nightly routine as the backup user: its base backup waits for postgres's archive_command.
        nightly = run_as(GROUP, ["drtool-nightly"], {**as_drtool, "DRTOOL_PRUNE_DAYS": "never",
                                                     "DRTOOL_METRICS_TEXTFILE": "", "DRTOOL_CHECK_PARTS": "1"},
                         timeout=600)
        assert nightly.returncode == 0, f"drtool-nightly as drtool: {nightly.stderr}"
        # its data check (1 part: every pack) read what the night wrote, as the backup user
        assert re.search(r"read [1-9]\d* pack\(s\) \(part 1/1 by pack id\)", nightly.stdout), nightly.stdout
        _psql(pg_root, port, as_postgres, "INSERT INTO orders VALUES (3)")
        segment = _psql(pg_root, port, as_postgres, "SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 60
        while _psql(pg_root, port, as_postgres, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") \
                < segment and time.monotonic() < deadline:
            time.sleep(0.2)
        failed = _psql(pg_root, port, as_postgres, "SELECT failed_count FROM pg_stat_archiver")
        assert failed == "0", f"archive_command failed as postgres: {(pg_root / 'server.log').read_text()[-3000:]}"
        # Each reads what the other wrote: the window (WAL by postgres, base by drtool), a check.
        window = run_as(GROUP, ["drtool", "pg", "window", "--source", SOURCE], as_drtool, check=True).stdout
        assert "1 base(s)" in window and "recoverable:" in window and "gap" not in window, window
        check = run_as("postgres", ["drtool", "check", "--read-data"], as_postgres, check=True).stdout
        assert "no errors found" in check
        _assert_group_shared(root / "repo")
    finally:
        run_as("postgres", ["pg_ctl", "-D", str(pg_root / "data"), "-m", "immediate", "-w", "stop"], as_postgres)
        shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_without_group_the_database_user_is_locked_out(drtool_bin: Path, tmp_path: Path) -> None:
    """The control: a repository made without --group is private to the backup user."""
    os_user("postgres")
    _documented_users()
    root = shared_dir("drgrp-", GROUP)
    os.chmod(root, 0o750)
    os.chown(root, os_user(GROUP).pw_uid, grp.getgrnam(GROUP).gr_gid)
    pg_root = shared_dir("drgrp-pg-", "postgres")
    try:
        config = _config(root, root / "repo", pg_root, free_port(), pg_bindir())
        env = _env(drtool_bin, pg_bindir(), config, pg_root / "state")
        run_as(GROUP, ["drtool", "init"], {**env, "XDG_STATE_HOME": str(root)}, check=True)
        wal = pg_root / "000000010000000000000001"
        wal.write_bytes(os.urandom(1024))
        os.chown(wal, os_user("postgres").pw_uid, -1)
        push = run_as("postgres", ["drtool", "pg", "wal-push", "--source", SOURCE, str(wal)], env)
        assert push.returncode != 0
        assert "permission denied for OS user postgres" in push.stderr, push.stderr
        assert "drtool init --group" in push.stderr and "Traceback" not in push.stderr, push.stderr
    finally:
        shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_init_group_refusals(drtool_bin: Path) -> None:
    """Unknown group, a user outside the group, a store without modes: exit 2, one line, no repository."""
    os_user("postgres")
    _documented_users()
    root = shared_dir("drgrp-", "nobody")
    try:
        (root / "passphrase").write_text("a passphrase\n")
        env = {"PATH": f"{drtool_bin}:/usr/bin:/bin", "LANG": "C.UTF-8", "XDG_STATE_HOME": str(root / "state"),
               "DRTOOL_PASSWORD_FILE": str(root / "passphrase")}
        unknown = run_as("nobody", ["drtool", "--repo", str(root / "a"), "init", "--group", "no-such-group-x"], env)
        assert unknown.returncode == 2 and "there is no OS group 'no-such-group-x'" in unknown.stderr
        outsider = run_as("nobody", ["drtool", "--repo", str(root / "b"), "init", "--group", GROUP], env)
        assert outsider.returncode == 2, outsider.stderr
        assert "this user is not a member of it" in outsider.stderr and "usermod -aG drtool nobody" in outsider.stderr
        for out in (unknown, outsider):
            assert len(out.stderr.strip().splitlines()) <= 2 and "Traceback" not in out.stderr
        assert not list((root / "b").iterdir()), "a refused init left objects behind"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with pytest.raises(UsageError, match="--group is for repositories in a local directory"):
        share_with_group(MemoryBackend(), GROUP)


def test_local_backend_keeps_group_modes_whatever_the_umask(tmp_path: Path) -> None:
    """Fast, no other users: what the slow tests rely on, under PostgreSQL's umask 077."""
    group = grp.getgrgid(os.getgid()).gr_name
    backend = LocalBackend(tmp_path / "repo")
    backend.create_location()
    previous = os.umask(0o077)
    try:
        backend.share_with_group(group)
        backend.put("keys/k1", b"slot")
        later = LocalBackend(tmp_path / "repo")  # a later run learns it from the directory
        later.put("wal/src/0001", b"wal")
        staged = stage(later, "packs/ab")
        assert staged is not None
        staged.write(b"x" * 5000)
        staged.commit("packs/ab/abcdef")
        assert later.put_if_absent("locks/l1", b"lock")
    finally:
        os.umask(previous)
    for path in [tmp_path / "repo", *(tmp_path / "repo").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o2770 if path.is_dir() else 0o640), f"{path}: {oct(mode)}"
    private = LocalBackend(tmp_path / "private")
    private.create_location()
    private.put("keys/k1", b"slot")
    assert stat.S_IMODE((tmp_path / "private" / "keys" / "k1").stat().st_mode) == 0o600
    assert (later.shared_group(), private.shared_group()) == (os.getgid(), None)
