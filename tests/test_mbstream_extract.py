"""The in-process mbstream extraction against the real ``mbstream -x``, and its refusals.

Synthetic streams the way mariabackup lays them out (10 MiB payloads,
files interleaved by ``--parallel``, a database directory, an empty file)
plus what mbstream -x must refuse; each is fed in windows cut at every
awkward place (inside the magic, the path, the payload header, a payload)
and the tree written must be the one ``mbstream -x`` writes: the same
names, bytes and modes.  A full disk is a real 2 MiB tmpfs.
"""
from __future__ import annotations

import io
import os
import random
import subprocess
from pathlib import Path

import pytest

from dbservers import maria_binary
from drtool.databases.mbstream_extract import LAG, MbstreamWriter, StreamDamaged
from drtool.databases.tree_writer import INLINE_BYTES
from drtool.errors import RestoreChainError, RestoreTargetError
from drtool.sources import mbstream
from windowfeed import feed_windows

MiB = 1024 * 1024


def chunks(path: bytes, data: bytes, cut: int) -> list[bytes]:
    return [mbstream.payload_chunk(path, pos, data[pos:pos + cut]) for pos in range(0, len(data), cut)]


def sample_stream() -> bytes:
    rng = random.Random(7)
    big = rng.randbytes(3 * MiB) + bytes(9 * MiB) + rng.randbytes(13 * MiB + 17)
    table = chunks(b"db1/t1.ibd", big, 10 * MiB)
    other = chunks(b"db1/t2.ibd", rng.randbytes(300_000), 100_000)
    parts = [mbstream.payload_chunk(b"ibdata1", 0, rng.randbytes(5000)), mbstream.eof_chunk(b"ibdata1"),
             table[0], other[0], table[1], other[1], other[2], mbstream.eof_chunk(b"db1/t2.ibd"), table[2],
             mbstream.eof_chunk(b"db1/t1.ibd"), mbstream.eof_chunk(b"empty_file"),
             mbstream.payload_chunk(b"zero_payload", 0, b""), mbstream.eof_chunk(b"zero_payload"),
             mbstream.payload_chunk(b"xtrabackup_info", 0, b"binlog_pos = x\n")]  # no E chunk: closed at the end
    return b"".join(parts)


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    out: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.stat().st_mode & 0o7777
        out[str(path.relative_to(root))] = (mode, path.read_bytes() if path.is_file() else None)
    return out


def extract(stream: bytes, target: Path, cuts: list[int], writers: int = 2, direct: bool = True,
            lag: int = LAG, inline_bytes: int = INLINE_BYTES) -> None:
    """Feed ``stream`` to the writer in windows ending at ``cuts``; each window's buffer is
    overwritten as soon as the stream reader would reuse it (``lag`` windows later: a write
    still reading it then would write zeros)."""
    target.mkdir()
    with MbstreamWriter(str(target), "snapshot abcd1234", writers, direct=direct, lag=lag,
                        inline_bytes=inline_bytes) as writer:
        feed_windows(writer, stream, cuts)


def mbstream_x(stream: bytes, target: Path) -> subprocess.CompletedProcess[bytes]:
    target.mkdir()
    return subprocess.run([maria_binary("mbstream"), "-x", "-C", str(target)], input=stream, capture_output=True,
                          check=False, timeout=120)


@pytest.mark.parametrize("lag, inline_bytes", [(0, INLINE_BYTES), (LAG, INLINE_BYTES), (LAG, 0)],
                         ids=["lag0", f"lag{LAG}", "no_inline"])
@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_the_same_tree_as_mbstream_x_whatever_the_windows(tmp_path: Path, direct: bool, lag: int,
                                                          inline_bytes: int) -> None:
    stream = sample_stream()
    assert mbstream_x(stream, tmp_path / "native").returncode == 0
    want = tree(tmp_path / "native")
    assert set(want) == {"ibdata1", "db1", "db1/t1.ibd", "db1/t2.ibd", "empty_file", "zero_payload",
                         "xtrabackup_info"}
    first = stream.index(b"XBSTCK01", 1)  # the second chunk's header
    awkward = [first + 3, first + 12, first + 20, first + 40, first + 60, 4 * MiB + 1]
    in_blocks = list(range(5 * MiB, 5 * MiB + 20_000, 999)) + list(range(6 * MiB + 3, len(stream), 2 * MiB + 5))
    for number, cuts in enumerate([[], awkward, list(range(8 * MiB, len(stream), 8 * MiB)),
                                   list(range(1, 200)) + list(range(3 * MiB, len(stream), 3 * MiB + 5)), in_blocks]):
        extract(stream, tmp_path / f"mine{number}", cuts, writers=1 + number % 3, direct=direct, lag=lag,
                inline_bytes=inline_bytes)
        assert tree(tmp_path / f"mine{number}") == want, number


def damaged(stream: bytes, at: int) -> bytes:
    body = bytearray(stream)
    body[at] ^= 0x40
    return bytes(body)


@pytest.mark.parametrize("case, stream, says", [
    ("payload byte changed", damaged(sample_stream(), 4 * MiB + 100), "a chunk of db1/t1.ibd ending at offset "
                                                                      "10485760 does not match its CRC-32"),
    ("not an mbstream", b"XBSTCK02" + bytes(40), "a chunk does not start with XBSTCK01"),
    ("out of order", mbstream.payload_chunk(b"d", 5, b"hello"), "a chunk of d is out of order (offset 5, expected 0)"),
    ("a gap", mbstream.payload_chunk(b"d", 0, b"hello") + mbstream.payload_chunk(b"d", 6, b"x"),
     "a chunk of d is out of order (offset 6, expected 5)"),
    ("outside", mbstream.payload_chunk(b"../x", 0, b"hi"), "names a file outside its directory ('../x')"),
    ("absolute", mbstream.payload_chunk(b"/etc/x", 0, b"hi"), "names a file outside its directory ('/etc/x')"),
    ("twice", mbstream.payload_chunk(b"f", 0, b"a") + mbstream.eof_chunk(b"f") + mbstream.payload_chunk(b"f", 0, b"b"),
     "has f twice"),
    ("cut short", mbstream.payload_chunk(b"h", 0, b"abcdef")[:-2], "ends in the middle of a chunk"),
    ("unknown type", mbstream.eof_chunk(b"s").replace(b"E", b"S", 1), "a chunk of unknown type 0x53"),
])
def test_a_damaged_stream_is_refused_in_one_line_naming_the_snapshot(tmp_path: Path, case: str, stream: bytes,
                                                                      says: str) -> None:
    native = mbstream_x(stream, tmp_path / "native")
    if case in ("outside", "absolute", "twice"):
        assert native.returncode == 0 and b"mbstream" in native.stderr  # printed, and exited 0 all the same
    else:
        assert native.returncode != 0
    with pytest.raises(StreamDamaged) as caught:
        extract(stream, tmp_path / "mine", [len(stream) // 2])
    message = str(caught.value)
    assert "the mariabackup stream of snapshot abcd1234" in message and says in message, message
    assert "\n" not in message and message.endswith("nothing was restored")
    assert not (tmp_path / "x").exists() and not Path("/etc/x").exists()
    assert isinstance(caught.value, RestoreChainError)  # the stored backup is bad: a re-run cannot help
    assert "re-running restore resumes" not in caught.value.one_line()
    assert "drtool check --read-data" in caught.value.hint


def test_a_full_disk_is_one_line_naming_the_file(tiny_fs: Path) -> None:
    stream = sample_stream()
    with pytest.raises(RestoreTargetError) as caught:
        extract(stream, tiny_fs / "data", list(range(8 * MiB, len(stream), 8 * MiB)))
    message = str(caught.value)
    assert message == f"cannot write {tiny_fs / 'data'}/db1/t1.ibd: No space left on device; nothing was restored"
    assert "free space on the --target file system" in caught.value.hint
    assert not isinstance(caught.value, RestoreChainError)  # the target's problem, not the backup's
    assert os.listdir(tiny_fs / "data")  # what was written stays for the caller to remove (restore_physical)


def test_a_damaged_pack_mid_stream_names_the_member_in_one_line(repo_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The stored stream's bytes fail their check part-way through (a pack changed on disk): the
    extraction stops with the restore chain's one line naming the member and the pack, not a
    stream error (the windows before it were written; the restore then removes them)."""
    from drtool.backup.run import backup_stream
    from drtool.backup.streams import binary_streams
    from drtool.databases.mariadb_physical import _extract
    stream = sample_stream()
    with repo_env.session() as session:
        with binary_streams(session):
            snap = backup_stream(session, io.BytesIO(stream), "phys", "backup.mbstream").snapshot
        packs = sorted((p for p in (repo_env.repo / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        rotten = packs[-1]
        body = bytearray(rotten.read_bytes())
        body[len(body) * 3 // 4] ^= 0x01
        rotten.write_bytes(bytes(body))
        session.repo.load_index()
        target = tmp_path / "data"
        target.mkdir()
        with pytest.raises(RestoreTargetError) as caught:
            _extract(session.repo, snap, str(target))
    message = str(caught.value)
    assert message.startswith(f"snapshot {snap.short_id} of the restore chain cannot be read: pack "
                              f"{rotten.name[:16]} is damaged"), message
    assert message.endswith("nothing was restored") and "\n" not in message
    assert not isinstance(caught.value, StreamDamaged) and isinstance(caught.value, RestoreChainError)
    assert "drtool backup --source phys --full" in caught.value.hint


@pytest.mark.parametrize("inline_bytes", [INLINE_BYTES, 0], ids=["written_inline", "by_the_writers"])
def test_thousands_of_small_files_in_one_window_stay_under_the_descriptor_limit(tmp_path: Path,
                                                                              inline_bytes: int) -> None:
    """A MediaWiki section has thousands of small tables (.frm, .ibd): a window of 3,000 files must
    not hold their descriptors until its writes are over ("Too many open files")."""
    import resource
    stream = b"".join(mbstream.payload_chunk(f"db/t{n}.frm".encode(), 0, n.to_bytes(4, "big") * 100)
                      + mbstream.eof_chunk(f"db/t{n}.frm".encode()) for n in range(3000))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    try:
        extract(stream, tmp_path / "mine", [], inline_bytes=inline_bytes)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(list((tmp_path / "mine/db").iterdir())) == 3000
    assert (tmp_path / "mine/db/t2999.frm").read_bytes() == (2999).to_bytes(4, "big") * 100


def test_a_prepare_that_fails_names_mariabackups_error_line_and_what_to_do() -> None:
    """mariabackup ends a failed --prepare with InnoDB's shutdown notes: the message shows its error
    line instead, and the hint sends the reader to an earlier point and a new full backup (not the
    target's "free space ...; re-running restore resumes": the backup did not prepare, a re-run cannot)."""
    from datetime import datetime, timezone

    from drtool.databases.mariadb_physical import _run
    from drtool.snapshot.model import Snapshot
    fails = ["sh", "-c", "echo '[00] Last binlog file ./binlog.000002, position 318624' >&2; "
             "echo '[00] mariabackup: error: The log was only applied up to LSN 9570184, instead of 9570200' >&2; "
             "echo '[Note] InnoDB: Starting shutdown...' >&2; exit 1"]
    with pytest.raises(RestoreTargetError) as caught:
        _run(fails, "mariabackup --prepare of incremental snapshot cfc4eb07",
             Snapshot(name="wikiinc", host="h", time=datetime.now(timezone.utc), tree="", meta={"source": "wikiinc"}))
    assert str(caught.value) == ("mariabackup --prepare of incremental snapshot cfc4eb07 failed (exit 1): [00] "
                                 "mariabackup: error: The log was only applied up to LSN 9570184, instead of 9570200; "
                                 "nothing was restored")
    assert isinstance(caught.value, RestoreChainError)
    assert caught.value.hint is not None and "drtool backup --source wikiinc --full" in caught.value.hint
    assert "free space" not in caught.value.hint
