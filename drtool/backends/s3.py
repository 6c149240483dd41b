"""S3 (and S3-compatible) backend.

This is the only module that imports boto3/botocore, so the rest of drtool
stays testable without them.  Design choices, each for a DR reason:

* Credentials come only from boto3's standard chain, never from options, so
  they do not end up in config files, process listings or error messages.
* botocore retries transient HTTP failures (5xx, SlowDown, resets,
  timeouts); we add what it does not cover: truncated GET bodies, and
  end-to-end verification of every upload (HEAD size + ETag) because a backup
  that "succeeded" but is short is worse than a failed one.
* We send our own Content-MD5 and ask botocore for checksums only when
  required: many S3-compatible servers reject botocore's newer default
  (aws-chunked trailing CRC32), while Content-MD5 is universally supported.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import os
import random
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bce
import urllib3.exceptions
from botocore.config import Config

from drtool.backends.base import Backend, ObjectInfo
from drtool.errors import (BackendError, DrtoolError, ObjectMissing, RepositoryNotFound,
                           TransientBackendError, UsageError)

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PARTS = 10_000

_INT_OPTIONS = {"object_lock_days": None, "multipart_threshold": 64 * MiB,
                "multipart_chunksize": 16 * MiB, "max_connections": 8,
                "max_attempts": 6, "read_attempts": 4}
_FLOAT_OPTIONS = {"connect_timeout": 10.0, "read_timeout": 60.0, "read_retry_backoff": 0.2}
_STR_OPTIONS = {"endpoint_url", "region", "addressing_style", "storage_class", "sse",
                "sse_kms_key_id", "object_lock_mode", "retry_mode"}
_KNOWN_OPTIONS = set(_INT_OPTIONS) | set(_FLOAT_OPTIONS) | _STR_OPTIONS | {"create_bucket"}

_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
               "RequestTimeTooSkewed", "403"}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "Throttling", "ThrottlingException", "500", "502", "503", "504",
                    "OperationAborted", "ConditionalRequestConflict"}
_NETWORK_ERRORS = (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError)
_BODY_ERRORS = (bce.IncompleteReadError, bce.ResponseStreamingError, bce.ReadTimeoutError,
                bce.FlexibleChecksumError,
                bce.ConnectionClosedError, bce.HTTPClientError, OSError,
                urllib3.exceptions.HTTPError, http.client.HTTPException)
_CREDENTIAL_HINT = ("check the AWS credentials (AWS_PROFILE / AWS_ACCESS_KEY_ID / instance role), "
                    "the bucket policy, and that the system clock is correct")

# botocore operation name -> RequestStats field, so every HTTP attempt is counted.
_STAT_FIELDS = {"PutObject": "puts", "UploadPart": "puts", "CreateMultipartUpload": "puts",
                "CompleteMultipartUpload": "puts", "AbortMultipartUpload": "deletes",
                "PutObjectRetention": "puts", "CreateBucket": "puts", "GetObject": "gets",
                "GetObjectRetention": "gets", "GetObjectLockConfiguration": "gets",
                "HeadObject": "heads", "HeadBucket": "heads", "ListObjectsV2": "lists",
                "ListMultipartUploads": "lists", "DeleteObject": "deletes"}


def _error_code(exc: bce.ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {}) or {}
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", "") or status), status


def _attempt_number(header: str) -> int:
    """Parse botocore's ``amz-sdk-request: attempt=N; max=M`` header."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "attempt" and value.isdigit():
            return int(value)
    return 1


def _until(head: Mapping[str, Any]) -> dt.datetime | None:
    until = head.get("ObjectLockRetainUntilDate")
    if not isinstance(until, dt.datetime):
        return None
    return until if until.tzinfo else until.replace(tzinfo=dt.timezone.utc)


def _locked(head: Mapping[str, Any]) -> bool:
    until = _until(head)
    return (until is not None and until > dt.datetime.now(dt.timezone.utc)) \
        or head.get("ObjectLockLegalHoldStatus") == "ON"


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _parse_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and coerce options early: a typo in a DR config must not be ignored."""
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise UsageError(f"unknown S3 option(s): {', '.join(sorted(unknown))}",
                         hint=f"known options: {', '.join(sorted(_KNOWN_OPTIONS))}")
    opts: dict[str, Any] = {}
    try:
        for key, default in _INT_OPTIONS.items():
            value = options.get(key)
            opts[key] = default if value in (None, "") else int(value)
        for key, fdefault in _FLOAT_OPTIONS.items():
            value = options.get(key)
            opts[key] = fdefault if value in (None, "") else float(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid numeric S3 option: {exc}") from None
    for key in _STR_OPTIONS:
        value = options.get(key)
        opts[key] = str(value) if value not in (None, "") else None
    opts["create_bucket"] = str(options.get("create_bucket", "")).lower() in ("1", "true", "yes", "on")
    _check_option_values(opts)
    return opts


_CHOICES = {"addressing_style": ("auto", "path", "virtual"), "sse": ("AES256", "aws:kms"),
            "object_lock_mode": ("GOVERNANCE", "COMPLIANCE"),
            "retry_mode": ("standard", "adaptive", "legacy")}


def _check_option_values(opts: dict[str, Any]) -> None:
    def bad(msg: str) -> None:
        raise UsageError(f"invalid S3 option: {msg}")

    if opts["object_lock_mode"]:
        opts["object_lock_mode"] = opts["object_lock_mode"].upper()
    for key, allowed in _CHOICES.items():
        if opts[key] is not None and opts[key] not in allowed:
            bad(f"{key} must be one of {', '.join(allowed)}")
    if opts["sse_kms_key_id"] and opts["sse"] != "aws:kms":
        bad("sse_kms_key_id requires sse=aws:kms")
    if (opts["object_lock_mode"] is None) != (opts["object_lock_days"] is None):
        bad("object_lock_mode and object_lock_days must be given together")
    for key in ("object_lock_days", "multipart_threshold", "max_connections", "max_attempts",
                "read_attempts"):
        if opts[key] is not None and opts[key] < 1:
            bad(f"{key} must be positive")
    if opts["multipart_chunksize"] < MIN_PART:
        bad("multipart_chunksize must be at least 5 MiB (an S3 limit)")


class S3Backend(Backend):
    """Objects live at ``s3://bucket/prefix/<name>``; one client shared by all threads."""

    def __init__(self, bucket: str, prefix: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.opts = _parse_options(options or {})
        self.endpoint = (self.opts["endpoint_url"] or os.environ.get("AWS_ENDPOINT_URL_S3")
                         or os.environ.get("AWS_ENDPOINT_URL") or None)
        self._stats_lock = threading.Lock()
        self._conditional_put: bool | None = None  # unknown until the server tells us
        self._bucket_locking: bool | None = None
        self.client = self._make_client()

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
            max_pool_connections=o["max_connections"], connect_timeout=o["connect_timeout"],
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

    # -- bookkeeping -------------------------------------------------------

    def _count_request(self, request: Any = None, event_name: str = "", **_: Any) -> None:
        """Count every HTTP attempt, retries included, for cost reporting."""
        field = _STAT_FIELDS.get(event_name.rsplit(".", 1)[-1])
        header = request.headers.get("amz-sdk-request", b"") if request is not None else b""
        if isinstance(header, bytes):
            header = header.decode("ascii", "replace")
        with self._stats_lock:
            if field:
                setattr(self.stats, field, getattr(self.stats, field) + 1)
            if _attempt_number(header) > 1:
                self.stats.retries += 1

    def _add_stat(self, field: str, amount: int) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + amount)

    def _key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise BackendError(f"invalid object name {name!r}")
        return f"{self.prefix}/{name}" if self.prefix else name

    def _where(self) -> str:
        return self.endpoint or str(getattr(self.client.meta, "endpoint_url", "AWS S3"))

    # -- error mapping -----------------------------------------------------

    def _map(self, exc: BaseException, action: str, name: str | None = None) -> DrtoolError:
        """Turn a botocore exception into one clear drtool error (never with secrets)."""
        what = f"{action} {name}" if name else action
        if isinstance(exc, DrtoolError):
            return exc
        if isinstance(exc, bce.ClientError):
            code, status = _error_code(exc)
            if code == "NoSuchBucket":
                return RepositoryNotFound(f"bucket {self.bucket} does not exist at {self._where()}")
            if code in ("NoSuchKey", "404", "NotFound") and name:
                return ObjectMissing(f"object {name} is missing from the repository")
            if status == 404 and not name:
                return RepositoryNotFound(f"bucket {self.bucket} does not exist at {self._where()}")
            if code == "InvalidRange":
                return ObjectMissing(f"object {name} is shorter than the requested range")
            if code in _AUTH_CODES or status == 403:
                return BackendError(f"S3 {what} was denied ({code}) on bucket {self.bucket}",
                                    hint=_CREDENTIAL_HINT)
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return TransientBackendError(
                    f"S3 {what} failed at {self._where()} after retries: {code}")
            return BackendError(f"S3 {what} failed: {code} (HTTP {status})")
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError,
                            bce.CredentialRetrievalError)):
            return BackendError(f"no usable AWS credentials for {self.url}", hint=_CREDENTIAL_HINT)
        if isinstance(exc, _NETWORK_ERRORS) or isinstance(exc, OSError):
            return TransientBackendError(
                f"S3 {what} failed: cannot reach {self._where()} ({type(exc).__name__})")
        return BackendError(f"S3 {what} failed: {type(exc).__name__}")

    def _call(self, action: str, name: str | None, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            raise self._map(exc, action, name) from None

    # -- location ----------------------------------------------------------

    def create_location(self) -> None:
        """Check the bucket is reachable; create it only when explicitly asked."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bce.ClientError as exc:
            code, status = _error_code(exc)
            if status != 404 and code not in ("NoSuchBucket", "404"):
                raise self._map(exc, "checking bucket") from None
            if not self.opts["create_bucket"]:
                raise RepositoryNotFound(f"bucket {self.bucket} does not exist at {self._where()}",
                                         hint="create it first, or set option create_bucket=true")
            self._create_bucket()
        except (bce.BotoCoreError, OSError) as exc:
            raise self._map(exc, "checking bucket") from None
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
        self._call("creating bucket", None, self.client.create_bucket, **kwargs)

    def _lock_enabled_on_bucket(self) -> bool:
        """Whether objects here can be locked; cached, checked at most once per backend."""
        if self._bucket_locking is None:
            try:
                cfg = self.client.get_object_lock_configuration(Bucket=self.bucket)
                status = cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                self._bucket_locking = status == "Enabled"
            except bce.ClientError as exc:
                code, _ = _error_code(exc)
                if code == "NoSuchBucket":
                    raise self._map(exc, "reading Object Lock configuration") from None
                if code == "ObjectLockConfigurationNotFoundError":
                    self._bucket_locking = False
                else:  # not allowed to ask: trust the configuration
                    self._bucket_locking = bool(self.opts["object_lock_mode"])
            except (bce.BotoCoreError, OSError) as exc:
                raise self._map(exc, "reading Object Lock configuration") from None
        return self._bucket_locking

    def server_time(self) -> dt.datetime | None:
        """The server's clock (HTTP Date header), to detect skew that breaks signing and locks."""
        resp = self._call("checking bucket", None, self.client.head_bucket, Bucket=self.bucket)
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            return parsedate_to_datetime(date) if date else None
        except (TypeError, ValueError):
            return None

    # -- writes ------------------------------------------------------------

    def _put_args(self, name: str) -> dict[str, Any]:
        o = self.opts
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if o["storage_class"] and name.startswith("packs/"):
            args["StorageClass"] = o["storage_class"]
        if o["sse"]:
            args["ServerSideEncryption"] = o["sse"]
        if o["sse_kms_key_id"]:
            args["SSEKMSKeyId"] = o["sse_kms_key_id"]
        if o["object_lock_mode"]:
            args["ObjectLockMode"] = o["object_lock_mode"]
            args["ObjectLockRetainUntilDate"] = (dt.datetime.now(dt.timezone.utc)
                                                 + dt.timedelta(days=o["object_lock_days"]))
        return args

    def put(self, name: str, data: bytes) -> None:
        self._store(name, bytes(data), conditional=False)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Conditional create (If-None-Match: *); HEAD-then-PUT on servers without it."""
        if self._conditional_put is not False:
            try:
                self._store(name, bytes(data), conditional=True)
                self._conditional_put = True
                return True
            except _Precondition:
                return self._already_ours(name, data)
            except _NotSupported:
                self._conditional_put = False
        return super().put_if_absent(name, data)

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
        return etag in (_md5(data).hex(), self._multipart_etag(data))

    def _multipart_etag(self, data: bytes) -> str:
        chunk = self._chunk_size(len(data))
        digests = [_md5(data[i:i + chunk]) for i in range(0, len(data), chunk)]
        return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"

    def _chunk_size(self, size: int) -> int:
        return max(self.opts["multipart_chunksize"], -(-size // MAX_PARTS))

    def _store(self, name: str, data: bytes, conditional: bool) -> None:
        self._add_stat("bytes_up", len(data))
        args = self._put_args(name)
        if conditional:
            args["IfNoneMatch"] = "*"
        if len(data) >= self.opts["multipart_threshold"] and len(data) > MIN_PART:
            expected_etag = self._put_multipart(name, data, args)
        else:
            expected_etag = _md5(data).hex()
            args.update(Body=data, ContentMD5=base64.b64encode(_md5(data)).decode("ascii"))
            self._conditional_call("uploading", name, self.client.put_object, args)
        head = self._verify_upload(name, len(data), expected_etag)
        if self.opts["object_lock_mode"]:
            self._ensure_retention(name, head, args["ObjectLockRetainUntilDate"])

    def _ensure_retention(self, name: str, head: Mapping[str, Any], until: dt.datetime) -> None:
        """Some servers drop lock headers (notably on multipart uploads): set it explicitly."""
        current = _until(head)
        if current is None or current < until - dt.timedelta(minutes=5):
            self._set_retention(name, head, until)

    def _set_retention(self, name: str, head: Mapping[str, Any], until: dt.datetime) -> None:
        mode = head.get("ObjectLockMode") or self.opts["object_lock_mode"] or "GOVERNANCE"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name),
                                  "Retention": {"Mode": mode, "RetainUntilDate": until}}
        if head.get("VersionId"):
            kwargs["VersionId"] = head["VersionId"]
        self._call("setting retention of", name, self.client.put_object_retention, **kwargs)

    def _conditional_call(self, action: str, name: str, fn: Callable[..., Any],
                          args: dict[str, Any]) -> Any:
        """Run a (possibly conditional) write, classifying the precondition outcomes."""
        try:
            return fn(**args)
        except bce.ClientError as exc:
            code, status = _error_code(exc)
            if "IfNoneMatch" in args and (code == "PreconditionFailed" or status == 412):
                raise _Precondition() from None
            if "IfNoneMatch" in args and (code == "NotImplemented" or status == 501):
                raise _NotSupported() from None
            if code == "NoSuchUpload" and "UploadId" in args:
                raise _UploadGone() from None
            raise self._map(exc, action, name) from None
        except (bce.BotoCoreError, OSError) as exc:
            raise self._map(exc, action, name) from None

    def _put_multipart(self, name: str, data: bytes, args: dict[str, Any]) -> str:
        """Multipart upload; any failure aborts it so no parts linger (they cost money)."""
        conditional = args.pop("IfNoneMatch", None)
        upload_id, retried = self._create_upload(name, args)
        chunk = self._chunk_size(len(data))
        try:
            parts = []
            for number, offset in enumerate(range(0, len(data), chunk), start=1):
                etag = self._upload_part(name, args["Key"], upload_id, number,
                                         data[offset:offset + chunk])
                parts.append({"PartNumber": number, "ETag": etag})
            complete = {"Bucket": self.bucket, "Key": args["Key"], "UploadId": upload_id,
                        "MultipartUpload": {"Parts": parts}}
            if conditional:
                complete["IfNoneMatch"] = conditional
            try:
                resp = self._conditional_call("completing upload of", name,
                                              self.client.complete_multipart_upload, complete)
            except _UploadGone:
                # A retried Complete whose first attempt succeeded: the HEAD
                # verification in _store decides whether the object is ours.
                resp = {"ETag": "unknown"}
            if not resp.get("ETag"):
                raise TransientBackendError(f"S3 completing upload of {name} returned no ETag")
        except BaseException:
            self._abort(args["Key"], upload_id)
            raise
        finally:
            if retried:
                self._abort_orphans(args["Key"], keep=upload_id)
        return self._multipart_etag(data)

    def _create_upload(self, name: str, args: dict[str, Any]) -> tuple[str, bool]:
        """Start an upload; say whether botocore retried (then orphans may exist)."""
        try:
            created = self._call("starting multipart upload of", name,
                                 self.client.create_multipart_upload, **args)
        except TransientBackendError:
            self._abort_orphans(args["Key"], keep=None)
            raise
        retried = int(created.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0
        return created["UploadId"], retried

    def _abort_orphans(self, key: str, keep: str | None) -> None:
        """Abort uploads of this exact key that we started but never learned the id of.

        A CreateMultipartUpload whose reply was lost still created an upload;
        the retry creates another.  The first is invisible to us and would be
        billed forever.  Names are content-addressed or unique per writer, so
        another writer's in-flight upload of the same key is not expected.
        """
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        except (bce.BotoCoreError, bce.ClientError, OSError):
            return  # best effort; a lifecycle rule for incomplete uploads is the backstop
        for upload in resp.get("Uploads", []) or []:
            if upload.get("Key") == key and upload.get("UploadId") != keep:
                self._abort(key, upload["UploadId"])

    def _upload_part(self, name: str, key: str, upload_id: str, number: int, piece: bytes) -> str:
        """Upload one part (botocore retries it alone) and check the ETag matches its MD5."""
        digest = _md5(piece)
        resp = self._call(f"uploading part {number} of", name, self.client.upload_part,
                          Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                          Body=piece, ContentMD5=base64.b64encode(digest).decode("ascii"))
        etag = str(resp.get("ETag", "")).strip('"')
        if etag != digest.hex() and self.opts["sse"] != "aws:kms":
            raise TransientBackendError(f"S3 part {number} of {name} stored with a wrong ETag")
        return str(resp["ETag"])

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (bce.BotoCoreError, bce.ClientError, OSError):
            pass  # best effort: a lifecycle rule for incomplete uploads is the backstop

    def _verify_upload(self, name: str, size: int, expected_etag: str) -> Mapping[str, Any]:
        """HEAD after write: a 200 is not proof that the stored object is complete."""
        resp = self._call("verifying", name, self.client.head_object,
                          Bucket=self.bucket, Key=self._key(name))
        got_size = int(resp.get("ContentLength", -1))
        etag = str(resp.get("ETag", "")).strip('"')
        if got_size != size:
            raise TransientBackendError(
                f"S3 upload of {name} did not verify: stored {got_size} bytes, sent {size}")
        if self.opts["sse"] != "aws:kms" and etag and etag != expected_etag:
            raise TransientBackendError(f"S3 upload of {name} did not verify: ETag mismatch")
        return resp

    # -- reads -------------------------------------------------------------

    def get(self, name: str) -> bytes:
        return self._fetch(name, None, None)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise BackendError(f"invalid range {offset}+{length} for {name}")
        if length == 0:
            info = self.stat(name)
            if info is None or info.size < offset:
                raise ObjectMissing(f"object {name} is missing or shorter than expected")
            return b""
        return self._fetch(name, offset, length)

    def _fetch(self, name: str, offset: int | None, length: int | None) -> bytes:
        """GET with body-length checks; truncated bodies are re-fetched (botocore won't)."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if offset is not None and length is not None:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        last = ""
        for attempt in range(self.opts["read_attempts"]):
            if attempt:
                self._add_stat("retries", 1)
                self._backoff(attempt - 1)
            resp = self._call("reading", name, self.client.get_object, **args)
            try:
                data = self._read_body(resp)
            except _BODY_ERRORS as exc:
                last = type(exc).__name__
                continue
            expected = int(resp.get("ContentLength", -1))
            if len(data) != expected:
                last = f"short body {len(data)} of {expected} bytes"
            elif length is None and not self._etag_matches(resp, data):
                last = "body does not match its ETag"
            else:
                self._add_stat("bytes_down", len(data))
                return data if offset is None else self._exact_range(name, resp, data, offset, length)
        raise TransientBackendError(f"S3 reading {name} from {self._where()} kept failing: {last}")

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

    @staticmethod
    def _read_body(resp: Mapping[str, Any]) -> bytes:
        body = resp["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def _etag_matches(self, resp: Mapping[str, Any], data: bytes) -> bool:
        """Single-part, non-KMS ETags are the MD5 of the body: a free end-to-end check."""
        etag = str(resp.get("ETag", "")).strip('"')
        if len(etag) != 32 or "-" in etag or resp.get("ServerSideEncryption") == "aws:kms":
            return True
        return hashlib.md5(data, usedforsecurity=False).hexdigest() == etag

    def _backoff(self, attempt: int) -> None:
        base = self.opts["read_retry_backoff"]
        time.sleep(min(base * (2 ** attempt), 10.0) * (0.5 + random.random() / 2))

    def _head(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except bce.ClientError as exc:
            code, status = _error_code(exc)
            if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._map(exc, "checking", name) from None
        except (bce.BotoCoreError, OSError) as exc:
            raise self._map(exc, "checking", name) from None

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
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            raise self._map(exc, "listing", prefix or None) from None

    # -- delete and Object Lock ---------------------------------------------

    def delete(self, name: str) -> None:
        """Delete; on lock-enabled buckets delete the exact version, refusing locked ones.

        A plain DELETE on a versioned bucket only adds a delete marker and
        "succeeds", which would make prune believe it freed space it did not.
        """
        key = self._key(name)
        if not self._lock_enabled_on_bucket():
            self._call("deleting", name, self.client.delete_object, Bucket=self.bucket, Key=key)
            return
        head = self._head(name)
        if head is None:
            return
        if _locked(head):
            raise BackendError(f"object {name} is locked (Object Lock) until {_until(head)}; "
                               "not deleted")
        kwargs = {"Bucket": self.bucket, "Key": key}
        if head.get("VersionId"):
            kwargs["VersionId"] = head["VersionId"]
        self._call("deleting", name, self.client.delete_object, **kwargs)

    def _head_required(self, name: str) -> dict[str, Any]:
        head = self._head(name)
        if head is None:
            raise ObjectMissing(f"object {name} is missing from the repository")
        return head

    def retention_until(self, name: str) -> dt.datetime | None:
        """End of the object's Object Lock retention, or None when it has none."""
        return _until(self._head_required(name))

    def is_locked(self, name: str) -> bool:
        head = self._head(name)
        return head is not None and _locked(head)

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        """Push retention out; never shortens it (COMPLIANCE mode forbids that anyway)."""
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.timezone.utc)
        head = self._head_required(name)
        current = _until(head)
        if current is None or current < until:
            self._set_retention(name, head, until)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing must never mask the real outcome
            pass


class _Precondition(Exception):
    """The conditional create found an existing object."""


class _UploadGone(Exception):
    """CompleteMultipartUpload says the upload no longer exists."""


class _NotSupported(Exception):
    """The server does not implement conditional writes."""
