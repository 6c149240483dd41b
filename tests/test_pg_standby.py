"""A PostgreSQL base backup taken from a streaming standby is a recovery base.

The primary archives WAL with ``drtool pg wal-push``; the standby (made with
``pg_basebackup -R``) is where ``drtool backup --source`` runs, as fleets do
to spare the primary.  The snapshot records that it came from a standby,
and a ``--latest`` restore from it replays the primary's archived WAL.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PASSWORD, make_env
from dbservers import (PgServer, archive_env, free_port, pg_ctl, postgres_server, run_as_server_user, server_prefix,
                       stop_postgres, wait_for, write_config)

SOURCE = "pg"


def _replicated(primary: PgServer, standby: str, port: int) -> bool:
    """The standby shows the primary's 10 rows (the table may not be there yet)."""
    import psycopg
    try:
        return primary.sql("SELECT count(*) FROM events", host=standby, port=port) == [(10,)]
    except psycopg.Error:
        return False


@pytest.mark.slow
def test_base_backup_from_a_standby_restores_with_the_primary_wal(tmp_path: Path) -> None:
    dr = make_env(tmp_path / "dr")
    dr.init()
    env = archive_env(dr.tmp, dr.env, PASSWORD)
    with postgres_server(archive_env=env, source=SOURCE) as primary:
        standby = os.path.join(primary.root, "standby")
        made = subprocess.run([*server_prefix(), os.path.join(primary.bindir, "pg_basebackup"), "-D", standby,
                               "-R", "-X", "stream", "-h", primary.root, "-p", str(primary.port), "-U", "postgres"],
                              capture_output=True, text=True, check=False, timeout=120)
        assert made.returncode == 0, made.stderr
        port = free_port()
        with open(os.path.join(standby, "postgresql.auto.conf"), "a", encoding="utf-8") as handle:
            handle.write(f"\nport = {port}\nunix_socket_directories = '{standby}'\n")
        try:
            started = pg_ctl(primary.bindir, standby, "start", None, os.path.join(standby, "standby.log"))
            assert started.returncode == 0, started.stderr
            primary.sql("CREATE TABLE events (tag text, n int)")
            primary.sql("INSERT INTO events SELECT 'before', g FROM generate_series(1, 10) g")
            wait_for(lambda: _replicated(primary, standby, port), what="the standby replaying the rows")
            config = write_config(dr.tmp / "drtool.toml", str(dr.repo),
                                  {SOURCE: {**primary.source(method="basebackup"), "host": standby, "port": port}})
            env["DRTOOL_CONFIG"] = dr.env["DRTOOL_CONFIG"] = str(config)
            backup = dr.run("backup", "--source", SOURCE)
            assert backup.code == 0, backup.err
            (snap,) = json.loads(dr.run("snapshots", "--name", SOURCE, "--json").out)
            assert snap["meta"]["backup_from"] == "standby"
            primary.sql("INSERT INTO events SELECT 'after', g FROM generate_series(1, 20) g")
            primary.switch_wal_and_wait()
        finally:
            stop_postgres(primary.bindir, standby)
        target = Path(primary.root) / "restored"
        proc = run_as_server_user(["restore", "--source", SOURCE, "--latest", "--target", str(target), "--start",
                                   "--json"], env)
        try:
            assert proc.returncode == 0, proc.stderr
            report = json.loads(proc.stdout)
            rows = primary.sql("SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag",
                               host=report["socket_dir"], port=report["port"])
            assert rows == [("after", 20), ("before", 10)]
        finally:
            stop_postgres(primary.bindir, str(target))
            shutil.rmtree(target, ignore_errors=True)
