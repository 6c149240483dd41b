"""An object-store source on OpenStack Swift, through Swift's S3 API (s3api + tempauth).

The Swift all-in-one (tests/swiftserver.py) is started from Debian's
packages; a counting proxy in front of it shows what was fetched.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import boto3
import pytest
from botocore.config import Config

from conftest import DrEnv, make_env
from fault_proxy import FaultProxy
from swiftserver import ACCESS_KEY, SECRET_KEY, SwiftServer, start_swift

pytestmark = pytest.mark.slow  # the four Swift servers take ~10-20 s to start on a loaded machine


@pytest.fixture(scope="module")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftServer]:
    server = start_swift(tmp_path_factory.mktemp("swift"))
    try:
        yield server
    finally:
        server.stop()


def s3(url: str):  # type: ignore[no-untyped-def]
    return boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                 region_name="us-east-1").client(
        "s3", endpoint_url=url, config=Config(s3={"addressing_style": "path"}))


def swift_env(tmp: Path, endpoint: str, bucket: str) -> DrEnv:
    env = make_env(tmp / "dr")
    config = tmp / "drtool.toml"
    config.write_text(f'[sources.commons]\ntype = "s3"\nendpoint = "{endpoint}"\nbucket = "{bucket}"\n'
                      f'addressing_style = "path"\n')
    env.env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
                   AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   AWS_EC2_METADATA_DISABLED="true", DRTOOL_CONFIG=str(config))
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        env.env.pop(key, None)
    env.init()
    return env


def test_swift_bucket_backup_incremental_and_restore(swift: SwiftServer, tmp_path: Path) -> None:
    client = s3(swift.url)
    client.create_bucket(Bucket="commons")
    objects = {f"{d}/{i}.png": os.urandom(500 + i) for d in ("0/0a", "0/0b") for i in range(5)}
    for key, body in objects.items():
        client.put_object(Bucket="commons", Key=key, Body=body, ContentType="image/png",
                          Metadata={"sha1": key.replace("/", "-")})
    proxy = FaultProxy(swift.url).start()
    try:
        dr = swift_env(tmp_path, proxy.url, "commons")
        assert dr.run("backup", "--source", "commons").code == 0
        assert proxy.count("get") == len(objects)
        client.put_object(Bucket="commons", Key="0/0a/3.png", Body=b"re-uploaded", ContentType="image/webp",
                          Metadata={"sha1": "new"})
        objects["0/0a/3.png"] = b"re-uploaded"
        proxy.reset()
        result = dr.run("backup", "--source", "commons")
        assert result.code == 0, result.err
        assert [what.split()[1] for kind, what in proxy.requests if kind == "get"] == ["/commons/0/0a/3.png"]
        client.create_bucket(Bucket="restored")
        result = dr.run("restore", "latest", "--source", "commons", "--to-bucket", "s3://restored/night")
        assert result.code == 0, result.err
    finally:
        proxy.stop()
    for key, body in objects.items():
        got = client.get_object(Bucket="restored", Key=f"night/{key}")
        assert got["Body"].read() == body
        assert got["ContentType"] == ("image/webp" if key == "0/0a/3.png" else "image/png")
        assert got["Metadata"] == {"sha1": "new" if key == "0/0a/3.png" else key.replace("/", "-")}


def native_env(tmp: Path, proxy_url: str, container: str) -> DrEnv:
    env = make_env(tmp / "dr")
    config = tmp / "drtool.toml"
    config.write_text(f'[sources.commons]\ntype = "swift"\nauth_url = "{proxy_url}/auth/v1.0"\n'
                      f'user = "{ACCESS_KEY}"\ncontainer = "{container}"\nprefix = "thumbs/"\nconnections = 3\n')
    env.env.update(ST_KEY=SECRET_KEY, DRTOOL_CONFIG=str(config))
    env.init()
    return env


def test_native_swift_api_with_tempauth(swift: SwiftServer, tmp_path: Path) -> None:
    import swiftclient.client
    conn = swiftclient.client.Connection(authurl=f"{swift.url}/auth/v1.0", user=ACCESS_KEY, key=SECRET_KEY)
    conn.put_container("native")
    objects = {f"thumbs/{i % 3}/{i}.jpg": os.urandom(300 + i) for i in range(9)}
    for key, body in objects.items():
        conn.put_object("native", key, body, content_type="image/jpeg", headers={"X-Object-Meta-Width": "120"})
    conn.put_object("native", "originals/big.tif", b"not under the prefix")
    proxy = FaultProxy(swift.url).start()

    def object_gets() -> list[str]:  # GET /v1/AUTH_test/native/KEY (listings carry a query string)
        return sorted(what.split()[1].split("/native/", 1)[1] for _kind, what in proxy.requests
                      if what.startswith("GET /v1/") and "?" not in what)
    try:
        dr = native_env(tmp_path, proxy.url, "native")
        result = dr.run("backup", "--source", "commons")
        assert result.code == 0, result.err
        assert object_gets() == sorted(objects)
        assert key_nowhere_stored(dr, SECRET_KEY)
        conn.put_object("native", "thumbs/1/4.jpg", b"smaller", content_type="image/webp",
                        headers={"X-Object-Meta-Width": "60"})
        conn.delete_object("native", "thumbs/2/5.jpg")
        objects["thumbs/1/4.jpg"] = b"smaller"
        del objects["thumbs/2/5.jpg"]
        proxy.reset()
        result = dr.run("backup", "--source", "commons")
        assert result.code == 0, result.err
        assert object_gets() == ["thumbs/1/4.jpg"]
        conn.put_container("restored-native")
        result = dr.run("restore", "latest", "--source", "commons", "--to-bucket", "swift://restored-native/copy")
        assert result.code == 0, result.err
    finally:
        proxy.stop()
    _headers, listing = conn.get_container("restored-native")
    assert sorted(item["name"] for item in listing) == sorted(f"copy/{k[len('thumbs/'):]}" for k in objects)
    for key, body in objects.items():
        headers, got = conn.get_object("restored-native", f"copy/{key[len('thumbs/'):]}")
        assert got == body
        assert headers["content-type"] == ("image/webp" if key == "thumbs/1/4.jpg" else "image/jpeg")
        assert headers["x-object-meta-width"] == ("60" if key == "thumbs/1/4.jpg" else "120")
    # find: by name, and by the ETag Swift serves (the MD5 of a plain object's body)
    found = dr.run("find", "4.jpg", "--json")
    assert found.code == 0 and sorted((v["path"], v["size"]) for v in json.loads(found.out)) == [
        ("1/4.jpg", 7), ("1/4.jpg", 304)]
    digest = hashlib.md5(objects["thumbs/0/3.jpg"]).hexdigest()
    found = dr.run("find", "--hash", f"etag:{digest}", "--json")
    assert found.code == 0 and [v["path"] for v in json.loads(found.out)] == ["0/3.jpg"]


def key_nowhere_stored(dr: DrEnv, key: str) -> bool:
    """The Swift key is nowhere in the catalog or the repository's clear-text files."""
    for path in [dr.catalog, *dr.repo.rglob("*")]:
        if path.is_file() and key.encode() in path.read_bytes():
            return False
    return True


def test_native_swift_sharded_set(swift: SwiftServer, tmp_path: Path) -> None:
    """shards = N on the native API: the delimiter listings (``iter_level``) find every object once."""
    import json

    import swiftclient.client
    conn = swiftclient.client.Connection(authurl=f"{swift.url}/auth/v1.0", user=ACCESS_KEY, key=SECRET_KEY)
    conn.put_container("sharded")
    objects = {f"m/{a}/{a}{b}/{i}.jpg": os.urandom(100 + i) for a in "0af" for b in "05" for i in range(2)}
    objects["m/top.txt"] = b"above the units"
    for key, body in objects.items():
        conn.put_object("sharded", key, body, content_type="image/jpeg")
    dr = make_env(tmp_path / "dr")
    config = tmp_path / "drtool.toml"
    config.write_text(f'[sources.media]\ntype = "swift"\nauth_url = "{swift.url}/auth/v1.0"\nuser = "{ACCESS_KEY}"\n'
                      f'container = "sharded"\nprefix = "m/"\nshards = 4\nshard_depth = 2\n')
    dr.env.update(ST_KEY=SECRET_KEY, DRTOOL_CONFIG=str(config))
    dr.init()
    result = dr.run("backup", "--source", "media", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["state"] == "committed" and len(doc["snapshots"]) == 4
    assert sum(s["summary"]["files"] for s in doc["snapshots"]) == len(objects)
    target = tmp_path / "restored"
    result = dr.run("restore", doc["set"], "--target", str(target))
    assert result.code == 0, result.err
    found = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert found == {k[len("m/"):]: v for k, v in objects.items()}
