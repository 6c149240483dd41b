"""A chain holding an incremental that cannot be prepared, made by a drtool that stored such copies.

The fixture (tests/fixtures/mariadb-physical-short-1, see its README): four
physical nights; night 3's copied redo log ends at its own checkpoint, so its
``mariabackup --prepare`` fails, and night 4 was taken as an incremental on top
of it.  Every later build must say so before a restore tries (``check``), refuse
a restore of night 4 without writing anything, and restore ``--latest`` from
night 2 plus the pushed binlogs, through a fresh catalog and the old one.
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

FIXTURE = ROOT / "tests" / "fixtures" / "mariadb-physical-short-1"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())
FULL, GOOD, SHORT, AFTER = EXPECTED["nights"]
SOURCE = EXPECTED["source"]


@pytest.fixture(params=["fresh-catalog", "old-catalog"])
def fixture_env(request: pytest.FixtureRequest, tmp_path: Path) -> DrEnv:
    env = fixture_copy(FIXTURE, tmp_path / "dr", old_catalog=request.param == "old-catalog")
    config = write_config(env.tmp / "drtool.toml", str(env.repo),  # the backed-up server is long gone
                          {SOURCE: {"type": "mariadb", "socket": str(env.tmp / "gone.sock"), "user": "root",
                                    "method": "physical"}})
    env.env["DRTOOL_CONFIG"] = str(config)
    return env


def test_the_fixture_is_the_chain_it_says() -> None:
    assert SHORT["incremental_parent"] == GOOD["id"] and AFTER["incremental_parent"] == SHORT["id"]
    assert SHORT["last_lsn"] == SHORT["to_lsn"] and AFTER["last_lsn"] - AFTER["to_lsn"] >= 16


def test_check_names_the_short_night_and_the_one_on_top_of_it(fixture_env: DrEnv) -> None:
    check = fixture_env.run("check")
    assert check.code == 1, check.out + check.err
    short, after = SHORT["id"][:8], AFTER["id"][:8]
    assert (f"cannot be restored: their chain holds incremental {short}, whose copied redo log ends before its "
            f"checkpoint (mariabackup --prepare refuses it); take a full backup (drtool backup --source {SOURCE} "
            f"--full) and forget the orphans (drtool forget {short} {after})") in check.out + check.err
    assert GOOD["id"][:8] not in check.out + check.err and FULL["id"][:8] not in check.out + check.err


def test_a_restore_of_the_night_on_top_is_refused_before_anything_is_written(fixture_env: DrEnv,
                                                                            tmp_path: Path) -> None:
    target = tmp_path / "never"
    result = fixture_env.run("restore", AFTER["id"][:12], "--source", SOURCE, "--target", str(target))
    assert result.code == 1 and "Traceback" not in result.err
    assert (f"snapshot {AFTER['id'][:8]} of source {SOURCE} cannot be prepared: its chain holds incremental "
            f"{SHORT['id'][:8]}, whose copied redo log ends before its checkpoint (last_lsn {SHORT['last_lsn']} < "
            f"to_lsn {SHORT['to_lsn']} + 16), which mariabackup --prepare refuses") in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert not target.exists()


def test_latest_restores_the_night_before_and_replays_the_binlogs_to_the_end(fixture_env: DrEnv) -> None:
    target = Path(short_tmpdir("drmyshort-")) / "latest"  # a unix socket path is short
    try:
        result = fixture_env.run("restore", "--source", SOURCE, "--latest", "--target", str(target), "--start",
                                 "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["plan"]["base"]["snapshot"] == GOOD["id"]
        assert report["plan"]["chain"] == [FULL["id"], GOOD["id"]]
        assert f"incremental {SHORT['id'][:8]}'s copied redo log ends before its checkpoint" in result.err
        conn = pymysql.connect(unix_socket=report["socket"], user="root", password=EXPECTED["root_password"])
        try:
            with conn.cursor() as cur:
                cur.execute(f"CHECKSUM TABLE {EXPECTED['tables']}")
                assert [list(row) for row in cur.fetchall()] == EXPECTED["end_checksums"]
        finally:
            conn.close()
    finally:
        stop_restored_mariadb(target)
        shutil.rmtree(target.parent, ignore_errors=True)
