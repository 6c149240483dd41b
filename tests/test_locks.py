"""Repository locks: staleness with an injected clock, refresh failure aborts
before the commit, removed locks are not resurrected, CLI locks/unlock."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, DrEnv
from drtool.backends.local import LocalBackend
from drtool.errors import LockHeld
from drtool.maintain import prune as prune_ops
from drtool.backup.run import backup_paths
from drtool.core.session import OpenOptions, Session
from drtool.repository.locks import Lock, read_locks
from drtool.testing import FaultyBackend

T0 = 1_800_000_000.0


class Clock:
    """A settable clock for Lock (seconds since the epoch)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LockingSession(Session):
    """A session whose locks refresh quickly, so tests can watch refreshes fail."""

    refresh = 0.02

    def lock(self, command: str, exclusive: bool = False) -> Lock:
        return Lock(self.repo, exclusive, command, host=self.host,
                    refresh=self.refresh).acquire(wait=self.options.lock_wait)


def open_session(dr: DrEnv, backend=None, cls: type[Session] = Session, lock_wait: float = 0.0) -> Session:
    options = OpenOptions(str(dr.repo), PASSWORD.encode(), str(dr.catalog), lock_wait=lock_wait)
    return cls.open(options, backend=backend)


def source(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    for i in range(3):
        (src / f"f{i}").write_bytes(bytes([i]) * 50_000)
    return src


def test_stale_lock_is_ignored_only_after_stale_after(repo_env: DrEnv) -> None:
    with repo_env.session() as session:
        clock = Clock()
        crashed = Lock(session.repo, True, "prune", clock=clock, host="other-host", refresh=3600).acquire()
        try:
            with pytest.raises(LockHeld, match="exclusive lock"):
                Lock(session.repo, False, "backup", clock=Clock(T0 + 100), host="me").acquire()
            late = Lock(session.repo, False, "backup", clock=Clock(T0 + 301), host="me").acquire()
            assert any("stale" in w for w in late.warnings)
            late.release()
        finally:
            crashed.release()
        assert read_locks(session.repo) == []


def test_shared_locks_coexist_and_exclusive_waits(repo_env: DrEnv) -> None:
    with repo_env.session() as session:
        first = Lock(session.repo, False, "backup", host="a").acquire()
        second = Lock(session.repo, False, "backup", host="b").acquire()
        with pytest.raises(LockHeld):
            Lock(session.repo, True, "prune", host="c").acquire(wait=0.3)
        second.release()
        threading.Timer(0.3, first.release).start()
        started = time.monotonic()
        exclusive = Lock(session.repo, True, "prune", host="c").acquire(wait=10)
        assert 0.2 < time.monotonic() - started < 8
        exclusive.release()


def test_refresh_failure_marks_lock_lost(repo_env: DrEnv) -> None:
    backend = FaultyBackend(LocalBackend(repo_env.repo))
    backend.add_rule("put", prefix="locks/", nth=2, times=0)  # the first write succeeds
    with open_session(repo_env, backend) as session:
        lock = Lock(session.repo, False, "backup", refresh=0.02).acquire()
        deadline = time.monotonic() + 10
        while lock.lost is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lock.lost and "could not refresh" in lock.lost
        with pytest.raises(LockHeld, match="could not refresh"):
            lock.ensure_held()
        lock.release()


def test_backup_aborts_before_commit_when_refresh_fails(repo_env: DrEnv, tmp_path: Path) -> None:
    backend = FaultyBackend(LocalBackend(repo_env.repo))
    backend.add_rule("put", prefix="locks/", nth=2, times=0)
    src = source(tmp_path)

    def wait_for_refresh_failure(_stats: object) -> None:
        deadline = time.monotonic() + 5
        while not any(i.op == "put" for i in backend.injected) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)

    with open_session(repo_env, backend, LockingSession) as session:
        with pytest.raises(LockHeld, match="could not refresh"):
            backup_paths(session, [str(src)], "n", progress=wait_for_refresh_failure)
    assert json.loads(repo_env.run("snapshots", "--json").out) == []
    assert repo_env.run("check", "--read-data").code == 0


def test_suspended_holder_counts_itself_lost(repo_env: DrEnv) -> None:
    """A process that slept past stale_after may have been ignored by others: it must not commit."""
    with repo_env.session() as session:
        clock = Clock()
        lock = Lock(session.repo, False, "backup", clock=clock, refresh=3600).acquire()
        clock.now += 200
        lock.ensure_held()
        clock.now += 200
        with pytest.raises(LockHeld, match="last refreshed"):
            lock.ensure_held()
        lock.release()


def test_removed_lock_is_not_resurrected(repo_env: DrEnv) -> None:
    with repo_env.session() as session:
        lock = Lock(session.repo, True, "prune", refresh=3600).acquire()
        session.repo.backend.delete(f"locks/{lock.lock_id}")  # 'drtool unlock --force' elsewhere
        with pytest.raises(LockHeld, match="removed by another process"):
            lock.refresh()
        assert read_locks(session.repo) == []
        lock.release()


def test_prune_aborts_before_any_change_when_lock_is_lost(repo_env: DrEnv, tmp_path: Path) -> None:
    src = source(tmp_path)
    assert repo_env.run("backup", str(src), "--name", "a").code == 0
    (src / "f0").write_bytes(b"changed" * 1000)
    assert repo_env.run("backup", str(src), "--name", "a").code == 0
    assert repo_env.run("forget", "--keep-last", "1").code == 0
    before = sorted(p.relative_to(repo_env.repo) for p in repo_env.repo.rglob("*") if p.is_file())
    with repo_env.session() as session:
        clock = Clock(time.time())
        lock = Lock(session.repo, True, "prune", clock=clock, refresh=3600).acquire()
        clock.now += 1000  # as if suspended: the first ensure_held must stop prune
        with pytest.raises(LockHeld):
            prune_ops.Pruner(session, lock, prune_ops.PruneOptions(max_unused=0)).run()
        lock.release()
    after = sorted(p.relative_to(repo_env.repo) for p in repo_env.repo.rglob("*") if p.is_file())
    assert before == after


def test_prune_cli_refuses_while_a_backup_holds_the_lock(repo_env: DrEnv) -> None:
    with repo_env.session() as session:
        lock = Lock(session.repo, False, "backup", host="elsewhere").acquire()
        result = repo_env.run("prune")
        lock.release()
    assert result.code == 11, result.err
    assert "locked" in result.err


def test_locks_lists_and_unlock_removes_only_stale(repo_env: DrEnv) -> None:
    with repo_env.session() as session:
        old = Lock(session.repo, False, "backup", clock=lambda: time.time() - 1000, host="crashed",
                   refresh=3600).acquire()
        live = Lock(session.repo, False, "backup", host="busy", refresh=3600).acquire()
        listed = json.loads(repo_env.run("locks", "--json").out)
        assert {(r["host"], r["stale"]) for r in listed} == {("crashed", True), ("busy", False)}
        assert all(r["heartbeat_age_seconds"] >= 0 for r in listed)
        text = repo_env.run("locks").out
        assert "STALE" in text and "shared" in text
        removed = json.loads(repo_env.run("unlock", "--json").out)
        assert [r["id"] for r in removed] == [old.lock_id]
        forced = repo_env.run("unlock", "--force")
        assert forced.code == 0 and "warning" in forced.err and "still live" in forced.out
        assert read_locks(session.repo) == []
        with pytest.raises(LockHeld):
            live.refresh()
        old.release()
        live.release()
    assert repo_env.run("locks").out.strip() == "no locks"
