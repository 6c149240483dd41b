"""Restores from remote stores, and bandwidth limits.

Promises: a restore from a store with the ConcurrentReads capability reads
neighbouring groups of a pack together (fewer reads than groups), keeps at
most ``connections`` reads in flight and at most ``connections * request``
bytes, writes exactly the files, and fails the files of a read that fails; a store that streams reads a pack's groups
(gaps and all) with one request, hands each on with exactly its bytes within the
window, and a stream that breaks fails only the groups not yet handed on;
the token bucket holds its rate within 5 % over a 30 s transfer (injected
clock) for small and large requests from many threads; a real transfer
through moto is slowed to the limit and the limits and time waited show in
``--json``; a rate that is not one is a usage error naming the option.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, DrEnv
from drtool.backends import capabilities
from drtool.backends.local import LocalBackend
from drtool.backends.throttle import TokenBucket, parse_rate
from drtool.core.session import OpenOptions, Session
from drtool.errors import TransientBackendError, UsageError
from drtool.restore.run import Restorer
from drtool.snapshot.model import FILE
from drtool.snapshot.store import walk_tree
from drtool.testing import FaultyBackend

from s3server import MotoServer, client_env, create_bucket, moto_server  # noqa: F401

MiB = 1024 * 1024
REQUEST = 5 * MiB  # two 2 MiB groups of media


class RemoteLike(FaultyBackend):
    """A local repository that answers like a far store: each pack read takes 20 ms, and reads
    in flight (count and bytes) are recorded.  It has the ConcurrentReads capability."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.reads: list[tuple[str, int, int]] = []
        self.inflight = self.max_inflight = self.inflight_bytes = self.max_inflight_bytes = 0
        self.count_lock = threading.Lock()

    def read_concurrency(self) -> tuple[int, int]:
        return 2, REQUEST

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if not name.startswith("packs/"):
            return super().get_range(name, offset, length)
        with self.count_lock:
            self.reads.append((name, offset, length or 0))
            self.inflight += 1
            self.inflight_bytes += length or 0
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.max_inflight_bytes = max(self.max_inflight_bytes, self.inflight_bytes)
        try:
            time.sleep(0.02)
            return super().get_range(name, offset, length)
        finally:
            with self.count_lock:
                self.inflight -= 1
                self.inflight_bytes -= length or 0


def _media_tree(root: Path, files: int = 70, size: int = 300_000) -> Path:
    rng = random.Random(5)
    for i in range(files):
        folder = root / f"d{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.jpg").write_bytes(rng.randbytes(size + i))
    return root


def _session(env: DrEnv, backend) -> Session:  # type: ignore[no-untyped-def]
    return Session.open(OpenOptions(str(env.repo), PASSWORD.encode(), str(env.catalog)), backend=backend)


def _data_groups(session: Session, snap) -> set[tuple[bytes, int]]:  # type: ignore[no-untyped-def]
    groups = set()
    for _path, node in walk_tree(session.repo, snap.tree):
        if node.type == FILE:
            for hexid in node.content:
                loc = session.repo.locate(bytes.fromhex(hexid))
                groups.add((loc.pack_id, loc.offset))
    return groups


def test_a_remote_restore_coalesces_reads_and_bounds_what_is_in_flight(repo_env: DrEnv, tmp_path: Path) -> None:
    src = _media_tree(tmp_path / "src")  # ~21 MiB of incompressible files: 2 MiB groups, two packs
    assert repo_env.run("backup", str(src), "--name", "media").code == 0
    backend = RemoteLike(LocalBackend(repo_env.repo))
    assert capabilities.read_concurrency(backend) == (2, REQUEST)
    with _session(repo_env, backend) as session:
        session.repo.load_index()
        snap = session.find_snapshot("latest", "media")
        groups = _data_groups(session, snap)
        backend.reads.clear()
        result = Restorer(session, snap, str(tmp_path / "out"), includes=[]).run()
    assert result.files == 70
    for path in src.rglob("*.jpg"):
        assert (tmp_path / "out" / "src" / path.relative_to(src)).read_bytes() == path.read_bytes()
    packs = {pack for pack, _offset in groups}
    assert len(groups) >= 8 and len(packs) >= 2
    # Neighbouring groups come in one read: about one read per request's worth, not one per group.
    assert len(backend.reads) < len(groups), (len(backend.reads), len(groups))
    assert all(length <= REQUEST for _n, _o, length in backend.reads)
    # Two reads overlap (the walk hands everything out at once here), never more; bytes bounded.
    assert backend.max_inflight == 2
    assert backend.max_inflight_bytes <= 2 * REQUEST


def test_a_failed_remote_read_fails_its_files_and_nothing_half_written_remains(
        repo_env: DrEnv, tmp_path: Path) -> None:
    src = _media_tree(tmp_path / "src", files=20)
    assert repo_env.run("backup", str(src), "--name", "media").code == 0
    backend = RemoteLike(LocalBackend(repo_env.repo))
    backend.fail_nth("get_range", 1, prefix="packs/", times=0)  # every pack read fails
    with _session(repo_env, backend) as session:
        session.repo.load_index()
        snap = session.find_snapshot("latest", "media")
        with pytest.raises(TransientBackendError):
            Restorer(session, snap, str(tmp_path / "out"), includes=[]).run()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


@pytest.mark.parametrize("piece", [256 * 1024, 16 * MiB])
def test_token_bucket_holds_the_rate_within_5_percent_over_30_seconds(piece: int) -> None:
    """Many threads taking pieces (streamed chunks, or whole 16 MiB bodies) from one bucket:
    the bytes moved in 30 s of (fake) time are the rate's, within 5 %."""
    rate = 10 * MiB
    clock = FakeClock()
    waited: list[float] = []
    bucket = TokenBucket(rate, clock=clock.time, sleep=clock.sleep, account=waited.append)
    start, moved = clock.now, 0
    stop = threading.Event()

    def mover() -> None:
        nonlocal moved
        while not stop.is_set():
            bucket.take(piece)
            with clock.lock:
                if clock.now - start >= 30:
                    stop.set()
                    return
                moved += piece

    threads = [threading.Thread(target=mover) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = clock.now - start
    assert 30 <= elapsed < 31
    assert abs(moved / elapsed - rate) <= 0.05 * rate, (moved / elapsed, rate)
    assert sum(waited) > 25  # the time waited is reported (it goes into --json)


def test_rates_parse_with_units_and_bad_ones_are_usage_errors() -> None:
    assert parse_rate("10MiB", "--limit-upload") == 10 * MiB
    assert parse_rate("12.5MB/s", "--limit-upload") == 12_500_000
    assert parse_rate(800_000, "x") == 800_000
    assert parse_rate("0", "x") is None and parse_rate(None, "x") is None
    for bad in ("fast", "10 parsecs", "-5MB", "100"):
        with pytest.raises(UsageError):
            parse_rate(bad, "--limit-upload")


def test_a_bad_limit_option_is_one_line_and_exit_2(repo_env: DrEnv) -> None:
    result = repo_env.run("--limit-download", "lots", "snapshots")
    assert result.code == 2
    assert result.err.strip().startswith("drtool: error: --limit-download 'lots' is not a rate")
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1


def test_limits_slow_a_real_transfer_and_show_in_json(moto_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """Up and down at 1 MiB/s through moto: ~2 MiB take ~2 s each way (the burst is 1/4 s)."""
    from conftest import make_env
    bucket = create_bucket(moto_server.url)
    dr = make_env(tmp_path / "dr")
    dr.env.update(client_env(moto_server.url), DRTOOL_REPOSITORY=f"s3://{bucket}/limited")
    src = tmp_path / "src"
    src.mkdir()
    (src / "photo.raw").write_bytes(os.urandom(2 * MiB))
    assert dr.run("init").code == 0
    began = time.monotonic()
    backup = dr.run("--limit-upload", "1MiB", "backup", str(src), "--name", "p", "--json")
    up_seconds = time.monotonic() - began
    assert backup.code == 0, backup.err
    requests = json.loads(backup.out)["requests"]
    assert requests["limit_upload"] == MiB and requests["limit_download"] == 0
    assert requests["bytes_up"] > 2 * MiB and requests["throttled_seconds"] > 1.0
    assert up_seconds >= (requests["bytes_up"] / MiB) * 0.95 - 0.25
    began = time.monotonic()
    restore = dr.run("--limit-download", "1MiB", "restore", "latest", "--target", str(tmp_path / "out"),
                     "--json")
    down_seconds = time.monotonic() - began
    assert restore.code == 0, restore.err
    requests = json.loads(restore.out)["requests"]
    assert requests["limit_download"] == MiB and requests["bytes_down"] > 2 * MiB
    assert down_seconds >= (requests["bytes_down"] / MiB) * 0.95 - 0.25
    assert (tmp_path / "out" / "src" / "photo.raw").read_bytes() == (src / "photo.raw").read_bytes()


class _PackReader:
    """Just what RangeFetcher needs of a repository: ranged reads of packs, recorded."""

    def __init__(self) -> None:
        self.reads: list[tuple[bytes, int, int]] = []

    def read_pack_range_into(self, pack_id: bytes, offset: int, length: int, buf: bytearray) -> memoryview:
        self.reads.append((pack_id, offset, length))
        view = memoryview(buf)[:length]
        view[:] = bytes((offset + i) % 251 for i in range(length))
        return view


def test_fetcher_merges_a_group_handed_out_twice_and_cuts_spans_at_gaps() -> None:
    from drtool.repository.index import Location
    from drtool.restore.fetch import MAX_GAP, RangeFetcher
    reader = _PackReader()
    delivered: list[tuple[int, list, bytes]] = []

    def deliver(loc, refs, sealed, error, done):  # type: ignore[no-untyped-def]
        assert error is None
        delivered.append((loc.offset, refs, bytes(sealed)))
        done()

    fetcher = RangeFetcher(reader, 2, 1000, deliver)  # type: ignore[arg-type]
    pack = b"p" * 32
    for offset, ref in ((0, "a"), (100, "b"), (0, "c"), (200 + MAX_GAP + 1, "d")):
        fetcher.add(Location(pack, 0, offset, 100, 0, 0), [ref])
    fetcher.wait()
    fetcher.shutdown()
    assert reader.reads == [(pack, 0, 200), (pack, 200 + MAX_GAP + 1, 100)]  # the gap splits, 0 read once
    assert sorted((o, r) for o, r, _ in delivered) == [(0, ["a", "c"]), (100, ["b"]), (200 + MAX_GAP + 1, ["d"])]
    for offset, _refs, data in delivered:  # each group gets exactly its own bytes of the span
        assert data == bytes((offset + i) % 251 for i in range(100))
    assert fetcher.budget.used == 0 and fetcher.budget.peak <= 2 * 1000


class _Stream:
    """A fake streamed range over deterministic bytes; fails at ``fail_at`` when asked to."""

    def __init__(self, owner: "_StreamOpener", offset: int, length: int) -> None:
        self.owner, self.pos, self.end = owner, offset, offset + length

    def readinto(self, view: memoryview) -> None:
        if self.owner.fail_at is not None and self.pos <= self.owner.fail_at < self.pos + len(view):
            raise TransientBackendError("the stream broke")
        view[:] = bytes((self.pos + i) % 251 for i in range(len(view)))
        self.pos += len(view)

    def skip(self, amount: int) -> None:
        self.pos += amount

    def close(self) -> None:
        self.owner.closed += 1


class _StreamOpener:
    def __init__(self, fail_at: int | None = None) -> None:
        self.opened: list[tuple[str, int, int]] = []
        self.closed = 0
        self.fail_at = fail_at

    def __call__(self, name: str, offset: int, length: int) -> _Stream:
        self.opened.append((name, offset, length))
        return _Stream(self, offset, length)


def test_a_streamed_fetcher_reads_a_pack_with_one_request_and_bounds_groups_in_flight() -> None:
    """Streaming stores: a pack's groups (gaps and all) come with one request of any size, each
    group is handed on with exactly its bytes, and sealed bytes in flight stay within the window."""
    from drtool.repository.index import Location
    from drtool.restore.fetch import RangeFetcher
    opener = _StreamOpener()
    delivered: list[tuple[int, bytes]] = []
    held: list = []

    def deliver(loc, refs, sealed, error, done):  # type: ignore[no-untyped-def]
        assert error is None
        delivered.append((loc.offset, bytes(sealed)))
        held.append(done)
        if len(held) > 2:  # the decrypting side lags two groups behind
            held.pop(0)()

    pack = b"q" * 32
    fetcher = RangeFetcher(None, 2, 10_000, deliver, opener, window=300)  # type: ignore[arg-type]
    for offset in (0, 100, 250, 400, 500):  # 50- and 100-byte gaps, read along
        fetcher.add(Location(pack, 0, offset, 100, 0, 0), [offset])
    fetcher.wait()
    for done in held:
        done()
    fetcher.shutdown()
    assert len(opener.opened) == 1 and opener.opened[0][1:] == (0, 600) and opener.closed == 1
    assert sorted(o for o, _ in delivered) == [0, 100, 250, 400, 500]
    for offset, data in delivered:
        assert data == bytes((offset + i) % 251 for i in range(100))
    assert fetcher.ring is not None and fetcher.ring.held == 0 and fetcher.ring.peak <= 300


def test_a_broken_stream_fails_only_the_groups_not_yet_handed_on() -> None:
    from drtool.repository.index import Location
    from drtool.restore.fetch import RangeFetcher
    opener = _StreamOpener(fail_at=250)
    outcome: dict[int, str] = {}

    def deliver(loc, refs, sealed, error, done):  # type: ignore[no-untyped-def]
        outcome[loc.offset] = "error" if error is not None else "ok"
        done()

    fetcher = RangeFetcher(None, 2, 10_000, deliver, opener)  # type: ignore[arg-type]
    for offset in (0, 100, 200, 300):
        fetcher.add(Location(b"r" * 32, 0, offset, 100, 0, 0), [offset])
    fetcher.wait()
    fetcher.shutdown()
    assert outcome == {0: "ok", 100: "ok", 200: "error", 300: "error"}
    assert fetcher.ring is not None and fetcher.ring.held == 0 and opener.closed == 1
