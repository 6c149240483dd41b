"""In-memory backend for tests and dry runs; behaves like a consistent store."""
from __future__ import annotations

import threading
from typing import Iterator

from drtool.backends.base import Backend, ObjectInfo
from drtool.errors import ObjectMissing


class MemoryBackend(Backend):
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
                return self.objects[name]
            except KeyError:
                raise ObjectMissing(f"object {name} is missing from the repository") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        data = self.get(name)
        piece = data[offset:offset + length]
        if len(piece) != length:
            raise ObjectMissing(f"object {name} is shorter than expected")
        return piece

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
        with self._lock:
            if name in self.objects:
                return False
            self.stats.puts += 1
            self.objects[name] = bytes(data)
            return True
