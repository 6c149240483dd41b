"""Opening, creating and administering a repository: sessions, keys, locks."""
from __future__ import annotations

from typing import Any

from drtool.backends.capabilities import create_location
from drtool.backends.registry import open_backend
from drtool.core.session import OpenOptions, Session, import_catalog_layer
from drtool.crypto.keys import KdfParams
from drtool.repository.locks import read_locks, remove_locks, stale_reason
from drtool.repository.objects import key_name
from drtool.repository.repo import Repository
from drtool.snapshot.model import Snapshot

__all__ = ["KdfParams", "OpenOptions", "Repository", "Session", "Snapshot", "create_location", "init",
           "import_catalog_layer", "key_name", "open_backend", "open_repository", "read_locks", "remove_locks", "snapshots",
           "stale_reason"]


def init(repository: str, passphrase: bytes, *, catalog: str | None = None,
         kdf: KdfParams | None = None, backend_options: dict[str, Any] | None = None,
         group: str | None = None) -> str:
    """Create a repository; return its id.  ``group``: an OS group sharing a local repository
    (the backup user and the database user write it both; docs/operations.md)."""
    options = OpenOptions(repository, passphrase, catalog, backend_options=backend_options or {})
    repo = Session.init(options, kdf=kdf, group=group)
    repo.close()
    return repo.config.repo_id


def open_repository(repository: str, passphrase: bytes, *, catalog: str | None = None,
                    host: str | None = None, backend_options: dict[str, Any] | None = None,
                    lock_wait: float = 0.0) -> Session:
    options = OpenOptions(repository, passphrase, catalog, backend_options=backend_options or {},
                          lock_wait=lock_wait)
    if host:
        options.host = host
    return Session.open(options)


def snapshots(session: Session, name: str | None = None) -> list[Snapshot]:
    return session.snapshots(name)
