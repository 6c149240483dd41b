"""Multipart uploads for the S3 backend.

Packs are ~16 MiB, so most objects go up in one PUT; multipart is for big
objects (over ``multipart_threshold``).  The hard part is not the happy path
but leaving nothing behind: parts of an upload that is never completed or
aborted are billed forever and invisible to ordinary listings.  Every
failure aborts the upload, and an upload whose creation botocore retried
(the first reply may have been lost) also aborts its invisible twin.
"""
from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any

from drtool.backends.s3_errors import CLIENT_ERRORS, UploadGone
from drtool.backends.s3_options import chunk_size
from drtool.errors import TransientBackendError

if TYPE_CHECKING:
    from drtool.backends.s3 import S3Backend


def md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def multipart_etag(opts: dict[str, Any], data: bytes) -> str:
    """The ETag S3 gives an object uploaded in our part size: MD5 of the part MD5s, dash, count."""
    chunk = chunk_size(opts, len(data))
    digests = [md5(data[i:i + chunk]) for i in range(0, len(data), chunk)]
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class MultipartUpload:
    """One multipart upload of ``data`` to ``name`` through ``backend``'s client."""

    def __init__(self, backend: "S3Backend", name: str, data: bytes, args: dict[str, Any]) -> None:
        self.be = backend
        self.client = backend.client
        self.name = name
        self.data = data
        self.args = args
        self.key = str(args["Key"])

    def run(self) -> str:
        """Upload; return the ETag the stored object must have.  Any failure aborts the upload."""
        conditional = self.args.pop("IfNoneMatch", None)
        upload_id, retried = self._create()
        try:
            parts = self._upload_parts(upload_id)
            complete: dict[str, Any] = {"Bucket": self.be.bucket, "Key": self.key,
                                        "UploadId": upload_id, "MultipartUpload": {"Parts": parts}}
            if conditional:
                complete["IfNoneMatch"] = conditional
            try:
                resp = self.be.conditional_call("completing upload of", self.name,
                                                self.client.complete_multipart_upload, complete)
            except UploadGone:
                # A retried Complete whose first attempt succeeded: the HEAD
                # verification after the upload decides whether the object is ours.
                resp = {"ETag": "unknown"}
            if not resp.get("ETag"):
                raise TransientBackendError(f"S3 completing upload of {self.name} returned no ETag")
        except BaseException:
            self.abort(upload_id)
            raise
        finally:
            if retried:
                self.abort_orphans(keep=upload_id)
        return multipart_etag(self.be.opts, self.data)

    def _create(self) -> tuple[str, bool]:
        """Start an upload; say whether botocore retried (then orphans may exist)."""
        try:
            created = self.be.call("starting multipart upload of", self.name,
                                   self.client.create_multipart_upload, **self.args)
        except TransientBackendError:
            self.abort_orphans(keep=None)
            raise
        retried = int(created.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0
        return str(created["UploadId"]), retried

    def _upload_parts(self, upload_id: str) -> list[dict[str, Any]]:
        chunk = chunk_size(self.be.opts, len(self.data))
        parts = []
        for number, offset in enumerate(range(0, len(self.data), chunk), start=1):
            etag = self._upload_part(upload_id, number, self.data[offset:offset + chunk])
            parts.append({"PartNumber": number, "ETag": etag})
        return parts

    def _upload_part(self, upload_id: str, number: int, piece: bytes) -> str:
        """Upload one part (botocore retries it alone) and check the ETag matches its MD5."""
        digest = md5(piece)
        resp = self.be.call(f"uploading part {number} of", self.name, self.client.upload_part,
                            Bucket=self.be.bucket, Key=self.key, UploadId=upload_id,
                            PartNumber=number, Body=self.be.body(piece),
                            ContentMD5=base64.b64encode(digest).decode("ascii"))
        etag = str(resp.get("ETag", "")).strip('"')
        if etag != digest.hex() and self.be.opts["sse"] != "aws:kms":
            raise TransientBackendError(f"S3 part {number} of {self.name} stored with a wrong ETag")
        return str(resp["ETag"])

    def abort_orphans(self, keep: str | None) -> None:
        """Abort uploads of this exact key that we started but never learned the id of.

        A CreateMultipartUpload whose reply was lost still created an upload;
        the retry creates another.  The first is invisible to us and would be
        billed forever.  Names are content-addressed or unique per writer, so
        another writer's in-flight upload of the same key is not expected.
        """
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.be.bucket, Prefix=self.key)
        except CLIENT_ERRORS:
            return  # best effort; a lifecycle rule for incomplete uploads is the backstop
        for upload in resp.get("Uploads", []) or []:
            if upload.get("Key") == self.key and upload.get("UploadId") != keep:
                self.abort(upload["UploadId"])

    def abort(self, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.be.bucket, Key=self.key,
                                               UploadId=upload_id)
        except CLIENT_ERRORS:
            pass  # best effort: a lifecycle rule for incomplete uploads is the backstop
