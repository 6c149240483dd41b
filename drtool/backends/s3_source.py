"""Reading a bucket as a backup *source* (and writing objects back on restore).

This is not a repository backend: it lists and fetches someone else's
objects (a wiki's media bucket), and on restore puts them back with their
content type and user metadata.  boto3 may only be imported by
``drtool/backends/s3*`` (tests/test_layering.py), so the client lives here
and ``drtool.sources.objectstore`` / ``drtool.backup.objectstore`` use it.

* Credentials come only from boto3's standard chain (environment, instance
  role) or a named ``profile`` of the AWS shared credentials file, never
  from drtool's config, argv or logs.
* The listing is a generator over ListObjectsV2 pages (1,000 keys each), so
  100 million objects are never held at once.
* Every request is counted (``stats``), so a test or a bench can see how
  many GETs an incremental run really made.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

import boto3
import boto3.exceptions
import botocore.exceptions as bce
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from drtool.backends.s3_errors import BODY_ERRORS, CLIENT_ERRORS, ErrorMapper, error_code, is_missing
from drtool.errors import BackendError, TransientBackendError, UsageError

MiB = 1024 * 1024


@dataclass(frozen=True)
class ListedObject:
    """One listing entry: what the incremental rule compares with the parent snapshot."""

    key: str
    size: int
    etag: str      # without the quotes S3 puts around it
    mtime_ns: int  # LastModified (S3 gives whole seconds)


@dataclass
class FetchedObject:
    """An open GET: the body to read, and the object's metadata as served with it."""

    body: Any
    size: int
    etag: str
    mtime_ns: int
    content_type: str
    metadata: dict[str, str]

    key: str = ""

    def read(self, size: int) -> bytes:
        """Bytes of the body; a cut connection or a short body is one TransientBackendError."""
        try:
            return self.body.read(size)
        except BODY_ERRORS as exc:
            raise TransientBackendError(f"reading object {self.key} was cut off "
                                        f"({type(exc).__name__})") from None

    def close(self) -> None:
        self.body.close()


@dataclass
class SourceStats:
    lists: int = 0
    gets: int = 0
    heads: int = 0
    puts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {"lists": self.lists, "gets": self.gets, "heads": self.heads, "puts": self.puts}


_STAT_OF = {"ListObjectsV2": "lists", "GetObject": "gets", "HeadObject": "heads", "PutObject": "puts",
            "UploadPart": "puts", "CreateMultipartUpload": "puts", "CompleteMultipartUpload": "puts"}


def _ns(when: Any) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


class S3SourceClient:
    """One boto3 client with ``connections`` pooled HTTP connections, shared by all threads."""

    def __init__(self, endpoint: str | None, bucket: str, *, region: str | None = None,
                 profile: str | None = None, connections: int = 8,
                 addressing_style: str | None = None) -> None:
        self.bucket = bucket
        self.scheme = "s3"
        self.connections = connections
        self.stats = SourceStats()
        where = endpoint or "AWS S3"
        self.errors = ErrorMapper(bucket, f"s3://{bucket}", where)
        config = Config(region_name=region, signature_version="s3v4",
                        s3={"addressing_style": addressing_style} if addressing_style else None,
                        retries={"mode": "standard", "max_attempts": 6},
                        max_pool_connections=connections + 2, connect_timeout=10, read_timeout=60,
                        tcp_keepalive=True, request_checksum_calculation="when_required",
                        response_checksum_validation="when_supported")
        try:
            session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
            self.client = session.client("s3", endpoint_url=endpoint or None, config=config)
        except bce.ProfileNotFound:
            raise UsageError(f"AWS profile {profile!r} is not in the shared credentials/config files",
                             hint="check AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE") from None
        except (bce.BotoCoreError, ValueError) as exc:
            raise UsageError(f"cannot configure the S3 client for bucket {bucket}: {exc}") from None
        self.client.meta.events.register("before-send.s3", self._count)

    def _count(self, event_name: str = "", **_: Any) -> None:
        name = _STAT_OF.get(event_name.rsplit(".", 1)[-1])
        if name:
            with self.stats._lock:
                setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _pages(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        """ListObjectsV2 pages under ``prefix``, following continuation tokens."""
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if delimiter:
                args["Delimiter"] = delimiter
            if token:
                args["ContinuationToken"] = token
            try:
                page = self.client.list_objects_v2(**args)
            except CLIENT_ERRORS as exc:
                raise self.errors.map(exc, "listing", prefix or None) from None
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                raise BackendError(f"listing s3://{self.bucket}/{prefix} was truncated without a "
                                   f"continuation token", hint="the server's ListObjectsV2 is broken")

    @staticmethod
    def _listed(item: dict[str, Any]) -> ListedObject:
        return ListedObject(item["Key"], int(item["Size"]), str(item.get("ETag", "")).strip('"'),
                            _ns(item["LastModified"]))

    def iter_objects(self, prefix: str) -> Iterator[ListedObject]:
        """Every object under ``prefix`` in key order, one page in memory at a time."""
        for page in self._pages(prefix):
            for item in page.get("Contents", ()):
                yield self._listed(item)

    def iter_level(self, prefix: str) -> Iterator[tuple[str, ListedObject | None]]:
        """One level below ``prefix`` in key order: ``(key, object)`` for objects directly under it,
        ``(sub-prefix ending in '/', None)`` for each "directory" (a delimiter listing: one entry
        per directory, so sharded workers find their units without listing every object)."""
        for page in self._pages(prefix, delimiter="/"):
            entries: list[tuple[str, ListedObject | None]] = [
                (item["Key"], self._listed(item)) for item in page.get("Contents", ())]
            entries += [(p["Prefix"], None) for p in page.get("CommonPrefixes", ())]
            yield from sorted(entries, key=lambda e: e[0])  # a page covers one key range: merged in order

    def open_object(self, key: str) -> FetchedObject | None:
        """GET one object; None when it was deleted since it was listed."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except bce.ClientError as exc:
            if is_missing(exc) and error_code(exc)[0] != "NoSuchBucket":
                return None
            raise self.errors.map(exc, "reading object", key) from None
        except CLIENT_ERRORS as exc:
            raise self.errors.map(exc, "reading object", key) from None
        return FetchedObject(resp["Body"], int(resp.get("ContentLength", 0)),
                             str(resp.get("ETag", "")).strip('"'), _ns(resp["LastModified"]),
                             str(resp.get("ContentType") or ""), dict(resp.get("Metadata") or {}), key)

    def put_object(self, key: str, stream: IO[bytes], content_type: str | None,
                   metadata: dict[str, str]) -> None:
        """Upload from a readable stream (multipart past 64 MiB), with content type and user metadata."""
        extra: dict[str, Any] = {"Metadata": metadata}
        if content_type:
            extra["ContentType"] = content_type
        config = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=16 * MiB,
                                max_concurrency=1, use_threads=False)
        try:
            self.client.upload_fileobj(stream, self.bucket, key, ExtraArgs=extra, Config=config)
        except CLIENT_ERRORS as exc:
            raise self.errors.map(exc, "uploading", key) from None
        except boto3.exceptions.S3UploadFailedError as exc:  # the transfer manager wraps ClientErrors
            raise BackendError(f"uploading {key} to bucket {self.bucket} failed: {exc}") from None

    def check_bucket(self) -> None:
        """Fail early with one clear line when the bucket is missing or forbidden."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except CLIENT_ERRORS as exc:
            if isinstance(exc, bce.ClientError) and error_code(exc)[1] == 404:
                raise self.errors.not_found() from None
            raise self.errors.map(exc, "checking bucket") from None

    def close(self) -> None:
        self.client.close()
