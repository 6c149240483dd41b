"""Object-store sources (``[sources.NAME] type = "s3"``): backing up a bucket, restoring into one.

Backups of these sources run through ``backing_up.backup_sources`` like any
configured source; this module adds what only object stores have: finding
such a source by name, and a restore into a bucket (a restore into a
directory is the ordinary file restore of the series named after the source).
"""
from __future__ import annotations

from dataclasses import replace

from drtool.backup.configured import get_source
from drtool.backup.objectstore import backup_object_store, make_client
from drtool.config import Settings
from drtool.core.session import Session
from drtool.databases.engine import source_engines
from drtool.restore.to_bucket import BucketRestoreResult, parse_bucket_url, restore_to_bucket
from drtool.snapshot.model import Snapshot
from drtool.sources.objectstore import ObjectStoreSource

__all__ = ["BucketRestoreResult", "ObjectStoreSource", "backup_object_store", "object_source",
           "parse_bucket_url", "restore_into_bucket"]


def object_source(settings: Settings, name: str) -> ObjectStoreSource | None:
    """The configured source ``name`` if it is an object store, else None (raises if unknown)."""
    src = get_source(settings, name, source_engines())
    return src if isinstance(src, ObjectStoreSource) else None


def restore_into_bucket(session: Session, snap: Snapshot, src: ObjectStoreSource, url: str,
                        includes: list[str]) -> BucketRestoreResult:
    """Put ``snap``'s objects under ``url`` (s3://bucket/prefix, swift://container/prefix) on the
    source's endpoint, with its credentials and connection count."""
    bucket, prefix = parse_bucket_url(url, src.scheme)
    client = make_client(replace(src, bucket=bucket, prefix=prefix))
    try:
        return restore_to_bucket(session, snap, client, prefix, includes)
    finally:
        client.close()
