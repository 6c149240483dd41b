"""An incremental whose copied redo log stops short of its checkpoint is never stored.

mariabackup 10.11 can exit 0 with an incremental whose copied log ends exactly at
its own ``to_lsn``; its ``--prepare`` then fails ("The log was only applied up to
LSN L-16, instead of L"), so the night could never be restored.  Seen once in
this project's CI.  The first test pins the rule drtool checks at backup time
(``last_lsn`` >= ``to_lsn`` + 16) to the real mariabackup's prepare; the second
makes the short copy happen on purpose (a ``bindir`` whose mariabackup passes
the real one's stream through, with ``to_lsn`` set to ``last_lsn`` in
``xtrabackup_checkpoints`` on its first runs) and checks the backup is taken
again, or refused in one line with nothing stored.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pymysql
import pytest

from conftest import DrEnv, make_env
from dbservers import (MariaServer, insert_events, maria_binary, mariadb_server, short_tmpdir,
                       stop_restored_mariadb, write_config)
from shortredo import shortening_bindir
from drtool.sources import mariabackup

SOURCE = "wikiredo"


@pytest.fixture(scope="module")
def server() -> Iterator[MariaServer]:
    with mariadb_server() as server:
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        insert_events(server, "t0", 50)
        yield server


def native(server: MariaServer, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """mariabackup as an operator runs it, the password in a defaults file (not argv)."""
    defaults = tmp / "backup.cnf"
    defaults.write_text(f"[mariabackup]\nuser=root\npassword={server.password}\nsocket={server.socket}\n")
    return subprocess.run([maria_binary("mariabackup"), f"--defaults-file={defaults}", *args],
                          capture_output=True, text=True, timeout=600, check=False)


def set_to_lsn(directory: Path, value: int) -> None:
    path = directory / "xtrabackup_checkpoints"
    path.write_text(re.sub(r"(?m)^to_lsn = \d+$", f"to_lsn = {value}", path.read_text()))


def test_an_incrementals_prepare_needs_its_log_to_reach_16_bytes_past_its_checkpoint(server: MariaServer,
                                                                                      tmp_path: Path) -> None:
    """The rule behind ``check_redo_copied``, asked of the installed mariabackup: the same real
    incremental prepares when its copied log ends 16 bytes past ``to_lsn``, and fails with the
    message seen in CI when it ends at ``to_lsn``; drtool's check gives the same verdicts."""
    full, inc = tmp_path / "full", tmp_path / "inc"
    made = native(server, tmp_path, "--backup", f"--target-dir={full}", f"--datadir={server.datadir}")
    assert made.returncode == 0, made.stderr[-2000:]
    base_lsn = mariabackup_lsns(full)["to_lsn"]
    prepared = native(server, tmp_path, "--prepare", f"--target-dir={full}")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    insert_events(server, "t1", 20)
    made = native(server, tmp_path, "--backup", f"--target-dir={inc}", f"--datadir={server.datadir}",
                  f"--incremental-lsn={base_lsn}")
    assert made.returncode == 0, made.stderr[-2000:]
    last = mariabackup_lsns(inc)["last_lsn"]
    for gap, prepares in ((16, True), (0, False)):
        base, night = tmp_path / f"base{gap}", tmp_path / f"night{gap}"
        shutil.copytree(full, base, symlinks=True)
        shutil.copytree(inc, night, symlinks=True)
        set_to_lsn(night, last - gap)
        meta = {"source": SOURCE, **mariabackup_lsns(night)}
        applied = native(server, tmp_path, "--prepare", f"--target-dir={base}", f"--incremental-dir={night}")
        if prepares:
            assert applied.returncode == 0, applied.stderr[-2000:]
            mariabackup.check_redo_copied(meta)
        else:
            assert applied.returncode != 0
            assert f"The log was only applied up to LSN {last - 16}, instead of {last}" in applied.stderr
            with pytest.raises(mariabackup.ShortRedoCopy):
                mariabackup.check_redo_copied(meta)


def mariabackup_lsns(directory: Path) -> dict[str, object]:
    from drtool.databases.mariadb_chain import parse_checkpoints
    return parse_checkpoints((directory / "xtrabackup_checkpoints").read_text())


def night(dr: DrEnv, config: Path) -> tuple[int, str, list[dict[str, object]]]:
    result = dr.run("backup", "--source", SOURCE, env={"DRTOOL_CONFIG": str(config)})
    snaps = json.loads(dr.run("snapshots", "--name", SOURCE, "--json", env={"DRTOOL_CONFIG": str(config)}).out)
    return result.code, result.err, snaps


def shortened_night(dr: DrEnv, server: MariaServer, tmp_path: Path,
                    short: int) -> tuple[int, str, list[dict[str, object]], Path]:
    """A night whose first ``short`` mariabackup runs copy the redo log short; the runs' record."""
    bindir, runs = shortening_bindir(tmp_path, short=short)
    config = write_config(tmp_path / f"short{short}.toml", str(dr.repo),
                          {SOURCE: server.source(method="physical", bindir=str(bindir))})
    return (*night(dr, config), runs)


def assert_restores(dr: DrEnv, config: Path, snapshot: str, server: MariaServer, rows: int) -> None:
    """The snapshot's chain restores (extract, prepare, apply) into a server holding ``rows`` events."""
    target = Path(short_tmpdir("drredo-")) / "r"  # a unix socket path is short
    try:
        result = dr.run("restore", snapshot[:12], "--source", SOURCE, "--target", str(target), "--start", "--json",
                        env={"DRTOOL_CONFIG": str(config)})
        assert result.code == 0, result.err
        conn = pymysql.connect(unix_socket=json.loads(result.out)["socket"], user="root", password=server.password)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM wiki.events")
                assert cur.fetchone() == (rows,)
        finally:
            conn.close()
    finally:
        stop_restored_mariadb(target)
        shutil.rmtree(target.parent, ignore_errors=True)


def test_an_incremental_copied_short_is_taken_again_or_refused_with_nothing_stored(server: MariaServer,
                                                                                   tmp_path: Path) -> None:
    dr = make_env(tmp_path / "dr")
    dr.init()
    plain = write_config(tmp_path / "plain.toml", str(dr.repo), {SOURCE: server.source(method="physical")})
    code, err, snaps = night(dr, plain)
    assert code == 0, err
    (full,) = snaps

    insert_events(server, "t1", 10)
    (rows,), = server.sql("SELECT count(*) FROM wiki.events")
    code, err, snaps, runs = shortened_night(dr, server, tmp_path, short=1)
    assert code == 0, err
    assert len(runs.read_text().splitlines()) == 2  # the short copy, then the one that was stored
    assert "could not be prepared; no snapshot was written; taking the backup again (attempt 2 of 3)" in err
    assert len(snaps) == 2
    meta = snaps[1]["meta"]
    assert meta["incremental_parent"] == full["id"] and meta["last_lsn"] - meta["to_lsn"] >= 16
    assert meta["copy_attempts"] == 2 and "copy_attempts" not in full["meta"]
    assert_restores(dr, plain, snaps[1]["id"], server, rows)  # the retried night's chain prepares

    insert_events(server, "t2", 10)
    code, err, after, runs = shortened_night(dr, server, tmp_path, short=99)
    assert code == 1
    assert len(runs.read_text().splitlines()) == 3
    last_line = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"drtool: error: source {SOURCE}: mariabackup's incremental copy of the redo log ends at "
                        rf"LSN (\d+), but its checkpoint \1 needs it to reach \d+: this copy could not be "
                        rf"prepared; no snapshot was written; the backup was taken again and each copy stopped "
                        rf"short: .*", last_line), err
    assert err.count("taking the backup again") == 2
    assert "Traceback" not in err
    assert after == snaps  # nothing stored: the catalog lists the same two snapshots
