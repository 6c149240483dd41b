"""Object-store sources: what a bucket's objects *are* in a snapshot.

``[sources.NAME] type = "s3"`` backs up the objects under ``prefix`` of
``bucket`` on ``endpoint`` as files of the snapshot tree: the object key
below the prefix is the path (``photos/2024/a.jpg`` -> directory ``photos``,
``2024``, file ``a.jpg``).  What a file system does not have is kept in the
node's extended metadata (``Node.xmeta``): the ETag, the content type and
the user metadata, so a restore into a bucket gives the objects back as
they were served.

The rules live here (rank 4, no boto3): the table's keys, how a key maps
to path components, which keys cannot be files (reported, never silently
dropped), and the incremental rule.  The S3 client is
``drtool.backends.s3_source``; the backup glue ``drtool.backup.objectstore``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drtool.digests import CONTENT_HASHES
from drtool.errors import ConfigError
from drtool.snapshot.model import DIR, FILE, Node
from drtool.snapshot.names import entry_name_problem
from drtool.sources.common import check_table
from drtool.sources.shards import SHARD_KEYS, Sharding, sharding_from_table

OBJECT_STORE_TYPES = ("s3", "swift")
KEYS = {"s3": frozenset({"type", "endpoint", "bucket", "prefix", "region", "profile", "connections",
                         "addressing_style", "content_hash"}) | SHARD_KEYS,
        "swift": frozenset({"type", "auth_url", "auth_version", "user", "container", "prefix", "connections",
                            "project_name", "user_domain_name", "project_domain_name", "region",
                            "content_hash"}) | SHARD_KEYS}
SECRET_KEYS = ("access_key", "secret_key", "aws_access_key_id", "aws_secret_access_key",
               "session_token", "aws_session_token", "key", "os_password", "token")
DEFAULT_CONNECTIONS = 8
MAX_CONNECTIONS = 256
FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass
class ObjectStoreSource:
    """A bucket (and key prefix) backed up as one snapshot series named ``name``."""

    name: str
    type: str
    bucket: str                     # the Swift container for type = "swift"
    endpoint: str | None = None
    prefix: str = ""
    region: str | None = None
    profile: str | None = None      # a profile of the AWS shared credentials file
    connections: int = DEFAULT_CONNECTIONS
    addressing_style: str | None = None
    auth_url: str | None = None     # swift: tempauth (.../auth/v1.0) or Keystone v3
    auth_version: str = "1.0"
    user: str | None = None
    keystone: dict[str, str] | None = None  # project_name, user_domain_name, ... (Keystone v3)
    sharding: Sharding | None = None  # shards = N: a snapshot set made by many workers (docs/scale.md)
    content_hash: str | None = None  # "sha256" / "sha1" of each body, for drtool find --hash

    @property
    def scheme(self) -> str:
        return "swift" if self.type == "swift" else "s3"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}" if self.prefix else f"{self.scheme}://{self.bucket}"


def source_from_table(name: str, table: dict[str, Any]) -> ObjectStoreSource:
    """Validate ``[sources.NAME]``; credentials are refused here (they would be in backups of /etc)."""
    for key in SECRET_KEYS:
        if key in table:
            raise ConfigError(f"[sources.{name}]: credentials do not belong in the config ({key})",
                              hint="use the AWS environment variables, an instance role, or "
                                   "profile = \"NAME\" from the AWS shared credentials file")
    kind = str(table["type"])
    check_table(name, table, KEYS[kind])
    holder = "container" if kind == "swift" else "bucket"
    bucket = table.get(holder)
    if not isinstance(bucket, str) or not bucket or "/" in bucket:
        raise ConfigError(f"[sources.{name}]: an {kind} source needs {holder} = \"NAME\" (no '/')")
    prefix = table.get("prefix", "")
    if not isinstance(prefix, str) or prefix.startswith("/"):
        raise ConfigError(f"[sources.{name}]: prefix must be a key prefix such as \"media/\" "
                          f"(no leading '/')")
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # "media" must not also take "media-old/..."
    connections = table.get("connections", DEFAULT_CONNECTIONS)
    if not isinstance(connections, int) or isinstance(connections, bool) \
            or not 1 <= connections <= MAX_CONNECTIONS:
        raise ConfigError(f"[sources.{name}]: connections must be a whole number from 1 to {MAX_CONNECTIONS}")
    style = table.get("addressing_style")
    if style is not None and style not in ("auto", "path", "virtual"):
        raise ConfigError(f"[sources.{name}]: addressing_style must be auto, path or virtual")
    url_key = "auth_url" if kind == "swift" else "endpoint"
    endpoint = table.get(url_key)
    if (endpoint is not None or kind == "swift") and (
            not isinstance(endpoint, str) or "://" not in endpoint
            or "@" in endpoint.split("://", 1)[1].split("/", 1)[0]):
        raise ConfigError(f"[sources.{name}]: {url_key} must be a URL such as \"https://store.example.org\" "
                          f"(without credentials)")
    content_hash = table.get("content_hash")
    if content_hash is not None and content_hash not in CONTENT_HASHES:
        raise ConfigError(f"[sources.{name}]: content_hash must be one of {', '.join(CONTENT_HASHES)}")
    src = ObjectStoreSource(name=name, type=kind, bucket=bucket, prefix=prefix,
                            region=_opt_str(table, "region"), connections=connections,
                            sharding=sharding_from_table(name, table), content_hash=content_hash)
    if kind == "swift":
        return _swift_fields(name, table, src, endpoint)
    src.endpoint, src.profile, src.addressing_style = endpoint, _opt_str(table, "profile"), style
    return src


def _swift_fields(name: str, table: dict[str, Any], src: ObjectStoreSource, auth_url: str) -> ObjectStoreSource:
    version = str(table.get("auth_version", "1.0"))
    if version not in ("1.0", "3"):
        raise ConfigError(f"[sources.{name}]: auth_version must be \"1.0\" (tempauth) or \"3\" (Keystone)")
    user = _opt_str(table, "user")
    if user is None:
        raise ConfigError(f"[sources.{name}]: a swift source needs user = \"ACCOUNT:USER\" (tempauth) "
                          f"or the Keystone user name")
    keystone = {k: str(table[k]) for k in ("project_name", "user_domain_name", "project_domain_name")
                if k in table}
    if src.region:
        keystone["region_name"] = src.region
    src.auth_url, src.auth_version, src.user, src.keystone = auth_url, version, user, keystone
    return src


def _opt_str(table: dict[str, Any], key: str) -> str | None:
    value = table.get(key)
    return str(value) if value not in (None, "") else None


class KeyProblem(Exception):
    """An object key that cannot be a path in a snapshot (reported; the backup exits 3)."""


def key_parts(key: str, prefix: str) -> tuple[list[str], bool]:
    """Path components of ``key`` below ``prefix``, and whether it is a folder marker.

    A zero-byte key ending in '/' (what consoles create for "folders") is a
    directory (the prefix's own marker gives no parts: it is the root); any other key with an empty, '.' or '..' component, or a NUL,
    cannot be a file name and raises KeyProblem.
    """
    rel = key[len(prefix):]
    if not rel:  # the prefix's own folder marker ("media/"): the snapshot's root
        return [], True
    marker = rel.endswith("/")
    parts = (rel[:-1] if marker else rel).split("/")
    for part in parts:
        problem = entry_name_problem(part)
        if problem is not None:
            raise KeyProblem(f"has a path component that {problem}")
    return parts, marker


def object_node(name: str, size: int, mtime_ns: int, etag: str, content_type: str,
                user: dict[str, str], digest: str | None = None) -> Node:
    """``digest``: ``"sha1:HEX"`` / ``"sha256:HEX"`` of the body when the source has ``content_hash``."""
    node = Node(name=name, type=FILE, mode=FILE_MODE, mtime_ns=mtime_ns, size=size)
    node.xmeta = {"etag": etag, "content_type": content_type, "user": dict(sorted(user.items()))}
    node.hash = digest or etag_hash(etag)
    return node


def etag_hash(etag: str) -> str | None:
    """What ``drtool find --hash etag:HEX`` matches when the body's own hash is not recorded: the
    ETag the store serves (an MD5 of the body for a plain S3 PUT or a Swift object; not for
    multipart uploads, ``HEX-N``, or SSE-KMS, so it is named for what it is, not ``md5:``)."""
    return f"etag:{etag.lower()}" if etag else None


def hash_missing(old: Node, content_hash: str | None) -> bool:
    """An unchanged object must still be fetched when ``content_hash`` is set and its node has no
    such hash yet (the setting is new): else ``find --hash`` would miss every unchanged object."""
    return content_hash is not None and not (old.hash or "").startswith(content_hash + ":")


def dir_node(name: str) -> Node:
    return Node(name=name, type=DIR, mode=DIR_MODE)


def marker_meta(etag: str, mtime_ns: int) -> dict[str, Any]:
    """A folder marker object kept on its directory node, so a bucket restore puts it back."""
    return {"marker": True, "etag": etag, "mtime_ns": mtime_ns}


def unchanged(old: Node | None, size: int, etag: str, mtime_ns: int) -> bool:
    """The incremental rule: same ETag, size and last-modified as the parent snapshot's node.

    Any write to an object (a new body, or new metadata, which S3 can only
    set by rewriting the object) gives it a new Last-Modified; the ETag
    catches a body replaced within the same second.
    """
    return (old is not None and old.type == FILE and old.xmeta is not None and old.size == size
            and old.mtime_ns == mtime_ns and old.xmeta.get("etag") == etag)


def key_of(path: str, prefix: str) -> str:
    """Object key for a snapshot path on restore (``prefix`` is the destination's)."""
    return f"{prefix}{path}"
