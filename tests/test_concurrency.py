"""Concurrency: several processes on one repository, and hosts sharing one catalog.

* two backups of different sources at the same time: both commit, check
  passes, both restore;
* a backup while prune holds the exclusive lock (and the other way round):
  both finish (``--lock-wait``), nothing committed is lost;
* two hosts sharing one catalog on a throwaway PostgreSQL cluster: schema
  migrations run once on PostgreSQL even when every host opens the empty
  database at the same moment, concurrent backups never trip over each
  other's catalog rows, every host lists every snapshot.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DrEnv
from dbservers import PgServer, postgres_server
from sqlalchemy import insert

from drtool.catalog.db import head_revision
from drtool.catalog.models import index_file_table
from drtool.catalog.store import Catalog
from drtool.repository.index import PackRecord
from drtool.snapshot.store import list_snapshot_ids, load_snapshot

MiB = 1024 * 1024


def make_tree(root: Path, seed: int, files: int = 6, size: int = 700_000) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    contents = {f"f{seed}-{i}.bin": os.urandom(size) for i in range(files)}
    contents["shared.txt"] = b"the same in every source\n" * 20_000  # deduplicated across sources
    for name, data in contents.items():
        (root / name).write_bytes(data)
    return contents


def start(env: DrEnv, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "drtool", *args], env={**env.env, **(extra or {})},
                            cwd=env.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_restores(env: DrEnv, snap_id: str, target: Path, folder: str, expected: dict[str, bytes]) -> None:
    result = env.run("restore", snap_id, "--target", str(target))
    assert result.code == 0, result.err
    assert {p.name: p.read_bytes() for p in (target / folder).iterdir()} == expected


def test_two_backups_of_different_sources_at_once(repo_env: DrEnv, tmp_path: Path) -> None:
    trees = {name: make_tree(tmp_path / name, seed) for seed, name in enumerate(("alpha", "beta"))}
    procs = {name: start(repo_env, "backup", str(tmp_path / name), "--name", name, "--json")
             for name in trees}
    results = {name: finish(proc) for name, proc in procs.items()}
    for name, (code, _out, err) in results.items():
        assert code == 0, f"{name}: {err}"
    ids = {name: json.loads(out)["id"] for name, (_c, out, _e) in results.items()}
    listed = {s["id"] for s in json.loads(repo_env.run("snapshots", "--json").out)}
    assert set(ids.values()) == listed
    check = repo_env.run("check", "--read-data", "--json")
    assert check.code == 0, check.out
    for name, snap_id in ids.items():
        assert_restores(repo_env, snap_id, tmp_path / f"out-{name}", name, trees[name])


@pytest.mark.parametrize("first", ["prune", "backup"])
def test_backup_and_prune_at_the_same_time_lose_nothing(repo_env: DrEnv, tmp_path: Path, first: str) -> None:
    src = tmp_path / "src"
    expected: dict[str, dict[str, bytes]] = {}
    for round_ in range(3):
        for old in src.glob("*") if src.exists() else []:
            old.unlink()
        contents = make_tree(src, round_, files=4, size=2 * MiB)
        result = repo_env.run("backup", str(src), "--name", "n", "--json")
        expected[json.loads(result.out)["id"]] = contents
    assert repo_env.run("forget", "--keep-last", "1").code == 0
    marked = repo_env.run("prune", "--grace", "0s", "--max-unused", "0", "--json")  # marks; the next sweeps
    assert marked.code == 0 and json.loads(marked.out)["packs_condemned"] > 0, marked.err
    for old in src.glob("*"):
        old.unlink()
    latest = make_tree(src, 9, files=8, size=2 * MiB)
    prune_args = ["--lock-wait", "2m", "prune", "--grace", "0s", "--max-unused", "0", "--json"]
    backup_args = ["--lock-wait", "2m", "backup", str(src), "--name", "n", "--json"]
    order = [prune_args, backup_args] if first == "prune" else [backup_args, prune_args]
    procs = [start(repo_env, *order[0])]
    time.sleep(0.3)
    procs.append(start(repo_env, *order[1]))
    outcomes = [finish(p) for p in procs]
    for code, _out, err in outcomes:
        assert code == 0, err
    backup_out = outcomes[1 if first == "prune" else 0][1]
    prune_out = outcomes[0 if first == "prune" else 1][1]
    assert json.loads(prune_out)["packs_deleted"] > 0
    expected[json.loads(backup_out)["id"]] = latest
    assert repo_env.run("check", "--read-data").code == 0
    remaining = [s["id"] for s in json.loads(repo_env.run("snapshots", "--json").out)]
    assert len(remaining) == 2
    for snap_id in remaining:
        assert_restores(repo_env, snap_id, tmp_path / f"out-{snap_id[:8]}", "src", expected[snap_id])
    assert repo_env.run("backup", str(src), "--name", "n").code == 0


# ----- one catalog on PostgreSQL, many hosts -----------------------------------------------------
@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server


def pg_catalog(server: PgServer, name: str) -> str:
    server.sql(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://postgres@/{name}?host={server.root}&port={server.port}"


SIMULTANEOUS = """
import sys, time
from drtool.cli.main import main, _register
_register()
import alembic.command, alembic.config  # imports done before the start line
while time.time() < float(sys.argv[1]):
    pass
sys.exit(main(sys.argv[2:]))
"""


def test_hosts_opening_an_empty_catalog_at_once_migrate_it_once(repo_env: DrEnv, pg: PgServer) -> None:
    for attempt in range(2):
        url = pg_catalog(pg, f"empty{attempt}")
        at = str(time.time() + 2.0)
        procs = [subprocess.Popen([sys.executable, "-c", SIMULTANEOUS, at, "snapshots", "--json"],
                                  env={**repo_env.env, "DRTOOL_CATALOG": url, "DRTOOL_HOST": f"h{i}"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(4)]
        for proc in procs:
            code, out, err = finish(proc)
            assert code == 0, err
            assert json.loads(out) == []
        assert pg.sql("SELECT version_num FROM alembic_version", f"empty{attempt}") == [(head_revision(),)]


def test_two_hosts_back_up_concurrently_into_a_shared_catalog(repo_env: DrEnv, pg: PgServer,
                                                              tmp_path: Path) -> None:
    url = pg_catalog(pg, "shared")
    trees = {host: make_tree(tmp_path / host, seed, files=3) for seed, host in enumerate(("alpha", "beta"))}
    env = {"DRTOOL_CATALOG": url}
    errors: list[str] = []

    def host_loop(host: str) -> None:
        for round_ in range(3):
            (tmp_path / host / f"round{round_}").write_bytes(os.urandom(200_000))
            proc = start(repo_env, "backup", str(tmp_path / host), "--name", host,
                         extra={**env, "DRTOOL_HOST": host})
            code, _out, err = finish(proc)
            if code != 0:
                errors.append(f"{host}: {err}")

    threads = [threading.Thread(target=host_loop, args=(h,)) for h in trees]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for host in trees:
        listing = repo_env.run("snapshots", "--json", env={**env, "DRTOOL_HOST": host})
        assert listing.code == 0, listing.err
        snaps = json.loads(listing.out)
        assert len(snaps) == 6 and {s["host"] for s in snaps} == set(trees)
    assert pg.sql("SELECT version_num FROM alembic_version", "shared") == [(head_revision(),)]
    assert pg.sql("SELECT count(*) FROM snapshots", "shared") == [(6,)]
    assert repo_env.run("check", "--read-data", env=env).code == 0


def test_catalog_rows_inserted_by_another_host_meanwhile_are_fine(repo_env: DrEnv, pg: PgServer,
                                                                 tmp_path: Path) -> None:
    """Host B writes the same cache rows between host A's SELECT and A's INSERT (or before
    A's INSERT commits): A must neither fail nor duplicate them."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    assert repo_env.run("backup", str(tmp_path / "src"), "--name", "n").code == 0
    url = pg_catalog(pg, "racing")
    with repo_env.session() as session:
        repo_id = session.repo.config.repo_id
        ids = set(list_snapshot_ids(session.repo))
        snaps = {i: load_snapshot(session.repo, i) for i in ids}
        record = session.repo.read_index_object(session.repo.list_objects("index")[0])[0]
    host_a, host_b = Catalog.open(url, repo_id), Catalog.open(url, repo_id)
    try:
        def load_while_b_inserts(snapshot_id: str):  # type: ignore[no-untyped-def]
            host_b.add_snapshots([snaps[snapshot_id]])
            return snaps[snapshot_id]

        host_a.sync_snapshots(ids, load_while_b_inserts)
        host_a.add_snapshots(snaps.values())  # a backup adding its own snapshot after B synced it
        assert {s.id for s in host_a.snapshots()} == ids == {s.id for s in host_b.snapshots()}
        errors: list[BaseException] = []
        with host_b.engine.connect() as conn:  # B caches index "ii…" and has not committed yet
            conn.execute(insert(index_file_table), [{"repo_id": repo_id, "index_id": "ii" * 32}])
            writer = threading.Thread(target=_store_index, args=(host_a, "ii" * 32, record, errors))
            writer.start()
            time.sleep(0.5)  # A now waits on B's uncommitted row
            conn.commit()
        writer.join(timeout=30)
        assert not writer.is_alive() and not errors, errors
        assert "ii" * 32 in host_a.cached_index_ids()
    finally:
        host_a.close()
        host_b.close()


def _store_index(catalog: Catalog, index_id: str, record: PackRecord, errors: list[BaseException]) -> None:
    try:
        catalog.store_index(index_id, [record])
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)
