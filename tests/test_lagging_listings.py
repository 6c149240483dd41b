"""Listings that lag: the fake lags as configured, and the code that must not trust listings copes.

The storage contract allows ``list`` to lag puts and deletes (S3-compatible
stores, caches, replicated gateways) while ``get`` and ``stat`` are exact.
``drtool.testing.LaggingListings`` makes that lag deterministic.  The
repository-level tests run real backups and prunes through it on a real local
repository: a backup deduplicates only against what it can list (and stores
duplicates otherwise, never references to data it cannot see), prune
checks indexed packs it cannot list with ``stat`` instead of believing
they are gone, and its sweep deletes only what a *visible* earlier mark
condemned.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import PASSWORD, DrEnv
from drtool.backends.local import LocalBackend
from drtool.maintain import prune as prune_ops
from drtool.backup.run import backup_paths
from drtool.core.session import OpenOptions, Session
from drtool.testing import LaggingListings, MemoryBackend


def _names(backend: LaggingListings, prefix: str = "") -> set[str]:
    return {info.name for info in backend.list(prefix)}


# ----- the fake ---------------------------------------------------------------------------------

def test_puts_and_deletes_stay_out_of_the_next_lag_listings() -> None:
    store = LaggingListings(lag=2)
    store.put("index/a", b"123")
    assert store.stat("index/a") is not None and store.get("index/a") == b"123"  # reads are exact
    assert _names(store) == set() and _names(store, "index/") == set()  # two listings miss it
    assert _names(store, "index/") == {"index/a"}  # the third shows it
    store.delete("index/a")
    assert store.stat("index/a") is None
    sizes = [{i.name: i.size for i in store.list("index/")} for _ in range(3)]
    assert sizes == [{"index/a": 3}, {"index/a": 3}, {}]  # a deleted object lingers, then goes


def test_only_listings_that_cover_a_name_count_and_only_chosen_prefixes_lag() -> None:
    store = LaggingListings(MemoryBackend(), lag=1, prefixes=("packs/",))
    store.put("packs/aa/1", b"x")
    store.put("index/1", b"y")
    assert _names(store, "index/") == {"index/1"}  # not a lagging prefix
    assert _names(store, "snapshots/") == set()   # does not cover packs/aa/1: no miss counted
    assert store.pending() == ["packs/aa/1"]
    assert _names(store, "packs/") == set()
    assert _names(store, "packs/") == {"packs/aa/1"}
    store.put("packs/aa/2", b"z")
    store.settle()
    assert _names(store, "packs/") == {"packs/aa/1", "packs/aa/2"} and store.pending() == []


def test_the_fake_sees_what_was_there_before_it_and_counts_requests(tmp_path: Path) -> None:
    inner = LocalBackend(tmp_path)
    inner.put("config", b"c")
    store = LaggingListings(inner, lag=1)
    assert _names(store) == {"config"}
    lists = inner.stats.lists
    store.list("")
    assert inner.stats.lists == lists + 1  # shared stats: the fake's listings are counted


# ----- code that must not trust listings ------------------------------------------------------

def _session(dr: DrEnv, backend: LaggingListings) -> Session:
    return Session.open(OpenOptions(str(dr.repo), PASSWORD.encode(), str(dr.catalog)), backend=backend)


def _restored(dr: DrEnv, snap_id: str, target: Path) -> dict[str, bytes]:
    result = dr.run("restore", snap_id, "--target", str(target))
    assert result.code == 0, result.err
    return {p.name: p.read_bytes() for p in (target / "src").iterdir()}


def _pack_files(dr: DrEnv) -> set[str]:
    return {p.name for p in (dr.repo / "packs").rglob("*") if p.is_file() and not p.name.startswith(".tmp-")}


def _check_read_data(dr: DrEnv) -> None:
    result = dr.run("check", "--read-data")
    assert result.code == 0, result.out + result.err


def test_prune_stats_indexed_packs_that_the_listing_does_not_show(repo_env: DrEnv, tmp_path: Path) -> None:
    """Believing the pack listing would make prune find the snapshot's blobs "in no pack" and
    refuse to run (or, worse, treat the packs as gone); it must ask stat instead."""
    src = tmp_path / "src"
    src.mkdir()
    files = {"a": os.urandom(300_000), "b": os.urandom(200_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    store = LaggingListings(LocalBackend(repo_env.repo), lag=3, prefixes=("packs/",))
    with _session(repo_env, store) as session:
        snap_id = backup_paths(session, [str(src)], "files").snapshot.id
    new_packs = [n for n in store.pending() if n.startswith("packs/")]
    assert new_packs
    with _session(repo_env, store) as session:
        report = prune_ops.prune(session, prune_ops.PruneOptions(grace=timedelta(0)))
    assert sorted(store.pending()) == sorted(new_packs)  # prune's listing really did not show them
    assert report.packs == len(new_packs) and report.packs_condemned == 0 and not report.warnings
    assert report.used_blobs > 0 and report.packs_deleted == 0
    _check_read_data(repo_env)
    assert _restored(repo_env, snap_id, tmp_path / "out") == files


def test_backups_and_both_phases_of_prune_under_lagging_listings(repo_env: DrEnv, tmp_path: Path) -> None:
    """Every listing lags by two.  A second backup cannot list the first one's index, so it stores
    its blobs again (duplicates, never a reference to data it cannot read).  Prune condemns the
    duplicates; a prune right after it, whose listings do not show that mark yet, deletes nothing;
    once listings catch up the sweep deletes the condemned packs; the garbage the lag caused is
    collected by later prunes, and both snapshots restore."""
    src = tmp_path / "src"
    src.mkdir()
    first = {"a": os.urandom(400_000), "b": os.urandom(100_000)}
    for name, data in first.items():
        (src / name).write_bytes(data)
    store = LaggingListings(LocalBackend(repo_env.repo), lag=2)
    with _session(repo_env, store) as session:
        one = backup_paths(session, [str(src)], "files").snapshot.id
    (src / "c").write_bytes(os.urandom(100_000))
    second = {**first, "c": (src / "c").read_bytes()}
    with _session(repo_env, store) as session:
        result = backup_paths(session, [str(src)], "files")
        two = result.snapshot.id
    assert result.snapshot.parent is None  # the first snapshot was not listed yet
    assert session.repo.new_bytes_raw >= 500_000  # and its blobs were not deduplicated against

    store.settle()
    with _session(repo_env, store) as session:
        mark = prune_ops.prune(session, prune_ops.PruneOptions(grace=timedelta(0), max_unused=0))
    assert mark.packs_deleted == 0
    packs_after_mark = _pack_files(repo_env)
    with _session(repo_env, store) as session:
        early = prune_ops.prune(session, prune_ops.PruneOptions(grace=timedelta(0), max_unused=0))
    assert early.packs_deleted == 0  # the mark's record is not listed yet: nothing is due
    assert packs_after_mark <= _pack_files(repo_env)  # (it may repack again: garbage, not loss)

    store.settle()
    with _session(repo_env, store) as session:
        sweep = prune_ops.prune(session, prune_ops.PruneOptions(grace=timedelta(0), max_unused=0))
    assert sweep.packs_deleted >= mark.packs_condemned >= 1 and not sweep.warnings
    for _ in range(2):  # whatever the lag made prune do twice is garbage: marked, then swept
        store.settle()
        with _session(repo_env, store) as session:
            prune_ops.prune(session, prune_ops.PruneOptions(grace=timedelta(0), max_unused=0))
    store.settle()
    with _session(repo_env, store) as session:
        final = prune_ops.prune(session, prune_ops.PruneOptions(grace=timedelta(0), max_unused=0,
                                                                dry_run=True))
    assert final.unused_bytes == 0 and final.packs_condemned == 0 and final.packs_pending == 0
    _check_read_data(repo_env)
    assert _restored(repo_env, one, tmp_path / "one") == first
    assert _restored(repo_env, two, tmp_path / "two") == second


def test_a_backup_right_after_prune_while_deleted_index_objects_are_still_listed(
        repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(300_000))
    store = LaggingListings(LocalBackend(repo_env.repo), lag=2)
    for extra in ("b", "c"):
        with _session(repo_env, store) as session:
            backup_paths(session, [str(src)], "files")
        (src / extra).write_bytes(os.urandom(300_000))
    store.settle()
    with _session(repo_env, store) as session:
        assert prune_ops.prune(session, prune_ops.PruneOptions(grace=timedelta(0))).index_deleted >= 1
    with _session(repo_env, store) as session:  # the deleted index objects are still listed
        backup_paths(session, [str(src)], "files")
    _check_read_data(repo_env)


@pytest.mark.parametrize("lag", [1, 3])
def test_verify_backend_on_a_lagging_local_store(tmp_path: Path, lag: int) -> None:
    from drtool.testing import verify_backend

    counter = iter(range(1000))
    outcomes = verify_backend(lambda: LaggingListings(_local(tmp_path / f"r{next(counter)}"), lag=lag),
                              listing_lags=True)
    assert [o for o in outcomes if o.status == "failed"] == []
    assert any(o.name == "read-into" and o.status == "passed" for o in outcomes)


def _local(path: Path) -> LocalBackend:
    backend = LocalBackend(path)
    backend.create_location()
    return backend
