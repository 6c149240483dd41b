"""Turn a repository URL into a Backend.

Accepted: a plain path, ``file:///path`` and ``s3://bucket/prefix``.  The
S3 module is imported lazily so boto3's import cost is only paid by S3
users.  Test fakes (``drtool.testing``) have no URL: they are passed in as
objects, so no deployed command can write into a store that vanishes with
its process.
"""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import unquote, urlparse

from drtool.backends.base import Backend
from drtool.errors import UsageError


def is_local_url(url: str) -> bool:
    """A path or ``file://`` URL: a repository on this machine's file system."""
    scheme = urlparse(url).scheme.lower()
    return scheme in ("", "file") or (len(scheme) == 1 and url[1:3] == ":\\")


def open_backend(url: str, options: Mapping[str, Any] | None = None) -> Backend:
    if not url:
        raise UsageError("no repository given", hint="pass --repo URL or set DRTOOL_REPOSITORY")
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if is_local_url(url):
        from drtool.backends.local import LocalBackend

        path = unquote(parsed.path) if scheme == "file" else url
        return LocalBackend(path)
    if scheme == "s3":
        from drtool.backends.s3 import S3Backend

        return S3Backend.from_url(url, dict(options or {}))
    raise UsageError(f"unsupported repository URL scheme {scheme!r} in {url!r}",
                     hint="use a path, file://, or s3://bucket/prefix")
