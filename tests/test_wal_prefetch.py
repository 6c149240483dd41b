"""WAL fetched ahead of PostgreSQL by the restore (``databases.wal_prefetch``) and the fetch script's use
of it.  The prefetcher gets its files through an injected fetch function and a "server" thread takes
them from the spool as the fetch script does; the script itself runs under /bin/sh.  The same path
with a real server and repository: tests/test_postgres_pitr.py (every planned file taken from the
spool; a file missing from the archive stops the prefetch and recovery ends short, as before)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from drtool.databases.logarchive import SegmentNotArchived
from drtool.databases.wal_prefetch import SPOOL_NAME, WalPrefetcher, read_plan, serve, should_start, write_plan
from drtool.sources.postgres import write_fetch_script

NAMES = [f"0000000100000000000000{n:02X}" for n in range(1, 11)]


def _content(name: str) -> bytes:
    return name.encode() * 100  # 2,400 bytes, different for each file


class Server:
    """Asks for the files in order as the fetch script does (its name into ``.asked``, then ``mv
    "$spool/$1" "$2"``), each once it is spooled (a server slower than the prefetch), except
    ``skip``, which it asks for at once and fetches the old way (as when the prefetch is behind);
    records the most bytes it ever saw waiting in the spool."""

    def __init__(self, spool: Path, dest: Path, skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.spool, self.dest, self.skip = spool, dest, skip
        self.most_waiting = 0
        self.taken: list[str] = []

    def take(self, names: list[str], timeout: float = 10.0) -> None:
        for name in names:
            if name in self.skip:
                (self.spool / ".asked").write_text(name + "\n")
                continue
            deadline = time.monotonic() + timeout
            while not (self.spool / name).exists():
                waiting = sum(p.stat().st_size for p in self.spool.glob("0*") if p.exists())
                self.most_waiting = max(self.most_waiting, waiting)
                assert time.monotonic() < deadline, f"{name} never spooled"
                time.sleep(0.005)
            (self.spool / ".asked").write_text(name + "\n")
            os.replace(self.spool / name, self.dest / name)
            self.taken.append(name)


def test_files_arrive_in_order_whole_and_never_more_than_the_queue(tmp_path: Path) -> None:
    spool, dest = tmp_path / "spool", tmp_path / "pg_wal"
    dest.mkdir()
    fetched: list[str] = []

    def fetch(name: str) -> bytes:
        fetched.append(name)
        return _content(name)
    server = Server(spool, dest)
    with WalPrefetcher(fetch, [(n, 2400) for n in NAMES], str(spool), queue_bytes=3 * 2400) as prefetch:
        server.take(NAMES)
    assert sorted(fetched) == NAMES and server.taken == NAMES  # each once (two fetchers: any order)
    assert all((dest / n).read_bytes() == _content(n) for n in NAMES)
    assert server.most_waiting <= 3 * 2400
    assert (prefetch.fetched, prefetch.taken, prefetch.failure) == (10, 10, "")
    assert not spool.exists()


def test_files_the_server_fetched_itself_are_skipped_or_dropped(tmp_path: Path) -> None:
    """The server asked for three files before they were spooled and fetched them the old way: the
    prefetch skips what the server has reached and drops what it spooled too late, else a queue
    holding a stale file would stop it for good."""
    spool, dest = tmp_path / "spool", tmp_path / "pg_wal"
    dest.mkdir()
    late = {NAMES[1], NAMES[2], NAMES[3]}
    fetching, slow = threading.Event(), threading.Event()

    def fetch(name: str) -> bytes:
        if name in late:
            fetching.set()
            slow.wait(10)  # still fetching when the server asks for it
        return _content(name)
    server = Server(spool, dest, skip=late)
    with WalPrefetcher(fetch, [(n, 2400) for n in NAMES], str(spool), queue_bytes=2400,
                       fetchers=1) as prefetch:
        server.take(NAMES[:1])
        assert fetching.wait(10)  # the prefetch is fetching the second file ...
        server.take(NAMES[1:4])   # ... when the server asks for it and two more, and fetches them itself
        slow.set()                # the second file is spooled now, stale, filling the queue of one
        server.take(NAMES[4:])
    assert server.taken == [n for n in NAMES if n not in late]
    assert prefetch.taken == 7 and not spool.exists()


def test_a_failed_fetch_stops_the_prefetch_and_leaves_the_rest_to_the_server(tmp_path: Path) -> None:
    spool, dest = tmp_path / "spool", tmp_path / "pg_wal"
    dest.mkdir()

    def fetch(name: str) -> bytes:
        if name == NAMES[3]:
            raise SegmentNotArchived(f"wal file {name} of source pg is not in the archive")
        return _content(name)
    server = Server(spool, dest)
    with WalPrefetcher(fetch, [(n, 2400) for n in NAMES], str(spool), fetchers=1) as prefetch:
        server.take(NAMES[:3])
        deadline = time.monotonic() + 10
        while not prefetch.failure and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sorted(p.name for p in spool.iterdir()) == [".asked"]  # nothing after the failure, no part file
    assert prefetch.failure == f"{NAMES[3]}: wal file {NAMES[3]} of source pg is not in the archive"
    assert (prefetch.fetched, prefetch.taken) == (3, 3) and not spool.exists()


def test_an_unexpected_error_stops_the_prefetch_quietly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Not a drtool error (a bug, a library's own exception): no traceback from the thread, the same
    fallback to the server's own fetches."""
    def fetch(name: str) -> bytes:
        raise KeyError(name)
    with WalPrefetcher(fetch, [(n, 2400) for n in NAMES], str(tmp_path / "spool")) as prefetch:
        deadline = time.monotonic() + 10
        while not prefetch.failure and time.monotonic() < deadline:
            time.sleep(0.005)
    assert prefetch.failure.startswith(f"{NAMES[0]}: KeyError") or prefetch.failure.startswith(f"{NAMES[1]}: KeyError")
    assert prefetch.fetched == 0 and "Traceback" not in capfd.readouterr().err


def test_several_fetches_are_in_flight_at_once_within_the_queue(tmp_path: Path) -> None:
    """Three fetchers: three files are fetched at the same time (a barrier that only three callers
    pass), files land out of order and are all taken; in flight counts against the queue."""
    spool, dest = tmp_path / "spool", tmp_path / "pg_wal"
    dest.mkdir()
    together = threading.Barrier(3, timeout=10)
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def fetch(name: str) -> bytes:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        if name in NAMES[:3]:
            together.wait()  # raises BrokenBarrierError unless three run at once
        with lock:
            in_flight[0] -= 1
        return _content(name)
    server = Server(spool, dest)
    with WalPrefetcher(fetch, [(n, 2400) for n in NAMES], str(spool), queue_bytes=4 * 2400,
                       fetchers=3) as prefetch:
        server.take(NAMES)
    assert server.taken == NAMES and prefetch.taken == 10 and most[0] == 3
    assert server.most_waiting <= 4 * 2400


def test_stopping_while_the_queue_is_full_returns_at_once(tmp_path: Path) -> None:
    """Recovery ended (or failed) with files still waiting: leaving the block does not wait for them."""
    spool = tmp_path / "spool"
    started = time.monotonic()
    with WalPrefetcher(_content, [(n, 2400) for n in NAMES], str(spool), queue_bytes=2400) as prefetch:
        deadline = time.monotonic() + 10
        while prefetch.fetched < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert time.monotonic() - started < 5 and prefetch.fetched == 1 and not spool.exists()
    assert threading.active_count() >= 1  # the prefetch thread was joined by __exit__ (no hang above)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """The restore_command script as a restore writes it, with an interpreter that does not exist:
    whatever reaches drtool fails (126), so exit 0 means the spool answered."""
    datadir = tmp_path / "data"
    (datadir / "pg_wal").mkdir(parents=True)
    return Path(write_fetch_script(str(datadir), "pg", {"DRTOOL_REPOSITORY": "/nowhere"},
                                   str(tmp_path / "no-python"), spool=str(datadir / "drtool-wal-prefetch")))


def test_the_script_moves_a_spooled_file_into_place_without_starting_drtool(script: Path) -> None:
    datadir = script.parent
    (datadir / "drtool-wal-prefetch").mkdir()
    (datadir / "drtool-wal-prefetch" / NAMES[0]).write_bytes(_content(NAMES[0]))
    done = subprocess.run([str(script), NAMES[0], "pg_wal/RECOVERYXLOG"], cwd=datadir, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (datadir / "pg_wal" / "RECOVERYXLOG").read_bytes() == _content(NAMES[0])
    assert [p.name for p in (datadir / "drtool-wal-prefetch").iterdir()] == [".asked"]
    assert (datadir / "drtool-wal-prefetch" / ".asked").read_text() == NAMES[0] + "\n"  # how far the server is


@pytest.mark.parametrize("spooled", [False, True])
def test_a_file_not_spooled_goes_to_drtool(script: Path, spooled: bool) -> None:
    """No spool directory (a restore without --start), or another file spooled: drtool is asked."""
    datadir = script.parent
    if spooled:
        (datadir / "drtool-wal-prefetch").mkdir()
        (datadir / "drtool-wal-prefetch" / NAMES[1]).write_bytes(_content(NAMES[1]))
    asked = subprocess.run([str(script), "00000002.history", "pg_wal/RECOVERYHISTORY"], cwd=datadir,
                           capture_output=True, text=True)
    assert asked.returncode == 126 and "no-python" in asked.stderr  # it tried to run drtool
    assert not (datadir / "pg_wal" / "RECOVERYHISTORY").exists()


# ----- the detached prefetch of a restore without --start (wal_prefetch.serve) ------------------------
@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    """A data directory in recovery whose server is alive (postmaster.pid names this process), with a
    restore's plan of ten files in its spool."""
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    (data / "recovery.signal").write_text("")
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n")
    write_plan(str(data / SPOOL_NAME), [(n, 2400) for n in NAMES])
    return data


def _serving(data: Path, fetch: Callable[[str], bytes] = _content,
             idle_seconds: float = 60.0) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(
        prefetch=serve(fetch, str(data / SPOOL_NAME), poll=0.01, idle_seconds=idle_seconds)))
    thread.start()
    return thread, out


def _ended(thread: threading.Thread) -> bool:
    thread.join(timeout=20)
    return not thread.is_alive()


def test_a_plan_is_served_until_every_file_was_taken_and_then_removed(datadir: Path) -> None:
    spool = datadir / SPOOL_NAME
    assert read_plan(str(spool)) == [(n, 2400) for n in NAMES] and should_start(str(spool))
    thread, out = _serving(datadir)
    Server(spool, datadir / "pg_wal").take(NAMES)
    assert _ended(thread)
    assert (out["prefetch"].fetched, out["prefetch"].taken) == (10, 10)
    assert not spool.exists() and not should_start(str(spool))  # nothing for a later fetch to start


def test_the_end_of_recovery_ends_the_process_and_removes_the_spool(datadir: Path) -> None:
    spool = datadir / SPOOL_NAME
    thread, out = _serving(datadir)
    Server(spool, datadir / "pg_wal").take(NAMES[:3])  # a target reached after three files
    (datadir / "recovery.signal").unlink()             # PostgreSQL promoted
    assert _ended(thread) and out["prefetch"].taken == 3 and not spool.exists()


@pytest.mark.parametrize("why", ["server gone", "idle"])
def test_a_stopped_or_idle_server_keeps_the_plan_for_a_later_start(datadir: Path, why: str) -> None:
    """The operator stopped the server mid-recovery (or it paused): spooled files go, the plan stays,
    and the next wal-fetch after a restart starts a new process that goes on from there."""
    spool = datadir / SPOOL_NAME
    thread, _out = _serving(datadir, idle_seconds=0.5 if why == "idle" else 60.0)
    Server(spool, datadir / "pg_wal").take(NAMES[:2])
    if why == "server gone":
        gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
        (datadir / "postmaster.pid").write_text(f"{gone}\n")  # a pid that exited
    assert _ended(thread)
    assert sorted(p.name for p in spool.iterdir()) == [".asked", ".lock", "plan"]
    assert should_start(str(spool))
    (datadir / "postmaster.pid").write_text(f"{os.getpid()}\n")  # the server started again
    thread, out = _serving(datadir)  # it goes on after what the server asked for last
    Server(spool, datadir / "pg_wal").take(NAMES[2:])
    assert _ended(thread) and out["prefetch"].taken == 8 and not spool.exists()


def test_a_second_process_finds_the_plan_served_and_exits(datadir: Path) -> None:
    spool = datadir / SPOOL_NAME
    holder = os.open(spool / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not should_start(str(spool))
        assert serve(_content, str(spool), poll=0.01) is None
        assert (spool / "plan").exists() and not list(spool.glob("0*"))  # it fetched nothing
    finally:
        os.close(holder)


def test_a_failed_fetch_removes_the_plan_so_no_process_starts_again(datadir: Path) -> None:
    spool = datadir / SPOOL_NAME

    def fetch(name: str) -> bytes:
        if name == NAMES[2]:
            raise SegmentNotArchived(f"wal file {name} of source pg is not in the archive")
        return _content(name)
    thread, out = _serving(datadir, fetch)
    Server(spool, datadir / "pg_wal").take(NAMES[:2])
    for name in NAMES[2:]:  # the server goes on as the script does: a spooled file, else its own fetch
        with contextlib.suppress(OSError):  # the process may remove the spool at any moment
            (spool / ".asked").write_text(name + "\n")
            os.replace(spool / name, datadir / "pg_wal" / name)
    assert _ended(thread) and out["prefetch"].failure.startswith(NAMES[2])
    assert not spool.exists() and not should_start(str(spool))


def test_a_plan_that_does_not_parse_is_no_plan(tmp_path: Path) -> None:
    (tmp_path / "plan").write_text("000000010000000000000001 not-a-size\n")
    assert read_plan(str(tmp_path)) == [] and read_plan(str(tmp_path / "absent")) == []


def test_the_script_passes_the_spool_to_wal_fetch(script: Path) -> None:
    text = script.read_text()
    assert 'wal-fetch --source pg --absent-exit-code 99 --spool "$spool" "$1" "$2"' in text


def test_a_spool_is_served_only_for_the_server_in_its_data_directory(datadir: Path, tmp_path: Path) -> None:
    """restore_command runs in the server's data directory: a restored directory copied elsewhere and
    started there still names the first one's spool, whose plan no process would serve usefully."""
    spool = str(datadir / SPOOL_NAME)
    elsewhere = tmp_path / "copied"
    elsewhere.mkdir()
    assert should_start(spool, server_dir=str(datadir)) and should_start(spool)
    assert not should_start(spool, server_dir=str(elsewhere))
    assert not should_start(spool, server_dir=str(tmp_path / "absent"))


def test_a_spool_gone_before_the_process_looks_is_nothing_to_serve(tmp_path: Path) -> None:
    """Recovery ended (the spool removed) between the fetch that started the process and its start."""
    assert serve(_content, str(tmp_path / "gone" / SPOOL_NAME), poll=0.01) is None
