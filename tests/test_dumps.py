"""Logical dumps from real throwaway servers: pg_dump -Fc, pg_dumpall --globals-only and
mariadb-dump stream into snapshots; failed or truncated dumps never become one (a server that
is down or refuses the account is one line, before any tool runs); night
two of a MediaWiki-like table (2 % of rows edited, 1 % appended) re-stores little.
"""
from __future__ import annotations

import json
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import DrEnv, make_env
from dbservers import MariaServer, PgServer, mariadb_server, postgres_server, short_tmpdir, write_config

ROWS = 5000
EDITED = ROWS // 50      # 2 %
APPENDED = ROWS // 100   # 1 %
# Bounds on night two's new bytes / dump size.  With ~16 KiB text chunks and ~2 KiB
# rows a chunk holds ~8 rows; scattered edits to 2 % of rows touch ~15-20 % of the
# chunks (big chunks are hit more often), appends add 1 %: measured 25-32 % new before
# compression, 8-11 % stored after it (the chunker is keyed per repository, so runs vary).
MAX_NEW_FRACTION = 0.40
MAX_STORED_FRACTION = 0.15


def _text(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choices(words, k=rng.randint(40, 600)))


def _words(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    return ["".join(rng.choices(letters, k=max(1, int(rng.expovariate(1 / 6))))) for _ in range(5000)]


@dataclass
class Dbs:
    dr: DrEnv
    pg: PgServer
    my: MariaServer


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dbs]:
    dr = make_env(tmp_path_factory.mktemp("dumps"))
    dr.init()
    with postgres_server() as pg, mariadb_server() as my:
        pg.sql("CREATE DATABASE wiki")
        pg.sql("CREATE ROLE editor LOGIN")
        my.sql("CREATE DATABASE wiki")
        sources = {"pgwiki": pg.source(dbname="wiki"), "pgall": pg.source(all=True),
                   "pgmissing": pg.source(dbname="no_such_db"), "mywiki": my.source(dbname="wiki"),
                   "mybadpw": {**my.source(dbname="wiki"), "password_file": str(dr.tmp / "wrong")},
                   "files": {"type": "files", "paths": [str(dr.tmp / "somefiles")]}}
        (dr.tmp / "wrong").write_text("not the password\n")
        (dr.tmp / "somefiles").mkdir()
        (dr.tmp / "somefiles" / "a.txt").write_text("hello")
        config = write_config(dr.tmp / "drtool.toml", str(dr.repo), sources)
        dr.env["DRTOOL_CONFIG"] = str(config)
        yield Dbs(dr, pg, my)


def _snapshots(dr: DrEnv, name: str) -> list[dict[str, Any]]:
    return json.loads(dr.run("snapshots", "--name", name, "--json").out)  # type: ignore[no-any-return]


def test_failed_pg_dump_leaves_no_snapshot(dbs: Dbs) -> None:
    result = dbs.dr.run("backup", "--source", "pgmissing")
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        f"drtool: error: source pgmissing: cannot connect to the PostgreSQL server at 127.0.0.1, port {dbs.pg.port}: "
        f"FATAL: database \"no_such_db\" does not exist; create it, or fix dbname or databases in "
        f"[sources.pgmissing]; nothing was written"], result.err
    assert _snapshots(dbs.dr, "pgmissing") == []


def test_failed_mariadb_dump_leaves_no_snapshot(dbs: Dbs) -> None:
    """A wrong password: one line naming the server and the refusal, not a warning about the server
    id followed by the dump tool's own error."""
    result = dbs.dr.run("backup", "--source", "mybadpw")
    lines = result.err.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.err
    assert lines[0].startswith(f"drtool: error: source mybadpw: cannot connect to the MariaDB server at socket "
                               f"{dbs.my.socket}: Access denied for user 'root'"), lines[0]
    assert _snapshots(dbs.dr, "mybadpw") == []


@pytest.mark.parametrize("method", ["dump", "mydumper", "physical"])
def test_a_mariadb_server_that_is_down_is_one_line_and_no_snapshot(dbs: Dbs, tmp_path: Path, method: str) -> None:
    """Nothing listens on the source's socket (the server is stopped): every method stops before its
    tool runs, with the socket and what to do, exit 1."""
    down = Path(short_tmpdir("drdown-")) / "m.sock"  # a socket path must be short, as a real one is
    config = write_config(tmp_path / "c.toml", str(dbs.dr.repo),
                          {"mydown": {**dbs.my.source(**({} if method == "physical" else {"dbname": "wiki"})),
                                      "socket": str(down), "method": method}})
    result = dbs.dr.run("backup", "--source", "mydown", env={"DRTOOL_CONFIG": str(config)})
    lines = result.err.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.err
    assert lines[0].startswith(f"drtool: error: source mydown: cannot connect to the MariaDB server at socket {down}: "
                               f"Can't connect to local server through socket"), lines[0]
    assert "start the server, or fix host, port, socket, user or password_file in [sources.mydown]" in lines[0]
    assert _snapshots(dbs.dr, "mydown") == []
    down.parent.rmdir()


def test_truncated_mariadb_dump_leaves_no_snapshot(dbs: Dbs, tmp_path: Path) -> None:
    """A dump program that exits 0 but stops early (no '-- Dump completed' line)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "mariadb-dump"
    script.write_text("#!/bin/sh\necho '-- MariaDB dump 10.19'\necho \"-- CHANGE MASTER TO "
                      "MASTER_LOG_FILE='binlog.000001', MASTER_LOG_POS=4;\"\n"
                      "echo 'INSERT INTO t VALUES (1);'\nexit 0\n")
    script.chmod(0o755)
    config = write_config(tmp_path / "c.toml", str(dbs.dr.repo),
                          {"mycut": {**dbs.my.source(dbname="wiki"), "bindir": str(fake)}})
    result = dbs.dr.run("backup", "--source", "mycut", env={"DRTOOL_CONFIG": str(config)})
    assert result.code == 1 and "cut short" in result.err
    assert _snapshots(dbs.dr, "mycut") == []


def test_a_postgresql_server_that_is_down_is_one_line_before_the_base_backup(dbs: Dbs, tmp_path: Path) -> None:
    """Nothing listens in the source's socket directory: the first query (the tablespaces a base
    backup must map) says that the server cannot be reached, not that tablespaces cannot be listed."""
    down = Path(short_tmpdir("drpgdown-"))
    config = write_config(tmp_path / "c.toml", str(dbs.dr.repo),
                          {"pgdown": {**dbs.pg.source(), "host": str(down), "method": "basebackup"}})
    result = dbs.dr.run("backup", "--source", "pgdown", env={"DRTOOL_CONFIG": str(config)})
    lines = result.err.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.err
    assert lines[0].startswith(f"drtool: error: source pgdown: cannot connect to the PostgreSQL server at socket "
                               f"directory {down}, port {dbs.pg.port}: No such file or directory; start the "
                               f"server, or fix host, port, user, password_file or passfile in [sources.pgdown]"), lines[0]
    assert _snapshots(dbs.dr, "pgdown") == []
    down.rmdir()


@pytest.mark.parametrize("kind", ["one database", "all"])
def test_a_postgresql_server_that_is_down_is_one_line_before_a_dump(dbs: Dbs, tmp_path: Path, kind: str) -> None:
    """pg_dump (one database) or pg_dumpall (the globals, first with all = true) cannot connect:
    the same line as the base backup's, not the program's status and stderr."""
    down = Path(short_tmpdir("drpgdown-"))
    extra = {"dbname": "wiki"} if kind == "one database" else {"all": True}
    config = write_config(tmp_path / "c.toml", str(dbs.dr.repo),
                          {"pgdown": {**dbs.pg.source(), "host": str(down), **extra}})
    result = dbs.dr.run("backup", "--source", "pgdown", env={"DRTOOL_CONFIG": str(config)})
    lines = result.err.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.err
    assert lines[0] == (f"drtool: error: source pgdown: cannot connect to the PostgreSQL server at socket directory "
                        f"{down}, port {dbs.pg.port}: No such file or directory; start the server, or fix host, port, "
                        f"user, password_file or passfile in [sources.pgdown]; nothing was written"), lines[0]
    assert _snapshots(dbs.dr, "pgdown") == [] and _snapshots(dbs.dr, "pgdown/globals") == []
    down.rmdir()


def test_a_server_gone_part_way_names_what_was_stored_before_it(dbs: Dbs, tmp_path: Path) -> None:
    """all = true: the globals and the database list come from the real server, then every pg_dump
    finds it gone (a pg_dump that prints libpq's message): the line says what this run stored."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("pg_dumpall", "psql"):
        (bindir / tool).symlink_to(Path(dbs.pg.bindir) / tool)
    (bindir / "pg_dump").write_text(
        "#!/bin/sh\necho 'pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: Connection "
        "refused' >&2\necho '\tIs the server running on that host and accepting TCP/IP connections?' >&2\nexit 1\n")
    (bindir / "pg_dump").chmod(0o755)
    config = write_config(tmp_path / "c.toml", str(dbs.dr.repo),
                          {"pggone": {**dbs.pg.source(), "all": True, "bindir": str(bindir)}})
    result = dbs.dr.run("backup", "--source", "pggone", env={"DRTOOL_CONFIG": str(config)})
    lines = result.err.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.err
    assert lines[0].startswith("drtool: error: source pggone: cannot connect to the PostgreSQL server at 127.0.0.1, "
                               f"port {dbs.pg.port}: Connection refused; start the server"), lines[0]
    assert lines[0].endswith("; stored before it: pggone/globals"), lines[0]


def test_pg_all_dumps_globals_and_every_database(dbs: Dbs) -> None:
    result = dbs.dr.run("backup", "--source", "pgall", "--json")
    assert result.code == 0, result.err
    names = {s["name"]: s["kind"] for s in json.loads(dbs.dr.run("snapshots", "--json").out)}
    assert names["pgall/globals"] == "pg-globals"
    assert names["pgall/wiki"] == names["pgall/postgres"] == "pg-dump"
    target = dbs.dr.tmp / "globals"
    assert dbs.dr.run("restore", "latest", "--name", "pgall/globals", "--target", str(target)).code == 0
    assert "CREATE ROLE editor" in (target / "globals.sql").read_text()


def test_backup_all_runs_every_source_and_reports_failures(dbs: Dbs) -> None:
    result = dbs.dr.run("backup", "--all", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert {"pgwiki", "pgall", "mywiki", "files"} <= set(report["sources"])
    assert set(report["failures"]) == {"pgmissing", "mybadpw"}


def _fill_pg(pg: PgServer, rng: random.Random, words: list[str]) -> None:
    with pg.connect("wiki") as conn:
        conn.execute("CREATE TABLE revision (id int PRIMARY KEY, page int, body text)")
        with conn.cursor() as cur, cur.copy("COPY revision (id, page, body) FROM STDIN") as copy:
            for i in range(1, ROWS + 1):
                copy.write_row((i, rng.randint(1, ROWS // 3), _text(rng, words)))


def _night_two_pg(pg: PgServer, rng: random.Random, words: list[str]) -> None:
    with pg.connect("wiki") as conn:
        with conn.cursor() as cur:
            cur.executemany("UPDATE revision SET body = %s WHERE id = %s",
                            [(_text(rng, words), i) for i in rng.sample(range(1, ROWS + 1), EDITED)])
            cur.executemany("INSERT INTO revision VALUES (%s, %s, %s)",
                            [(ROWS + j, 1, _text(rng, words)) for j in range(1, APPENDED + 1)])


def _fill_my(my: MariaServer, rng: random.Random, words: list[str]) -> None:
    my.sql("CREATE TABLE wiki.revision (id INT PRIMARY KEY, page INT, body MEDIUMTEXT)")
    conn = my.connect("wiki")
    try:
        with conn.cursor() as cur:
            rows = [(i, rng.randint(1, ROWS // 3), _text(rng, words)) for i in range(1, ROWS + 1)]
            for start in range(0, ROWS, 500):
                cur.executemany("INSERT INTO revision VALUES (%s, %s, %s)", rows[start:start + 500])
            cur.execute("SELECT 1")
    finally:
        conn.close()


def _night_two_my(my: MariaServer, rng: random.Random, words: list[str]) -> None:
    conn = my.connect("wiki")
    try:
        with conn.cursor() as cur:
            cur.executemany("UPDATE revision SET body = %s WHERE id = %s",
                            [(_text(rng, words), i) for i in rng.sample(range(1, ROWS + 1), EDITED)])
            cur.executemany("INSERT INTO revision VALUES (%s, %s, %s)",
                            [(ROWS + j, 1, _text(rng, words)) for j in range(1, APPENDED + 1)])
    finally:
        conn.close()


def _two_nights(dr: DrEnv, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    snaps = _snapshots(dr, source)
    return snaps[-2]["summary"], snaps[-1]["summary"]


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_night_two_dump_restores_little(dbs: Dbs, engine: str, record_property: Any) -> None:
    rng = random.Random(7)
    words = _words(rng)
    source = "pgwiki" if engine == "postgresql" else "mywiki"
    fill, night_two = (_fill_pg, _night_two_pg) if engine == "postgresql" else (_fill_my, _night_two_my)
    fill(dbs.pg if engine == "postgresql" else dbs.my, rng, words)  # type: ignore[operator]
    assert dbs.dr.run("backup", "--source", source).code == 0
    night_two(dbs.pg if engine == "postgresql" else dbs.my, rng, words)  # type: ignore[operator]
    result = dbs.dr.run("backup", "--source", source)
    assert result.code == 0, result.err
    first, second = _two_nights(dbs.dr, source)
    assert first["size"] > 8 * 2**20
    new_fraction = second["bytes_added_raw"] / second["size"]
    stored_fraction = second["bytes_added"] / second["size"]
    record_property(f"{engine}_dedup", {"dump_bytes": second["size"], "new_raw": second["bytes_added_raw"],
                                        "stored": second["bytes_added"]})
    print(f"\n{engine}: night-2 dump {second['size'] / 2**20:.1f} MiB, new {new_fraction:.1%} "
          f"before compression, stored {stored_fraction:.1%} of the dump size")
    assert new_fraction < MAX_NEW_FRACTION
    assert stored_fraction < MAX_STORED_FRACTION
    assert second["bytes_added"] < first["bytes_added"] * MAX_NEW_FRACTION


def test_pg_dump_is_a_valid_custom_archive(dbs: Dbs) -> None:
    if not _snapshots(dbs.dr, "pgwiki"):
        assert dbs.dr.run("backup", "--source", "pgwiki").code == 0
    snap = _snapshots(dbs.dr, "pgwiki")[-1]
    assert snap["kind"] == "pg-dump" and snap["meta"]["database"] == "wiki"
    target = dbs.dr.tmp / "pgwiki-restore"
    assert dbs.dr.run("restore", "latest", "--name", "pgwiki", "--target", str(target)).code == 0
    listing = subprocess.run([f"{dbs.pg.bindir}/pg_restore", "-l", str(target / "wiki.dump")],
                             capture_output=True, text=True, check=False)
    assert listing.returncode == 0, listing.stderr
    assert "Format: CUSTOM" in listing.stdout


def test_password_in_config_is_refused(dbs: Dbs, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", str(dbs.dr.repo),
                          {"leaky": {**dbs.pg.source(dbname="wiki"), "password": "x"}})
    result = dbs.dr.run("backup", "--source", "leaky", env={"DRTOOL_CONFIG": str(config)})
    assert result.code == 2 and "password_file" in result.err
