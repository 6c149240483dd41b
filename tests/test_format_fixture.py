"""Old backups stay restorable: a repository made by an earlier drtool is listed, restored and checked.

The fixture (tests/fixtures/repo-format-1, see its README) was made by the
build that shipped repository format 1, with default key parameters.  Every
later build must read it exactly, through a fresh catalog and through the
old catalog file it came with (which exercises the catalog migrations).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import DrEnv, ROOT, fixture_copy

FIXTURE = ROOT / "tests" / "fixtures" / "repo-format-1"


def manifest(root: Path) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = {"symlink": os.readlink(path)}
        elif path.is_file():
            data = path.read_bytes()
            out[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return out


@pytest.fixture(params=["fresh-catalog", "old-catalog"])
def fixture_env(request: pytest.FixtureRequest, tmp_path: Path) -> DrEnv:
    return fixture_copy(FIXTURE, tmp_path / "dr", old_catalog=request.param == "old-catalog")


def test_old_repository_lists_restores_and_checks(fixture_env: DrEnv, tmp_path: Path) -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    listed = fixture_env.run("snapshots", "--json")
    assert listed.code == 0, listed.err
    snaps = {s["id"][:8]: s for s in json.loads(listed.out)}
    assert set(snaps) == {*expected["media"], *expected["db/wiki"]}
    assert all(s["host"] == "fixture-host" for s in snaps.values())
    for name in ("media", "db/wiki"):
        for short_id, files in expected[name].items():
            assert snaps[short_id]["name"] == name
            target = tmp_path / f"restore-{short_id}"
            result = fixture_env.run("restore", short_id, "--target", str(target))
            assert result.code == 0, result.err
            restored = target / "media" if name == "media" else target  # trees keep the backed-up folder's name
            assert manifest(restored) == files, f"snapshot {short_id} of {name} restored differently"
    check = fixture_env.run("check", "--read-data")
    assert check.code == 0, check.out + check.err


def test_old_repository_archived_wal_is_fetched(fixture_env: DrEnv, tmp_path: Path) -> None:
    wal = json.loads((FIXTURE / "expected.json").read_text())["wal"]
    dest = tmp_path / "fetched"
    result = fixture_env.run("pg", "wal-fetch", "--source", wal["source"], wal["name"], str(dest))
    assert result.code == 0, result.err
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == wal["sha256"]
    absent = fixture_env.run("pg", "wal-fetch", "--source", wal["source"], "000000010000000000000002",
                             str(tmp_path / "absent"))
    assert absent.code == 1 and "not in the archive" in absent.err


def test_old_repository_answers_find(fixture_env: DrEnv) -> None:
    """``find`` on the old repository: its old catalog migrated (0003 -> head, file index filled
    from the trees), or a fresh one; one version of README.txt per night (appended to on night 2)."""
    expected = json.loads((FIXTURE / "expected.json").read_text())["media"]
    found = fixture_env.run("find", "README.txt", "--json")
    assert found.code == 0, found.err
    versions = json.loads(found.out)
    assert [v["path"] for v in versions] == ["media/README.txt"] * 2
    assert sorted(v["size"] for v in versions) == sorted({f["README.txt"]["size"] for f in expected.values()})
    again = fixture_env.run("find", "README.txt", "--json")  # now from the index as it stands
    assert again.code == 0 and json.loads(again.out) == versions
