"""In-memory backend for tests: a consistent store (listings never lag) with conditional create."""
from __future__ import annotations

import threading
from typing import Iterator

from drtool.backends.base import Backend, ObjectInfo
from drtool.errors import BackendError, ObjectMissing


class MemoryBackend(Backend):
    """Objects in a dict.  ``url`` names it in messages; no URL opens it (pass the object)."""

    def __init__(self, name: str = "default") -> None:
        super().__init__()
        self.url = f"memory://{name}"
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes) -> None:
        with self._lock:
            self.stats.puts += 1
            self.stats.bytes_up += len(data)
            self.objects[name] = bytes(data)

    def get(self, name: str) -> bytes:
        with self._lock:
            self.stats.gets += 1
            try:
                data = self.objects[name]
            except KeyError:
                raise ObjectMissing(f"object {name} is missing from the repository") from None
            self.stats.bytes_down += len(data)
            return data

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(f"invalid range {offset}+{length} for {name}")
        data = self.get(name)
        end = len(data) if length is None else offset + length
        if offset > len(data) or end > len(data):
            raise ObjectMissing(f"object {name} is shorter than expected ({len(data)} < {end} bytes)")
        return data[offset:end]

    def stat(self, name: str) -> ObjectInfo | None:
        with self._lock:
            self.stats.heads += 1
            data = self.objects.get(name)
            return None if data is None else ObjectInfo(name, len(data))

    def delete(self, name: str) -> None:
        with self._lock:
            self.stats.deletes += 1
            self.objects.pop(name, None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            self.stats.lists += 1
            items = [ObjectInfo(k, len(v)) for k, v in self.objects.items() if k.startswith(prefix)]
        return iter(items)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Atomic under the store's lock (the ``ConditionalCreate`` capability)."""
        with self._lock:
            if name in self.objects:
                return False
            self.stats.puts += 1
            self.stats.bytes_up += len(data)
            self.objects[name] = bytes(data)
            return True
