"""Catalog loss at scale: 1,000 snapshots, catalog deleted, ``catalog rebuild``.

The snapshots are written through the repository API (tiny trees: one small
file each, ten hosts, one per 6 hours), so creating them is quick; the
rebuild and the first listing after the loss are the CLI in a subprocess, as
an operator would run them.  The test asserts correctness only and prints
the times (recorded in docs/threat-model.md, "Measured").
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import DrEnv
from drtool.repository.packfile import DATA_BLOB
from drtool.snapshot.model import FILE, Node, Snapshot
from drtool.snapshot.store import save_snapshot, store_tree

SNAPSHOTS = 1000


def write_snapshots(env: DrEnv, count: int) -> dict[str, tuple[str, str]]:
    """``count`` snapshots with distinct tiny trees; returns id -> (name, host)."""
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    made: dict[str, tuple[str, str]] = {}
    with env.session() as session:
        repo = session.repo
        repo.load_index()
        snaps = []
        for i in range(count):
            data = f"snapshot {i}\n".encode() * 10
            node = Node(name=f"file-{i}.txt", type=FILE, mode=0o644, mtime_ns=i, size=len(data),
                        content=[repo.store_blob(DATA_BLOB, data).hex()])
            tree = store_tree(repo, [Node(name="etc", type="dir", subtree=store_tree(repo, [node]))])
            host = f"host{i % 10}"
            snaps.append(Snapshot(name=f"{host}/etc", host=host, time=start + timedelta(hours=6 * i),
                                  tree=tree, paths=["/etc"], summary={"files": 1, "size": len(data)}))
        repo.flush()  # packs and index first, then the snapshots (write order)
        for snap in snaps:
            made[save_snapshot(repo, snap)] = (snap.name, snap.host)
    return made


def drop_catalog(env: DrEnv) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(env.catalog) + suffix).unlink(missing_ok=True)


def test_rebuild_of_1000_snapshots(repo_env: DrEnv) -> None:
    started = time.monotonic()
    made = write_snapshots(repo_env, SNAPSHOTS)
    created = time.monotonic() - started
    assert len(made) == SNAPSHOTS

    drop_catalog(repo_env)
    started = time.monotonic()
    rebuild = repo_env.spawn("catalog", "rebuild", "--json")
    rebuild_seconds = time.monotonic() - started
    assert rebuild.returncode == 0, rebuild.stderr
    report = json.loads(rebuild.stdout)
    assert report["snapshots"] == SNAPSHOTS and report["damaged"] == []

    started = time.monotonic()
    listing = repo_env.spawn("snapshots", "--json")
    list_seconds = time.monotonic() - started
    assert listing.returncode == 0, listing.stderr
    listed = json.loads(listing.stdout)
    assert {s["id"]: (s["name"], s["host"]) for s in listed} == made
    assert [s["time"] for s in listed] == sorted(s["time"] for s in listed)

    drop_catalog(repo_env)  # the other way back: the first command after the loss syncs by itself
    started = time.monotonic()
    synced = repo_env.spawn("snapshots", "--json")
    sync_seconds = time.monotonic() - started
    assert synced.returncode == 0 and len(json.loads(synced.stdout)) == SNAPSHOTS
    print(f"\n{SNAPSHOTS} snapshots: created in {created:.1f}s; catalog rebuild {rebuild_seconds:.2f}s "
          f"(CLI, incl. start-up); listing afterwards {list_seconds:.2f}s; first listing after "
          f"losing the catalog (implicit sync) {sync_seconds:.2f}s")
