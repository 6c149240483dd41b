"""Undetected loss (issue #15, item 7): the catalog remembers every snapshot and index object it
saw committed; one that vanishes without a drtool forget or prune is reported by name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import DrEnv, make_env

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "repo-format-1"


def backup(env: DrEnv, src: Path, text: str) -> str:
    src.mkdir(exist_ok=True)
    (src / "f.txt").write_text(text)
    result = env.run("backup", str(src), "--name", "n", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["id"]


def test_deleting_the_newest_snapshot_is_noticed(repo_env: DrEnv, tmp_path: Path) -> None:
    older = backup(repo_env, tmp_path / "src", "monday\n")
    newest = backup(repo_env, tmp_path / "src", "tuesday\n")
    (repo_env.repo / "snapshots" / newest).unlink()  # the bucket attacker's one DELETE
    listed = repo_env.run("snapshots")
    assert listed.code == 0
    assert f"warning: snapshot {newest[:8]} (n, " in listed.err and "no drtool forget removed it" in listed.err
    restored = repo_env.run("restore", "latest", "--target", str(tmp_path / "out"))
    assert restored.code == 0, restored.err
    assert f"snapshot {newest[:8]}" in restored.err and "run 'drtool check'" in restored.err
    assert (tmp_path / "out" / "src" / "f.txt").read_text() == "monday\n"  # what 'latest' now means
    status = repo_env.run("status")  # monitoring sees it too (Nagios CRITICAL)
    assert status.code == 2 and f"snapshot {newest[:8]} (n, " in status.out and "vanished without a forget" in status.out
    checked = repo_env.run("check", "--read-data", "--json")
    assert checked.code == 1
    report = json.loads(checked.out)
    assert f"snapshots/{newest}" in report["damaged_objects"]
    assert [v["id"] for v in report["vanished"]] == [newest]
    text = repo_env.run("check")
    assert f"acknowledge the loss with 'drtool forget {newest[:8]}'" in text.out
    assert text.err.count("drtool: error") == 1
    # acknowledging it: the id of a missing snapshot is accepted by forget
    forgot = repo_env.run("forget", newest[:8])
    assert forgot.code == 0 and "already missing: acknowledged" in forgot.out
    assert repo_env.run("check").code == 0
    assert repo_env.run("snapshots").err == ""
    assert [s["id"] for s in json.loads(repo_env.run("snapshots", "--json").out)] == [older]


def test_a_rolled_back_repository_is_noticed(repo_env: DrEnv, tmp_path: Path) -> None:
    backup(repo_env, tmp_path / "src", "monday\n")
    saved = tmp_path / "monday"
    for part in ("snapshots", "index"):
        shutil.copytree(repo_env.repo / part, saved / part)
    newest = backup(repo_env, tmp_path / "src", "tuesday: new data\n" * 1000)
    new_indexes = {p.name for p in (repo_env.repo / "index").iterdir()} - {p.name for p in (saved / "index").iterdir()}
    assert new_indexes
    for part in ("snapshots", "index"):  # put Monday's state back (packs stay: they are write-once)
        shutil.rmtree(repo_env.repo / part)
        shutil.copytree(saved / part, repo_env.repo / part)
    checked = repo_env.run("check", "--json")
    assert checked.code == 1
    damaged = set(json.loads(checked.out)["damaged_objects"])
    assert f"snapshots/{newest}" in damaged and {f"index/{i}" for i in new_indexes} <= damaged
    rebuilt = repo_env.run("catalog", "rebuild")  # re-indexes the packs: the index loss is repaired
    assert rebuilt.code == 0 and f"snapshot {newest[:8]}" in rebuilt.out
    again = repo_env.run("check", "--json")
    assert again.code == 1  # the snapshot itself is still gone: rebuild keeps the memory
    assert [v["id"] for v in json.loads(again.out)["vanished"]] == [newest]


def test_forget_and_prune_elsewhere_are_not_alarms(repo_env: DrEnv, tmp_path: Path) -> None:
    """Another host (its own catalog) forgets and prunes: its tombstones explain the deletions."""
    first = backup(repo_env, tmp_path / "src", "one\n")
    backup(repo_env, tmp_path / "src", "two\n")
    backup(repo_env, tmp_path / "src", "three\n")
    assert repo_env.run("snapshots").code == 0  # this catalog has seen all three and their index objects
    elsewhere = {"DRTOOL_CATALOG": str(tmp_path / "other-host.sqlite"), "DRTOOL_HOST": "other-host"}
    indexes_before = {p.name for p in (repo_env.repo / "index").iterdir()}
    assert repo_env.run("forget", "--keep-last", "1", env=elsewhere).code == 0
    assert repo_env.run("prune", "--grace", "0s", env=elsewhere).code == 0
    assert not (repo_env.repo / "snapshots" / first).exists()
    assert indexes_before - {p.name for p in (repo_env.repo / "index").iterdir()}  # prune removed some
    assert list((repo_env.repo / "tombstones").iterdir())
    listed = repo_env.run("snapshots")
    assert listed.code == 0 and listed.err == ""
    checked = repo_env.run("check", "--json")
    assert checked.code == 0, checked.out
    assert json.loads(checked.out)["vanished"] == []


def test_a_forgotten_snapshot_put_back_is_reported(repo_env: DrEnv, tmp_path: Path) -> None:
    old = backup(repo_env, tmp_path / "src", "old\n")
    backup(repo_env, tmp_path / "src", "new\n")
    saved = (repo_env.repo / "snapshots" / old).read_bytes()
    assert repo_env.run("forget", old[:8]).code == 0
    (repo_env.repo / "snapshots" / old).write_bytes(saved)  # a rolled-back forget
    listed = repo_env.run("snapshots")
    assert f"snapshot {old[:8]}" in listed.err and "is in the repository again" in listed.err
    checked = repo_env.run("check", "--json")
    assert any("in the repository again" in w for w in json.loads(checked.out)["warnings"])


def test_what_is_not_detected_a_fresh_catalog_has_no_memory(repo_env: DrEnv, tmp_path: Path) -> None:
    """Documented limit (docs/threat-model.md): a catalog that never saw the snapshot cannot miss it."""
    backup(repo_env, tmp_path / "src", "one\n")
    newest = backup(repo_env, tmp_path / "src", "two\n")
    (repo_env.repo / "snapshots" / newest).unlink()
    fresh = {"DRTOOL_CATALOG": str(tmp_path / "fresh.sqlite")}
    assert repo_env.run("check", env=fresh).code == 0
    assert repo_env.run("check").code == 1  # the catalog that saw it does notice


def test_an_old_catalog_remembers_what_it_cached(tmp_path: Path) -> None:
    """The format-1 fixture's catalog (alembic 0003) is migrated; its cached snapshots are remembered."""
    env = make_env(tmp_path / "dr")
    shutil.copytree(FIXTURE / "repo", env.repo)
    (env.repo / "locks").mkdir(exist_ok=True)
    shutil.copy(FIXTURE / "catalog.sqlite", env.catalog)
    env.env.pop("DRTOOL_PASSWORD")
    env.env["DRTOOL_PASSWORD_FILE"] = str(FIXTURE / "passphrase")
    snapshots = sorted((env.repo / "snapshots").iterdir(), key=lambda p: p.name)
    victim = snapshots[0]
    victim.unlink()
    listed = env.run("snapshots")
    assert listed.code == 0, listed.err
    assert f"snapshot {victim.name[:8]}" in listed.err and "no drtool forget removed it" in listed.err
    assert env.run("check").code == 1
