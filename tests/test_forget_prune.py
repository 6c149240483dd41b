"""forget (retention through the CLI and config) and prune (two-phase deletion,
repack, kill -9 at every phase, concurrent backups, Object Lock)."""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, DrEnv
from drtool import api
from drtool.backends.local import LocalBackend
from drtool.errors import BackendError
from drtool.maintain import forget as forget_ops
from drtool.maintain import prune as prune_ops
from drtool.backup.run import backup_paths
from drtool.core.session import OpenOptions, Session
from drtool.repository.index import PackRecord
from drtool.repository.packfile import DATA_BLOB, PackBuilder, pack_name, seal_group
from drtool.snapshot.retention import RetentionPolicy

UTC = dt.timezone.utc
T = dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)


def write_tree(src: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """Make ``src`` contain exactly ``files``; return them (the expected restore)."""
    src.mkdir(parents=True, exist_ok=True)
    for old in src.iterdir():
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        (src / name).write_bytes(data)
    return dict(files)


def backup_at(dr: DrEnv, src: Path, name: str, when: dt.datetime, tags: list[str] | None = None) -> str:
    with dr.session() as session:
        return backup_paths(session, [str(src)], name, tags, clock=lambda: when).snapshot.id


def forget_first_of_two(dr: DrEnv, src: Path, first: dict[str, bytes], second: dict[str, bytes]) -> str:
    """Back up ``first`` at T and ``second`` at T + DAY, forget the first; return the second's id."""
    write_tree(src, first)
    backup_at(dr, src, "files", T)
    write_tree(src, second)
    keep = backup_at(dr, src, "files", T + DAY)
    assert dr.run("forget", "--keep-last", "1").code == 0
    return keep


def snapshot_ids(dr: DrEnv, name: str | None = None) -> list[str]:
    args = ["snapshots", "--json"] + (["--name", name] if name else [])
    return [s["id"] for s in json.loads(dr.run(*args).out)]


def restored(dr: DrEnv, snap_id: str, target: Path, src_name: str = "src") -> dict[str, bytes]:
    result = dr.run("restore", snap_id, "--target", str(target))
    assert result.code == 0, result.err
    return {p.name: p.read_bytes() for p in (target / src_name).iterdir()}


def repo_files(dr: DrEnv, prefix: str = "") -> set[str]:
    return {str(p.relative_to(dr.repo)) for p in dr.repo.rglob("*")
            if p.is_file() and str(p.relative_to(dr.repo)).startswith(prefix)}


def run_prune(dr: DrEnv, when: dt.datetime, **kwargs: object) -> prune_ops.PruneReport:
    with dr.session() as session:
        return prune_ops.prune(session, prune_ops.PruneOptions(clock=lambda: when, **kwargs))


def assert_check_ok(dr: DrEnv) -> None:
    result = dr.run("check", "--read-data", "--json")
    assert result.code == 0, result.out + result.err


# ----- forget ---------------------------------------------------------------------------------
def test_forget_dry_run_lists_reasons_then_removes(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    ids = []
    for i in range(6):
        write_tree(src, {"f": f"day {i}".encode()})
        ids.append(backup_at(repo_env, src, "files", T + i * DAY))
    dry = repo_env.run("forget", "--keep-daily", "2", "--keep-last", "1", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    series = json.loads(dry.out)["series"][0]
    assert [k["id"] for k in series["keep"]] == [ids[5], ids[4]]
    assert series["keep"][0]["reasons"] == ["last 1", "daily 2024-03-06"]
    assert {r["id"] for r in series["remove"]} == set(ids[:4])
    assert all(r["reasons"] == ["not matched by any rule"] for r in series["remove"])
    assert len(snapshot_ids(repo_env)) == 6
    text = repo_env.run("forget", "--keep-daily", "2", "--dry-run").out
    assert "would remove 4 snapshot(s)" in text and "remove  " + ids[0][:8] in text
    done = repo_env.run("forget", "--keep-daily", "2")
    assert done.code == 0 and "removed 4 snapshot(s)" in done.out
    assert sorted(snapshot_ids(repo_env)) == sorted(ids[4:])
    assert repo_files(repo_env, "snapshots/") == {f"snapshots/{i}" for i in ids[4:]}
    assert_check_ok(repo_env)


def test_forget_groups_by_name_and_respects_tags(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"f": b"x"})
    a = [backup_at(repo_env, src, "a", T + i * DAY, ["keepme"] if i == 0 else None) for i in range(3)]
    b = [backup_at(repo_env, src, "b", T + i * DAY) for i in range(2)]
    assert repo_env.run("forget", "--keep-last", "1", "--keep-tag", "keepme").code == 0
    assert sorted(snapshot_ids(repo_env, "a")) == sorted([a[0], a[2]])
    assert snapshot_ids(repo_env, "b") == [b[1]]
    assert repo_env.run("forget", "--name", "a", "--keep-last", "1").code == 0
    assert snapshot_ids(repo_env, "a") == [a[2]] and snapshot_ids(repo_env, "b") == [b[1]]


def test_forget_uses_config_policy_and_timezone(repo_env: DrEnv, tmp_path: Path) -> None:
    """22:30Z and 23:30Z on 30 March are two different Berlin days (23:30 and 00:30)."""
    config = tmp_path / "drtool.toml"
    config.write_text('timezone = "Europe/Berlin"\n[retention]\nkeep_daily = 2\n'
                      '[sources.db.retention]\nkeep_last = 3\n')
    src = tmp_path / "src"
    write_tree(src, {"f": b"x"})
    times = [dt.datetime(2024, 3, 29, 12, 0, tzinfo=UTC), dt.datetime(2024, 3, 30, 22, 30, tzinfo=UTC),
             dt.datetime(2024, 3, 30, 23, 30, tzinfo=UTC)]
    files = [backup_at(repo_env, src, "files", t) for t in times]
    db = [backup_at(repo_env, src, "db", t) for t in times]
    result = repo_env.run("--config", str(config), "forget", "--dry-run", "--json")
    assert result.code == 0, result.err
    by_name = {s["name"]: s for s in json.loads(result.out)["series"]}
    assert {k["id"] for k in by_name["files"]["keep"]} == {files[1], files[2]}
    assert by_name["files"]["keep"][0]["reasons"] == ["daily 2024-03-31"]
    assert by_name["db"]["policy"] == "last 3" and not by_name["db"]["remove"]
    assert repo_env.run("--config", str(config), "forget").code == 0
    assert sorted(snapshot_ids(repo_env, "files")) == sorted(files[1:])
    assert sorted(snapshot_ids(repo_env, "db")) == sorted(db)


def test_forget_utc_default_differs_from_berlin(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"f": b"x"})
    times = [dt.datetime(2024, 3, 29, 12, 0, tzinfo=UTC), dt.datetime(2024, 3, 30, 22, 30, tzinfo=UTC),
             dt.datetime(2024, 3, 30, 23, 30, tzinfo=UTC)]
    ids = [backup_at(repo_env, src, "files", t) for t in times]
    result = json.loads(repo_env.run("forget", "--keep-daily", "2", "--dry-run", "--json").out)
    assert {k["id"] for k in result["series"][0]["keep"]} == {ids[0], ids[2]}


def test_forget_refuses_without_any_policy(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"f": b"x"})
    backup_at(repo_env, src, "files", T)
    result = repo_env.run("forget")
    assert result.code == 2 and "refusing to forget everything" in result.err
    config = tmp_path / "c.toml"
    config.write_text("[retention]\nkeep_dayly = 3\n")
    bad = repo_env.run("--config", str(config), "forget", "--dry-run")
    assert bad.code == 2 and "keep_dayly" in bad.err
    assert len(snapshot_ids(repo_env)) == 1


def test_forget_pinned_hook_keeps_base_backups(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"f": b"x"})
    ids = [backup_at(repo_env, src, "db", T + i * DAY) for i in range(3)]
    with repo_env.session() as session:
        result = forget_ops.forget(session, lambda _n: RetentionPolicy(keep_last=1),
                                   pinned=lambda s: "WAL chain in window" if s.id == ids[0] else None)
    kept = {d.snapshot.id: d.reasons for d in result.series[0].decisions if d.keep}
    assert kept == {ids[2]: ("last 1",), ids[0]: ("pinned: WAL chain in window",)}
    assert result.removed == [ids[1]]


def test_forget_with_prune_flag_condemns_unused_packs(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"big": os.urandom(500_000)})
    backup_at(repo_env, src, "files", T)
    write_tree(src, {"other": os.urandom(300_000)})
    backup_at(repo_env, src, "files", T + DAY)
    result = repo_env.run("forget", "--keep-last", "1", "--prune", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["forget"]["removed"] == 1 and data["prune"]["packs_condemned"] >= 1
    assert repo_files(repo_env, "prune/")
    text = repo_env.run("forget", "--keep-last", "1", "--prune")
    assert "removed 0 snapshot(s)" in text.out and "condemn" in text.out


def test_forget_killed_midway_leaves_a_consistent_repository(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    ids = []
    for i in range(4):
        write_tree(src, {"f": f"v{i}".encode()})
        ids.append(backup_at(repo_env, src, "files", T + i * DAY))
    proc = repo_env.spawn("forget", "--keep-last", "1", env={"DRTOOL_CRASH_AT": "forget-mid-delete"})
    assert proc.returncode == -signal.SIGKILL
    left = snapshot_ids(repo_env)
    assert ids[3] in left and len(left) == 3  # one deleted, the catalog follows the repository
    assert_check_ok(repo_env)
    assert repo_env.run("forget", "--keep-last", "1").code == 0
    assert snapshot_ids(repo_env) == [ids[3]]


# ----- prune: two phases -------------------------------------------------------------------------
def test_prune_marks_then_deletes_after_grace(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"big": os.urandom(2_000_000), "small": os.urandom(20_000)})
    backup_at(repo_env, src, "files", T)
    expected = write_tree(src, {"small": (src / "small").read_bytes(), "new": os.urandom(30_000)})
    keep = backup_at(repo_env, src, "files", T + DAY)
    assert repo_env.run("forget", "--keep-last", "1").code == 0
    packs_before = repo_files(repo_env, "packs/")

    mark = run_prune(repo_env, T + 2 * DAY)
    assert mark.packs_condemned >= 2 and mark.packs_repacked == 1 and mark.packs_deleted == 0
    assert mark.next_deletion == T + 3 * DAY
    assert packs_before <= repo_files(repo_env, "packs/")  # nothing deleted yet
    assert_check_ok(repo_env)

    early = run_prune(repo_env, T + 2 * DAY + dt.timedelta(hours=23))
    assert early.packs_deleted == 0 and early.packs_pending == mark.packs_condemned

    sweep = run_prune(repo_env, T + 3 * DAY + dt.timedelta(seconds=1))
    assert sweep.packs_deleted == mark.packs_condemned and sweep.bytes_freed > 2_000_000
    assert packs_before - repo_files(repo_env, "packs/")
    assert_check_ok(repo_env)
    assert restored(repo_env, keep, tmp_path / "out") == expected

    final = run_prune(repo_env, T + 4 * DAY)
    assert final.packs_pending == 0 and final.unused_bytes == 0 and final.packs_condemned == 0
    assert repo_files(repo_env, "prune/") == set()
    assert len(repo_files(repo_env, "index/")) == 1


def test_prune_max_unused_tolerates_waste(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"a": os.urandom(300_000), "b": os.urandom(300_000)})
    backup_at(repo_env, src, "files", T)
    write_tree(src, {"a": (src / "a").read_bytes()})
    backup_at(repo_env, src, "files", T + DAY)
    assert repo_env.run("forget", "--keep-last", "1").code == 0
    lenient = repo_env.run("prune", "--max-unused", "60%", "--dry-run", "--json")
    assert lenient.code == 0, lenient.err
    assert json.loads(lenient.out)["packs_repacked"] == 0
    strict = json.loads(repo_env.run("prune", "--max-unused", "10%", "--dry-run", "--json").out)
    assert strict["packs_repacked"] == 1 and strict["dry_run"]


def test_prune_dry_run_changes_nothing(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    forget_first_of_two(repo_env, src, {"a": os.urandom(300_000)}, {"b": os.urandom(300_000)})
    before = {p: (repo_env.repo / p).read_bytes() for p in repo_files(repo_env) if not p.startswith("locks/")}
    result = repo_env.run("prune", "--dry-run", "--grace", "0s")
    assert result.code == 0 and "would condemn" in result.out
    after = {p: (repo_env.repo / p).read_bytes() for p in repo_files(repo_env) if not p.startswith("locks/")}
    assert before == after


def backup_with_index_as_loaded(session: Session, src: Path, name: str, when: dt.datetime) -> str:
    """A backup whose index view predates the prune mark (say its lock went stale mid-run):
    what backup_paths does, minus reloading the index at the start."""
    from drtool.backup.pipeline import ChunkPipeline
    from drtool.backup.treewalk import TreeWalker
    from drtool.snapshot.model import Snapshot
    from drtool.snapshot.store import save_snapshot

    repo = session.repo
    pipeline = ChunkPipeline(repo)
    try:
        walker = TreeWalker(repo, pipeline)
        tree = walker.backup_roots([str(src)], None)
    finally:
        pipeline.close()
    repo.flush()
    snap = Snapshot(name=name, host=session.host, time=when, tree=tree, paths=[str(src)],
                    summary={"files": walker.stats.files, "size": walker.stats.size})
    return save_snapshot(repo, snap)


def test_prune_spares_blob_reused_by_backup_with_stale_index(repo_env: DrEnv, tmp_path: Path) -> None:
    """A backup that loaded the index before the mark dedups against a condemned pack;
    its snapshot lands after the mark, so the sweep must keep (and re-index) that pack."""
    src = tmp_path / "src"
    payload = os.urandom(400_000)
    forget_first_of_two(repo_env, src, {"f": payload}, {"g": os.urandom(1000)})
    with repo_env.session() as stale:
        stale.repo.load_index()  # this host's view from before the prune
        mark = run_prune(repo_env, T + 2 * DAY)
        assert mark.packs_condemned >= 1
        expected = write_tree(src, {"f": payload})
        late = backup_with_index_as_loaded(stale, src, "files", T + 2 * DAY)
    sweep = run_prune(repo_env, T + 4 * DAY)
    assert sweep.packs_spared >= 1
    assert_check_ok(repo_env)
    assert restored(repo_env, late, tmp_path / "out") == expected


def test_prune_spares_pack_listed_by_index_written_after_mark(repo_env: DrEnv, tmp_path: Path) -> None:
    """A pack uploaded by a backup whose index arrives after the mark is never deleted."""
    with repo_env.session() as session:
        repo = session.repo
        blob = os.urandom(5000)
        builder = PackBuilder()
        builder.add(seal_group(repo.envelope, DATA_BLOB, [(repo.ids.blob_id(blob), blob)]))
        pack_id, data = builder.finish(repo.envelope)
        repo.backend.put(pack_name(pack_id), data)  # a pack without its index yet
        entries = builder.entries
    mark = run_prune(repo_env, T)
    assert mark.packs_condemned == 1
    with repo_env.session() as session:
        session.repo.write_index([PackRecord(pack_id, entries)])  # the backup's index, late
    sweep = run_prune(repo_env, T + 2 * DAY)
    assert sweep.packs_deleted == 0 and sweep.packs_spared == 1
    assert sweep.packs_condemned == 1  # still unused: condemned anew, the grace period restarts
    assert pack_name(pack_id) in repo_files(repo_env, "packs/")
    assert run_prune(repo_env, T + 2 * DAY + dt.timedelta(hours=23)).packs_deleted == 0
    assert run_prune(repo_env, T + 3 * DAY).packs_deleted == 1
    assert_check_ok(repo_env)


def test_prune_refuses_when_used_data_is_missing(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"f": os.urandom(100_000)})
    backup_at(repo_env, src, "files", T)
    victim = sorted(repo_files(repo_env, "packs/"))[0]
    (repo_env.repo / victim).unlink()
    before = repo_files(repo_env)
    result = repo_env.run("prune", "--grace", "0s")
    assert result.code == 1 and "prune refuses" in result.err
    assert repo_files(repo_env) == before


# ----- prune: kill -9 at every phase ----------------------------------------------------------------
def _crash_fixture(dr: DrEnv, tmp: Path) -> dict[str, dict[str, bytes]]:
    """Three snapshots, the oldest forgotten: one pack to repack, some to condemn."""
    src = tmp / "src"
    rng = random.Random(7)
    a, b, c = rng.randbytes(600_000), rng.randbytes(200_000), rng.randbytes(400_000)
    trees = [{"a": a, "b": b}, {"b": b, "c": c},
             {"c": c, "d": rng.randbytes(100_000), "e": rng.randbytes(50_000)}]
    expected = {}
    for i, files in enumerate(trees):
        write_tree(src, files)
        expected[backup_at(dr, src, "files", T + i * DAY)] = files
    assert dr.run("forget", "--keep-last", "2").code == 0
    return {k: v for k, v in expected.items() if k in snapshot_ids(dr)}


@pytest.mark.parametrize("point", prune_ops.CRASH_POINTS)
def test_prune_killed_at_every_phase_loses_nothing(repo_env: DrEnv, tmp_path: Path, point: str) -> None:
    expected = _crash_fixture(repo_env, tmp_path)
    assert len(expected) == 2
    crashed = False
    for _attempt in range(3):
        proc = repo_env.spawn("prune", "--grace", "0s", "--max-unused", "0%",
                              env={"DRTOOL_CRASH_AT": point})
        if proc.returncode == -signal.SIGKILL:
            crashed = True
            break
        assert proc.returncode == 0, proc.stderr
    assert crashed, f"crash point {point} was never reached"

    def verify(round_: str) -> None:
        assert_check_ok(repo_env)
        for snap_id, files in expected.items():
            assert restored(repo_env, snap_id, tmp_path / f"{round_}-{snap_id[:8]}") == files

    verify("after-crash")
    for _ in range(3):
        result = repo_env.run("prune", "--grace", "0s", "--max-unused", "0%")
        assert result.code == 0, result.err
    verify("recovered")
    final = json.loads(repo_env.run("prune", "--grace", "0s", "--json").out)
    assert final["packs_pending"] == 0 and final["unused_bytes"] == 0


# ----- prune with backups running at the same time -------------------------------------------------
def test_backups_concurrent_with_forget_and_prune_lose_nothing(repo_env: DrEnv, tmp_path: Path) -> None:
    """Backups and forget+prune (grace 0) alternate on the lock; nothing committed is lost."""
    src = tmp_path / "src"
    rng = random.Random(3)
    expected: dict[str, dict[str, bytes]] = {}
    errors: list[BaseException] = []
    progress = threading.Condition()
    done: list[int] = []  # backups finished so far (one entry each; -1 marks the end)
    rounds: list[int] = []

    def session() -> Session:
        return api.open_repository(str(repo_env.repo), PASSWORD.encode(), catalog=str(repo_env.catalog),
                                   lock_wait=60)

    def backups() -> None:
        try:
            for i in range(8):
                files = {f"f{j}": rng.randbytes(150_000) for j in range(i, i + 3)}
                write_tree(src, files)
                with session() as s:
                    expected[backup_paths(s, [str(src)], "files").snapshot.id] = files
                with progress:
                    done.append(i)
                    progress.notify_all()
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
        finally:
            with progress:
                done.append(-1)
                progress.notify_all()

    def pruner() -> None:
        try:
            for round_ in range(6):
                with progress:  # let a new backup land between rounds; backups never wait
                    progress.wait_for(lambda: len(done) >= round_ + 3 or -1 in done, timeout=60)
                with session() as s:
                    forget_ops.forget(s, lambda _n: RetentionPolicy(keep_last=2))
                with session() as s:
                    report = prune_ops.prune(s, prune_ops.PruneOptions(grace=dt.timedelta(0),
                                                                       max_unused=0))
                rounds.append(report.packs_deleted)
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=backups), threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sum(rounds) > 0  # prune really deleted data while backups went on
    assert_check_ok(repo_env)
    remaining = snapshot_ids(repo_env)
    assert remaining and set(remaining) <= set(expected)
    for snap_id in remaining:
        assert restored(repo_env, snap_id, tmp_path / f"out-{snap_id[:8]}") == expected[snap_id]
    assert len(remaining) >= 2


# ----- Object Lock -------------------------------------------------------------------------------
class LockingBackend(LocalBackend):
    """A local backend with S3-style Object Lock retention (refuses to delete locked objects)."""

    def __init__(self, root: Path, now: dt.datetime) -> None:
        super().__init__(root)
        self.now = now
        self.until: dict[str, dt.datetime] = {}

    def retention_until(self, name: str) -> dt.datetime | None:
        return self.until.get(name)

    def is_locked(self, name: str) -> bool:
        until = self.until.get(name)
        return until is not None and until > self.now

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        self.until[name] = max(until, self.until.get(name, until))

    def delete(self, name: str) -> None:
        if self.is_locked(name):
            raise BackendError(f"object {name} is locked")
        super().delete(name)


def test_prune_respects_and_extends_object_lock(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    keep = forget_first_of_two(repo_env, src, {"a": os.urandom(300_000)}, {"b": os.urandom(300_000)})
    backend = LockingBackend(repo_env.repo, T + 2 * DAY)
    for name in repo_files(repo_env):
        backend.until[name] = T + 3 * DAY  # everything written under a short retention
    options = OpenOptions(str(repo_env.repo), PASSWORD.encode(), str(repo_env.catalog))

    def prune_at(now: dt.datetime) -> prune_ops.PruneReport:
        backend.now = now
        with Session.open(options, backend=backend) as session:
            return prune_ops.prune(session, prune_ops.PruneOptions(
                clock=lambda: now, grace=dt.timedelta(0), object_lock_days=30))

    mark = prune_at(T + 2 * DAY)
    assert mark.packs_condemned >= 1 and mark.retention_extended >= 3
    assert backend.until[f"snapshots/{keep}"] == T + 32 * DAY
    condemned_packs = repo_files(repo_env, "packs/") - {n for n, u in backend.until.items()
                                                        if u == T + 32 * DAY}
    assert condemned_packs and all(backend.until[p] == T + 3 * DAY for p in condemned_packs)
    blocked = prune_at(T + 2 * DAY + dt.timedelta(hours=1))
    assert blocked.packs_deleted == 0 and blocked.locked_skipped >= 1 and not blocked.warnings
    assert condemned_packs <= repo_files(repo_env, "packs/")
    expired = prune_at(T + 3 * DAY + dt.timedelta(hours=1))
    assert expired.packs_deleted == len(condemned_packs)
    assert not condemned_packs & repo_files(repo_env, "packs/")
    assert_check_ok(repo_env)


def test_prune_record_is_sealed(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    forget_first_of_two(repo_env, src, {"a": os.urandom(100_000)}, {"b": os.urandom(100_000)})
    run_prune(repo_env, T + 2 * DAY)
    (record,) = repo_files(repo_env, "prune/")
    raw = (repo_env.repo / record).read_bytes()
    assert b"condemned" not in raw  # encrypted, not plain JSON
    (repo_env.repo / record).write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    tampered = run_prune(repo_env, T + 4 * DAY)
    assert tampered.packs_deleted == 0 and any("unreadable prune record" in w for w in tampered.warnings)
    assert tampered.packs_pending >= 1  # condemned anew: the grace period starts again


def test_prune_removes_temporaries_of_killed_writes_once_they_are_old(repo_env: DrEnv,
                                                                       tmp_path: Path) -> None:
    """A killed backup leaves the pack it was streaming as packs/.tmp-*; prune cleans it up."""
    src = tmp_path / "src"
    write_tree(src, {"f": os.urandom(50_000)})
    backup_at(repo_env, src, "files", T)
    packs = repo_env.repo / "packs"
    old, fresh = packs / ".tmp-killed-long-ago", packs / ".tmp-being-written"
    old.write_bytes(os.urandom(4096))
    fresh.write_bytes(os.urandom(4096))
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))

    dry = run_prune(repo_env, T + DAY, dry_run=True)
    assert dry.temporaries_removed == 0 and old.exists()  # a dry run deletes nothing
    report = run_prune(repo_env, T + DAY)
    assert report.temporaries_removed == 1
    assert not old.exists() and fresh.exists()  # younger than the grace period: maybe still in use
    assert_check_ok(repo_env)
