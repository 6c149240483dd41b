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


def _mbstream(tmp_path: Path, name: str, frm: bytes, table: bytes, payload: int) -> tuple[Path, list[int]]:
    """A full's stream as mariabackup writes it (a small file, then a table in ``payload``-byte
    chunks), and the stream offsets of the table's chunk headers and payloads."""
    from drtool.sources import mbstream
    parts = [mbstream.payload_chunk(b"db/t.frm", 0, frm), mbstream.eof_chunk(b"db/t.frm")]
    marks = []
    for pos in range(0, len(table), payload):
        chunk = mbstream.payload_chunk(b"db/t.ibd", pos, table[pos:pos + payload])
        marks += [sum(map(len, parts)), sum(map(len, parts)) + len(chunk) - len(table[pos:pos + payload])]
        parts.append(chunk)
    parts.append(mbstream.eof_chunk(b"db/t.ibd"))
    path = tmp_path / name
    path.write_bytes(b"".join(parts))
    return path, marks


def _full_backup(session, stream: Path, maps: Path):  # type: ignore[no-untyped-def]
    from drtool.databases.blockmap import BlockMapStore
    from drtool.databases.subpage_backup import FullPassage
    maps.mkdir(exist_ok=True)
    with binary_streams(session):
        return run_dump(session, ["cat", str(stream)], dict(os.environ), "phys", "backup.mbstream",
                        "mariadb-physical", {"source": "phys"}, [],
                        rewrite=lambda out: FullPassage(out, BlockMapStore(maps).begin(None)))


def test_a_full_mbstream_is_stored_in_pieces_cut_where_its_files_are(repo_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A full's stream is cut at each large payload's header and at every MiB of the table's own
    offsets (and where the backup's 8 MiB segments end), not where FastCDC finds cut points; it
    reads back whole."""
    from drtool.backup.pipeline import SEGMENT_BYTES
    from drtool.databases.subpage_backup import PIECE
    from drtool.snapshot.store import stream_ids
    from drtool.snapshot.streamread import read_stream
    table = dump_like_text(23 * PIECE + 1000, seed=8)  # payloads of 10, 10 and 3 MiB + 1000 bytes
    stream, marks = _mbstream(tmp_path, "full.mbstream", b"f" * 3000, table, 10 * PIECE)
    heads, payloads = marks[0::2], marks[1::2]
    want = set(heads) | set(range(SEGMENT_BYTES, stream.stat().st_size, SEGMENT_BYTES))
    for start, file_offset in zip(payloads, range(0, len(table), 10 * PIECE)):
        want |= {start + step * PIECE for step in range(10) if file_offset + step * PIECE < len(table)}
    with repo_env.session() as session:
        result = _full_backup(session, stream, tmp_path / "maps")
        session.repo.load_index()
        assert b"".join(bytes(view) for view in read_stream(session.repo, result.snapshot)) == stream.read_bytes()
        sizes = [len(blob) for blob in session.repo.read_blobs(stream_ids(session.repo, result.snapshot))]
    starts = [sum(sizes[:i]) for i in range(1, len(sizes))]
    assert starts == sorted(want)


def test_a_full_s_table_pieces_are_the_same_blobs_when_a_file_before_it_grew(repo_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The pieces hold the same bytes of the same file whatever precedes it in the stream: after a
    small file before the table grew, the next full stores only that file's piece again."""
    from drtool.databases.subpage_backup import PIECE
    from drtool.snapshot.store import stream_ids
    table = dump_like_text(6 * PIECE + 1000, seed=9)
    first, _ = _mbstream(tmp_path, "n1.mbstream", b"f" * 3000, table, 10 * PIECE)
    second, _ = _mbstream(tmp_path, "n2.mbstream", b"f" * 7777, table, 10 * PIECE)
    with repo_env.session() as session:
        one = _full_backup(session, first, tmp_path / "maps")
    with repo_env.session() as session:  # the next night: another run
        two = _full_backup(session, second, tmp_path / "maps")
        ids_one, ids_two = stream_ids(session.repo, one.snapshot), stream_ids(session.repo, two.snapshot)
    assert len(ids_one) == len(ids_two) == 9  # the small file, the header, 6 MiB and the tail
    assert ids_one[1:] == ids_two[1:] and ids_one[0] != ids_two[0]
    assert two.snapshot.summary["bytes_added"] < 8 * 1024
