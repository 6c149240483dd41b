"""The catalog is a cache plus history: losing it costs a rebuild, never data."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from conftest import DrEnv


def populate(env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(50_000))
        assert env.run("backup", str(src), "--name", "media", "--tag", f"n{i}").code == 0
    assert env.run("backup", "--from-command", "echo dump", "--name", "db/wiki").code == 0


def listing(env: DrEnv) -> list[dict]:
    result = env.run("snapshots", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_catalog_file_is_private(repo_env: DrEnv) -> None:
    assert stat.S_IMODE(repo_env.catalog.stat().st_mode) == 0o600


def test_deleted_catalog_rebuilds_to_the_same_listing(repo_env: DrEnv, tmp_path: Path) -> None:
    populate(repo_env, tmp_path)
    before = listing(repo_env)
    assert len(before) == 4
    for suffix in ("", "-wal", "-shm"):
        Path(str(repo_env.catalog) + suffix).unlink(missing_ok=True)
    result = repo_env.run("catalog", "rebuild", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["snapshots"] == 4
    assert listing(repo_env) == before


def test_snapshots_json_contract(repo_env: DrEnv, tmp_path: Path) -> None:
    populate(repo_env, tmp_path)
    for item in listing(repo_env):
        assert {"id", "name", "time", "size", "files"} <= set(item)
        assert item["time"][-6] in "+-"  # ISO 8601 with zone offset
    assert [s["name"] for s in listing(repo_env)].count("media") == 3


def test_overwritten_catalog_is_detected_with_the_fix(repo_env: DrEnv, tmp_path: Path) -> None:
    """The full check (``drtool check``; otherwise daily or after an unclean close: catalog/integrity.py)
    finds damage wherever it is; from then on every command reports it until the rebuild.
    Damage met by a query is tested in test_catalog_damage.py."""
    populate(repo_env, tmp_path)
    repo_env.run("snapshots")  # make sure everything is checkpointed into the main file
    data = bytearray(repo_env.catalog.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = os.urandom(4096)
    repo_env.catalog.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(repo_env.catalog) + suffix).unlink(missing_ok=True)
    checked = repo_env.run("check")
    assert checked.code == 1 and "catalog rebuild" in checked.err
    result = repo_env.run("snapshots")
    assert result.code == 1
    assert "catalog rebuild" in result.err
    assert "Traceback" not in result.err


def test_truncated_catalog_is_detected(repo_env: DrEnv, tmp_path: Path) -> None:
    populate(repo_env, tmp_path)
    repo_env.catalog.write_bytes(repo_env.catalog.read_bytes()[:1000])
    for suffix in ("-wal", "-shm"):
        Path(str(repo_env.catalog) + suffix).unlink(missing_ok=True)
    result = repo_env.run("snapshots")
    assert result.code == 1 and "catalog rebuild" in result.err


def test_catalog_follows_another_hosts_backups(repo_env: DrEnv, tmp_path: Path) -> None:
    """Two hosts with their own catalogs see each other's snapshots (the repository is the truth)."""
    other_catalog = tmp_path / "other.sqlite"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert repo_env.run("backup", str(src), "--name", "a").code == 0
    result = repo_env.run("backup", str(src), "--name", "b",
                          env={"DRTOOL_CATALOG": str(other_catalog), "DRTOOL_HOST": "host-two"})
    assert result.code == 0
    names = {(s["name"], s["host"]) for s in listing(repo_env)}
    assert ("b", "host-two") in names and len(names) == 2


def test_index_cache_is_used_and_rebuilt(repo_env: DrEnv, tmp_path: Path) -> None:
    populate(repo_env, tmp_path)
    session = repo_env.session()
    try:
        cached = session.catalog.cached_index_ids()
        assert cached == set(session.repo.list_objects("index"))
    finally:
        session.close()


def test_index_objects_written_before_a_deferred_catalog_opens_are_cached(repo_env: DrEnv) -> None:
    """A backup from a local repository opens its catalog only after the data is stored: the
    index objects written meanwhile are cached when it opens, as if it had been open all along."""
    from conftest import PASSWORD
    from drtool.api.repo_access import OpenOptions, Session
    from drtool.repository.packfile import DATA_BLOB
    options = OpenOptions(str(repo_env.repo), PASSWORD.encode(), str(repo_env.catalog))
    session = Session.open(options, defer_catalog=True)
    try:
        assert session.catalog_deferred
        session.repo.load_index()
        session.repo.store_blob(DATA_BLOB, os.urandom(100_000))
        session.repo.flush()  # writes an index object while no catalog is open
        written = set(session.repo.list_objects("index"))
        assert written
        assert session.catalog.cached_index_ids() == written
        assert session.repo.uncached_index_ids == []
    finally:
        session.close()


def test_runs_are_recorded_in_history(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    assert repo_env.run("restore", "nope", "--target", str(tmp_path / "o")).code == 1
    session = repo_env.session()
    try:
        runs = session.catalog.runs()
    finally:
        session.close()
    by_command = {r.command: r for r in runs}
    assert by_command["backup"].status == "ok" and by_command["backup"].exit_code == 0
    assert by_command["restore"].status == "failed" and "no snapshot" in by_command["restore"].message
    assert "correct horse" not in " ".join(r.message + r.stats for r in runs)


def test_rebuild_replaces_a_damaged_catalog_file(repo_env: DrEnv, tmp_path: Path) -> None:
    """Every catalog error says 'run drtool catalog rebuild': that must work on a file beyond repair."""
    populate(repo_env, tmp_path)
    repo_env.catalog.write_bytes(b"\x00garbage, not SQLite" * 512)
    broken = repo_env.run("snapshots")
    assert broken.code == 1 and "catalog rebuild" in broken.err and "Traceback" not in broken.err
    rebuilt = repo_env.run("catalog", "rebuild")
    assert rebuilt.code == 0, rebuilt.err
    assert "moved to" in rebuilt.err
    assert len(listing(repo_env)) == 4
    kept = list(repo_env.catalog.parent.glob(repo_env.catalog.name + ".damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"\x00garbage")


def test_a_locked_catalog_is_never_moved_aside(repo_env: DrEnv, tmp_path: Path) -> None:
    """Only damage replaces the file: a rebuild waits for a catalog another process holds locked."""
    import sqlite3
    import threading
    populate(repo_env, tmp_path)
    holder = sqlite3.connect(repo_env.catalog, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    releaser = threading.Timer(1.5, holder.rollback)
    releaser.start()
    try:
        result = repo_env.run("catalog", "rebuild")
    finally:
        releaser.join()
        holder.close()
    assert result.code == 0, result.err
    assert not list(repo_env.catalog.parent.glob("*.damaged-*"))
    assert len(listing(repo_env)) == 4


def test_a_backup_with_a_damaged_catalog_is_committed_and_says_so(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("kept safe")
    repo_env.catalog.write_bytes(b"not a database" * 100)
    result = repo_env.run("backup", str(src), "--name", "n")
    assert result.code == 1
    assert "is saved in the repository" in result.err and "catalog rebuild" in result.err
    assert repo_env.run("catalog", "rebuild").code == 0
    assert [s["name"] for s in listing(repo_env)] == ["n"]
