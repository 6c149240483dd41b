"""``find`` on an index that is up to date reads the SQLite catalog through the standard library.

The read-only path (``catalog.peek.versions``) must give exactly the rows of
the SQLAlchemy query (``FileIndex.versions``), must be the path actually taken
when nothing needs syncing (no SQLAlchemy import at all), and must never hide
a snapshot another host added: then ``find`` syncs and indexes first.
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import DrEnv, make_env

from drtool.catalog import peek
from drtool.catalog.files import FileIndex
from drtool.catalog.peek import VersionFilter
from drtool.errors import EXIT_WRONG_PASSWORD


def _tree(root: Path, tag: str) -> Path:
    for i in range(30):
        folder = root / f"d{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i}.txt").write_text(f"{tag} {i}\n" * (i + 1))
    (root / "d0" / "100%_sure.txt").write_text("a name with LIKE wildcards")
    return root


def _find(env: DrEnv, *args: str, extra: dict[str, str] | None = None) -> tuple[list[dict], str]:
    """find as a process, with -X importtime: (versions, the modules it imported)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "drtool", "find", *args, "--json"],
                          env={**env.env, **(extra or {})}, capture_output=True, text=True, timeout=120,
                          cwd=env.tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), proc.stderr


def test_the_read_only_rows_are_the_query_rows(repo_env: DrEnv, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", "one")
    assert repo_env.run("backup", str(src), "--name", "media", "--content-hash", "sha256").code == 0
    (src / "d1" / "file4.txt").write_text("edited")
    (src / "d2" / "file5.txt").unlink()
    assert repo_env.run("backup", str(src), "--name", "media").code == 0
    assert repo_env.run("backup", str(_tree(tmp_path / "other", "two")), "--name", "other").code == 0
    now = datetime.now(timezone.utc)
    filters = [VersionFilter(basename_equal=["file4.txt", "file5.txt"]),
               VersionFilter(basename_like=["file1%", "100\\%\\_sure.txt"]),
               VersionFilter(path_like="src/d1/%", series=["media"]),
               VersionFilter(series=["nothing"], series_like=["oth%"]), VersionFilter(series_like=["m_d%", "x"]),
               VersionFilter(basename_like=["%"], host="nobody"),
               VersionFilter(basename_like=["%"], since=now - timedelta(hours=1), until=now + timedelta(hours=1)),
               VersionFilter(basename_like=["%"], until=now - timedelta(hours=1)),
               VersionFilter(min_size=50, max_size=200, mtime_after_ns=0, mtime_before_ns=2**62),
               VersionFilter(hash_prefixes=["sha256:", "sha1:"]), VersionFilter()]
    with repo_env.session() as session:
        index = FileIndex(session.catalog)
        for wanted in filters:
            expected = [tuple(row[:12]) + (row.time.replace(tzinfo=timezone.utc),) for row in index.versions(wanted)]
            got = [tuple(row) for row in peek.versions(repo_env.catalog, session.catalog.repo_id, wanted)]
            assert got == expected, wanted
        assert len(list(index.versions(VersionFilter()))) > 60


def test_find_reads_without_sqlalchemy_and_still_sees_another_hosts_snapshot(repo_env: DrEnv,
                                                                             tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", "one")
    assert repo_env.run("backup", str(src), "--name", "media").code == 0
    found, imported = _find(repo_env, "file7.txt")
    assert [v["path"] for v in found] == ["src/d1/file7.txt"]
    assert " sqlalchemy" not in imported  # the catalog was read, not opened

    elsewhere = _tree(tmp_path / "elsewhere" / "src", "two")
    (elsewhere / "only-there.txt").write_text("written on the other host")
    other = {"DRTOOL_CATALOG": str(tmp_path / "other-host.sqlite"), "DRTOOL_HOST": "host-two"}
    assert repo_env.run("backup", str(elsewhere), "--name", "media", env=other).code == 0

    found, imported = _find(repo_env, "only-there.txt")
    assert [(v["path"], v["first"]["host"]) for v in found] == [("src/only-there.txt", "host-two")]
    assert " sqlalchemy" in imported  # a snapshot the catalog did not know: synced and indexed first
    found, imported = _find(repo_env, "only-there.txt")
    assert [v["path"] for v in found] == ["src/only-there.txt"] and " sqlalchemy" not in imported

    forgot = repo_env.run("forget", found[0]["first"]["id"], env=other)  # the other host forgets it
    assert forgot.code == 0, forgot.err
    assert _find(repo_env, "only-there.txt")[0] == []  # this catalog still listed it: synced first


def test_a_current_catalog_answers_without_the_key(repo_env: DrEnv, tmp_path: Path) -> None:
    """No key is derived when the catalog is current: a wrong passphrase shows it (a derivation would
    fail).  The catalog is readable by its owner without any passphrase; the key guards the repository,
    and as soon as the repository must be read (a snapshot to sync), the passphrase is checked."""
    src = _tree(tmp_path / "src", "one")
    assert repo_env.run("backup", str(src), "--name", "media").code == 0
    wrong = {"DRTOOL_PASSWORD": "not the passphrase"}
    found, _ = _find(repo_env, "file7.txt", extra=wrong)
    assert [v["path"] for v in found] == ["src/d1/file7.txt"]

    (src / "d1" / "file7.txt").write_text("changed")
    assert repo_env.run("backup", str(src), "--name", "media").code == 0
    assert [v["path"] for v in _find(repo_env, "file7.txt", extra=wrong)[0]] == ["src/d1/file7.txt"] * 2
    other = {"DRTOOL_CATALOG": str(tmp_path / "other-host.sqlite"), "DRTOOL_HOST": "host-two"}
    assert repo_env.run("backup", str(src), "--name", "media", env=other).code == 0
    refused = repo_env.run("find", "file7.txt", env=wrong)
    assert refused.code == EXIT_WRONG_PASSWORD and "Traceback" not in refused.err


def test_a_default_location_catalog_is_found_without_the_key(dr: DrEnv, tmp_path: Path) -> None:
    """Without DRTOOL_CATALOG the catalog's directory is named by the repository id (inside the
    encrypted config): its marker names the repository, and its snapshot list must match."""
    dr.env.pop("DRTOOL_CATALOG")
    dr.init()
    src = _tree(tmp_path / "src", "one")
    assert dr.run("backup", str(src), "--name", "media").code == 0
    found, imported = _find(dr, "file7.txt", extra={"DRTOOL_PASSWORD": "not the passphrase"})
    assert [v["path"] for v in found] == ["src/d1/file7.txt"] and " sqlalchemy" not in imported
    elsewhere = make_env(tmp_path / "elsewhere")  # another repository: its catalog never answers for this one
    elsewhere.env.pop("DRTOOL_CATALOG")
    elsewhere.env["XDG_STATE_HOME"] = dr.env["XDG_STATE_HOME"]
    elsewhere.init()
    assert elsewhere.run("backup", str(src), "--name", "media").code == 0
    assert _find(elsewhere, "file7.txt")[0][0]["first"]["id"] != found[0]["first"]["id"]
