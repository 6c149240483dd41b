"""Old MariaDB physical chains stay restorable: a full and an incremental made by an earlier drtool.

The fixture (tests/fixtures/mariadb-physical-1, see its README) was made by the
build before incremental physical backups changed how they are stored, with
default key parameters and a passphrase file.  Every later build must list
it, restore both chain members into servers that start and hold the tables
as they were at each backup (``CHECKSUM TABLE``), and ``check --read-data`` it,
through a fresh catalog and through the old catalog file it came with.
The source's config is written here: the server that was backed up is long gone,
and a physical restore needs only the source's name (and its bindir, if any).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pymysql
import pytest

from conftest import DrEnv, ROOT, fixture_copy
from dbservers import short_tmpdir, stop_restored_mariadb, write_config

FIXTURE = ROOT / "tests" / "fixtures" / "mariadb-physical-1"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(params=["fresh-catalog", "old-catalog"])
def fixture_env(request: pytest.FixtureRequest, tmp_path: Path) -> DrEnv:
    env = fixture_copy(FIXTURE, tmp_path / "dr", old_catalog=request.param == "old-catalog")
    # the socket named here does not exist: nothing may connect to the (gone) source to restore it
    config = write_config(env.tmp / "drtool.toml", str(env.repo),
                          {EXPECTED["source"]: {"type": "mariadb", "socket": str(env.tmp / "gone.sock"),
                                                "user": "root", "method": "physical"}})
    env.env["DRTOOL_CONFIG"] = str(config)
    return env


def restored_checksums(socket: str) -> list[list[Any]]:
    """The restored server keeps the backed-up server's accounts: root has that server's password."""
    conn = pymysql.connect(unix_socket=socket, user="root", password=EXPECTED["root_password"])
    try:
        with conn.cursor() as cur:
            cur.execute(f"CHECKSUM TABLE {EXPECTED['tables']}")
            return [list(row) for row in cur.fetchall()]
    finally:
        conn.close()


def test_old_physical_chain_lists_restores_and_checks(fixture_env: DrEnv) -> None:
    full, incremental = EXPECTED["full"], EXPECTED["incremental"]
    listed = fixture_env.run("snapshots", "--json")
    assert listed.code == 0, listed.err
    snaps = {s["id"]: s for s in json.loads(listed.out)}
    assert set(snaps) == {full["id"], incremental["id"]}
    assert all(s["host"] == EXPECTED["host"] and s["name"] == EXPECTED["source"] for s in snaps.values())
    assert snaps[full["id"]]["meta"]["backup_type"] == "full"
    assert snaps[incremental["id"]]["meta"]["incremental_parent"] == full["id"]
    for member, chain in ((full, [full["id"]]), (incremental, [full["id"], incremental["id"]])):
        target = Path(short_tmpdir("drmyfix-")) / member["id"][:8]  # a unix socket path is short
        try:
            result = fixture_env.run("restore", member["id"][:12], "--source", EXPECTED["source"],
                                     "--target", str(target), "--start", "--json")
            assert result.code == 0, result.err
            report = json.loads(result.out)
            assert report["plan"]["base"]["snapshot"] == member["id"]
            assert (report["plan"]["chain"] or [member["id"]]) == chain
            assert restored_checksums(report["socket"]) == member["checksums"], \
                f"snapshot {member['id'][:8]} restored differently"
        finally:
            stop_restored_mariadb(target)
            shutil.rmtree(target.parent, ignore_errors=True)
    check = fixture_env.run("check", "--read-data")
    assert check.code == 0, check.out + check.err
