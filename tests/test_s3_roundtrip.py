"""The whole CLI against S3 over real HTTP (moto), second-site copies, and wire faults.

What a DR operator relies on, end to end: a repository in a bucket behaves
like a local one (backup, restore, check, catalog rebuild), costs few
requests (no full-bucket listing per run), survives a flaky network, keeps
Object Lock working with prune, and ``drtool copy`` makes an independently
restorable second copy that later runs top up incrementally.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import signal
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import DrEnv, make_env
from drtool.rehearse.drill import record
from fault_proxy import FaultProxy
from s3server import MotoServer, client_env, create_bucket, make_client, moto_server  # noqa: F401
from treegen import describe, make_rich_tree

MiB = 1024 * 1024
TO_PASSWORD = "a different passphrase for the second site"
SMALL_PARTS = {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}
FLAKY = {"read_timeout": 1.5, "connect_timeout": 2, "max_attempts": 3, "read_attempts": 3,
         "read_retry_backoff": 0.05, **SMALL_PARTS}


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def write_config(path: Path, repository: str, s3: dict[str, Any]) -> Path:
    lines = [f"repository = {_toml(repository)}", "", "[s3]"]
    lines += [f"{key} = {_toml(value)}" for key, value in s3.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def s3_env(tmp: Path, endpoint: str, url: str) -> DrEnv:
    dr = make_env(tmp)
    dr.env.update(client_env(endpoint))
    dr.env.pop("AWS_ENDPOINT_URL_S3", None)
    dr.env.pop("AWS_PROFILE", None)
    dr.env["DRTOOL_REPOSITORY"] = url
    return dr


def ok(result: Any) -> Any:
    assert result.code == 0, f"exit {result.code}\n{result.out}\n{result.err}"
    return json.loads(result.out) if result.out.lstrip().startswith(("{", "[")) else result.out


def make_source(root: Path, seed: int = 1, files: int = 6, size: int = 700_000) -> Path:
    rng = random.Random(seed)
    (root / "deep" / "er").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(rng.randbytes(size))
    (root / "deep" / "er" / "notes.txt").write_text("line of text\n" * 20_000)
    return root


def keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    client = make_client(endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) or [])


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    return create_bucket(moto_server.url)


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    fp = FaultProxy(moto_server.url, stall_seconds=1.6, seed=7).start()
    yield fp
    fp.stop()


# ----- the CLI on S3 ------------------------------------------------------------------------------
def test_cli_round_trip_on_s3(moto_server: MotoServer, bucket: str, proxy: FaultProxy,
                              tmp_path: Path) -> None:
    dr = s3_env(tmp_path / "dr", proxy.url, f"s3://{bucket}/prod")
    src = tmp_path / "src"
    make_rich_tree(src)
    ok(dr.run("init"))
    first = ok(dr.run("backup", str(src), "--name", "rich", "--json"))
    assert first["requests"]["puts"] >= 4 and first["requests"]["bytes_up"] > 3 * MiB
    (src / "dir" / "added.txt").write_text("new file\n")
    proxy.reset()
    second = ok(dr.run("backup", str(src), "--name", "rich", "--json"))
    assert second["parent"] == first["id"] and second["summary"]["bytes_added_raw"] < 512 * 1024
    _assert_only_small_listings(proxy, "prod/", second["requests"])
    snaps = ok(dr.run("snapshots", "--json"))
    assert [s["id"] for s in snaps] == [first["id"], second["id"]]
    restored = tmp_path / "restored"
    ok(dr.run("restore", "latest", "--target", str(restored)))
    assert describe(restored / "src") == describe(src)
    check = ok(dr.run("check", "--read-data", "--json"))
    assert check["ok"] and check["packs_read"] == check["packs"] >= 2
    for leftover in dr.catalog.parent.glob(dr.catalog.name + "*"):
        leftover.unlink()
    rebuilt = ok(dr.run("catalog", "rebuild", "--json"))
    assert rebuilt["snapshots"] == 2 and not rebuilt["damaged"]
    assert ok(dr.run("snapshots", "--json")) == snaps


def _assert_only_small_listings(proxy: FaultProxy, base: str, requests: dict[str, int]) -> None:
    """An incremental backup lists only keys/, locks/, index/ and snapshots/ (never packs/)."""
    prefixes = []
    for kind, what in proxy.requests:
        if kind == "list":
            query = parse_qs(urlsplit(what.split(" ", 1)[1]).query)
            prefixes.append(query.get("prefix", [""])[0])
    assert prefixes and set(prefixes) <= {base + p for p in ("keys/", "locks/", "index/",
                                                              "snapshots/")}, prefixes
    assert requests["lists"] == len(prefixes)
    assert requests["puts"] == sum(1 for k, _ in proxy.requests if k in ("put", "part", "initiate",
                                                                         "complete", "retention"))


def test_config_file_s3_table(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    """repository = "s3://…" plus an [s3] table: storage class and SSE reach every pack."""
    dr = s3_env(tmp_path / "dr", "http://127.0.0.1:9", "")
    del dr.env["DRTOOL_REPOSITORY"]
    config = write_config(tmp_path / "drtool.toml", f"s3://{bucket}/cfg",
                          {"endpoint_url": moto_server.url, "addressing_style": "path",
                           "region": "us-east-1", "storage_class": "STANDARD_IA", "sse": "AES256"})
    dr.env["DRTOOL_CONFIG"] = str(config)
    src = make_source(tmp_path / "src", files=2)
    ok(dr.run("init"))
    ok(dr.run("backup", str(src), "--name", "cfg"))
    assert len(ok(dr.run("snapshots", "--json"))) == 1
    packs = [k for k in keys(moto_server.url, bucket, "cfg/") if k.startswith("cfg/packs/")]
    assert packs
    head = make_client(moto_server.url).head_object(Bucket=bucket, Key=packs[0])
    assert head.get("StorageClass") == "STANDARD_IA" and head.get("ServerSideEncryption") == "AES256"
    bad = write_config(tmp_path / "bad.toml", f"s3://{bucket}/cfg", {"storage_clas": "X"})
    result = dr.run("--config", str(bad), "snapshots")
    assert result.code == 2 and "unknown S3 option" in result.err


# ----- copy ----------------------------------------------------------------------------------------
def _local_with_two_snapshots(tmp: Path) -> tuple[DrEnv, Path]:
    dr = make_env(tmp / "local")
    ok(dr.run("init"))
    src = make_source(tmp / "src")
    ok(dr.run("backup", str(src), "--name", "media"))
    (src / "f0.bin").write_bytes(random.Random(99).randbytes(300_000))
    (src / "new.txt").write_text("second night\n")
    ok(dr.run("backup", str(src), "--name", "media"))
    return dr, src


def _restore_matches(dr: DrEnv, src: Path, target: Path, env: dict[str, str] | None = None) -> None:
    ok(dr.run("restore", "latest", "--target", str(target), env=env))
    assert describe(target / src.name) == describe(src)


def test_copy_local_to_s3_and_back(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    local, src = _local_with_two_snapshots(tmp_path)
    local.env.update(client_env(moto_server.url))
    to_env = {"DRTOOL_TO_PASSWORD": TO_PASSWORD}
    url = f"s3://{bucket}/site2"
    first = ok(local.run("copy", "--to", url, "--json", env=to_env))
    assert first["initialized"] and len(first["copied"]) == 2 and first["blobs_copied"] > 0
    packs = [k for k in keys(moto_server.url, bucket, "site2/packs/")]
    again = ok(local.run("copy", "--to", url, "--json", env=to_env))
    assert again["copied"] == [] and len(again["skipped"]) == 2 and again["blobs_copied"] == 0
    assert again["destination_requests"]["puts"] <= 1  # the copy lock, nothing else
    assert keys(moto_server.url, bucket, "site2/packs/") == packs
    # the copy stands alone: its own passphrase and keys, restorable and checkable
    site2 = s3_env(tmp_path / "site2", moto_server.url, url)
    site2.env["DRTOOL_PASSWORD"] = TO_PASSWORD
    _restore_matches(site2, src, tmp_path / "from-s3")
    assert ok(site2.run("check", "--read-data", "--json"))["ok"]
    dst_snaps = ok(site2.run("snapshots", "--json"))
    assert dst_snaps[1]["parent"] == dst_snaps[0]["id"]
    assert dst_snaps[0]["meta"]["copied_from"]["snapshot"] == first["copied"][0]["source"]
    # S3 -> a new local repository, and S3 -> back to the origin (nothing to do)
    back = ok(site2.run("copy", "--to", str(tmp_path / "site3"), "--json",
                        env={"DRTOOL_TO_PASSWORD": "third"}))
    assert len(back["copied"]) == 2
    site3 = make_env(tmp_path / "site3env")
    site3.env.update(DRTOOL_REPOSITORY=str(tmp_path / "site3"), DRTOOL_PASSWORD="third")
    _restore_matches(site3, src, tmp_path / "from-site3")
    home = ok(site2.run("copy", "--to", str(local.repo), "--json",
                        env={"DRTOOL_TO_PASSWORD": local.env["DRTOOL_PASSWORD"]}))
    assert home["copied"] == [] and len(home["skipped"]) == 2
    direct = ok(local.run("copy", "--to", str(tmp_path / "site3"), "--json",
                          env={"DRTOOL_TO_PASSWORD": "third"}))
    assert direct["copied"] == [] and len(direct["skipped"]) == 2  # a copy of a copy is no new copy
    _restore_matches(local, src, tmp_path / "from-local")


def test_copy_incremental_reads_only_changes(tmp_path: Path) -> None:
    """A third night's snapshot is copied by reading only its changed files' blobs."""
    local, src = _local_with_two_snapshots(tmp_path)
    to_env = {"DRTOOL_TO_PASSWORD": TO_PASSWORD}
    dest = str(tmp_path / "second")
    ok(local.run("copy", "--to", dest, env=to_env))
    (src / "deep" / "er" / "notes.txt").write_text("changed\n")
    ok(local.run("backup", str(src), "--name", "media"))
    third = ok(local.run("copy", "--to", dest, "--name", "media", "latest", "--json", env=to_env))
    assert len(third["copied"]) == 1 and third["blobs_read"] == 1
    assert third["blobs_mapped"] >= 6
    second = make_env(tmp_path / "secondenv")
    second.env.update(DRTOOL_REPOSITORY=dest, DRTOOL_PASSWORD=TO_PASSWORD)
    _restore_matches(second, src, tmp_path / "out")


def test_copy_config_table_logs_and_rehearsals(tmp_path: Path) -> None:
    """[copy] names the destination (relative to the config file) and its passphrase file;
    a full copy also brings archived WAL files and rehearsal records."""
    local, src = _local_with_two_snapshots(tmp_path)
    wal = tmp_path / "000000010000000000000001"
    wal.write_bytes(random.Random(3).randbytes(65536))
    ok(local.run("pg", "wal-push", "--source", "svc", str(wal)))
    with local.session() as session:
        record(session, {"runbook": "drill", "host": "h", "started": "2026-01-01T00:00:00+00:00",
                         "finished": "2026-01-01T00:01:00+00:00", "status": "passed", "steps": []})
    (tmp_path / "to.pass").write_text(TO_PASSWORD + "\n")
    config = tmp_path / "drtool.toml"
    config.write_text(f'[copy]\nrepository = "second"\npassword_file = "{tmp_path / "to.pass"}"\n')
    local.env["DRTOOL_CONFIG"] = str(config)
    report = ok(local.run("copy", "--json"))
    assert report["destination"] == f"file://{tmp_path / 'second'}" and len(report["copied"]) == 2
    assert report["log_files_copied"] == 1 and report["rehearsals_copied"] == 1
    again = ok(local.run("copy", "--json"))
    assert again["log_files_copied"] == again["rehearsals_copied"] == again["blobs_copied"] == 0
    second = make_env(tmp_path / "secondenv")
    second.env.update(DRTOOL_REPOSITORY=str(tmp_path / "second"), DRTOOL_PASSWORD=TO_PASSWORD)
    _restore_matches(second, src, tmp_path / "out")
    ok(second.run("pg", "wal-fetch", "--source", "svc", wal.name, str(tmp_path / "fetched")))
    assert (tmp_path / "fetched").read_bytes() == wal.read_bytes()
    wrong = local.run("copy", env={"DRTOOL_TO_PASSWORD": "wrong"})
    assert wrong.code == 12 and "destination" in wrong.err
    missing = local.run("copy", env={"DRTOOL_CONFIG": ""})
    assert missing.code == 2 and "no destination repository" in missing.err


def test_copy_interrupted_then_rerun(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    local, src = _local_with_two_snapshots(tmp_path)
    local.env.update(client_env(moto_server.url), DRTOOL_TO_PASSWORD=TO_PASSWORD)
    url = f"s3://{bucket}/site2"
    proc = local.spawn("copy", "--to", url, env={"DRTOOL_CRASH_AT": "copy-before-snapshot"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert keys(moto_server.url, bucket, "site2/snapshots/") == []
    assert keys(moto_server.url, bucket, "site2/index/")  # packs and index were flushed
    rerun = ok(local.run("copy", "--to", url, "--json"))
    assert len(rerun["copied"]) == 2 and rerun["blobs_copied"] == 0
    site2 = s3_env(tmp_path / "site2", moto_server.url, url)
    site2.env["DRTOOL_PASSWORD"] = TO_PASSWORD
    assert ok(site2.run("check", "--read-data", "--json"))["ok"]
    _restore_matches(site2, src, tmp_path / "out")


# ----- repo validate -----------------------------------------------------------------------------
def test_repo_validate_cli(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
    dr = s3_env(tmp_path / "dr", moto_server.url, f"s3://{bucket}/v")
    for url in (str(tmp_path / "local"), f"s3://{bucket}/v"):
        report = ok(dr.run("--repo", url, "repo", "validate", "--json"))
        assert report["ok"] and {c["name"] for c in report["checks"]} >= {
            "location", "atomic-overwrite", "ranged-read", "clock-skew", "cleanup"}
    text = dr.run("--repo", f"s3://{bucket}/v", "repo", "validate")
    assert text.code == 0 and text.out.startswith("ok    location")
    missing = dr.run("--repo", f"s3://absent-{uuid.uuid4().hex[:8]}/v", "repo", "validate")
    assert missing.code == 1 and "FAIL  location" in missing.out
    assert "1 storage check(s) failed: location" in missing.err


# ----- wire faults during a whole backup ------------------------------------------------------
@pytest.mark.parametrize("fault", ["500", "503", "reset", "stall", "truncate", "error200"])
def test_backup_under_random_wire_faults(moto_server: MotoServer, bucket: str, proxy: FaultProxy,
                                         tmp_path: Path, fault: str) -> None:
    """10 % of all requests fail: the backup succeeds or exits cleanly; the repository stays sound."""
    dr = s3_env(tmp_path / "dr", moto_server.url, "")
    del dr.env["DRTOOL_REPOSITORY"]
    config = write_config(tmp_path / "drtool.toml", f"s3://{bucket}/flaky",
                          {"endpoint_url": proxy.url, "addressing_style": "path", **FLAKY})
    dr.env["DRTOOL_CONFIG"] = str(config)
    src = make_source(tmp_path / "src", files=4, size=2 * MiB)
    ok(dr.run("init"))
    proxy.add("*", fault, rate=0.10)
    outcomes = []
    for _ in range(2):  # a failed run is followed by a second one, which reuses what it stored
        result = dr.run("backup", str(src), "--name", "flaky")
        assert "internal error" not in result.err and "Traceback" not in result.err
        assert result.code == 0 or (result.code in (1, 11) and result.err.count("drtool: error:") == 1), \
            result.err
        outcomes.append(result.code)
        if result.code == 0:
            break
    print(f"\n{fault}: exit codes {outcomes}, {len(proxy.injected)} of {len(proxy.requests)} "
          f"requests faulted")
    assert proxy.injected, "no fault was injected"
    proxy.reset()
    assert ok(dr.run("check", "--read-data", "--json"))["ok"]
    for i, snap in enumerate(ok(dr.run("snapshots", "--json"))):
        _restore_one(dr, snap["id"], src, tmp_path / f"out{i}")


def _restore_one(dr: DrEnv, snap_id: str, src: Path, target: Path) -> None:
    ok(dr.run("restore", snap_id, "--target", str(target)))
    assert describe(target / src.name) == describe(src)


# ----- Object Lock and prune ----------------------------------------------------------------------
def test_object_lock_backup_and_prune(moto_server: MotoServer, tmp_path: Path) -> None:
    """Objects are locked, locks/ stay deletable, prune skips locked garbage and renews retention."""
    bucket = create_bucket(moto_server.url, object_lock=True)
    dr = s3_env(tmp_path / "dr", moto_server.url, "")
    del dr.env["DRTOOL_REPOSITORY"]
    config = write_config(tmp_path / "drtool.toml", f"s3://{bucket}/worm",
                          {"addressing_style": "path", "object_lock_mode": "GOVERNANCE",
                           "object_lock_days": 1})
    dr.env["DRTOOL_CONFIG"] = str(config)
    src = make_source(tmp_path / "src", files=2)
    ok(dr.run("init"))
    ok(dr.run("backup", str(src), "--name", "worm"))
    client = make_client(moto_server.url)
    pack = keys(moto_server.url, bucket, "worm/packs/")[0]
    until = client.head_object(Bucket=bucket, Key=pack)["ObjectLockRetainUntilDate"]
    assert until > dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=23)
    assert keys(moto_server.url, bucket, "worm/locks/") == []  # released, not resurrected
    garbage = make_source(tmp_path / "garbage", seed=5, files=2)
    crashed = dr.spawn("backup", str(garbage), "--name", "worm",
                       env={"DRTOOL_CRASH_AT": "backup-before-snapshot"})
    assert crashed.returncode == -signal.SIGKILL
    mark = ok(dr.run("prune", "--grace", "0s", "--json"))
    assert mark["packs_condemned"] >= 1 and mark["retention_extended"] > 0 and not mark["warnings"]
    sweep = ok(dr.run("prune", "--grace", "0s", "--json"))
    assert sweep["locked_skipped"] >= 1 and sweep["packs_deleted"] == 0 and not sweep["warnings"]
    assert ok(dr.run("check", "--read-data", "--json"))["ok"]
    _restore_one(dr, "latest", src, tmp_path / "out")
