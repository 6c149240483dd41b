"""Archive storage classes on S3: telling a cold object from a warm one, and warming it.

Objects in GLACIER (Flexible Retrieval) or DEEP_ARCHIVE cannot be read until
a RestoreObject request has made a temporary copy readable (minutes to two
days, by retrieval tier).  HEAD tells the state: no ``Restore`` header means
cold, ``ongoing-request="true"`` warming, ``ongoing-request="false"``
readable until its expiry date.  GLACIER_IR and the IA classes are read
directly and count as hot.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import botocore.exceptions as bce

from drtool.backends.s3_errors import CLIENT_ERRORS, error_code
from drtool.errors import ObjectMissing

if TYPE_CHECKING:
    from drtool.backends.s3 import S3Backend

ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
TIERS = ("Expedited", "Standard", "Bulk")
HOT, COLD, WARMING = "hot", "cold", "warming"


def state_of(head: Mapping[str, Any]) -> str:
    """hot / cold / warming from a HEAD response."""
    if str(head.get("StorageClass") or "") not in ARCHIVE_CLASSES:
        return HOT
    restore = str(head.get("Restore") or "")
    if not restore:
        return COLD
    return WARMING if 'ongoing-request="true"' in restore else HOT


def cold_state(backend: "S3Backend", name: str) -> str:
    head = backend._head(name)
    if head is None:
        raise ObjectMissing(f"object {name} is missing from the repository")
    return state_of(head)


def request_warm(backend: "S3Backend", name: str) -> None:
    """RestoreObject for the configured days and tier; one already under way is fine."""
    request = {"Days": int(backend.opts["restore_days"]),
               "GlacierJobParameters": {"Tier": backend.opts["restore_tier"]}}
    try:
        backend.client.restore_object(Bucket=backend.bucket, Key=backend._key(name), RestoreRequest=request)
    except bce.ClientError as exc:
        code, _status = error_code(exc)
        if code == "RestoreAlreadyInProgress":
            return
        raise backend.errors.map(exc, "requesting the restore (warming) of", name) from None
    except CLIENT_ERRORS as exc:
        raise backend.errors.map(exc, "requesting the restore (warming) of", name) from None
