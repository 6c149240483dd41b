"""Unpacking a base backup's tar stream in process (``tar_extract.TarWriter``) against the real
GNU tar, and its refusals: what lands where, and what never lands outside the target, whatever
the archive says.

Each archive is fed in windows cut at awkward places (inside a header, inside a file's bytes, in
the padding after them), every window overwritten as soon as the stream reader would reuse it,
and the tree written must be the one ``tar --extract --no-same-owner --same-permissions`` writes:
the same names, kinds, bytes, modes, times and link targets.
"""
from __future__ import annotations

import io
import os
import random
import resource
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from drtool.databases.tar_extract import LAG, TarWriter
from drtool.databases.tree_writer import INLINE_BYTES, StreamDamaged
from drtool.errors import RestoreTargetError
from windowfeed import feed_windows

MiB = 1024 * 1024
MTIME = 1_700_000_000


def archive_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=fmt) as tar:
        for info, body in members:
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o600, body: bytes = b"",
          link: str = "", mtime: int = MTIME) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime, info.uid = kind, mode, link, mtime, 12345
    if kind == tarfile.REGTYPE:
        info.size = len(body)
        return info, body
    return info, None


def extract(stream: bytes, target: Path, cuts: list[int] | None = None, writers: int = 2, direct: bool = True,
            lag: int = LAG, inline_bytes: int = INLINE_BYTES) -> int:
    """Feed ``stream`` to a TarWriter in windows ending at ``cuts`` (7,777-byte windows if None),
    as the stream reader does (``windowfeed``); the member count."""
    if cuts is None:
        cuts = list(range(7_777, len(stream), 7_777))
    target.mkdir(exist_ok=True)
    with TarWriter(str(target), "snapshot abcd1234", writers, direct=direct, lag=lag,
                   inline_bytes=inline_bytes) as writer:
        feed_windows(writer, stream, cuts)
        return writer.members


def gnu_tar(stream: bytes, target: Path) -> subprocess.CompletedProcess[bytes]:
    target.mkdir()
    return subprocess.run(["tar", "--extract", "--file=-", f"--directory={target}", "--no-same-owner",
                           "--same-permissions", "--delay-directory-restore"], input=stream, capture_output=True,
                          check=False, timeout=120)


def tree(root: Path) -> dict[str, tuple[str, int, int, bytes | str | None]]:
    """Every path under ``root``: kind, mode, mtime (whole seconds) and content or link target."""
    out: dict[str, tuple[str, int, int, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            out[str(path.relative_to(root))] = ("link", 0, 0, os.readlink(path))
            continue
        kind = "dir" if path.is_dir() else "file"
        out[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), int(info.st_mtime),
                                            path.read_bytes() if kind == "file" else None)
    return out


def sample_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """A base backup's shapes: a 1 GiB-segment-like big file (cut into several windows and split
    between writers), small and empty files, nested and read-only directories, a tablespace link,
    names longer than ustar's 100 bytes.  Every directory is a member, as in pg_basebackup's tar (one
    made only as a parent is 0700 here, GNU tar's umask mode there)."""
    rng = random.Random(3)
    deep_dir = "base/16384/" + "d" * 90
    deep = deep_dir + "/" + "f" * 60
    return [entry("PG_VERSION", body=b"15\n", mode=0o640, mtime=MTIME + 1),
            entry("base", tarfile.DIRTYPE, 0o700), entry("base/16384", tarfile.DIRTYPE, 0o700),
            entry("base/16384/16396", body=rng.randbytes(5 * MiB + 4097) + bytes(3 * MiB)),
            entry("base/16384/16396_fsm", body=rng.randbytes(24_576)),
            entry("base/16384/empty", body=b""),
            entry(deep_dir, tarfile.DIRTYPE, 0o750), entry(deep, body=b"long name\n", mtime=MTIME + 2),
            entry("readonly", tarfile.DIRTYPE, 0o500, mtime=MTIME + 3),
            entry("readonly/inside", body=b"written before the directory became 0500", mode=0o400),
            entry("pg_tblspc", tarfile.DIRTYPE, 0o700),
            entry("pg_tblspc/16385", tarfile.SYMTYPE, 0o777, link="/srv/tablespace"),
            entry("global", tarfile.DIRTYPE, 0o700), entry("global/pg_control", body=rng.randbytes(8192))]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("direct, lag, inline_bytes", [(True, LAG, INLINE_BYTES), (False, LAG, INLINE_BYTES),
                                                       (True, 0, INLINE_BYTES), (True, LAG, 0)],
                         ids=["o_direct", "page_cache", "lag0", "no_inline"])
def test_the_same_tree_as_gnu_tar_whatever_the_windows(tmp_path: Path, fmt: int, direct: bool, lag: int,
                                                        inline_bytes: int) -> None:
    stream = archive_bytes(sample_members(), fmt)
    assert gnu_tar(stream, tmp_path / "native").returncode == 0
    want = tree(tmp_path / "native")
    assert len(want) == 14 and want["pg_tblspc/16385"] == ("link", 0, 0, "/srv/tablespace")
    assert want["readonly"][1] == 0o500 and want["PG_VERSION"][1:3] == (0o640, MTIME + 1)
    header = 512 * 3  # the pax/long-name header and the first member's header
    awkward = [1, 100, 511, 512, 513, header + 1, header + 511, header + 515, 3 * MiB + 7, 8 * MiB + 4096]
    in_blocks = list(range(MiB, MiB + 20_000, 999)) + list(range(4 * MiB + 100, len(stream), 2 * MiB + 3))
    for number, cuts in enumerate([[], awkward, None, list(range(1, 300)) + list(range(2 * MiB, len(stream), MiB)),
                                   in_blocks]):
        members = extract(stream, tmp_path / f"mine{number}", cuts, writers=1 + number % 3, direct=direct, lag=lag,
                          inline_bytes=inline_bytes)
        assert tree(tmp_path / f"mine{number}") == want, number
        assert members == 14, number  # every file, directory and link (not the long-name headers)


def test_what_is_owned_is_the_restorer_s_not_the_archive_s(tmp_path: Path) -> None:
    extract(archive_bytes([entry("base/1/16384", body=b"x" * 100)]), tmp_path / "data")
    assert (tmp_path / "data/base/1/16384").stat().st_uid == os.getuid()  # not the archive's 12345
    assert stat.S_IMODE((tmp_path / "data/base").stat().st_mode) == 0o700  # parents made private


def test_a_member_climbing_out_of_the_target_is_refused_and_written_nowhere(tmp_path: Path) -> None:
    stream = archive_bytes([entry("PG_VERSION", body=b"15\n"), entry("../escaped", body=b"x")])
    assert gnu_tar(stream, tmp_path / "native").returncode != 0
    with pytest.raises(StreamDamaged, match=r"names a file outside its directory \('\.\./escaped'\)"):
        extract(stream, tmp_path / "data")
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("order", ["link first", "file first"])
def test_nothing_is_written_through_a_link(tmp_path: Path, order: str) -> None:
    """A link and a file under its name: refused either way round, nothing lands outside."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = entry("pg_tblspc/16385", tarfile.SYMTYPE, 0o777, link=str(outside))
    planted = entry("pg_tblspc/16385/planted", body=b"x")
    members = [entry("pg_tblspc", tarfile.DIRTYPE, 0o700), *([link, planted] if order == "link first"
                                                              else [planted, link])]
    with pytest.raises(StreamDamaged, match="pg_tblspc/16385"):
        extract(archive_bytes(members), tmp_path / "data")
    assert list(outside.iterdir()) == []


def test_an_absolute_member_lands_inside_the_target(tmp_path: Path) -> None:
    victim = tmp_path / "abs-victim"
    extract(archive_bytes([entry(str(victim), body=b"x")]), tmp_path / "data")
    assert not victim.exists()
    assert (tmp_path / "data" / str(victim).lstrip("/")).read_bytes() == b"x"


def damaged(stream: bytes, at: int) -> bytes:
    body = bytearray(stream)
    body[at] ^= 0x40
    return bytes(body)


USTAR = tarfile.USTAR_FORMAT
PLAIN = archive_bytes([entry("PG_VERSION", body=b"15\n"), entry("base/1", body=b"y" * 1000)], USTAR)


@pytest.mark.parametrize("stream, says", [
    (damaged(PLAIN, 10), "is damaged: a header's checksum does not match"),
    (PLAIN[:512 + 100], "ends in the middle of a member: it was cut short"),
    (PLAIN[:1024 + 200], "ends in the middle of a member: it was cut short"),
    (archive_bytes([entry("f", body=b"a"), entry("f", body=b"b")], USTAR), "has f twice"),
    (archive_bytes([entry("f", body=b"a"), entry("g", tarfile.LNKTYPE, link="f")], USTAR),
     "holds a hard link (g), which a base backup never has"),
    (archive_bytes([entry("p", tarfile.FIFOTYPE)], USTAR), "holds a FIFO (p), which a base backup never has"),
], ids=["checksum", "cut in a header", "cut in a file", "twice", "hard link", "fifo"])
def test_a_damaged_archive_is_refused_in_one_line_naming_the_snapshot(tmp_path: Path, stream: bytes,
                                                                       says: str) -> None:
    with pytest.raises(StreamDamaged) as caught:
        extract(stream, tmp_path / "data", [len(stream) // 2])
    message = str(caught.value)
    assert message.startswith("the base backup tar of snapshot abcd1234 ") and says in message, message
    assert "\n" not in message and message.endswith("nothing was restored")


def test_a_full_disk_is_one_line_naming_the_file(tiny_fs: Path) -> None:
    stream = archive_bytes([entry("base", tarfile.DIRTYPE, 0o700), entry("base/big", body=os.urandom(4 * MiB))])
    with pytest.raises(RestoreTargetError) as caught:
        extract(stream, tiny_fs / "data", list(range(MiB, len(stream), MiB)))
    assert str(caught.value) == f"cannot write {tiny_fs / 'data'}/base/big: No space left on device; nothing was restored"
    assert "free space on the --target file system" in caught.value.hint
    assert not isinstance(caught.value, StreamDamaged)


@pytest.fixture
def few_descriptors() -> Iterator[int]:
    """The process may hold 400 descriptors (the usual soft limit is 1,024; a catalog has thousands
    of small files), restored after the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    try:
        yield 400
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("inline_bytes", [INLINE_BYTES, 0], ids=["written_inline", "by_the_writers"])
def test_thousands_of_small_files_in_one_window_stay_under_the_descriptor_limit(tmp_path: Path, few_descriptors: int,
                                                                              inline_bytes: int) -> None:
    """A window of 3,000 small files must not hold a descriptor (two, with O_DIRECT) for each ("Too
    many open files"): small files are written and closed at once; files handed to the writers
    (``inline_bytes`` 0) wait for their window's writes, and at 128 waiting the parser waits."""
    members = [entry(f"base/16384/{n}", body=n.to_bytes(4, "big") * 100) for n in range(3000)]
    stream = archive_bytes(members, USTAR)
    assert extract(stream, tmp_path / "data", cuts=[], inline_bytes=inline_bytes) == 3000
    assert (tmp_path / "data/base/16384/2999").read_bytes() == (2999).to_bytes(4, "big") * 100
    assert len(list((tmp_path / "data/base/16384").iterdir())) == 3000


def test_a_big_file_goes_around_the_page_cache_and_small_ones_through_it(tmp_path: Path) -> None:
    """The restore writes a data file's whole blocks with O_DIRECT (``fincore``: of its pages only
    the two at its end are in the page cache afterwards, the last partial one and the one finished
    by the last window's few bytes, though every window ends inside a block: 8 pages before the
    partial blocks were carried to the next window); with ``direct`` off, most are."""
    body = random.Random(9).randbytes(12 * MiB + 1000)
    stream = archive_bytes([entry("base", tarfile.DIRTYPE, 0o700), entry("base/16396", body=body),
                            entry("base/PG_VERSION", body=b"15\n")], USTAR)
    for direct in (True, False):
        extract(stream, tmp_path / f"d{direct}", list(range(3 * MiB, len(stream), 3 * MiB)), direct=direct)
    resident = {direct: int(subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                                            str(tmp_path / f"d{direct}" / "base/16396")],
                                           capture_output=True, text=True, check=True).stdout.split()[0])
                for direct in (True, False)}
    assert resident[True] <= 2 * 4096 and resident[False] >= len(body) // 2, resident
    assert (tmp_path / "dTrue/base/16396").read_bytes() == body
