"""Physical backups' streams (``binary_streams``): runs of new blobs sealed in one shot on the
worker threads (``Envelope.run_groups``); a failure there must still end the backup the usual way:
one error, no snapshot, no pack or temporary file left, the repository as it was."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import init_repo, make_env
from drtool.backup.streams import binary_streams, run_dump
from drtool.errors import RepositoryFull, SourceError
from treegen import dump_like_text


def _dump(tmp_path: Path, size: int) -> Path:
    """Compressible, not repetitive within zstd level 1's window: it goes to long groups, and
    what is stored is several MiB."""
    path = tmp_path / "dump.bin"
    path.write_bytes(dump_like_text(size, seed=7))
    return path


def _backup(session, command: list[str]):  # type: ignore[no-untyped-def]
    with binary_streams(session):
        return run_dump(session, command, dict(os.environ), "phys", "backup.mbstream", "mariadb-physical",
                        {"source": "phys"}, [])


def test_a_physical_stream_reads_back_and_the_run_turns_run_groups_off_again(repo_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from drtool.snapshot.store import stream_ids
    from drtool.snapshot.streamread import read_stream
    dump = _dump(tmp_path, 20 << 20)
    with repo_env.session() as session:
        result = _backup(session, ["cat", str(dump)])
        assert not session.repo.envelope.run_groups and session.repo.envelope.text_ldm
        session.repo.load_index()
        assert b"".join(bytes(view) for view in read_stream(session.repo, result.snapshot)) == dump.read_bytes()
        assert 0 < result.snapshot.summary["bytes_added"] < dump.stat().st_size
        ids = stream_ids(session.repo, result.snapshot)
        assert 10 <= len(ids) <= 60  # ~1 MiB chunks, as large files get (16 KiB ones: ~1,300)


def test_a_failing_dump_program_writes_no_snapshot(repo_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dump = _dump(tmp_path, 20 << 20)
    with repo_env.session() as session:
        with pytest.raises(SourceError, match="exited with status 3; no snapshot was written"):
            _backup(session, ["sh", "-c", f"cat {dump}; echo 'mariabackup: lost' >&2; exit 3"])
        assert session.snapshots() == []
        assert not session.repo.envelope.run_groups


def test_a_full_repository_disk_during_one_shot_groups_commits_nothing(tmp_path: Path, tiny_fs: Path) -> None:
    """ENOSPC while the workers store groups sealed in one shot: RepositoryFull reaches the caller
    (the CLI's one line, exit 1), no snapshot, no pack, no temporary file."""
    env = make_env(tmp_path / "env")
    init_repo(str(tiny_fs / "repo"), str(env.catalog))
    env.repo = tiny_fs / "repo"
    dump = _dump(tmp_path, 24 << 20)  # several MiB stored: more than the 2 MiB disk holds
    with env.session() as session:
        with pytest.raises(RepositoryFull, match="repository disk is full"):
            _backup(session, ["cat", str(dump)])
        assert session.snapshots() == []
    repo = tiny_fs / "repo"
    assert [p for p in repo.rglob("*") if p.is_file() and p.name.startswith(".tmp-")] == []
    assert not list((repo / "snapshots").glob("*"))
    assert not [p for p in (repo / "packs").rglob("*") if p.is_file()]
