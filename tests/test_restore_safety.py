"""A restore never creates, follows or replaces anything outside --target (issue #15, items 1-3).

Hostile trees are forged through the repository layer, as someone holding
the key could write them, and restored into targets that already hold
symbolic links planted to lead outside.  Whatever the tree and the
overwrite policy, everything outside the target stays exactly as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PASSWORD, DrEnv, init_repo, make_env
from drtool import api
from drtool.errors import DrtoolError
from drtool.repository.packfile import DATA_BLOB
from drtool.snapshot.model import DIR, FILE, SYMLINK, Node, Snapshot
from drtool.snapshot.store import save_snapshot, store_tree


# ----- the file system outside the target ----------------------------------------------------
def signature(area: Path, target: Path) -> dict[str, tuple]:
    """Everything under ``area`` except ``target``: type, mode, owner, size, times, content, link."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(area, followlinks=False):
        if Path(dirpath) == area:
            dirnames[:] = [d for d in dirnames if area / d != target]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if Path(path) == target:
                continue
            st_ = os.lstat(path)
            extra: object = None
            if stat.S_ISLNK(st_.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                extra = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            found[os.path.relpath(path, area)] = (st_.st_mode, st_.st_uid, st_.st_gid, st_.st_size,
                                                  st_.st_mtime_ns, st_.st_ctime_ns, st_.st_nlink, extra)
    area_st = os.lstat(area)
    found["."] = tuple(sorted(os.listdir(area)))  # nothing new next to the target
    found[".mode"] = (area_st.st_mode, area_st.st_uid)
    return found


def make_area(root: Path) -> tuple[Path, Path]:
    """``area/outside`` (victims) and ``area/target`` with links planted to lead out of it."""
    area = root
    outside = area / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "victim.txt").write_text("do not touch\n")
    (outside / "data" / "f").write_text("outside data\n")
    os.chmod(outside / "victim.txt", 0o644)
    target = area / "target"
    target.mkdir()
    os.symlink("../outside", target / "data")                # relative, to a directory
    os.symlink(str(outside), target / "a")                   # absolute, to a directory
    os.symlink(str(outside / "victim.txt"), target / "f")    # absolute, to a file
    os.symlink("../outside/victim.txt", target / "victim.txt")
    os.symlink("..", target / "up")
    (target / "sub").mkdir()
    os.symlink("../../outside", target / "sub" / "data")     # one level down
    os.symlink(str(outside / "victim.txt"), target / "sub" / "f")
    return area, target


# ----- forging snapshots as a key holder would -------------------------------------------------
@dataclass
class Forged:
    name: str
    kind: str
    content: bytes = b""
    target: str = ""
    children: tuple["Forged", ...] = ()
    link_key: str | None = None


def forge(repo, entries: tuple[Forged, ...]) -> str:  # type: ignore[no-untyped-def]
    """Store ``entries`` as a tree (subtrees first) and return its id; names are not checked."""
    nodes = []
    for entry in entries:
        node = Node(name=entry.name, type=entry.kind, mode=0o755 if entry.kind == DIR else 0o644,
                    mtime_ns=1_700_000_000_000_000_000)
        if entry.kind == FILE:
            node.size = len(entry.content)
            node.content = [repo.store_blob(DATA_BLOB, entry.content).hex()] if entry.content else []
            node.link_key = entry.link_key
        elif entry.kind == SYMLINK:
            node.target = entry.target
        elif entry.kind == DIR:
            node.subtree = forge(repo, entry.children)
        nodes.append(node)
    return store_tree(repo, nodes)


def forge_snapshot(session: api.Session, entries: tuple[Forged, ...]) -> str:
    with session.lock("backup"):
        tree = forge(session.repo, entries)
        session.repo.flush()
        snap = Snapshot(name="forged", host="attacker", time=datetime.now(timezone.utc), tree=tree)
        return save_snapshot(session.repo, snap)


HOSTILE = ["..", ".", "", "../outside", "../../outside/victim.txt", "/etc/passwd", "a/b", "x\0y",
           "data/../..", "../up"]
PLAIN = ["data", "a", "f", "victim.txt", "up", "sub", "x", "y"]
LINK_TARGETS = ["../outside", "../../outside/victim.txt", "/", "..", ".", "data", "/tmp", "up/outside"]


def entries(depth: int) -> st.SearchStrategy[tuple[Forged, ...]]:
    names = st.one_of(st.sampled_from(PLAIN), st.sampled_from(PLAIN), st.sampled_from(HOSTILE))
    leaf = st.one_of(
        st.builds(Forged, names, st.just(FILE), st.binary(max_size=64)),
        st.builds(Forged, names, st.just(FILE), st.just(b"linked\n"), link_key=st.just("1:1")),
        st.builds(Forged, names, st.just(SYMLINK), target=st.sampled_from(LINK_TARGETS)),
        st.builds(Forged, names, st.just(DIR)))
    if depth == 0:
        return st.lists(leaf, max_size=4).map(tuple)
    node = st.one_of(leaf, st.builds(Forged, names, st.just(DIR), children=entries(depth - 1)))
    return st.lists(node, max_size=5).map(tuple)


@pytest.fixture(scope="module")
def forged_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrEnv]:
    env = make_env(tmp_path_factory.mktemp("forged"))
    init_repo(str(env.repo), str(env.catalog))
    yield env


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(tree=entries(2), policy=st.sampled_from(["never", "if-newer", "if-changed", "always"]),
       second_run=st.booleans())
def test_forged_trees_never_write_outside_the_target(forged_env: DrEnv, tree: tuple[Forged, ...],
                                                      policy: str, second_run: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="area-", dir=forged_env.tmp))
    try:
        area, target = make_area(root)
        before = signature(area, target)
        with api.open_repository(str(forged_env.repo), PASSWORD.encode(),
                                 catalog=str(forged_env.catalog)) as session:
            snap_id = forge_snapshot(session, tree)
            for _ in range(2 if second_run else 1):  # a second run meets what the first one left
                try:
                    api.restore(session, snap_id, str(target), overwrite=policy)
                except DrtoolError as exc:
                    assert exc.exit_code in (1, 3), exc.one_line()
        assert signature(area, target) == before
    finally:
        shutil.rmtree(root)


def test_hostile_names_in_a_forged_tree_are_refused_by_name(forged_env: DrEnv, tmp_path: Path) -> None:
    area, target = make_area(tmp_path / "area")
    before = signature(area, target)
    for name in ("..", "../outside/victim.txt", "/abs", "a/b", "x\0y", ""):
        with api.open_repository(str(forged_env.repo), PASSWORD.encode(),
                                 catalog=str(forged_env.catalog)) as session:
            snap_id = forge_snapshot(session, (Forged(name, FILE, b"evil\n"),))
        result = forged_env.run("restore", snap_id[:12], "--target", str(target), "--overwrite", "always")
        assert result.code == 1, result.err
        assert "is malformed: entry name" in result.err and "tampered" in result.err
        assert result.err.count("drtool: error") == 1 and "Traceback" not in result.err
    dup = (Forged("data", SYMLINK, target="../outside"), Forged("data", DIR, children=(Forged("f", FILE, b"x"),)))
    with api.open_repository(str(forged_env.repo), PASSWORD.encode(), catalog=str(forged_env.catalog)) as session:
        snap_id = forge_snapshot(session, dup)
    result = forged_env.run("restore", snap_id[:12], "--target", str(target), "--overwrite", "always")
    assert result.code == 1 and "appears twice" in result.err
    check = forged_env.run("check")
    assert check.code == 1 and "malformed" in check.out
    assert signature(area, target) == before


# ----- item 1: names are refused when written -------------------------------------------------
@pytest.mark.parametrize("filename", ["../../victim.txt", "/tmp/abs.txt", "a/b.sql", "..", "."])
def test_stream_filename_outside_the_target_is_refused(repo_env: DrEnv, tmp_path: Path, filename: str) -> None:
    result = repo_env.run("backup", "--from-command", "echo X", "--name", "dump", "--filename", filename)
    assert result.code == 2
    assert f"--filename '{filename}'" in result.err and "nothing was backed up" in result.err
    assert "Traceback" not in result.err
    assert not list((repo_env.repo / "snapshots").glob("*"))  # nothing committed
    assert not [p for p in (repo_env.repo / "packs").rglob("*") if p.is_file()]  # nothing written at all


def test_restore_of_a_dump_stays_inside_the_target(repo_env: DrEnv, tmp_path: Path) -> None:
    assert repo_env.run("backup", "--from-command", "echo X", "--name", "db/dump").code == 0
    target = tmp_path / "T" / "a" / "b"
    result = repo_env.run("restore", "latest", "--name", "db/dump", "--target", str(target))
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "T").rglob("*")) == ["a", "b", "dump"]
    assert (target / "dump").read_text() == "X\n"


# ----- item 2: links already in the target ------------------------------------------------------
def backup_tree(env: DrEnv, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "f").write_text("from the snapshot\n")
    (src / "victim.txt").write_text("snapshot's victim.txt\n")
    assert env.run("backup", str(src), "--name", "t").code == 0
    return src


def test_planted_links_are_never_followed(repo_env: DrEnv, tmp_path: Path) -> None:
    backup_tree(repo_env, tmp_path)
    area, target = make_area(tmp_path / "area")
    os.symlink("../outside", target / "src")  # the snapshot's top directory is a link out
    before = signature(area, target)
    kept = repo_env.run("restore", "latest", "--target", str(target))
    assert kept.code == 3, kept.err
    assert "a symbolic link is in the way of a directory" in kept.err
    assert "--overwrite always" in kept.err
    assert signature(area, target) == before
    assert (target / "src").is_symlink()
    replaced = repo_env.run("restore", "latest", "--target", str(target), "--overwrite", "always")
    assert replaced.code == 0, replaced.err
    assert "replaced a symbolic link with a directory" in replaced.err
    assert not (target / "src").is_symlink() and (target / "src" / "data" / "f").read_text() == "from the snapshot\n"
    assert signature(area, target) == before


def test_planted_links_inside_the_restored_tree(repo_env: DrEnv, tmp_path: Path) -> None:
    backup_tree(repo_env, tmp_path)
    area, target = make_area(tmp_path / "area")
    (target / "src").mkdir()
    os.symlink(str(area / "outside"), target / "src" / "data")
    os.symlink(str(area / "outside" / "victim.txt"), target / "src" / "victim.txt")
    before = signature(area, target)
    for policy in ("never", "if-newer", "if-changed", "always"):
        result = repo_env.run("restore", "latest", "--target", str(target), "--overwrite", policy)
        assert result.code in (0, 3), result.err
        assert signature(area, target) == before, policy
    assert not (target / "src" / "victim.txt").is_symlink()  # 'always' replaced the link itself
    assert (target / "src" / "victim.txt").read_text() == "snapshot's victim.txt\n"


# ----- item 3: an explicit overwrite policy ------------------------------------------------------
def test_overwrite_policies_and_dry_run(repo_env: DrEnv, tmp_path: Path) -> None:
    src = backup_tree(repo_env, tmp_path)
    target = tmp_path / "out"
    assert repo_env.run("restore", "latest", "--target", str(target)).code == 0
    edited = target / "src" / "victim.txt"
    edited.write_text("edited locally, not in any backup\n")
    os.utime(edited, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))  # older than the snapshot

    plan = repo_env.run("restore", "latest", "--target", str(target), "--dry-run", "--json")
    assert plan.code == 0
    data = json.loads(plan.out)
    assert data["not_overwritten_count"] == 1 and str(edited) in data["not_overwritten"][0]
    text = repo_env.run("restore", "latest", "--target", str(target), "--dry-run", "--overwrite", "always")
    assert f"would be overwritten: {edited}: replaced a file with other content" in text.out

    never = repo_env.run("restore", "latest", "--target", str(target))  # the default
    assert never.code == 3
    assert "1 existing item(s) differ from the snapshot and were left as they are (--overwrite never)" in never.err
    assert edited.read_text() == "edited locally, not in any backup\n"

    newer = repo_env.run("restore", "latest", "--target", str(target), "--overwrite", "if-newer")
    assert newer.code == 0, newer.err  # the snapshot's copy is newer than the 2001 edit
    assert edited.read_text() == (src / "victim.txt").read_text()

    edited.write_text("edited again\n")  # now newer than the snapshot
    again = repo_env.run("restore", "latest", "--target", str(target), "--overwrite", "if-newer")
    assert again.code == 3 and "newer than or as new as the snapshot's" in again.err
    assert edited.read_text() == "edited again\n"

    changed = repo_env.run("restore", "latest", "--target", str(target), "--overwrite", "if-changed", "--json")
    assert changed.code == 0 and json.loads(changed.out)["overwritten_count"] == 1
    assert edited.read_text() == (src / "victim.txt").read_text()

    (target / "src" / "data").rename(target / "moved")
    (target / "src" / "data").write_text("a file where the snapshot has a directory")
    for policy in ("never", "always"):
        result = repo_env.run("restore", "latest", "--target", str(target), "--overwrite", policy)
        assert result.code == (3 if policy == "never" else 0), result.err
    assert (target / "src" / "data" / "f").read_text() == "from the snapshot\n"

    (target / "src" / "victim.txt").unlink()
    (target / "src" / "victim.txt").mkdir()
    (target / "src" / "victim.txt" / "keep").write_text("a directory is never removed for a file")
    result = repo_env.run("restore", "latest", "--target", str(target), "--overwrite", "always")
    assert result.code == 3 and "a directory is in the way of a file" in result.err
    assert (target / "src" / "victim.txt" / "keep").exists()
