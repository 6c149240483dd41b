"""A cold tier: packs in GLACIER, everything else hot; warmed before a restore reads them.

Promises: with ``storage_class = "GLACIER"`` only packs go cold (config,
keys, index, snapshots stay STANDARD); a cold pack read directly fails with
a message that says to warm it, not a credentials hint; ``restore
--dry-run`` names what must be warmed first (tree packs, since nothing can
be walked before them) with a rough time and cost; ``restore`` requests the
restore of every pack it needs (RestoreObject), waits, then restores byte
for byte (moto over HTTP); the waiting loop reports progress and time left
and asks only for cold packs (injected clock and store).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DrEnv, make_env
from drtool.backends.s3 import S3Backend
from drtool.errors import BackendError
from drtool.repository.objects import pack_name
from drtool.repository.repo import Repository
from drtool.repository import warming
from drtool.testing import MemoryBackend

from s3server import (MotoServer, client_env, create_bucket, make_client, moto_server,  # noqa: F401
                      set_dummy_env)

MiB = 1024 * 1024


def _cold_env(tmp: Path, endpoint: str, bucket: str) -> DrEnv:
    dr = make_env(tmp)
    config = tmp / "drtool.toml"
    config.write_text(f'repository = "s3://{bucket}/second-site"\n\n[s3]\nstorage_class = "GLACIER"\n'
                      f'restore_tier = "Bulk"\nrestore_days = 2\n')
    dr.env.update(client_env(endpoint), DRTOOL_CONFIG=str(config))
    dr.env.pop("DRTOOL_REPOSITORY", None)
    return dr


def _classes(endpoint: str, bucket: str) -> dict[str, str]:
    client = make_client(endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="second-site/")
    return {o["Key"].split("/", 1)[1]: o.get("StorageClass", "STANDARD")
            for page in pages for o in page.get("Contents", []) or []}


def test_cold_packs_are_warmed_before_a_restore(moto_server: MotoServer, tmp_path: Path,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    set_dummy_env(monkeypatch, moto_server.url)
    bucket = create_bucket(moto_server.url)
    dr = _cold_env(tmp_path / "dr", moto_server.url, bucket)
    src = tmp_path / "src"
    (src / "media").mkdir(parents=True)
    (src / "media" / "a.bin").write_bytes(bytes(range(256)) * 8000)
    (src / "notes.txt").write_text("cold but not forgotten\n" * 500)
    assert dr.run("init").code == 0
    backup = dr.run("backup", str(src), "--name", "site", "--json")
    assert backup.code == 0, backup.err
    classes = _classes(moto_server.url, bucket)
    packs = [k for k in classes if k.startswith("packs/")]
    assert packs and all(classes[k] == "GLACIER" for k in packs)
    assert {c for k, c in classes.items() if not k.startswith("packs/")} == {"STANDARD"}

    with pytest.raises(BackendError, match="archive storage class and must be restored"):
        S3Backend.from_url(f"s3://{bucket}/second-site", {"endpoint_url": moto_server.url}).get(packs[0])

    plan = dr.run("restore", "latest", "--target", str(tmp_path / "out"), "--dry-run", "--json")
    assert plan.code == 0, plan.err
    warm = json.loads(plan.out)["warm"]
    assert warm["scope"] == "trees" and warm["packs_to_warm"] >= 1 and warm["tier"] == "Bulk"
    assert warm["estimated_hours"] == 8.0 and warm["bytes"] > 0
    text = dr.run("restore", "latest", "--target", str(tmp_path / "out"), "--dry-run")
    assert "must warm first:" in text.out and "tree packs" in text.out
    assert not (tmp_path / "out").exists()

    copy = dr.run("copy", "--to", str(tmp_path / "hot-copy"), "--json")  # a cold source: warmed first
    assert copy.code == 0, copy.err
    copied = json.loads(copy.out)
    assert copied["warm"]["scope"] == "data" and copied["warm"]["packs_to_warm"] >= 1
    assert len(copied["copied"]) == 1
    assert "restore requested (Bulk tier, readable for 2 days)" in copy.err

    restore = dr.run("restore", "latest", "--target", str(tmp_path / "out"), "--json")
    assert restore.code == 0, restore.err
    result = json.loads(restore.out)
    assert result["warm"]["scope"] == "data" and result["warm"]["packs_checked"] >= 1
    assert result["warm"]["packs_to_warm"] == 0 and result["files"] == 2  # the copy warmed them
    assert (tmp_path / "out" / "src" / "media" / "a.bin").read_bytes() == (src / "media" / "a.bin").read_bytes()
    assert (tmp_path / "out" / "src" / "notes.txt").read_text() == (src / "notes.txt").read_text()
    client = make_client(moto_server.url)
    for key in packs:  # every pack the restore read was warmed, for the configured days
        head = client.head_object(Bucket=bucket, Key=f"second-site/{key}")
        assert 'ongoing-request="false"' in head.get("Restore", "")
    again = dr.run("restore", "latest", "--target", str(tmp_path / "out2"), "--dry-run", "--json")
    assert json.loads(again.out)["warm"]["packs_to_warm"] == 0  # warm now: nothing to ask for


class SlowArchive(MemoryBackend):
    """A store whose packs are cold until requested, then warm after ``polls`` more state checks."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls = polls
        self.requested: list[str] = []
        self.checks: dict[str, int] = {}

    def cold_state(self, name: str) -> str:
        if name not in self.requested:
            return "cold"
        self.checks[name] = self.checks.get(name, 0) + 1
        return "hot" if self.checks[name] > self.polls else "warming"

    def request_warm(self, name: str) -> None:
        assert name not in self.requested, "a pack was requested twice"
        self.requested.append(name)

    def warm_profile(self) -> tuple[str, str, int]:
        return "DEEP_ARCHIVE", "Standard", 3


def test_waiting_reports_progress_and_time_left() -> None:
    store = SlowArchive(polls=2)
    repo = Repository.init(store, b"pw")
    pack_ids = [bytes([i]) * 32 for i in range(3)]
    now = [0.0]
    lines: list[str] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    done = warming.warm(repo, pack_ids, poll_seconds=600, clock=lambda: now[0], sleep=sleep,
                        report=lines.append)
    assert done is not None and len(done.cold) == 3
    assert sorted(store.requested) == sorted(pack_name(p) for p in pack_ids)
    assert "3 packs" in lines[0] and "DEEP_ARCHIVE" in lines[0] and "typically 12h00m" in lines[0]
    assert "0/3 readable" in lines[1] and "left" in lines[1]
    assert lines[-1].startswith("all 3 packs are readable after 20m")
    assert now[0] == 1200  # two polls of 600 s
