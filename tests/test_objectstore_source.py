"""Object-store sources against moto's server over real HTTP, through a counting proxy.

The source bucket is reached through tests/fault_proxy.py with no faults:
it records every request, so "the second backup fetched only the changed
objects" is counted on the wire, not taken from drtool's own bookkeeping.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DrEnv, dr, make_env  # noqa: F401 - fixture
from fault_proxy import FaultProxy
from s3server import DUMMY_ENV, MotoServer, create_bucket, make_client, moto_server  # noqa: F401 - fixture


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:  # noqa: F811 - fixture
    counting = FaultProxy(moto_server.url).start()
    try:
        yield counting
    finally:
        counting.stop()


def source_env(tmp: Path, endpoint: str, bucket: str, prefix: str = "media/") -> DrEnv:
    env = make_env(tmp / "dr")
    config = tmp / "drtool.toml"
    config.write_text(f"""
[sources.wiki-media]
type = "s3"
endpoint = "{endpoint}"
bucket = "{bucket}"
prefix = "{prefix}"
addressing_style = "path"
connections = 4
""")
    env.env.update(DUMMY_ENV, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   AWS_EC2_METADATA_DISABLED="true", DRTOOL_CONFIG=str(config))
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.env.pop(key, None)
    env.init()
    return env


def put(endpoint: str, bucket: str, key: str, body: bytes, content_type: str = "application/octet-stream",
        meta: dict[str, str] | None = None) -> None:
    make_client(endpoint).put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type,
                                     Metadata=meta or {})


def gets(proxy: FaultProxy, bucket: str) -> list[str]:
    """Keys of the object GETs the proxy saw (listings and HEADs are other kinds)."""
    return sorted(what.split(" ", 1)[1].split("?")[0][len(f"/{bucket}/"):]
                  for kind, what in proxy.requests if kind == "get")


def backup(dr: DrEnv) -> dict:
    result = dr.run("backup", "--source", "wiki-media", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["sources"]["wiki-media"][0]


def test_backup_incremental_deletions_and_restores(moto_server: MotoServer, proxy: FaultProxy,  # noqa: F811
                                                   tmp_path: Path) -> None:
    bucket = create_bucket(moto_server.url)
    big = os.urandom(9 * 1024 * 1024 + 17)  # more than one 8 MiB segment
    objects = {f"media/{d}/{i:03d}.jpg": os.urandom(1000 + i) for d in ("a", "b/c") for i in range(30)}
    objects["media/big.bin"] = big
    objects["media/text/readme.txt"] = b"hello " * 10_000  # compressible: the text chunker
    for key, body in objects.items():
        put(moto_server.url, bucket, key, body, "image/jpeg", {"author": "Ada", "licence": "CC-BY-SA"})
    put(moto_server.url, bucket, "media/empty/", b"")          # a console's folder marker
    put(moto_server.url, bucket, "media/", b"")                # ... and the prefix's own
    put(moto_server.url, bucket, "other/not-under-prefix", b"x")
    dr = source_env(tmp_path, proxy.url, bucket)

    first = backup(dr)
    assert first["summary"]["files"] == len(objects)
    assert first["summary"]["files_read"] == len(objects)
    assert gets(proxy, bucket) == sorted(objects)  # each object fetched once, nothing outside the prefix

    changed = {"media/a/003.jpg": b"new body", "media/b/c/new.jpg": b"brand new"}
    for key, body in changed.items():
        put(moto_server.url, bucket, key, body, "image/png", {"author": "Grace"})
    make_client(moto_server.url).delete_object(Bucket=bucket, Key="media/a/010.jpg")
    objects.update(changed)
    del objects["media/a/010.jpg"]
    proxy.reset()
    second = backup(dr)
    assert gets(proxy, bucket) == sorted(changed)  # unchanged objects are not fetched again
    assert second["summary"]["files_unchanged"] == len(objects) - len(changed)
    assert second["parent"] == first["id"]

    restored = tmp_path / "dir"
    result = dr.run("restore", "latest", "--source", "wiki-media", "--target", str(restored))
    assert result.code == 0, result.err
    found = {str(p.relative_to(restored)): p.read_bytes() for p in restored.rglob("*") if p.is_file()}
    assert found == {key[len("media/"):]: body for key, body in objects.items()}  # 010.jpg is gone
    assert (restored / "empty").is_dir()

    target = create_bucket(moto_server.url)
    result = dr.run("restore", "latest", "--source", "wiki-media", "--to-bucket", f"s3://{target}/copy",
                    "--json")
    assert result.code == 0, result.err
    s3 = make_client(moto_server.url)
    listed = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=target)
              for o in page.get("Contents", [])}
    assert listed == {f"copy/{k[len('media/'):]}" for k in objects} | {"copy/empty/"}
    for key, body in objects.items():
        got = s3.get_object(Bucket=target, Key=f"copy/{key[len('media/'):]}")
        assert got["Body"].read() == body
        assert got["ContentType"] == ("image/png" if key in changed else "image/jpeg")
        assert got["Metadata"] == ({"author": "Grace"} if key in changed
                                   else {"author": "Ada", "licence": "CC-BY-SA"})


def test_restore_one_prefix_into_the_same_bucket(moto_server: MotoServer, proxy: FaultProxy,  # noqa: F811
                                                 tmp_path: Path) -> None:
    bucket = create_bucket(moto_server.url)
    for key in ("media/x/1", "media/x/2", "media/y/1"):
        put(moto_server.url, bucket, key, key.encode(), "text/plain", {"k": key})
    dr = source_env(tmp_path, proxy.url, bucket)
    backup(dr)
    s3 = make_client(moto_server.url)
    s3.delete_object(Bucket=bucket, Key="media/x/2")  # lost, to be restored in place
    s3.put_object(Bucket=bucket, Key="media/y/1", Body=b"kept as it is now")
    result = dr.run("restore", "latest", "--source", "wiki-media", "--to-bucket", f"s3://{bucket}/media",
                    "--include", "x")
    assert result.code == 0, result.err
    assert s3.get_object(Bucket=bucket, Key="media/x/2")["Body"].read() == b"media/x/2"
    assert s3.get_object(Bucket=bucket, Key="media/x/2")["Metadata"] == {"k": "media/x/2"}
    assert s3.get_object(Bucket=bucket, Key="media/y/1")["Body"].read() == b"kept as it is now"
    other = create_bucket(moto_server.url)  # one object
    result = dr.run("restore", "latest", "--source", "wiki-media", "--to-bucket", f"s3://{other}",
                    "--include", "y/1")
    assert result.code == 0, result.err
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=other)["Contents"]] == ["y/1"]
    assert s3.get_object(Bucket=other, Key="y/1")["Body"].read() == b"media/y/1"


def test_cut_off_bodies_are_fetched_again_and_bad_keys_are_reported(
        moto_server: MotoServer, proxy: FaultProxy, tmp_path: Path) -> None:  # noqa: F811
    bucket = create_bucket(moto_server.url)
    put(moto_server.url, bucket, "media/ok", b"whole body " * 100)
    put(moto_server.url, bucket, "media/a", b"a file named a")
    put(moto_server.url, bucket, "media/a/b", b"cannot live under the file a")
    put(moto_server.url, bucket, "media/x//y", b"empty path component")
    dr = source_env(tmp_path, proxy.url, bucket)
    proxy.add("get", "truncate", count=1)  # the first GET's body is cut off: fetched again
    result = dr.run("backup", "--source", "wiki-media")
    assert result.code == 3, result.err
    assert "media/a/b" in result.err and "media/x//y" in result.err
    assert len(gets(proxy, bucket)) == 3  # two objects, one of them twice
    restored = tmp_path / "r"
    assert dr.run("restore", "latest", "--source", "wiki-media", "--target", str(restored)).code == 0
    assert (restored / "ok").read_bytes() == b"whole body " * 100
    assert (restored / "a").read_bytes() == b"a file named a"
    assert sorted(p.name for p in restored.iterdir()) == ["a", "ok"]


@pytest.mark.parametrize("table, problem", [
    ({"bucket": "b", "secret_key": "s3cr3t"}, "credentials do not belong in the config"),
    ({"bucket": "b", "connections": 0}, "connections must be a whole number"),
    ({"prefix": "media/"}, "needs bucket"),
    ({"bucket": "b", "endpoint": "http://key:secret@host"}, "without credentials"),
    ({"bucket": "b", "prefx": "media/"}, "unknown key(s) prefx"),
    ({"type": "swift", "container": "c", "user": "a:u"}, "auth_url must be a URL"),
    ({"type": "swift", "container": "c", "auth_url": "http://h/auth/v1.0"}, "needs user"),
    ({"type": "swift", "container": "c", "auth_url": "http://h/auth/v1.0", "user": "a:u", "key": "s3cr3t"},
     "credentials do not belong in the config"),
    ({"type": "swift", "bucket": "c", "auth_url": "http://h/auth/v1.0", "user": "a:u"}, "unknown key(s) bucket"),
    ({"bucket": "b", "content_hash": "md5"}, "content_hash must be one of sha256, sha1"),
])
def test_bad_tables_are_refused_naming_the_problem(table: dict, problem: str) -> None:
    from drtool.backup.configured import parse_source
    from drtool.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        parse_source("media", {"type": "s3", **table}, {})
    assert problem in caught.value.one_line()
    assert "s3cr3t" not in caught.value.one_line() and "secret@" not in caught.value.one_line()


def test_to_bucket_needs_an_object_store_source(tmp_path: Path, moto_server: MotoServer) -> None:  # noqa: F811
    dr = source_env(tmp_path, moto_server.url, create_bucket(moto_server.url))
    result = dr.run("restore", "latest", "--to-bucket", "s3://elsewhere", "--name", "x")
    assert result.code == 2 and "needs an object-store --source" in result.err
    result = dr.run("restore", "latest", "--source", "wiki-media", "--to-bucket", "http://not-s3/x")
    assert result.code == 2 and "not an s3://BUCKET" in result.err


def test_the_documented_tables_parse() -> None:
    """docs/scale.md's configuration example is what drtool accepts (and says what it is)."""
    import re
    import tomllib

    from drtool.backup.configured import parse_source, source_type
    text = (Path(__file__).resolve().parent.parent / "docs" / "scale.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block is not None
    sources = tomllib.loads(block.group(1))["sources"]
    parsed = {name: parse_source(name, table, {}) for name, table in sources.items()}
    assert {name: source_type(src, {}) for name, src in parsed.items()} == {
        "commons-media": "s3", "commons-thumbs": "swift"}
    assert parsed["commons-media"].url == "s3://wiki-media/originals/"
    assert parsed["commons-thumbs"].url == "swift://wiki-thumbs/thumbs/"
    assert parsed["commons-media"].content_hash == "sha1" and parsed["commons-thumbs"].content_hash is None


class OutOfOrderStore:
    """A store whose listing is not in key order (the tree builder relies on that order)."""

    bucket, scheme, connections = "misordered", "s3", 2

    def __init__(self) -> None:
        from drtool.backends.s3_source import SourceStats
        self.stats = SourceStats()

    def check_bucket(self) -> None:
        pass

    def iter_objects(self, prefix: str) -> Iterator[object]:
        from drtool.backends.s3_source import ListedObject
        for key in ("b/1", "a/1"):
            yield ListedObject(key, 1, "etag", 0)

    def open_object(self, key: str) -> None:
        return None  # as if deleted since the listing: the order check must fire regardless

    def close(self) -> None:
        pass


def test_a_listing_out_of_key_order_writes_no_snapshot(dr: DrEnv) -> None:
    from drtool.backup.objectstore import backup_object_store
    from drtool.errors import SourceError
    from drtool.sources.objectstore import ObjectStoreSource
    dr.init()
    with dr.session() as session:
        with pytest.raises(SourceError) as caught:
            backup_object_store(session, ObjectStoreSource("m", "s3", "misordered"),
                                client_factory=lambda _src: OutOfOrderStore())  # type: ignore[arg-type,return-value]
        assert "not in key order" in caught.value.one_line()
        assert session.snapshots("m") == []


def test_objects_are_found_by_name_etag_and_content_hash(moto_server: MotoServer, proxy: FaultProxy,  # noqa: F811
                                                         tmp_path: Path) -> None:
    """"Find me that one file" in a bucket: by key glob, by the ETag the store serves, and with
    ``content_hash = "sha1"`` by the SHA-1 a MediaWiki file table records (``img_sha1``); turning
    the setting on fetches the unchanged objects once more, so none is left without its hash."""
    import hashlib
    bucket = create_bucket(moto_server.url)
    bodies = {"media/a/Foo.jpg": os.urandom(3000), "media/b/Bar.png": b"png" * 100,
              "media/b/c/Foo.jpg": os.urandom(10), "media/big.tif": os.urandom(9 * 1024 * 1024 + 5)}
    for key, body in bodies.items():
        put(moto_server.url, bucket, key, body, "image/jpeg")
    s3 = make_client(moto_server.url)
    etags = {key: s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"') for key in bodies}
    dr = source_env(tmp_path, proxy.url, bucket)
    backup(dr)

    def find(*args: str) -> list[str]:
        result = dr.run("find", *args, "--json")
        assert result.code == 0, result.err
        return sorted(v["path"] for v in json.loads(result.out))
    assert find("Foo.jpg") == ["a/Foo.jpg", "b/c/Foo.jpg"]
    assert find("b/*.png") == ["b/Bar.png"] and find("--path", "b") == ["b", "b/Bar.png", "b/c", "b/c/Foo.jpg"]
    assert find("--hash", "etag:" + etags["media/a/Foo.jpg"]) == ["a/Foo.jpg"]
    assert find("--hash", etags["media/big.tif"][:12]) == ["big.tif"]  # a bare prefix tries ETags too
    assert find("--hash", "etag:" + hashlib.md5(b"not stored").hexdigest()) == []

    config = Path(dr.env["DRTOOL_CONFIG"])
    config.write_text(config.read_text() + 'content_hash = "sha1"\n')
    proxy.reset()
    backup(dr)
    assert gets(proxy, bucket) == sorted(bodies)  # no hash recorded yet: every object fetched once more
    for key, body in bodies.items():
        assert find("--hash", "sha1:" + hashlib.sha1(body).hexdigest()) == [key[len("media/"):]]
    proxy.reset()
    backup(dr)
    assert gets(proxy, bucket) == []  # hashes recorded: unchanged objects are not fetched again
    assert find("--hash", "sha1:" + hashlib.sha1(bodies["media/big.tif"]).hexdigest()) == ["big.tif"]
