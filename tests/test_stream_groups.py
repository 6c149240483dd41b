"""Stream reads open each group once when the budget allows, evict the group needed furthest
ahead, verify every blob, and turn a damaged group read by several workers into one error."""
from __future__ import annotations

import io
import os
import threading
from typing import Any

import pytest

from conftest import PASSWORD
from drtool.backends.local import LocalBackend
from drtool.errors import IntegrityError
from drtool.repository.repo import Repository
from drtool.snapshot.store import stream_ids
from drtool.snapshot.streamgroups import group_key, plan_runs, whole_group_run
from drtool.snapshot.streamread import read_blobs_windowed, read_stream, windows

MiB = 1024 * 1024


def _hex(size: int) -> bytes:
    """Stream snapshots use text chunks and 16 MiB text groups; hex compresses ~2:1, as pages do."""
    return os.urandom(size // 2).hex().encode()


def _backup(session: Any, data: bytes, name: str = "s") -> Any:
    from drtool.backup.run import backup_stream
    return backup_stream(session, io.BytesIO(data), name, "backup.mbstream").snapshot


def _read(session: Any, ids: list[bytes], **kw: Any) -> tuple[bytes, int]:
    """The bytes read back and the ranged reads of packs it took (one per group opened)."""
    backend = session.repo.backend
    before = backend.stats.gets
    data = b"".join(bytes(view) for view in read_blobs_windowed(session.repo, ids, **kw))
    return data, backend.stats.gets - before


def test_a_stream_going_back_to_old_groups_and_zero_runs_opens_each_group_once(repo_env) -> None:  # type: ignore[no-untyped-def]
    old = _hex(36 * MiB)
    zeros = bytes(3 * MiB)
    # like a mariabackup stream: new pages, pages equal to old ones (all over the old groups), zero runs
    night2 = b"".join([_hex(2 * MiB), old[20 * MiB:22 * MiB], zeros, old[:2 * MiB], _hex(9 * MiB),
                       old[33 * MiB:34 * MiB], zeros, old[1 * MiB:3 * MiB], old[21 * MiB:23 * MiB], zeros])
    with repo_env.session() as session:
        _backup(session, old)
        snap = _backup(session, night2)
        session.repo.load_index()
        ids = stream_ids(session.repo, snap)
        keys = [group_key(session.repo.locate(blob_id)) for blob_id in ids]
        groups = set(keys)
        returns = sum(1 for k, after in zip(keys, keys[1:]) if k != after) + 1 - len(groups)
        assert len(groups) >= 3 and returns >= 3  # old and new groups, each read more than once
        data, opened = _read(session, ids, workers=3)
        assert data == night2
        assert opened == len(groups)
        tight, reopened = _read(session, ids, workers=2, budget=0)  # nothing kept: still every byte right
        assert tight == night2 and reopened > len(groups)


def test_the_group_needed_furthest_ahead_is_evicted_first(repo_env) -> None:  # type: ignore[no-untyped-def]
    data = _hex(40 * MiB)  # three groups
    with repo_env.session() as session:
        snap = _backup(session, data)
        session.repo.load_index()
        ids = stream_ids(session.repo, snap)
        by_group: dict[Any, list[bytes]] = {}
        for blob_id in ids:
            by_group.setdefault(group_key(session.repo.locate(blob_id)), []).append(blob_id)
        assert len(by_group) == 3
        sizes = {key: sum(session.repo.locate(i).raw_length for i in blobs) for key, blobs in by_group.items()}
        c, a, b = sorted(by_group, key=sizes.__getitem__)  # C is the smallest: A and C fit the budget
        # A B C A C B with room for two groups: opening C evicts B (needed last), not A (LRU would,
        # or "soonest needed"), so A and then C are still open when they come again: 4 openings, not 5
        order = [by_group[a][0], by_group[b][0], by_group[c][0], by_group[a][1], by_group[c][1], by_group[b][1]]
        got, opened = _read(session, order, workers=1, budget=sizes[a] + sizes[b])
        assert got == b"".join(session.repo.read_blob(i) for i in order)
        assert opened == 4


def test_a_damaged_group_read_by_several_workers_is_one_error_not_a_hang(repo_env) -> None:  # type: ignore[no-untyped-def]
    zeros = bytes(1 * MiB)
    data = b"".join(_hex(4 * MiB) + zeros for _ in range(8))  # the zero blob's group: read by every window
    with repo_env.session() as session:
        snap = _backup(session, data)
        session.repo.load_index()
        zero_blob = session.repo.ids.blob_id(bytes(64 * 1024))  # a zero run is this blob repeated
        assert stream_ids(session.repo, snap).count(zero_blob) >= 8
        loc = session.repo.locate(zero_blob)
    pack = next(p for p in (repo_env.repo / "packs").rglob(loc.pack_id.hex()))
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    outcome: dict[str, Any] = {"got": 0}

    def read() -> None:
        with repo_env.session() as session:
            session.repo.load_index()
            try:
                for view in read_stream(session.repo, snap, workers=3):
                    assert bytes(view) == data[outcome["got"]:outcome["got"] + len(view)]
                    outcome["got"] += len(view)
            except IntegrityError as exc:
                outcome["error"] = exc
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(120)
    assert not reader.is_alive(), "the read hung on a damaged group"
    assert "is damaged" in str(outcome.get("error")) and "\n" not in str(outcome["error"])
    assert outcome["got"] < len(data)


def test_groups_read_whole_are_decoded_into_the_window_and_still_checked(repo_env) -> None:  # type: ignore[no-untyped-def]
    """A fresh stream's runs are whole groups, decoded straight into the window (no group buffer);
    a read that stops inside a group (its run is only the group's start) takes the copying path;
    a damaged whole group is one error naming its pack."""
    data = _hex(40 * MiB)
    with repo_env.session() as session:
        snap = _backup(session, data)
        session.repo.load_index()
        ids = stream_ids(session.repo, snap)
        locs = [session.repo.locate(blob_id) for blob_id in ids]
        per_window, uses = plan_runs(locs, windows(locs))
        whole = [whole_group_run(locs[start:end], uses) for per in per_window for _run, start, end in per]
        assert any(whole) and not all(whole), whole  # both paths in one read
        got, opened = _read(session, ids, workers=2)
        assert got == data and opened == len(uses)
        cut = len(ids) // 2  # inside the second group: that run is not the whole group
        part, _ = _read(session, ids[:cut], workers=2)
        assert part == data[:sum(loc.raw_length for loc in locs[:cut])]
        loc = locs[0]
    pack = next(p for p in (repo_env.repo / "packs").rglob(loc.pack_id.hex()))
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    with repo_env.session() as session:
        session.repo.load_index()
        with pytest.raises(IntegrityError) as caught:
            _read(session, ids, workers=2)
    assert f"pack {loc.pack_id.hex()[:16]} is damaged" in str(caught.value)


def test_whole_group_run_needs_the_only_use_and_blobs_back_to_back_from_the_start() -> None:
    from drtool.repository.index import Location
    pack = b"p" * 32

    def loc(inner: int, length: int, offset: int = 0) -> Location:
        return Location(pack, 0, offset, 100, inner, length)
    key = group_key(loc(0, 1))
    run = [loc(0, 10), loc(10, 5), loc(15, 7)]
    assert whole_group_run(run, {key: [3]})
    assert not whole_group_run(run, {key: [3, 9]})                       # another run needs it later
    assert not whole_group_run([loc(10, 5), loc(15, 7)], {key: [3]})     # not from its start
    assert not whole_group_run([loc(0, 10), loc(0, 10)], {key: [3]})     # a blob repeated (zero pages)
    assert not whole_group_run([loc(0, 10), loc(12, 5)], {key: [3]})     # a gap


class RecordingLocal(LocalBackend):
    """The local backend, noting in order which ranges a read asks for ahead and which it reads."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.events: list[tuple[str, str, int, int]] = []
        self._lock = threading.Lock()

    def read_ahead(self, name: str, offset: int, length: int) -> None:
        with self._lock:
            self.events.append(("ahead", name, offset, length))
        super().read_ahead(name, offset, length)

    def get_range_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        with self._lock:
            self.events.append(("read", name, offset, length))
        return super().get_range_into(name, offset, length, buf)


def _most_asked_unread(events: list[tuple[str, str, int, int]]) -> int:
    asked: set[tuple[str, int, int]] = set()
    most = 0
    for kind, *where in events:
        if kind == "ahead":
            asked.add(tuple(where))  # type: ignore[arg-type]
        else:
            asked.discard(tuple(where))  # type: ignore[arg-type]
        most = max(most, len(asked))
    return most


@pytest.mark.parametrize("lead, bounded", [(8 * MiB, True), (1024 * MiB, False)], ids=["8MiB", "1GiB"])
def test_each_group_is_asked_for_once_before_it_is_read_and_only_lead_bytes_ahead(
        repo_env, lead: int, bounded: bool) -> None:  # type: ignore[no-untyped-def]
    """A cold restore's reads are queued ahead (``ReadAhead``): every group the reader opens was
    asked for first, once, and no more than ``read_ahead`` bytes beyond the windows being filled
    are asked for at a time (a terabyte stream must not ask for the whole repository at once)."""
    data = _hex(150 * MiB)
    with repo_env.session() as session:
        snap = _backup(session, data)
    backend = RecordingLocal(repo_env.repo)
    repo = Repository.open(backend, PASSWORD.encode())
    try:
        repo.load_index()
        ids = stream_ids(repo, snap)
        got = b"".join(bytes(view) for view in read_blobs_windowed(repo, ids, workers=2, read_ahead=lead))
    finally:
        repo.close()
    assert got == data
    asked = [tuple(event[1:]) for event in backend.events if event[0] == "ahead"]
    reads = [tuple(event[1:]) for event in backend.events if event[0] == "read"]
    groups = set(asked)
    assert len(asked) == len(groups) >= 8 and set(reads) == groups  # each once; every read was asked for
    for index, event in enumerate(backend.events):
        if event[0] == "read":
            assert ("ahead", *event[1:]) in backend.events[:index]
    # a window here is one 16 MiB group (~8 MiB stored), three are filled at a time, 8 MiB is one more
    assert (_most_asked_unread(backend.events) <= 5) is bounded, _most_asked_unread(backend.events)
