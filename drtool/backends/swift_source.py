"""Reading a Swift container as a backup source with the native API (python-swiftclient).

The same interface as :class:`drtool.backends.s3_source.S3SourceClient`
(listing, GET, PUT with metadata, request counts), for ``type = "swift"``.
Authentication is swiftclient's: tempauth (``auth_version = "1.0"``) or
Keystone v3 (``"3"``); the user and URL may be in the config, the key or
password only in the environment (``ST_KEY`` or ``OS_PASSWORD``), never in
argv, logs or the catalog.

swiftclient's ``Connection`` is not thread-safe: each GET thread gets its
own (``threading.local``), re-using the first one's token.
"""
from __future__ import annotations

import os
import threading
from datetime import datetime, timezone
from typing import IO, Any, Iterator

from drtool.backends.s3_source import FetchedObject, ListedObject, SourceStats
from drtool.errors import BackendError, DrtoolError, TransientBackendError, UsageError

META_PREFIX = "x-object-meta-"
PAGE = 1000


def _optional_swiftclient() -> Any:
    try:
        import swiftclient.client  # noqa: PLC0415 - only type = "swift" needs it
        return swiftclient
    except ImportError:
        raise UsageError("type = \"swift\" needs python-swiftclient",
                         hint="pip install 'drtool[swift]' (or python-swiftclient)") from None


def _listing_ns(text: str) -> int:
    """Swift's listing time ("2024-05-01T12:00:00.123450", UTC) in nanoseconds."""
    when = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


class _Body:
    """swiftclient's chunk generator as a ``read(n)`` body."""

    def __init__(self, chunks: Iterator[bytes], key: str) -> None:
        self.chunks, self.key, self.buf = chunks, key, b""

    def read(self, size: int) -> bytes:
        try:
            while len(self.buf) < size:
                piece = next(self.chunks, b"")
                if not piece:
                    break
                self.buf += piece
        except (OSError, ValueError) as exc:  # a cut connection surfaces from the generator
            raise TransientBackendError(f"reading object {self.key} was cut off ({type(exc).__name__})") from None
        out, self.buf = self.buf[:size], self.buf[size:]
        return out

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


class SwiftSourceClient:
    """Listing, GET and PUT on one container, ``connections`` threads at once."""

    def __init__(self, container: str, *, auth_url: str, user: str, auth_version: str = "1.0",
                 os_options: dict[str, str] | None = None, connections: int = 8) -> None:
        self.swiftclient = _optional_swiftclient()
        self.bucket = container
        self.scheme = "swift"
        self.connections = connections
        self.stats = SourceStats()
        key = os.environ.get("ST_KEY") or os.environ.get("OS_PASSWORD")
        if not key:
            raise UsageError("no Swift key: set ST_KEY (tempauth) or OS_PASSWORD (Keystone) in the environment",
                             hint="the key never goes in the config file")
        self._auth = {"authurl": auth_url, "user": user, "key": key, "auth_version": auth_version,
                      "os_options": os_options or {}, "retries": 5, "timeout": 60}
        self._local = threading.local()
        self._token_lock = threading.Lock()
        self._token: tuple[str, str] | None = None

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._token_lock:
                extra = {"preauthurl": self._token[0], "preauthtoken": self._token[1]} if self._token else {}
                conn = self.swiftclient.client.Connection(**self._auth, **extra)
                if self._token is None:
                    self._token = self._call(conn.get_auth, "authenticating")
            self._local.conn = conn
        return conn

    def _call(self, fn: Any, what: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self.swiftclient.exceptions.ClientException as exc:
            raise self._error(exc, what) from None
        except (OSError, ValueError) as exc:  # requests' connection errors are OSErrors
            raise TransientBackendError(f"Swift {what} failed: cannot reach {self._auth['authurl']} "
                                        f"({type(exc).__name__})") from None

    def _error(self, exc: Any, what: str) -> DrtoolError:
        status = int(getattr(exc, "http_status", 0) or 0)
        if status in (401, 403):
            return BackendError(f"Swift {what} was denied (HTTP {status}) for container {self.bucket}",
                                hint="check ST_USER/ST_KEY or the OS_* variables and the container's ACLs")
        if status == 404:
            return BackendError(f"Swift {what}: container {self.bucket} or the object does not exist")
        if status >= 500 or status in (0, 408, 429, 498):
            return TransientBackendError(f"Swift {what} failed after retries (HTTP {status or 'none'})")
        return BackendError(f"Swift {what} failed (HTTP {status})")

    def _count(self, field: str) -> None:
        with self.stats._lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def check_bucket(self) -> None:
        self._count("heads")
        self._call(self._conn().head_container, f"checking container {self.bucket}", self.bucket)

    def iter_objects(self, prefix: str) -> Iterator[ListedObject]:
        """Every object under ``prefix`` in name order, one page of 1,000 at a time (marker paging)."""
        marker = ""
        while True:
            self._count("lists")
            _headers, page = self._call(self._conn().get_container, "listing", self.bucket, prefix=prefix,
                                        marker=marker, limit=PAGE)
            for item in page:
                if "subdir" in item:
                    continue
                yield ListedObject(item["name"], int(item["bytes"]), str(item["hash"]),
                                   _listing_ns(item["last_modified"]))
            if len(page) < PAGE:
                return
            marker = page[-1].get("name") or page[-1].get("subdir")

    def iter_level(self, prefix: str) -> Iterator[tuple[str, ListedObject | None]]:
        """One level below ``prefix`` in name order (a ``delimiter=/`` listing): objects as
        ``(name, object)``, "directories" as ``(sub-prefix, None)``."""
        marker = ""
        while True:
            self._count("lists")
            _headers, page = self._call(self._conn().get_container, "listing", self.bucket, prefix=prefix,
                                        marker=marker, limit=PAGE, delimiter="/")
            for item in page:
                if "subdir" in item:
                    yield item["subdir"], None
                else:
                    yield item["name"], ListedObject(item["name"], int(item["bytes"]), str(item["hash"]),
                                                     _listing_ns(item["last_modified"]))
            if len(page) < PAGE:
                return
            marker = page[-1].get("name") or page[-1].get("subdir")

    def open_object(self, key: str) -> FetchedObject | None:
        self._count("gets")
        try:
            headers, chunks = self._conn().get_object(self.bucket, key, resp_chunk_size=256 * 1024)
        except self.swiftclient.exceptions.ClientException as exc:
            if int(getattr(exc, "http_status", 0) or 0) == 404:
                return None
            raise self._error(exc, f"reading object {key}") from None
        except (OSError, ValueError) as exc:
            raise TransientBackendError(f"Swift reading object {key} failed ({type(exc).__name__})") from None
        meta = {k[len(META_PREFIX):]: v for k, v in headers.items() if k.lower().startswith(META_PREFIX)}
        modified = headers.get("last-modified")
        when = datetime.strptime(modified, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=timezone.utc) \
            if modified else datetime.now(timezone.utc)
        return FetchedObject(_Body(chunks, key), int(headers.get("content-length", 0)),
                             str(headers.get("etag", "")).strip('"'), int(when.timestamp()) * 1_000_000_000,
                             str(headers.get("content-type") or ""), meta, key)

    def put_object(self, key: str, stream: IO[bytes], content_type: str | None,
                   metadata: dict[str, str]) -> None:
        """One PUT, chunked (objects over 5 GiB would need a static large object: not done)."""
        self._count("puts")
        headers = {f"X-Object-Meta-{k}": v for k, v in metadata.items()}
        self._call(self._conn().put_object, f"uploading {key}", self.bucket, key, contents=stream,
                   content_type=content_type or None, headers=headers, chunk_size=1024 * 1024)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
