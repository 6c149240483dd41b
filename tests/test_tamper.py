"""Corruption and tampering of any stored object is detected, named, and never restored."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import DrEnv


def backed_up(env: DrEnv, tmp_path: Path, versions: int = 1) -> list[dict]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    snaps = []
    for v in range(versions):
        (src / f"file{v}.bin").write_bytes(os.urandom(300_000))
        (src / "common.txt").write_text(f"common text {v}\n" * 1000)
        result = env.run("backup", str(src), "--name", "t", "--json")
        assert result.code == 0, result.err
        snaps.append(json.loads(result.out))
    return snaps


def objects(env: DrEnv, prefix: str) -> list[Path]:
    return sorted(p for p in (env.repo / prefix).rglob("*") if p.is_file())


def flip_bit(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    position = len(data) // 2 if offset is None else offset
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_bit_flip_in_pack_is_detected_by_check_and_restore(repo_env: DrEnv, tmp_path: Path) -> None:
    snaps = backed_up(repo_env, tmp_path)
    for pack in objects(repo_env, "packs"):
        flip_bit(pack, 40)
    result = repo_env.run("check", "--read-data", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["damaged_objects"] and all(o.startswith("packs/") for o in report["damaged_objects"])
    assert snaps[0]["id"] in report["affected_snapshots"]
    out = tmp_path / "out"
    restore = repo_env.run("restore", "latest", "--target", str(out))
    assert restore.code == 1 and "damaged" in restore.err
    complete = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".drtool-part")]
    for path in complete:  # anything restored under its real name is correct
        assert path.read_bytes() == (tmp_path / "src" / path.name).read_bytes()


def test_allow_partial_restores_the_rest_and_exits_3(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(200_000))
    repo_env.run("backup", str(src), "--name", "t")
    (src / "b.bin").write_bytes(os.urandom(200_000))
    repo_env.run("backup", str(src), "--name", "t")
    newest_pack = max(objects(repo_env, "packs"), key=lambda p: p.stat().st_mtime_ns)
    packs = objects(repo_env, "packs")
    # damage the pack that holds b.bin's data (the data pack written by the 2nd backup)
    data_packs = [p for p in packs if p.stat().st_size > 150_000]
    victim = max(data_packs, key=lambda p: p.stat().st_mtime_ns)
    flip_bit(victim, 30)
    assert newest_pack.exists()
    out = tmp_path / "out"
    result = repo_env.run("restore", "latest", "--target", str(out), "--allow-partial")
    assert result.code == 3
    assert "b.bin" in result.err
    assert (out / "src" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert not (out / "src" / "b.bin").exists()


@pytest.mark.parametrize("prefix", ["index", "snapshots"])
def test_bit_flip_in_index_or_snapshot(repo_env: DrEnv, tmp_path: Path, prefix: str) -> None:
    backed_up(repo_env, tmp_path)
    (victim,) = objects(repo_env, prefix)
    flip_bit(victim)
    repo_env.catalog.unlink()  # force re-reading the repository, not the cache
    result = repo_env.run("check", "--json")
    assert result.code == 1
    assert f"{prefix}/{victim.name}" in json.loads(result.out)["damaged_objects"] or \
        f"{prefix}/{victim.name}" in result.err + result.out


def test_bit_flip_in_key_slot_is_wrong_key_not_crash(repo_env: DrEnv, tmp_path: Path) -> None:
    backed_up(repo_env, tmp_path)
    (key,) = objects(repo_env, "keys")
    data = json.loads(key.read_bytes())
    wrapped = bytearray(__import__("base64").b64decode(data["wrapped"]))
    wrapped[20] ^= 1
    data["wrapped"] = __import__("base64").b64encode(bytes(wrapped)).decode()
    key.write_text(json.dumps(data))
    result = repo_env.run("snapshots")
    assert result.code == 12  # the slot no longer opens: indistinguishable from a wrong passphrase
    assert "Traceback" not in result.err


def test_bit_flip_in_config(repo_env: DrEnv, tmp_path: Path) -> None:
    backed_up(repo_env, tmp_path)
    flip_bit(repo_env.repo / "config")
    result = repo_env.run("snapshots")
    assert result.code == 1 and "config" in result.err


def test_swapped_snapshot_objects_are_detected(repo_env: DrEnv, tmp_path: Path) -> None:
    backed_up(repo_env, tmp_path, versions=2)
    a, b = objects(repo_env, "snapshots")
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    repo_env.catalog.unlink()
    result = repo_env.run("check", "--json")
    assert result.code == 1
    damaged = json.loads(result.out)["damaged_objects"]
    assert f"snapshots/{a.name}" in damaged and f"snapshots/{b.name}" in damaged


def test_replayed_snapshot_under_new_name_is_rejected(repo_env: DrEnv, tmp_path: Path) -> None:
    backed_up(repo_env, tmp_path)
    (snap,) = objects(repo_env, "snapshots")
    forged = snap.with_name("ab" * 32)
    shutil.copy(snap, forged)
    repo_env.catalog.unlink()
    result = repo_env.run("snapshots", "--json")
    assert result.code == 0  # the genuine snapshot stays listed and restorable
    assert [s["id"] for s in json.loads(result.out)] == [snap.name]
    assert forged.name in result.err and "stored under another name" in result.err
    check = repo_env.run("check", "--json")
    assert check.code == 1 and f"snapshots/{forged.name}" in json.loads(check.out)["damaged_objects"]


def test_pack_relabelled_as_index_is_rejected(repo_env: DrEnv, tmp_path: Path) -> None:
    """Type confusion: a valid ciphertext of one kind placed where another kind is expected."""
    backed_up(repo_env, tmp_path)
    (snap,) = objects(repo_env, "snapshots")
    index_dir = repo_env.repo / "index"
    shutil.copy(snap, index_dir / snap.name)
    repo_env.catalog.unlink()
    result = repo_env.run("check", "--json")
    assert result.code == 1
    assert f"index/{snap.name}" in json.loads(result.out)["damaged_objects"]


def test_missing_pack_names_affected_snapshots(repo_env: DrEnv, tmp_path: Path) -> None:
    snaps = backed_up(repo_env, tmp_path, versions=2)
    biggest = max(objects(repo_env, "packs"), key=lambda p: p.stat().st_size)
    biggest.unlink()
    result = repo_env.run("check", "--json")
    report = json.loads(result.out)
    assert result.code == 1
    assert any("missing" in e for e in report["errors"])
    assert set(report["affected_snapshots"]) & {s["id"] for s in snaps}
    restore = repo_env.run("restore", "latest", "--target", str(tmp_path / "out"))
    assert restore.code == 1
    assert "Traceback" not in restore.err


def test_truncated_pack_is_detected(repo_env: DrEnv, tmp_path: Path) -> None:
    backed_up(repo_env, tmp_path)
    for pack in objects(repo_env, "packs"):
        pack.write_bytes(pack.read_bytes()[:-100])
    result = repo_env.run("check", "--read-data")
    assert result.code == 1
    assert "packs/" in result.out


def test_file_names_never_appear_in_the_repository(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "VerySecretFileName.txt").write_text("Confidential Payload " * 200)
    repo_env.run("backup", str(src), "--name", "secret-series")
    for path in repo_env.repo.rglob("*"):
        assert b"VerySecretFileName" not in path.name.encode()
        if path.is_file():
            data = path.read_bytes()
            assert b"VerySecretFileName" not in data
            assert b"Confidential Payload" not in data
            assert b"secret-series" not in data
