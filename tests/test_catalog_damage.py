"""A damaged catalog is reported in one line with the fix, wherever the damage is met.

The full integrity check no longer runs on every open (``catalog/integrity.py``):
damage in pages a command reads must then surface from the query itself, as the
same one-line error with the ``drtool catalog rebuild`` hint and exit 1.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from conftest import DrEnv

from drtool.catalog import integrity

FILES = 3000  # enough rows that the file index spans many pages


def _populate(env: DrEnv, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i in range(FILES):
        folder = src / f"d{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i:05d}.txt").write_bytes(os.urandom(64))
    for tag in ("one", "two"):
        (src / "d00" / "file00000.txt").write_text(tag)
        assert env.run("backup", str(src), "--name", "files").code == 0
    assert env.run("find", "file00042.txt").code == 0  # indexed; a clean close
    return src


def _pages(catalog: Path, table: str) -> list[int]:
    conn = sqlite3.connect(catalog)
    try:
        return [r[0] for r in conn.execute("SELECT pageno FROM dbstat WHERE name = ? ORDER BY pageno", (table,))]
    finally:
        conn.close()


def _overwrite(catalog: Path, pages: list[int]) -> None:
    size = 4096
    conn = sqlite3.connect(catalog)
    try:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    with open(catalog, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * size)
            f.write(os.urandom(size))


def _one_line_damage_error(result: object) -> None:
    err = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 1, (result.returncode, err)  # type: ignore[attr-defined]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "is damaged" in lines[0] and "drtool catalog rebuild" in lines[0]


def test_damage_met_by_queries_is_one_line_with_the_fix(repo_env: DrEnv, tmp_path: Path) -> None:
    src = _populate(repo_env, tmp_path)
    catalog = repo_env.catalog
    wal = Path(f"{catalog}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # closed cleanly (find may leave an empty one)
    versions, snapshots = _pages(catalog, "file_versions"), _pages(catalog, "snapshots")
    assert len(versions) > 20
    middle = versions[len(versions) // 3: len(versions) * 2 // 3]  # the middle of the version rows
    _overwrite(catalog, middle + snapshots)
    # the open sees no reason for a full check: what follows is damage met mid-query
    assert integrity.reason_to_check(catalog) is None

    _one_line_damage_error(repo_env.spawn("find", "*"))
    _one_line_damage_error(repo_env.spawn("snapshots"))
    (src / "new.txt").write_text("after the damage")
    backup = repo_env.spawn("backup", str(src), "--name", "files")
    assert backup.returncode == 1 and "Traceback" not in backup.stderr
    assert "is saved in the repository" in backup.stderr and "catalog rebuild" in backup.stderr

    rebuilt = repo_env.run("catalog", "rebuild")
    assert rebuilt.code == 0, rebuilt.err
    found = repo_env.run("find", "new.txt", "--json")
    assert found.code == 0, found.err
    assert [v["path"].rsplit("/", 1)[-1] for v in json.loads(found.out)] == ["new.txt"]


def _damage_unread_pages(env: DrEnv, tmp_path: Path) -> Path:
    """Damage in pages ``snapshots`` never reads (the last page of the hash index)."""
    _populate(env, tmp_path)
    _overwrite(env.catalog, _pages(env.catalog, "ix_file_versions_hash")[-1:])
    assert env.run("snapshots").code == 0  # reads no damaged page, and checks none
    return env.catalog


def test_check_runs_the_full_check_and_then_every_open_does(repo_env: DrEnv, tmp_path: Path) -> None:
    catalog = _damage_unread_pages(repo_env, tmp_path)
    checked = repo_env.run("check")
    assert checked.code == 1 and "is damaged" in checked.err and "catalog rebuild" in checked.err
    assert not integrity.record_path(catalog).exists()  # found damaged: the record of the last pass is gone
    listed = repo_env.run("snapshots")
    assert listed.code == 1 and "is damaged" in listed.err and "catalog rebuild" in listed.err
    assert repo_env.run("catalog", "rebuild").code == 0
    assert repo_env.run("snapshots").code == 0 and integrity.reason_to_check(catalog) is None


def test_a_day_old_check_is_run_again(repo_env: DrEnv, tmp_path: Path) -> None:
    catalog = _damage_unread_pages(repo_env, tmp_path)
    record = integrity.record_path(catalog)
    stale = json.loads(record.read_text())
    stale["time"] = time.time() - integrity.CHECK_EVERY - 60
    record.write_text(json.dumps(stale))
    listed = repo_env.run("snapshots")
    assert listed.code == 1 and "is damaged" in listed.err and "catalog rebuild" in listed.err


def test_reasons_for_a_full_check(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.sqlite"
    sqlite3.connect(catalog).execute("CREATE TABLE t (x)").connection.close()
    assert integrity.reason_to_check(catalog) == "no full check of this file on record"
    integrity.record_check(catalog)
    assert integrity.reason_to_check(catalog) is None
    now = time.time()
    assert integrity.reason_to_check(catalog, now=now + integrity.CHECK_EVERY + 1) is not None
    assert integrity.reason_to_check(catalog, now=now - 3600) is not None  # the clock went back
    Path(f"{catalog}-wal").write_bytes(b"")  # what a read-only reader leaves: no frames, nothing to check
    assert integrity.reason_to_check(catalog) is None
    Path(f"{catalog}-wal").write_bytes(b"\0" * 4096)
    assert "write-ahead log" in (integrity.reason_to_check(catalog) or "")
    Path(f"{catalog}-wal").unlink()
    replaced = tmp_path / "copy.sqlite"
    replaced.write_bytes(catalog.read_bytes())
    os.replace(replaced, catalog)
    assert integrity.reason_to_check(catalog) == "the file was replaced since its last full check"
