"""snapshot.presence: the packs a snapshot reads, looked up before a restore starts (index + stat)."""
from __future__ import annotations

import io
import os
import threading

from conftest import DrEnv
from drtool.backup.run import backup_stream
from drtool.repository.objects import pack_name
from drtool.snapshot.presence import missing_data, packs_of


def test_a_lost_or_cut_pack_is_named_for_the_snapshots_that_read_it(repo_env: DrEnv) -> None:
    with repo_env.session() as session:
        first = backup_stream(session, io.BytesIO(os.urandom(3 << 20).hex().encode()), "s", "a.bin").snapshot
        second = backup_stream(session, io.BytesIO(os.urandom(3 << 20).hex().encode()), "s", "b.bin").snapshot
        session.repo.load_index()
        assert missing_data(session.repo, [first, second]) == {}
        packs = packs_of(session.repo, first)
        assert not set(packs) & set(packs_of(session.repo, second))  # each night wrote its own packs
        tree = session.repo.locate(bytes.fromhex(first.tree)).pack_id
        (data,) = set(packs) - {tree}
        path = repo_env.repo / pack_name(data)
        body = path.read_bytes()
        assert packs[data] <= len(body)
        os.truncate(path, packs[data] - 1)  # short of the last group the snapshot needs
        assert missing_data(session.repo, [first, second]) == {
            first.id: f"pack {pack_name(data)} is shorter than the index says ({packs[data] - 1} bytes, "
                      f"data up to {packs[data]})"}
        path.unlink()
        assert missing_data(session.repo, [second, first]) == {
            first.id: f"pack {pack_name(data)} is missing from the repository"}
        path.write_bytes(body)
        (repo_env.repo / pack_name(tree)).unlink()  # the tree cannot even be read
        found = missing_data(session.repo, [first, second])
        assert list(found) == [first.id] and pack_name(tree) in found[first.id]


def test_the_cached_answer_asks_the_local_cache_and_leaves_the_repositorys_index_alone(repo_env: DrEnv) -> None:
    """``missing_data_cached`` looks blobs up in the disk cache through a view of the repository: the
    repository's own index is never swapped, so another thread using it meanwhile sees it whole."""
    from drtool.snapshot.presence import missing_data_cached
    with repo_env.session() as session:
        snap = backup_stream(session, io.BytesIO(os.urandom(1 << 20).hex().encode()), "s", "a.bin").snapshot
        session.repo.load_index()
        own = session.repo.index
        answers: list[object] = []
        asking = threading.Thread(target=lambda: answers.extend(missing_data_cached(session.repo, [snap])
                                                                for _ in range(30)))
        asking.start()
        swapped = 0
        while asking.is_alive():
            swapped += session.repo.index is not own
        asking.join()
        assert answers == [{}] * 30 and swapped == 0
        data = set(packs_of(session.repo, snap)) - {session.repo.locate(bytes.fromhex(snap.tree)).pack_id}
        for pack in data:
            (repo_env.repo / pack_name(pack)).unlink()
        found = missing_data_cached(session.repo, [snap])
        assert found is not None and "is missing from the repository" in found[snap.id]
        assert session.repo.index is own
