"""Object-store sources (``[sources.NAME] type = "s3"``): backing up a bucket, restoring into one.

Backups of these sources run through ``backing_up.backup_sources`` like any
configured source; this module adds what only object stores have: finding
such a source by name, and a restore into a bucket (a restore into a
directory is the ordinary file restore of the series named after the source).
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from drtool.backup.configured import get_source
from drtool.config import Settings
from drtool.core.session import Session
from drtool.databases.engine import source_engines
from drtool.snapshot.model import Snapshot
from drtool.sources.objectstore import ObjectStoreSource

if TYPE_CHECKING:
    from drtool.backup.objectstore import backup_object_store
    from drtool.restore.to_bucket import BucketRestoreResult, parse_bucket_url

__all__ = ["BucketRestoreResult", "ObjectStoreSource", "backup_object_store", "object_source",
           "parse_bucket_url", "restore_into_bucket"]

# boto3 (0.3-0.5 s to import) only when an object store is used: every 'restore --source'
# asks object_source() first, and a database restore should not pay for it.
_LAZY = {"backup_object_store": "drtool.backup.objectstore", "BucketRestoreResult": "drtool.restore.to_bucket",
         "parse_bucket_url": "drtool.restore.to_bucket"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


def object_source(settings: Settings, name: str) -> ObjectStoreSource | None:
    """The configured source ``name`` if it is an object store, else None (raises if unknown)."""
    src = get_source(settings, name, source_engines())
    return src if isinstance(src, ObjectStoreSource) else None


def restore_into_bucket(session: Session, snap: Snapshot, src: ObjectStoreSource, url: str,
                        includes: list[str]) -> "BucketRestoreResult":
    """Put ``snap``'s objects under ``url`` (s3://bucket/prefix, swift://container/prefix) on the
    source's endpoint, with its credentials and connection count."""
    from drtool.backup.objectstore import make_client
    from drtool.restore.to_bucket import parse_bucket_url, restore_to_bucket
    bucket, prefix = parse_bucket_url(url, src.scheme)
    client = make_client(replace(src, bucket=bucket, prefix=prefix))
    try:
        return restore_to_bucket(session, snap, client, prefix, includes)
    finally:
        client.close()
