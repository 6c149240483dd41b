"""A PostgreSQL restore into a target whose path is too long for a Unix socket.

Socket paths are limited to 107 bytes, so such a target gets a private
socket directory under /tmp (``postgresql.socket_dir_for``).  A restore that
works prints it and the restored server listens there; a restore that fails
after the directory was made must remove it with the half-written target
(nothing left behind that looks like a restore, nor litter in /tmp).

The failure is a real one: the source's data directory holds a *directory*
named like the WAL fetch script drtool writes into every restored data
directory, so writing the script fails after the base backup was unpacked
and the socket directory made.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PASSWORD, DrEnv, make_env
from dbservers import PgServer, archived_postgres, free_port, run_as_server_user, stop_postgres

SOURCE = "pg"
FETCH_SCRIPT = "drtool-wal-fetch.sh"  # postgres.write_fetch_script


@dataclass
class Backups:
    dr: DrEnv
    server: PgServer
    env: dict[str, str]
    clean: str    # a base backup that restores
    blocked: str  # one whose data directory holds a directory where the fetch script goes


def _backup(dr: DrEnv) -> str:
    result = dr.run("backup", "--source", SOURCE, "--json")
    assert result.code == 0, result.err
    return str(json.loads(result.out)["sources"][SOURCE][0]["id"])


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backups]:
    dr = make_env(tmp_path_factory.mktemp("pglong"))
    dr.init()
    with archived_postgres(dr, PASSWORD, SOURCE) as (server, env):
        server.sql("CREATE TABLE marks (n int)")
        server.sql("INSERT INTO marks SELECT generate_series(1, 7)")
        clean = _backup(dr)
        blocker = Path(server.datadir) / FETCH_SCRIPT
        blocker.mkdir()
        (blocker / "inside").write_text("a file in the way\n")
        try:
            blocked = _backup(dr)
        finally:
            shutil.rmtree(blocker)
        yield Backups(dr, server, env, clean, blocked)


def _long_target(tmp_path: Path) -> Path:
    """A new target whose socket path (``/.s.PGSQL.NNNNN`` appended) would pass 107 bytes."""
    os.chmod(tmp_path, 0o777)  # the server's OS user makes the target here
    parent = tmp_path / ("d" * max(1, 120 - len(str(tmp_path))))
    parent.mkdir()
    os.chmod(parent, 0o777)
    target = parent / "restored"
    assert len(os.fsencode(target)) + len("/.s.PGSQL.65535") > 107
    return target


def _private_socket_dirs() -> set[str]:
    return {name for name in os.listdir("/tmp") if name.startswith("drtool-pg-")}


def test_a_long_target_restores_with_a_private_socket_directory(backups: Backups, tmp_path: Path) -> None:
    target, port = _long_target(tmp_path), free_port()
    before = _private_socket_dirs()
    proc = run_as_server_user(["restore", backups.clean[:12], "--source", SOURCE, "--target", str(target),
                               "--start", "--port", str(port), "--json"], backups.env)
    try:
        assert proc.returncode == 0, proc.stderr + backups.server.log_tail()
        report = json.loads(proc.stdout)
        socket_dir = report["socket_dir"]
        assert os.path.dirname(socket_dir) == "/tmp" and os.path.basename(socket_dir) in _private_socket_dirs() - before
        assert os.path.exists(os.path.join(socket_dir, f".s.PGSQL.{port}"))
        assert f"unix_socket_directories = '{socket_dir}'" in (target / "postgresql.auto.conf").read_text()
        assert backups.server.sql("SELECT count(*) FROM marks", port=port, host=socket_dir) == [(7,)]
    finally:
        stop_postgres(backups.server.bindir, str(target))
        for name in _private_socket_dirs() - before:
            shutil.rmtree(os.path.join("/tmp", name), ignore_errors=True)


def test_a_failed_restore_removes_its_private_socket_directory(backups: Backups, tmp_path: Path) -> None:
    target = _long_target(tmp_path)
    before = _private_socket_dirs()
    proc = run_as_server_user(["restore", backups.blocked[:12], "--source", SOURCE, "--target", str(target)],
                              backups.env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert FETCH_SCRIPT in proc.stderr and "Is a directory; nothing was restored" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "restore again" in proc.stderr  # one line with what to do
    assert not target.exists()  # made by the restore: removed with what was unpacked into it
    assert _private_socket_dirs() == before
