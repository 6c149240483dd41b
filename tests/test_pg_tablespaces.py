"""PostgreSQL base backups of a cluster with a tablespace, against a real throwaway server.

One server per module, WAL archived by ``drtool pg wal-push``: a tablespace
outside the data directory holds table ``pages``; rows t1 before the base
backup, t2 after it, a moment T, rows t3.  A point-in-time restore to T
with ``--tablespace-map`` puts the tablespace into the restore's own
directory (never the original, which the running server uses) and gives t1
+ t2 only, read from the restored server through the tablespace.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PASSWORD, DrEnv, make_env
from dbservers import PgServer, archived_postgres, run_as_server_user, stop_postgres
from pagecache import unwritten_pages

SOURCE = "pg"


@dataclass
class Scenario:
    dr: DrEnv
    server: PgServer
    env: dict[str, str]
    location: Path
    oid: str
    moment: datetime


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("pgtblspc"))
    dr.init()
    with archived_postgres(dr, PASSWORD, SOURCE) as (server, env):
        location = Path(server.root) / "fast-disk"
        location.mkdir()
        server.sql(f"CREATE TABLESPACE fast LOCATION '{location}'")
        oid = str(server.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'fast'")[0][0])
        server.sql("CREATE TABLE pages (tag text, n int, body text) TABLESPACE fast")
        server.sql("INSERT INTO pages SELECT 't1', g, repeat('x', 200) FROM generate_series(1, 1000) g")
        backup = dr.run("backup", "--source", SOURCE)
        assert backup.code == 0, backup.err
        server.sql("INSERT INTO pages SELECT 't2', g, 'y' FROM generate_series(1, 20) g")
        time.sleep(1.1)
        moment = datetime.now(timezone.utc)
        time.sleep(1.1)
        server.sql("INSERT INTO pages SELECT 't3', g, 'z' FROM generate_series(1, 30) g")
        server.switch_wal_and_wait()
        yield Scenario(dr, server, env, location, oid, moment)


def _snapshot(scenario: Scenario) -> dict[str, object]:
    listing = scenario.dr.run("snapshots", "--name", SOURCE, "--json")
    assert listing.code == 0, listing.err
    return json.loads(listing.out)[-1]


def test_base_backup_stores_one_tar_per_tablespace(scenario: Scenario, tmp_path: Path) -> None:
    """The snapshot is pg_basebackup -Ft's directory: base.tar, OID.tar, backup_manifest."""
    snap = _snapshot(scenario)
    assert snap["meta"]["tablespaces"] == [{"oid": scenario.oid, "name": "fast",  # type: ignore[index]
                                            "location": str(scenario.location)}]
    assert snap["meta"]["start_lsn"] and snap["meta"]["end_lsn"]  # type: ignore[index]
    plain = scenario.dr.run("restore", str(snap["id"])[:12], "--target", str(tmp_path / "files"))
    assert plain.code == 0, plain.err
    assert sorted(os.listdir(tmp_path / "files")) == sorted(["backup_manifest", "base.tar", f"{scenario.oid}.tar"])
    assert b"PG_" in (tmp_path / "files" / f"{scenario.oid}.tar").read_bytes()[:512]


def test_point_in_time_restore_maps_the_tablespace(scenario: Scenario) -> None:
    root = Path(scenario.server.root)
    target, mapped = root / "restored", root / "restored-fast"
    proc = run_as_server_user(["restore", "--source", SOURCE, "--point-in-time", scenario.moment.isoformat(),
                               "--tablespace-map", f"{scenario.location}={mapped}", "--target", str(target),
                               "--start", "--json"], scenario.env)
    try:
        assert proc.returncode == 0, proc.stderr + scenario.server.log_tail()
        report = json.loads(proc.stdout)
        rows = scenario.server.sql("SELECT tag, count(*) FROM pages GROUP BY tag ORDER BY tag",
                                   port=report["port"], host=report["socket_dir"])
        assert rows == [("t1", 1000), ("t2", 20)]
        where = scenario.server.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'fast'",
                                    port=report["port"], host=report["socket_dir"])
        assert where == [(str(mapped),)]
        assert os.readlink(target / "pg_tblspc" / scenario.oid) == str(mapped)
        assert any(name.startswith("PG_") for name in os.listdir(mapped))
    finally:
        stop_postgres(scenario.server.bindir, str(target))
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(mapped, ignore_errors=True)


@pytest.mark.parametrize("mapping, message", [
    ([], "exists and is not empty"),  # the original location: the running server's files
    (["--tablespace-map", "slow=/tmp/elsewhere"], "does not have"),
    (["--tablespace-map", "fast=relative/dir"], "must be an absolute path"),
    (["--tablespace-map", "fast={target}/inside"], "inside the data directory"),
])
def test_unusable_tablespace_locations_are_refused_first(scenario: Scenario, mapping: list[str],
                                                         message: str) -> None:
    target = Path(scenario.server.root) / "never"
    args = [item.format(target=target) for item in mapping]
    result = run_as_server_user(["restore", "--source", SOURCE, "--latest", *args, "--target", str(target)],
                                scenario.env)
    assert result.returncode in (1, 2), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not target.exists()
    assert sorted(os.listdir(scenario.location)) != []  # production's tablespace untouched


def test_a_restore_without_start_is_on_disk_when_it_returns(scenario: Scenario) -> None:
    """Not started, the restored tree is not synced by PostgreSQL's own start-up yet: drtool's
    restore has synced every file of the data directory and of the tablespace (``cachestat``)."""
    root = Path(scenario.server.root)
    target, mapped = root / "unstarted", root / "unstarted-fast"
    try:
        result = run_as_server_user(["-v", "restore", "--source", SOURCE, "--latest", "--tablespace-map",
                                     f"{scenario.location}={mapped}", "--target", str(target)], scenario.env)
        assert result.returncode == 0, result.stderr
        assert re.search(r"syncing the restored files to disk: done in \d+\.\ds", result.stderr), result.stderr
        files = [path for place in (target, mapped) for path in place.rglob("*") if path.is_file()
                 and not path.is_symlink()]
        assert len(files) > 900 and any(mapped in path.parents for path in files)
        assert unwritten_pages(files) == {}
    finally:
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(mapped, ignore_errors=True)


def test_a_restore_that_fails_part_way_says_so_in_one_line_and_leaves_nothing(scenario: Scenario,
                                                                             tiny_fs: Path) -> None:
    """A full disk while the base backup is unpacked (a 2 MiB tmpfs): one line naming the file,
    exit 1, and no half-unpacked data directory left to be mistaken for a restored one."""
    os.chmod(tiny_fs, 0o777)  # the restore runs as the server's OS user
    target, mapped = tiny_fs / "restored", Path(scenario.server.root) / "failed-fast"
    result = run_as_server_user(["restore", "--source", SOURCE, "--latest", "--tablespace-map",
                                 f"{scenario.location}={mapped}", "--target", str(target)], scenario.env)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("drtool: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"drtool: error: cannot write {target}/"), result.stderr
    assert "No space left on device; nothing was restored" in errors[0] and "Traceback" not in result.stderr
    assert not target.exists()  # created by the restore, removed with what was in it
    assert not mapped.exists() or os.listdir(mapped) == []


def test_a_tablespace_location_that_cannot_be_made_is_one_line_and_leaves_nothing(scenario: Scenario) -> None:
    """Mapped under a file: the checks made before unpacking pass (the location does not exist),
    creating it fails once the data directory is unpacked. One line naming the location, exit 1,
    no internal error (it was one before), and the unpacked data directory removed."""
    root = Path(scenario.server.root)
    blocker, target = root / "a-file", root / "never-made"
    blocker.write_text("not a directory\n")
    try:
        result = run_as_server_user(["restore", "--source", SOURCE, "--latest", "--tablespace-map",
                                     f"fast={blocker}/fast", "--target", str(target)], scenario.env)
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"drtool: error: cannot create the tablespace location {blocker}/fast: "), line
        assert "--tablespace-map" in line and "internal error" not in line
        assert not target.exists()
    finally:
        blocker.unlink()


def test_rehearsal_sandbox_maps_the_tablespace_inside_itself(scenario: Scenario) -> None:
    """A drill reads the table in the tablespace at T, and never writes to production's location."""
    root = scenario.dr.tmp / "sandboxes"
    before = sorted(os.listdir(scenario.location))
    runbook = scenario.dr.tmp / "pg.toml"
    runbook.write_text(f'source = "{SOURCE}"\npoint_in_time = "{scenario.moment.isoformat()}"\n'
                       f'sandbox = {{ type = "postgresql", path = "{root}" }}\n'
                       '[[validations]]\ntype = "sql"\nquery = "SELECT count(*) FROM pages"\nexpect = 1020\n')
    env = dict(scenario.dr.env, DRTOOL_CONFIG=scenario.env["DRTOOL_CONFIG"],
               DRTOOL_PASSWORD_FILE=scenario.env["DRTOOL_PASSWORD_FILE"])
    result = scenario.dr.run("rehearse", str(runbook), "--json", env=env)
    assert result.code == 0, result.out + result.err
    assert json.loads(result.out)[0]["steps"][0]["status"] == "passed"
    assert sorted(os.listdir(scenario.location)) == before
    assert list(root.iterdir()) == []
