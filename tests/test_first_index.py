"""The file index of a series' first snapshot, written from the stored entries (no ``Node`` each).

A first backup of more than ``WALKED_CHANGES`` files, ``catalog rebuild`` and a
``find`` that catches up with snapshots from elsewhere index a snapshot with no
indexed predecessor by reading its trees back.  That path builds its rows from
the raw tree entries (``browse.index._first_batches``); these tests hold it to
the rows and order the tree comparison (``trees.tree_changes``) gives, on a
tree with every kind of entry, to the same ``find`` answers, and to the same
error for a tree no backup writes.  Also: the larger SQLite page cache of the
index transaction is put back afterwards.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from conftest import DrEnv
from drtool.browse.index import IndexResult, _batches, _first_batches
from drtool.browse.trees import first_entries, tree_changes
from drtool.catalog.files import FileIndex, IndexedSnapshot
from drtool.errors import IntegrityError
from drtool.repository.packfile import TREE_BLOB
from drtool.snapshot.model import Node
from drtool.snapshot.store import store_tree


def ok(result: Any) -> Any:
    assert result.code == 0, f"exit {result.code}\n{result.out}\n{result.err}"
    return json.loads(result.out) if result.out.lstrip().startswith(("{", "[")) else result.out


def tricky_tree(root: Path) -> Path:
    """Nested and empty directories, an empty file, a file of several chunks, hard links,
    symlinks (to a file, dangling), a FIFO, a name that is not UTF-8, names that sort oddly."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "zero").write_bytes(b"")
    (root / "a" / "big.bin").write_bytes(os.urandom(3_500_000))
    (root / "a" / "b" / "one.txt").write_text("one\n")
    os.link(root / "a" / "b" / "one.txt", root / "a" / "b" / "one-link.txt")
    (root / "a" / "b" / "c" / "deep.txt").write_text("deep\n" * 100)
    (root / "a" / "to-one").symlink_to("b/one.txt")
    (root / "a" / "dangling").symlink_to("nowhere")
    os.mkfifo(root / "a" / "fifo")
    (root / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name\n")
    for name in ("B", "a.txt", "a-b", "a_b", "Z"):
        (root / name).write_text(name)
    return root


def tree_of(session: Any, snapshot_id: str) -> str:
    return next(s.tree for s in session.catalog.snapshots() if s.id == snapshot_id)


@pytest.fixture
def env(repo_env: DrEnv) -> DrEnv:
    return repo_env  # an initialised repository (conftest)


def test_first_rows_are_the_tree_comparison_rows(env: DrEnv, tmp_path: Path) -> None:
    src = tricky_tree(tmp_path / "src")
    snap = ok(env.run("backup", str(src), "--name", "media", "--content-hash", "sha256", "--json"))
    with env.session() as session:
        session.repo.load_index(trees_only=True)
        tree = tree_of(session, snap["id"])
        before, after = IndexResult(), IndexResult()
        compared = list(_batches(tree_changes(session.repo, None, tree, with_hashes=True, checked=False), before))
        direct = list(_first_batches(session.repo, tree, after))
    assert direct == compared
    rows = [row for _, added, _ in direct for row in added]
    assert len(rows) == sum(len(d) + len(f) for _, d, f in os.walk(src)) + 1  # + the root
    assert after.versions_added == before.versions_added == len(rows)
    by_path = {row[0]: row for row in rows}
    assert by_path["src/a/b/one.txt"][7].startswith("sha256:")  # hashes carried over
    assert by_path["src/a/to-one"][6] != "" and by_path["src/empty"][2] == "dir"


def test_first_rows_in_batches_of_the_same_size(env: DrEnv, tmp_path: Path) -> None:
    """More entries than one batch (12,000 files, 3 directories and the root): batch borders
    where the comparison has them."""
    src = tmp_path / "src"
    for i in range(12_000):
        folder = src / f"d{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}").write_bytes(b"")
    snap = ok(env.run("backup", str(src), "--name", "many", "--json"))
    with env.session() as session:
        session.repo.load_index(trees_only=True)
        tree = tree_of(session, snap["id"])
        compared = list(_batches(tree_changes(session.repo, None, tree, with_hashes=True, checked=False),
                                 IndexResult()))
        direct = list(_first_batches(session.repo, tree, IndexResult()))
    assert [len(added) for _, added, _ in direct] == [5000, 5000, 2004] and direct == compared


def test_find_answers_the_same_after_catalog_rebuild(env: DrEnv, tmp_path: Path) -> None:
    """A small first backup is indexed from what the walk saw; ``catalog rebuild`` indexes the
    same snapshot from its stored trees (the direct rows): ``find`` must not tell them apart."""
    src = tricky_tree(tmp_path / "src")
    ok(env.run("backup", str(src), "--name", "media", "--content-hash", "sha256"))
    (src / "a" / "b" / "one.txt").write_text("changed\n")
    ok(env.run("backup", str(src), "--name", "media", "--content-hash", "sha256"))
    walked = ok(env.run("find", "*", "--json"))
    ok(env.run("catalog", "rebuild"))
    assert ok(env.run("find", "*", "--json")) == walked
    assert len(walked) == sum(len(d) + len(f) for _, d, f in os.walk(src)) + 1 + 2  # + root, + the old one.txt (two links)


def test_a_forged_tree_fails_as_when_decoded_into_nodes(env: DrEnv) -> None:
    with env.session() as session, session.lock("backup"):
        typeless = session.repo.store_blob(TREE_BLOB, b'{"nodes":[{"name":"x"}]}').hex()
        odd = session.repo.store_blob(TREE_BLOB, b'{"nodes":[{"name":"x","type":"door"}]}').hex()
        root = store_tree(session.repo, [Node(name="ok", type="file"), Node(name="sub", type="dir", subtree=odd)])
        session.repo.flush()
        for tree, words in ((typeless, "without name or type"), (root, "unknown node type 'door'")):
            with pytest.raises(IntegrityError) as direct:
                list(first_entries(session.repo, tree))
            with pytest.raises(IntegrityError) as compared:
                list(tree_changes(session.repo, None, tree, checked=False))
            assert str(direct.value) == str(compared.value) and words in str(direct.value)
        # Names are not checked on this path (the index never turns them into paths), as before.
        escaping = store_tree(session.repo, [Node(name="..", type="file"), Node(name="ok", type="file")])
        session.repo.flush()
        assert [path for path, _ in first_entries(session.repo, escaping)] == [
            path for path, _, _ in tree_changes(session.repo, None, escaping, checked=False)] == ["..", "ok"]


def test_the_page_cache_is_put_back_after_indexing(env: DrEnv) -> None:
    with env.session() as session:
        engine = session.catalog.engine
        with engine.connect() as conn:
            before = conn.execute(text("PRAGMA cache_size")).scalar()
        entry = IndexedSnapshot("f" * 64, "series", 1, "0" * 64, datetime.now(timezone.utc))
        FileIndex(session.catalog).record(entry, [([], [("p", "p", "file", 1, 2, 0o644, "c", None)], {})])
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA cache_size")).scalar() == before
        assert engine.pool.checkedin() == 1  # the one connection the index wrote through
