"""Unpacking a base backup's tar stream (GNU tar as a child): what lands where, and what never
lands outside the target, whatever the archive says."""
from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from drtool.errors import RestoreTargetError
from drtool.sources.postgres import extract_base_tar


def archive(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> list[bytes]:
    """The tar stream in uneven pieces, as the stream reader hands it over."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, body in members:
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    raw = out.getvalue()
    return [raw[i:i + 7_777] for i in range(0, len(raw), 7_777)]


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o600, body: bytes = b"",
          link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime, info.uid = kind, mode, link, 1_700_000_000, 12345
    if kind == tarfile.REGTYPE:
        info.size = len(body)
        return info, body
    return info, None


def test_files_directories_and_links_keep_their_modes_and_times(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir(mode=0o700)
    body = os.urandom(3 * 2**20 + 5)  # more than one pipe's worth
    count = extract_base_tar(archive([
        entry("base", tarfile.DIRTYPE, 0o700), entry("base/1", tarfile.DIRTYPE, 0o700),
        entry("base/1/16384", body=body), entry("PG_VERSION", body=b"15\n", mode=0o640),
        entry("pg_wal", tarfile.DIRTYPE, 0o700), entry("current", tarfile.SYMTYPE, 0o777, link="base/1")]),
        str(target))
    assert count == 6
    assert (target / "base/1/16384").read_bytes() == body
    assert stat.S_IMODE((target / "base/1/16384").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "PG_VERSION").stat().st_mode) == 0o640
    assert stat.S_IMODE((target / "base").stat().st_mode) == 0o700
    assert (target / "PG_VERSION").stat().st_mtime == 1_700_000_000
    assert os.readlink(target / "current") == "base/1"
    assert (target / "base/1/16384").stat().st_uid == os.getuid()  # not the archive's 12345


def test_a_member_climbing_out_of_the_target_is_refused_and_written_nowhere(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    with pytest.raises(RestoreTargetError, match="could not unpack the base backup"):
        extract_base_tar(archive([entry("PG_VERSION", body=b"15\n"), entry("../escaped", body=b"x")]),
                         str(target))
    assert not (tmp_path / "escaped").exists()


def test_nothing_is_written_through_a_link_that_points_outside(tmp_path: Path) -> None:
    target, outside = tmp_path / "data", tmp_path / "elsewhere"
    target.mkdir()
    outside.mkdir()
    members = [entry("pg_tblspc", tarfile.DIRTYPE, 0o700),
               entry("pg_tblspc/16385", tarfile.SYMTYPE, 0o777, link=str(outside)),
               entry("pg_tblspc/16385/planted", body=b"x")]
    try:
        extract_base_tar(archive(members), str(target))
    except RestoreTargetError:
        pass  # refusing the archive is as good as ignoring the planted file
    assert list(outside.iterdir()) == []


def test_an_absolute_member_lands_inside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    victim = tmp_path / "abs-victim"
    extract_base_tar(archive([entry(str(victim), body=b"x")]), str(target))
    assert not victim.exists()
    assert (target / str(victim).lstrip("/")).read_bytes() == b"x"
