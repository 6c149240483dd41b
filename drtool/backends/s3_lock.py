"""Object Lock on S3: retention dates, and deletes that remove every version of a key.

A mixin of :class:`drtool.backends.s3.S3Backend`, kept apart because it is a
policy of its own: deleting on a lock-enabled (hence versioned) bucket must
remove every version, or prune believes it freed space it did not and an old
lock object comes back to life; a locked object is refused, never skipped.
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Mapping

import botocore.exceptions as bce

from drtool.backends.s3_errors import CLIENT_ERRORS, error_code
from drtool.errors import BackendError, ObjectMissing

if TYPE_CHECKING:
    from drtool.backends.s3_errors import ErrorMapper

MAX_VERSIONS_DELETED = 10_000


def lock_until(head: Mapping[str, Any]) -> dt.datetime | None:
    until = head.get("ObjectLockRetainUntilDate")
    if not isinstance(until, dt.datetime):
        return None
    return until if until.tzinfo else until.replace(tzinfo=dt.timezone.utc)


def is_under_lock(head: Mapping[str, Any]) -> bool:
    until = lock_until(head)
    return (until is not None and until > dt.datetime.now(dt.timezone.utc)) \
        or head.get("ObjectLockLegalHoldStatus") == "ON"


class ObjectLockMethods:
    """What S3Backend provides for the ObjectLock capability, and its version-aware delete."""

    client: Any
    bucket: str
    opts: dict[str, Any]
    errors: ErrorMapper
    _bucket_locking: bool | None

    if TYPE_CHECKING:  # provided by S3Backend
        def _key(self, name: str) -> str: ...
        def _head(self, name: str) -> dict[str, Any] | None: ...
        def call(self, action: str, name: str | None, fn: Any, **kwargs: Any) -> Any: ...

    def _lock_enabled_on_bucket(self) -> bool:
        """Whether objects here can be locked; cached, checked at most once per backend."""
        if self._bucket_locking is None:
            try:
                cfg = self.client.get_object_lock_configuration(Bucket=self.bucket)
                status = cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                self._bucket_locking = status == "Enabled"
            except bce.ClientError as exc:
                code, _ = error_code(exc)
                if code == "NoSuchBucket":
                    raise self.errors.map(exc, "reading Object Lock configuration") from None
                if code == "ObjectLockConfigurationNotFoundError":
                    self._bucket_locking = False
                else:  # not allowed to ask: trust the configuration
                    self._bucket_locking = bool(self.opts["object_lock_mode"])
            except (bce.BotoCoreError, OSError) as exc:
                raise self.errors.map(exc, "reading Object Lock configuration") from None
        return self._bucket_locking

    def _ensure_retention(self, name: str, head: Mapping[str, Any], until: dt.datetime) -> None:
        """Some servers drop lock headers (notably on multipart uploads): set it explicitly."""
        current = lock_until(head)
        if current is None or current < until - dt.timedelta(minutes=5):
            self._set_retention(name, head, until)

    def _set_retention(self, name: str, head: Mapping[str, Any], until: dt.datetime) -> None:
        mode = head.get("ObjectLockMode") or self.opts["object_lock_mode"] or "GOVERNANCE"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name),
                                  "Retention": {"Mode": mode, "RetainUntilDate": until}}
        if head.get("VersionId"):
            kwargs["VersionId"] = head["VersionId"]
        self.call("setting retention of", name, self.client.put_object_retention, **kwargs)

    # -- delete and Object Lock ---------------------------------------------

    def delete(self, name: str) -> None:
        """Delete; on lock-enabled buckets remove every version, refusing locked objects.

        A plain DELETE on a versioned bucket only adds a delete marker and
        "succeeds", which would make prune believe it freed space it did not;
        deleting only the newest version lets an older one resurface (a lock
        object would come back to life with an old heartbeat).
        """
        key = self._key(name)
        if not self._lock_enabled_on_bucket():
            self.call("deleting", name, self.client.delete_object, Bucket=self.bucket, Key=key)
            return
        head = self._head(name)
        if head is None:
            return
        if is_under_lock(head):
            raise BackendError(f"object {name} is locked (Object Lock) until {lock_until(head)}; "
                               "not deleted")
        for version_id in self._versions(name, key):
            self._delete_version(name, key, version_id)

    def _versions(self, name: str, key: str) -> list[str]:
        """Version and delete-marker ids of exactly ``key``, oldest first."""
        found: list[tuple[Any, str]] = []
        paginator = self.client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
                for item in (page.get("Versions") or []) + (page.get("DeleteMarkers") or []):
                    if item.get("Key") == key and item.get("VersionId"):
                        found.append((item.get("LastModified") or 0, str(item["VersionId"])))
                if len(found) > MAX_VERSIONS_DELETED:
                    break
        except CLIENT_ERRORS as exc:
            raise self.errors.map(exc, "listing versions of", name) from None
        return [version for _when, version in sorted(found, key=lambda f: str(f[0]))]

    def _delete_version(self, name: str, key: str, version_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except bce.ClientError as exc:
            code, status = error_code(exc)
            if code == "AccessDenied" or status == 403:
                raise BackendError(f"an older version of {name} is still under Object Lock or the "
                                   f"credentials may not delete versions; not fully deleted") from None
            raise self.errors.map(exc, "deleting", name) from None
        except (bce.BotoCoreError, OSError) as exc:
            raise self.errors.map(exc, "deleting", name) from None

    def _head_required(self, name: str) -> dict[str, Any]:
        head = self._head(name)
        if head is None:
            raise ObjectMissing(f"object {name} is missing from the repository")
        return head

    def retention_until(self, name: str) -> dt.datetime | None:
        """End of the object's Object Lock retention (UTC-aware), or None when it has none."""
        return lock_until(self._head_required(name))

    def is_locked(self, name: str) -> bool:
        head = self._head(name)
        return head is not None and is_under_lock(head)

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        """Push retention out; never shortens it (COMPLIANCE mode forbids that anyway)."""
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.timezone.utc)
        head = self._head_required(name)
        current = lock_until(head)
        if current is None or current < until:
            self._set_retention(name, head, until)
