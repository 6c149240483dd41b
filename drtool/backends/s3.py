"""S3 (and S3-compatible) backend.

boto3/botocore are imported only by the ``drtool/backends/s3*`` modules, so
the rest of drtool stays testable without them (``s3_errors`` maps errors,
``s3_options`` validates the ``[s3]`` table, ``s3_upload`` does multipart).
Design choices, each for a DR reason:

* Credentials come only from boto3's standard chain, never from options, so
  they do not end up in config files, process listings or error messages.
* botocore retries transient HTTP failures (5xx, SlowDown, resets,
  timeouts); we add what it does not cover: truncated GET bodies, and
  end-to-end verification of every upload (HEAD size + ETag) because a backup
  that "succeeded" but is short is worse than a failed one.
* We send our own Content-MD5 and ask botocore for checksums only when
  required: many S3-compatible servers reject botocore's newer default
  (aws-chunked trailing CRC32), while Content-MD5 is universally supported.
* Object Lock: every object but ``locks/`` is written with a retention date;
  deleting on a lock-enabled (hence versioned) bucket removes every version
  of the key, so neither space nor an older lock version survives a delete
  (``s3_lock``).
"""
from __future__ import annotations

import base64
import datetime as dt
import os
import random
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from drtool.backends import s3_cold
from drtool.backends.base import Backend, ObjectInfo
from drtool.backends.capabilities import check_then_put
from drtool.backends.s3_lock import ObjectLockMethods
from drtool.backends.s3_errors import (BODY_ERRORS, CLIENT_ERRORS, STAT_FIELDS, ErrorMapper,
                                       NotSupported, Precondition, attempt_number,
                                       classify_conditional, error_code, is_missing)
from drtool.backends.s3_options import MIN_PART, parse_options
from drtool.backends.s3_stream import S3RangeStream
from drtool.backends.s3_upload import MultipartUpload, md5, multipart_etag
from drtool.backends.throttle import CHUNK, PartsBody, TokenBucket, throttled
from drtool.errors import (BackendError, ObjectMissing, RepositoryNotFound, TransientBackendError,
                           UsageError)

# Mutable, short-lived objects: never put under retention (a lock must be deletable).
# The repository's names (drtool/repository/objects.py, which a backend may not
# import); tests/test_objects.py checks that the two agree.
UNLOCKED_PREFIXES = ("locks/",)
PACKS_PREFIX = "packs/"  # the only objects that get the configured storage class
# A restore reads neighbouring groups with one ranged GET of up to this size (more than a pack,
# ~16-20 MiB): per-request costs (a round trip, botocore's ~1 ms, and on some servers a read of
# the whole object per ranged GET) are then paid about once per pack.  The body is streamed
# group by group (s3_stream.py), so the size of a request does not bound memory; the groups
# in flight do (restore/fetch.py).
READ_REQUEST_BYTES = 64 * 1024 * 1024
SPARE_CONNECTIONS = 4  # beyond `connections`: lock heartbeat, index and snapshot reads


def _error_document(resp: Mapping[str, Any], data: bytes) -> bool:
    """A 200 whose body is an S3 <Error> document (broken proxies, gateways): not our object.

    Every real GET reply carries an ETag, and drtool objects are never XML.
    """
    return not resp.get("ETag") and data[:5] == b"<?xml" and b"<Error>" in data[:1024]


class S3Backend(ObjectLockMethods, Backend):
    """Objects live at ``s3://bucket/prefix/<name>``; one client shared by all threads.

    Capabilities beyond the core contract: conditional create, Object Lock,
    server clock and location setup (``drtool.backends.capabilities``).
    """

    def __init__(self, bucket: str, prefix: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.opts = parse_options(options or {})
        self.endpoint = (self.opts["endpoint_url"] or os.environ.get("AWS_ENDPOINT_URL_S3")
                         or os.environ.get("AWS_ENDPOINT_URL") or None)
        self._stats_lock = threading.Lock()
        self._conditional_put: bool | None = None  # unknown until the server tells us
        self._bucket_locking: bool | None = None
        self.upload_limit = self._limit(self.opts["limit_upload"])
        self.download_limit = self._limit(self.opts["limit_download"])
        self.stats.limit_upload = self.opts["limit_upload"] or 0
        self.stats.limit_download = self.opts["limit_download"] or 0
        self.client = self._make_client()
        where = self.endpoint or str(getattr(self.client.meta, "endpoint_url", "AWS S3"))
        self.errors = ErrorMapper(bucket, self.url, where)

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> "S3Backend":
        parsed = urlparse(url)
        if parsed.scheme.lower() != "s3" or not parsed.netloc:
            raise UsageError(f"invalid S3 repository URL {url!r}", hint="use s3://bucket/prefix")
        return cls(parsed.netloc, parsed.path, options)

    def _make_client(self) -> Any:
        o = self.opts
        s3_config: dict[str, Any] = {}
        if o["addressing_style"]:
            s3_config["addressing_style"] = o["addressing_style"]
        config = Config(
            region_name=o["region"], signature_version="s3v4", s3=s3_config or None,
            retries={"mode": o["retry_mode"] or "standard", "max_attempts": o["max_attempts"]},
            max_pool_connections=o["connections"] + SPARE_CONNECTIONS, connect_timeout=o["connect_timeout"],
            read_timeout=o["read_timeout"], tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_supported")
        session = boto3.session.Session()
        try:
            client = session.client("s3", endpoint_url=self.endpoint, config=config)
        except (bce.BotoCoreError, ValueError) as exc:
            raise UsageError(f"cannot configure S3 client: {exc}") from None
        client.meta.events.register("before-send.s3", self._count_request)
        return client

    def read_concurrency(self) -> tuple[int, int]:
        """``connections`` ranged reads of up to 64 MiB in flight (capability ConcurrentReads)."""
        return int(self.opts["connections"]), READ_REQUEST_BYTES

    def open_range(self, name: str, offset: int, length: int) -> S3RangeStream:
        """One ranged GET, read in order as it arrives (capability StreamedReads)."""
        return S3RangeStream(self, name, offset, length)

    def body(self, data: bytes | memoryview | PartsBody) -> bytes | memoryview | PartsBody:
        """A request body, read through the upload limit when there is one."""
        if isinstance(data, PartsBody):
            data.seek(0)
            data.bucket = self.upload_limit
            return data
        return data if self.upload_limit is None else throttled(data, self.upload_limit)

    # -- archive classes (capability ColdStorage; see s3_cold) --------------

    def cold_state(self, name: str) -> str:
        return s3_cold.cold_state(self, name)

    def request_warm(self, name: str) -> None:
        s3_cold.request_warm(self, name)

    def warm_profile(self) -> tuple[str, str, int]:
        storage_class = self.opts["storage_class"] or ""
        return (storage_class if storage_class in s3_cold.ARCHIVE_CLASSES else "",
                self.opts["restore_tier"], int(self.opts["restore_days"]))

    def _limit(self, rate: int | None) -> TokenBucket | None:
        if not rate:
            return None
        return TokenBucket(rate, account=lambda seconds: self._add_stat("throttled_seconds", seconds))

    # -- bookkeeping -------------------------------------------------------

    def _count_request(self, request: Any = None, event_name: str = "", **_: Any) -> None:
        """Count every HTTP attempt, retries included, for cost reporting."""
        field = STAT_FIELDS.get(event_name.rsplit(".", 1)[-1])
        header = request.headers.get("amz-sdk-request", b"") if request is not None else b""
        if isinstance(header, bytes):
            header = header.decode("ascii", "replace")
        with self._stats_lock:
            if field:
                setattr(self.stats, field, getattr(self.stats, field) + 1)
            if attempt_number(header) > 1:
                self.stats.retries += 1

    def _add_stat(self, field: str, amount: float) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + amount)

    def _key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise BackendError(f"invalid object name {name!r}")
        return f"{self.prefix}/{name}" if self.prefix else name

    def call(self, action: str, name: str | None, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Run one client call, mapping any failure to a drtool error."""
        try:
            return fn(**kwargs)
        except CLIENT_ERRORS as exc:
            raise self.errors.map(exc, action, name) from None

    def conditional_call(self, action: str, name: str, fn: Callable[..., Any],
                         args: dict[str, Any]) -> Any:
        """Run a (possibly conditional) write, classifying the precondition outcomes."""
        try:
            return fn(**args)
        except bce.ClientError as exc:
            signal = classify_conditional(exc, args)
            if signal is not None:
                raise signal from None
            raise self.errors.map(exc, action, name) from None
        except (bce.BotoCoreError, OSError) as exc:
            raise self.errors.map(exc, action, name) from None

    # -- location ----------------------------------------------------------

    def create_location(self) -> None:
        """Check the bucket is reachable; create it only when explicitly asked."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bce.ClientError as exc:
            code, status = error_code(exc)
            if status != 404 and code not in ("NoSuchBucket", "404"):
                raise self.errors.map(exc, "checking bucket") from None
            if not self.opts["create_bucket"]:
                raise RepositoryNotFound(f"bucket {self.bucket} does not exist at {self.errors.where}",
                                         hint="create it first, or set option create_bucket=true")
            self._create_bucket()
        except (bce.BotoCoreError, OSError) as exc:
            raise self.errors.map(exc, "checking bucket") from None
        if self.opts["object_lock_mode"] and not self._lock_enabled_on_bucket():
            raise BackendError(f"bucket {self.bucket} does not have Object Lock enabled",
                               hint="Object Lock can only be enabled when the bucket is created")

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        if self.opts["object_lock_mode"]:
            kwargs["ObjectLockEnabledForBucket"] = True
        self.call("creating bucket", None, self.client.create_bucket, **kwargs)

    def server_time(self) -> dt.datetime | None:
        """The server's clock (HTTP Date header), to detect skew that breaks signing and locks."""
        resp = self.call("checking bucket", None, self.client.head_bucket, Bucket=self.bucket)
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            return parsedate_to_datetime(date) if date else None
        except (TypeError, ValueError):
            return None

    # -- writes ------------------------------------------------------------

    def _put_args(self, name: str) -> dict[str, Any]:
        o = self.opts
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if o["storage_class"] and name.startswith(PACKS_PREFIX):
            args["StorageClass"] = o["storage_class"]
        if o["sse"]:
            args["ServerSideEncryption"] = o["sse"]
        if o["sse_kms_key_id"]:
            args["SSEKMSKeyId"] = o["sse_kms_key_id"]
        if o["object_lock_mode"] and not name.startswith(UNLOCKED_PREFIXES):
            args["ObjectLockMode"] = o["object_lock_mode"]
            args["ObjectLockRetainUntilDate"] = (dt.datetime.now(dt.timezone.utc)
                                                 + dt.timedelta(days=o["object_lock_days"]))
        return args

    def put(self, name: str, data: bytes) -> None:
        self._store(name, bytes(data), conditional=False)

    def put_parts(self, name: str, parts: Sequence[bytes | bytearray]) -> None:
        """One PUT whose body is read from the parts in turn (capability PartWrites): a pack goes
        up without being joined into a second 16 MiB copy first."""
        body = PartsBody(parts)
        if len(body) >= self.opts["multipart_threshold"]:
            self.put(name, b"".join(parts))  # rare (packs are ~16 MiB); multipart wants bytes
        else:
            self._store(name, body, conditional=False)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Conditional create (If-None-Match: *); HEAD-then-PUT on servers without it."""
        if self._conditional_put is not False:
            try:
                self._store(name, bytes(data), conditional=True)
                self._conditional_put = True
                return True
            except Precondition:
                return self._already_ours(name, data)
            except NotSupported:
                self._conditional_put = False
        return check_then_put(self, name, data)

    def _already_ours(self, name: str, data: bytes) -> bool:
        """After a 412, tell "someone else's object" from "our own write, retried".

        botocore retries a conditional PUT whose response was lost; the retry
        then fails with 412 against the object we just created.  Identical
        size and ETag means the stored object is ours (or indistinguishable).
        """
        head = self._head(name)
        if head is None or int(head.get("ContentLength", -1)) != len(data):
            return False
        etag = str(head.get("ETag", "")).strip('"')
        return etag in (md5(data).hex(), multipart_etag(self.opts, data))

    def _attempts(self) -> Iterator[int]:
        """``read_attempts`` tries; each after the first is counted and waits its backoff."""
        for attempt in range(self.opts["read_attempts"]):
            if attempt:
                self._add_stat("retries", 1)
                self._backoff(attempt - 1)
            yield attempt

    def _store(self, name: str, data: bytes | PartsBody, conditional: bool) -> None:
        """Upload, then verify with a HEAD; an upload that does not verify is sent again."""
        problem = ""
        for _attempt in self._attempts():
            args = self._put_args(name)
            if conditional:
                args["IfNoneMatch"] = "*"
            expected_etag = self._upload(name, data, args)
            head = self._head(name)
            problem = self._verify_problem(head, len(data), expected_etag)
            if not problem:
                if "ObjectLockRetainUntilDate" in args and head is not None:
                    self._ensure_retention(name, head, args["ObjectLockRetainUntilDate"])
                return
        raise TransientBackendError(f"S3 upload of {name} did not verify: {problem}")

    def _upload(self, name: str, data: bytes | PartsBody, args: dict[str, Any]) -> str:
        """One upload (single PUT or multipart); return the ETag the object must then have."""
        self._add_stat("bytes_up", len(data))
        if isinstance(data, bytes) and len(data) >= self.opts["multipart_threshold"] and len(data) > MIN_PART:
            return MultipartUpload(self, name, data, args).run()
        digest = data.md5() if isinstance(data, PartsBody) else md5(data)
        args.update(Body=self.body(data), ContentMD5=base64.b64encode(digest).decode("ascii"))
        self.conditional_call("uploading", name, self.client.put_object, args)
        return digest.hex()

    def _verify_problem(self, head: Mapping[str, Any] | None, size: int, expected_etag: str) -> str:
        """Why the stored object is not what we sent ("" when it is): a 200 is not proof."""
        if head is None:
            return "the object is absent after a successful upload"
        got_size = int(head.get("ContentLength", -1))
        if got_size != size:
            return f"stored {got_size} bytes, sent {size}"
        etag = str(head.get("ETag", "")).strip('"')
        if self.opts["sse"] != "aws:kms" and etag and etag != expected_etag:
            return "ETag mismatch"
        return ""

    # -- reads -------------------------------------------------------------

    def get(self, name: str) -> bytes:
        return self._fetch(name, None, None)

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(f"invalid range {offset}+{length} for {name}")
        if length is None and offset == 0:
            return self.get(name)
        if not length:  # empty, or "to the end" from an offset: S3 cannot express either as a Range
            info = self.stat(name)
            if info is None or info.size < offset:
                raise ObjectMissing(f"object {name} is missing or shorter than expected")
            if length is None and info.size > offset:
                return self._fetch(name, offset, info.size - offset)
            return b""
        return self._fetch(name, offset, length)

    def get_range_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        """A ranged GET streamed into ``buf`` (capability BufferedReads): a restore recycles a
        few buffers instead of allocating (and joining) every response afresh."""
        if offset < 0 or length <= 0 or len(buf) < length:
            return memoryview(self.get_range(name, offset, length))
        args = {"Bucket": self.bucket, "Key": self._key(name),
                "Range": f"bytes={offset}-{offset + length - 1}"}
        view = memoryview(buf)[:length]
        last = ""
        for _attempt in self._attempts():
            resp = self.call("reading", name, self.client.get_object, **args)
            content_range = str(resp.get("ContentRange") or "")
            if int(resp.get("ContentLength", -1)) != length or not content_range.startswith(f"bytes {offset}-"):
                resp["Body"].close()  # an ignored or clipped Range: the careful path sorts it out
                return memoryview(self._fetch(name, offset, length))
            try:
                got = self._read_body_into(resp, view)
            except BODY_ERRORS as exc:
                last = type(exc).__name__
                continue
            if got != length:
                last = f"short body {got} of {length} bytes"
                continue
            self._add_stat("bytes_down", length)
            return view
        raise TransientBackendError(f"S3 reading {name} from {self.errors.where} kept failing: {last}")

    def _read_body_into(self, resp: Mapping[str, Any], view: memoryview) -> int:
        """Stream the body into ``view`` in CHUNK steps (each waits for the download limit)."""
        body = resp["Body"]
        got = 0
        try:
            while got < len(view):
                if self.download_limit is not None:
                    self.download_limit.take(min(CHUNK, len(view) - got))
                piece = body.read(min(CHUNK, len(view) - got))
                if not piece:
                    break
                view[got:got + len(piece)] = piece
                got += len(piece)
        finally:
            body.close()
        return got

    def _fetch(self, name: str, offset: int | None, length: int | None) -> bytes:
        """GET with body-length checks; truncated bodies are re-fetched (botocore won't)."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if offset is not None and length is not None:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        last = ""
        for _attempt in self._attempts():
            resp = self.call("reading", name, self.client.get_object, **args)
            try:
                data = self._read_body(resp)
            except BODY_ERRORS as exc:
                last = type(exc).__name__
                continue
            expected = int(resp.get("ContentLength", -1))
            if _error_document(resp, data):
                last = "an S3 error document came back with status 200"
            elif len(data) != expected:
                last = f"short body {len(data)} of {expected} bytes"
            elif length is None and not self._etag_matches(resp, data):
                last = "body does not match its ETag"
            else:
                self._add_stat("bytes_down", len(data))
                return data if offset is None else self._exact_range(name, resp, data, offset, length)
        raise TransientBackendError(f"S3 reading {name} from {self.errors.where} kept failing: {last}")

    @staticmethod
    def _exact_range(name: str, resp: Mapping[str, Any], data: bytes, offset: int,
                     length: int | None) -> bytes:
        """Return exactly the requested bytes, or raise; servers may ignore or clip Range."""
        content_range = str(resp.get("ContentRange") or "")
        if not content_range:  # 200 with the whole object: Range was ignored
            data = data[offset:]
        elif not content_range.startswith(f"bytes {offset}-"):
            raise BackendError(f"S3 returned range {content_range!r} for {name}, "
                               f"asked for offset {offset}")
        if length is None or len(data) < length:
            raise ObjectMissing(f"object {name} is shorter than expected "
                                f"({offset}+{len(data)} < {offset}+{length} bytes)")
        return data[:length]

    def _read_body(self, resp: Mapping[str, Any]) -> bytes:
        body = resp["Body"]
        try:
            if self.download_limit is None:
                return bytes(body.read())
            pieces = []
            while True:  # the tokens first: TCP then slows the sender down to the limit
                self.download_limit.take(CHUNK)
                piece = body.read(CHUNK)
                if not piece:
                    return b"".join(pieces)
                pieces.append(piece)
        finally:
            body.close()

    @staticmethod
    def _etag_matches(resp: Mapping[str, Any], data: bytes) -> bool:
        """Single-part, non-KMS ETags are the MD5 of the body: a free end-to-end check."""
        etag = str(resp.get("ETag", "")).strip('"')
        if len(etag) != 32 or "-" in etag or resp.get("ServerSideEncryption") == "aws:kms":
            return True
        return md5(data).hex() == etag

    def _backoff(self, attempt: int) -> None:
        base = self.opts["read_retry_backoff"]
        time.sleep(min(base * (2 ** attempt), 10.0) * (0.5 + random.random() / 2))

    def _head(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(name)))
        except bce.ClientError as exc:
            if is_missing(exc):
                return None
            raise self.errors.map(exc, "checking", name) from None
        except (bce.BotoCoreError, OSError) as exc:
            raise self.errors.map(exc, "checking", name) from None

    def stat(self, name: str) -> ObjectInfo | None:
        resp = self._head(name)
        return None if resp is None else ObjectInfo(name, int(resp.get("ContentLength", 0)))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []) or []:
                    key = item["Key"]
                    if key.startswith(base) and not key.endswith("/"):
                        yield ObjectInfo(key[len(base):], int(item.get("Size", 0)))
        except CLIENT_ERRORS as exc:
            raise self.errors.map(exc, "listing", prefix or None) from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing must never mask the real outcome
            pass
