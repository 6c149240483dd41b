"""Turning botocore's exceptions into drtool's one-line errors.

Kept apart from the backend so the classification (what is transient, what
is a permission problem, what means "missing") can be read and reviewed in
one place: a misclassified error either hides a real outage behind retries
or turns a blip into a failed nightly backup.  Messages never include
credentials, request signatures or botocore's verbose dumps.
"""
from __future__ import annotations

import http.client
from typing import Any

import botocore.exceptions as bce
import urllib3.exceptions

from drtool.errors import (BackendError, DrtoolError, ObjectMissing, ReadOnlyRepository, RepositoryNotFound,
                           TransientBackendError)

AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
              "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
              "RequestTimeTooSkewed", "403"}
TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                   "Throttling", "ThrottlingException", "500", "502", "503", "504",
                   "OperationAborted", "ConditionalRequestConflict"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
WRITE_ACTIONS = ("uploading", "starting multipart upload", "completing upload")
NETWORK_ERRORS = (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError)
# Errors while streaming a GET body: botocore does not retry these, we do.
BODY_ERRORS = (bce.IncompleteReadError, bce.ResponseStreamingError, bce.ReadTimeoutError,
               bce.FlexibleChecksumError, bce.ConnectionClosedError, bce.HTTPClientError, OSError,
               urllib3.exceptions.HTTPError, http.client.HTTPException)
CREDENTIAL_ERRORS = (bce.NoCredentialsError, bce.PartialCredentialsError,
                     bce.CredentialRetrievalError)
CLIENT_ERRORS = (bce.BotoCoreError, bce.ClientError, OSError)
CREDENTIAL_HINT = ("check the AWS credentials (AWS_PROFILE / AWS_ACCESS_KEY_ID / instance role), "
                   "the bucket policy, and that the system clock is correct")

# botocore operation name -> RequestStats field, so every HTTP attempt is counted.
STAT_FIELDS = {"PutObject": "puts", "UploadPart": "puts", "CreateMultipartUpload": "puts",
               "CompleteMultipartUpload": "puts", "AbortMultipartUpload": "deletes",
               "PutObjectRetention": "puts", "CreateBucket": "puts", "GetObject": "gets",
               "GetObjectRetention": "gets", "GetObjectLockConfiguration": "gets",
               "HeadObject": "heads", "HeadBucket": "heads", "ListObjectsV2": "lists",
               "ListObjectVersions": "lists", "ListMultipartUploads": "lists",
               "DeleteObject": "deletes", "RestoreObject": "puts"}


class Precondition(Exception):
    """The conditional create found an existing object."""


class UploadGone(Exception):
    """CompleteMultipartUpload says the upload no longer exists."""


class NotSupported(Exception):
    """The server does not implement conditional writes."""


def error_code(exc: bce.ClientError) -> tuple[str, int]:
    """(S3 error code, HTTP status); the code falls back to the status as text."""
    err = exc.response.get("Error", {}) or {}
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", "") or status), status


def is_missing(exc: bce.ClientError) -> bool:
    code, status = error_code(exc)
    return status == 404 or code in MISSING_CODES


def attempt_number(header: str) -> int:
    """Parse botocore's ``amz-sdk-request: attempt=N; max=M`` header."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "attempt" and value.isdigit():
            return int(value)
    return 1


def classify_conditional(exc: bce.ClientError, args: dict[str, Any]) -> Exception | None:
    """The control-flow exception a conditional write's error stands for, if any."""
    code, status = error_code(exc)
    if "IfNoneMatch" in args and (code == "PreconditionFailed" or status == 412):
        return Precondition()
    if "IfNoneMatch" in args and (code == "NotImplemented" or status == 501):
        return NotSupported()
    if code == "NoSuchUpload" and "UploadId" in args:
        return UploadGone()
    return None


class ErrorMapper:
    """Maps exceptions for one bucket; knows where it is for the messages."""

    def __init__(self, bucket: str, url: str, where: str) -> None:
        self.bucket = bucket
        self.url = url
        self.where = where

    def not_found(self) -> RepositoryNotFound:
        return RepositoryNotFound(f"bucket {self.bucket} does not exist at {self.where}")

    def map(self, exc: BaseException, action: str, name: str | None = None) -> DrtoolError:
        """Turn a botocore exception into one clear drtool error (never with secrets)."""
        what = f"{action} {name}" if name else action
        if isinstance(exc, DrtoolError):
            return exc
        if isinstance(exc, bce.ClientError):
            return self._client_error(exc, what, name)
        if isinstance(exc, CREDENTIAL_ERRORS):
            return BackendError(f"no usable AWS credentials for {self.url}", hint=CREDENTIAL_HINT)
        if isinstance(exc, NETWORK_ERRORS) or isinstance(exc, OSError):
            return TransientBackendError(
                f"S3 {what} failed: cannot reach {self.where} ({type(exc).__name__})")
        return BackendError(f"S3 {what} failed: {type(exc).__name__}")

    def _client_error(self, exc: bce.ClientError, what: str, name: str | None) -> DrtoolError:
        code, status = error_code(exc)
        if code == "NoSuchBucket" or (status == 404 and not name):
            return self.not_found()
        if code in MISSING_CODES and name:
            return ObjectMissing(f"object {name} is missing from the repository")
        if code == "InvalidObjectState":
            return BackendError(f"object {name} is in an archive storage class and must be restored "
                                f"(warmed) before it can be read",
                                hint="drtool restore warms the packs it needs and waits; "
                                     "'drtool restore --dry-run' lists them with a rough cost")
        if code == "InvalidRange":
            return ObjectMissing(f"object {name} is shorter than the requested range")
        if code == "AccessDenied" and what.startswith(WRITE_ACTIONS):
            # A restore-only role may read but not write: restore and check go on without a lock.
            return ReadOnlyRepository(f"S3 {what} was denied ({code}) on bucket {self.bucket}")
        if code in AUTH_CODES or status == 403:
            return BackendError(f"S3 {what} was denied ({code}) on bucket {self.bucket}",
                                hint=CREDENTIAL_HINT)
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientBackendError(f"S3 {what} failed at {self.where} after retries: {code}")
        return BackendError(f"S3 {what} failed: {code} (HTTP {status})")
