"""Names, tags and hosts are checked before anything is written; a repository that already holds
a name an older version accepted stays fully usable (issue #15, item 4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import PASSWORD, DrEnv
from drtool import api
from drtool.snapshot.model import Snapshot
from drtool.snapshot.names import display, entry_name_problem, label_problem, matches, tree_names_problem
from drtool.snapshot.store import save_snapshot

BAD_NAME = os.fsdecode(b"x\xff")  # what `--name $'x\xff'` hands to Python


def nothing_written(env: DrEnv) -> None:
    assert not list((env.repo / "snapshots").glob("*"))
    assert not [p for p in (env.repo / "packs").rglob("*") if p.is_file()]
    assert not list((env.repo / "index").glob("*"))


@pytest.mark.parametrize("args, message", [
    (["--name", BAD_NAME], "snapshot name 'x\\xff' is not valid UTF-8"),
    (["--name", "db/../x"], "has an empty, '.' or '..' part between slashes"),
    (["--name", "line\nbreak"], "contains the character \\x0a"),
    (["--name", "ok", "--tag", "a,b"], "tags are listed comma-separated"),
    (["--name", "ok", "--tag", "back\\slash"], "contains the character \\\\"),
    (["--name", ""], "--name is required"),
])
def test_bad_labels_are_refused_before_anything_is_written(repo_env: DrEnv, args: list[str], message: str) -> None:
    result = repo_env.run("backup", "--from-command", "echo data", *args)
    assert result.code == 2, result.err
    assert message in result.err and "Traceback" not in result.err
    assert result.err.count("drtool: error") == 1
    nothing_written(repo_env)


def test_bad_host_name_is_refused(repo_env: DrEnv, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    result = repo_env.run("backup", str(tmp_path / "src"), "--name", "n", env={"DRTOOL_HOST": "evil\x1bhost"})
    assert result.code == 2 and "host name 'evil\\x1bhost'" in result.err and "DRTOOL_HOST" in result.err
    nothing_written(repo_env)


def spawn(env: DrEnv, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A real process, so stdout is a real UTF-8 stream (the crash was an UnicodeEncodeError there)."""
    return subprocess.run([sys.executable, "-m", "drtool", *args], env={**env.env, **(extra or {})},
                          capture_output=True, text=True, encoding="utf-8", errors="strict", timeout=120,
                          cwd=env.tmp)


def test_a_repository_holding_a_name_that_is_not_utf8_stays_usable(repo_env: DrEnv, tmp_path: Path) -> None:
    """An older version committed `--name $'x\\xff'` and then failed; everything must still work."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("good data\n")
    assert repo_env.run("backup", str(src), "--name", "good").code == 0
    with api.open_repository(str(repo_env.repo), PASSWORD.encode(), catalog=str(repo_env.catalog)) as session:
        good = session.find_snapshot("latest")
        with session.lock("backup"):  # as the old version wrote it: through the repository layer
            bad_id = save_snapshot(session.repo, Snapshot(
                name=BAD_NAME, host=os.fsdecode(b"host\xfe"), time=datetime.now(timezone.utc), tree=good.tree,
                tags=[os.fsdecode(b"t\xfd")], summary={"files": 1, "size": 10}))
    repo_env.catalog.unlink()  # "even with a fresh catalog"

    listed = spawn(repo_env, "snapshots")
    assert listed.returncode == 0, listed.stderr
    assert f"{bad_id[:8]}  " in listed.stdout and "x\\xff" in listed.stdout and "host\\xfe" in listed.stdout
    as_json = json.loads(spawn(repo_env, "snapshots", "--json").stdout)
    assert {s["name"] for s in as_json} == {"good", BAD_NAME}
    assert spawn(repo_env, "snapshots", "--name", "x\\xff").stdout.count("x\\xff") == 1  # the shown form selects it
    repo_env.catalog.unlink()
    rebuilt = spawn(repo_env, "catalog", "rebuild")
    assert rebuilt.returncode == 0 and "2 snapshot(s)" in rebuilt.stdout, rebuilt.stderr
    status = spawn(repo_env, "status")
    assert status.returncode == 0 and "x\\xff" in status.stdout, status.stdout + status.stderr
    metrics = spawn(repo_env, "metrics")
    assert metrics.returncode == 0 and 'drtool_snapshots{name="x\\\\xff"} 1' in metrics.stdout
    restored = spawn(repo_env, "restore", "latest", "--name", "x\\xff", "--target", str(tmp_path / "out"))
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "out" / "src" / "f.txt").read_text() == "good data\n"
    copied = spawn(repo_env, "copy", "--to", str(tmp_path / "second"))
    assert copied.returncode == 0, copied.stderr
    second = spawn(repo_env, "snapshots", extra={"DRTOOL_REPOSITORY": str(tmp_path / "second"),
                                                 "DRTOOL_CATALOG": str(tmp_path / "second.sqlite")})
    assert "x\\xff" in second.stdout and "2 snapshot(s)" in second.stdout
    forgot = spawn(repo_env, "forget", bad_id[:8])
    assert forgot.returncode == 0 and "removed 1 snapshot(s)" in forgot.stdout, forgot.stderr
    after = json.loads(spawn(repo_env, "snapshots", "--json").stdout)
    assert [s["name"] for s in after] == ["good"]
    assert spawn(repo_env, "check").returncode == 0


def test_name_rules() -> None:
    for good in ("wiki.sql", "café", os.fsdecode(b"latin1-\xe9"), " leading space", "a" * 255):
        assert entry_name_problem(good) is None, good
    for bad in ("", ".", "..", "a/b", "/abs", "x\0y"):
        assert entry_name_problem(bad) is not None, bad
    assert tree_names_problem(["a", "b", "a"]) == "entry name 'a' appears twice"
    assert label_problem("db/wiki", series=True) is None and label_problem("nb\u00a0sp") is None
    assert label_problem("a" * 256) == "is longer than 255 bytes"
    assert label_problem("/lead", series=True) is not None and label_problem("x/", series=True) is not None
    for value in ("db/wiki", "café", "émoji 🙂"):
        assert display(value) == value  # printable labels are shown as they are
    assert display(BAD_NAME) == "x\\xff" and display("a\\b") == "a\\\\b" and display("t\tab") == "t\\x09ab"
    assert display(BAD_NAME) != display("x\\xff")  # escaped forms stay distinct
    assert matches(BAD_NAME, "x\\xff") and matches(BAD_NAME, BAD_NAME) and not matches("good", "x\\xff")
