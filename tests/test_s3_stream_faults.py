"""Faults on the streamed S3 restore path (one GET per pack, groups read into the fetcher's ring).

FaultyBackend wraps an S3 backend on moto and passes its StreamedReads on
through the rules of its ``stream`` operation, so a damaged or broken pack stream reaches
the restore exactly as it would from a real store: a flipped byte damages
only the files of that group (the others restore byte for byte), a stream
that breaks off is a clean error, and a restore without faults through the
wrapper is exact.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from conftest import PASSWORD, make_env
from drtool.backends import capabilities
from drtool.backends.registry import open_backend
from drtool.core.session import OpenOptions, Session
from drtool.errors import DrtoolError
from drtool.restore.run import Restorer
from drtool.testing import FaultyBackend
from s3server import MotoServer, client_env, create_bucket, moto_server  # noqa: F401


@pytest.fixture
def s3_repo(moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A repository in a fresh bucket holding one backup of six random files and a text file."""
    for key, value in client_env(moto_server.url).items():
        monkeypatch.setenv(key, value)
    url = f"s3://{create_bucket(moto_server.url)}/repo"
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(rng.randbytes(900_000))
    (src / "notes.txt").write_text("a line of notes\n" * 50_000)
    dr = make_env(tmp_path / "env")
    dr.env.update(client_env(moto_server.url), DRTOOL_REPOSITORY=url)
    for argv in (["init"], ["backup", str(src), "--name", "s"]):
        result = dr.run(*argv)
        assert result.code == 0, result.err
    return url, str(dr.catalog), src


def _restore(url: str, catalog: str, target: Path, backend: FaultyBackend) -> object:
    with Session.open(OpenOptions(url, PASSWORD.encode(), catalog), backend=backend) as session:
        session.repo.load_index()
        snap = session.find_snapshot("latest", "s")
        return Restorer(session, snap, str(target), includes=[], allow_partial=True).run()


def _same(target: Path, src: Path) -> list[str]:
    return sorted(p.name for p in src.iterdir()
                  if (target / "src" / p.name).is_file()
                  and (target / "src" / p.name).read_bytes() == p.read_bytes())


def test_the_wrapper_streams_and_a_clean_restore_through_it_is_exact(s3_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, catalog, src = s3_repo
    backend = FaultyBackend(open_backend(url, {}))
    assert capabilities.range_opener(backend) is not None
    result = _restore(url, catalog, tmp_path / "out", backend)
    assert result.damaged == []  # type: ignore[attr-defined]
    assert _same(tmp_path / "out", src) == sorted(os.listdir(src))


def test_a_flipped_byte_in_a_pack_stream_damages_only_the_files_of_that_group(  # type: ignore[no-untyped-def]
        s3_repo, tmp_path: Path) -> None:
    url, catalog, src = s3_repo
    backend = FaultyBackend(open_backend(url, {}))
    backend.add_rule("stream", "flip", prefix="packs/")
    result = _restore(url, catalog, tmp_path / "out", backend)
    assert [i.action for i in backend.injected] == ["flip"]
    damaged = result.damaged  # type: ignore[attr-defined]
    assert damaged and all("does not match" in d or "damaged" in d for d in damaged)
    intact = _same(tmp_path / "out", src)
    assert len(intact) + len(damaged) == len(os.listdir(src)) and intact
    assert not [p for p in (tmp_path / "out").rglob(".drtool-part-*")]


def test_a_pack_stream_that_breaks_off_is_a_clean_error(s3_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, catalog, src = s3_repo
    backend = FaultyBackend(open_backend(url, {}))
    backend.add_rule("stream", "truncate", prefix="packs/")
    with pytest.raises(DrtoolError, match="broke off"):
        _restore(url, catalog, tmp_path / "out", backend)
    assert [i.action for i in backend.injected] == ["truncate"]
    assert not [p for p in (tmp_path / "out").rglob(".drtool-part-*")]
