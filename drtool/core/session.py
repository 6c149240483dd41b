"""An open repository plus its catalog: what every use case starts from."""
from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from drtool.backends.base import Backend
from drtool.backends.registry import open_backend
from drtool.crypto.keys import KdfParams
from drtool.errors import DrtoolError, ObjectMissing, ReadOnlyRepository, SnapshotNotFound, UsageError
from drtool.repository.locks import Lock
from drtool.repository.repo import RepoConfig, Repository
from drtool.snapshot.model import Snapshot
from drtool.snapshot.names import matches
from drtool.snapshot.store import list_snapshot_ids, load_snapshot, resolve_snapshot_id

if TYPE_CHECKING:
    from drtool.catalog.store import Catalog
    from drtool.core.rollback import RollbackReport

log = logging.getLogger("drtool")


@dataclass
class OpenOptions:
    repository: str
    passphrase: bytes
    catalog: str | None = None
    host: str = field(default_factory=socket.gethostname)
    backend_options: dict[str, Any] = field(default_factory=dict)
    lock_wait: float = 0.0
    no_lock: bool = False  # --no-lock: read-only commands take no lock at all


class NoLock:
    """What a read-only command holds when it cannot (read-only repository) or must not (--no-lock) lock."""

    warnings: list[str] = []

    def ensure_held(self) -> None:
        """Nothing to lose."""

    def release(self) -> None:
        """Nothing to remove."""

    def __enter__(self) -> "NoLock":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Session:
    """The repository plus its catalog.

    The catalog is opened on first use.  A restore from a local repository
    does not wait for it (``defer_catalog``): it finds its snapshot and
    loads the index from the repository itself -- which is as fast there as
    the cache, and works when the catalog is lost or damaged -- while the
    catalog (SQLAlchemy: ~0.25 s to import) is opened in the background
    for the run history (:meth:`warm_catalog`); a backup does the same once
    its data is stored.
    """

    def __init__(self, repo: Repository, catalog: Catalog | None, options: OpenOptions,
                 replace_damaged_catalog: bool = False, check_catalog: bool = False) -> None:
        self.repo = repo
        self.options = options
        self.replace_damaged_catalog = replace_damaged_catalog
        self.check_catalog = check_catalog
        self.host = options.host
        self._catalog = catalog
        self._catalog_opening: threading.Thread | None = None
        self._catalog_result: dict[str, Any] = {}
        self._synced = False
        self.damaged_snapshots: list[str] = []
        # Snapshots / index objects the catalog saw committed that are gone (ops.rollback);
        # set by sync() and by rollback_report().
        self.rollback: RollbackReport | None = None

    @classmethod
    def open(cls, options: OpenOptions, backend: Backend | None = None, *,
             repository: Repository | None = None, defer_catalog: bool = False,
             replace_damaged_catalog: bool = False, check_catalog: bool = False) -> "Session":
        """``repository``: one already unlocked (the CLI derives the key while it starts up).

        ``replace_damaged_catalog``: a damaged SQLite catalog file is moved
        aside and started afresh (``drtool catalog rebuild``).
        ``check_catalog`` (``drtool check``): every page of an SQLite catalog
        is checked on open, not only when ``catalog.integrity`` sees a reason.
        """
        if repository is not None:
            repo = repository
        elif defer_catalog:
            repo = Repository.open(backend or open_backend(options.repository, options.backend_options),
                                   options.passphrase)
        else:
            repo = _open_repository_while_importing_catalog(
                backend or open_backend(options.repository, options.backend_options), options.passphrase)
        session = cls(repo, None, options, replace_damaged_catalog, check_catalog)
        if not defer_catalog:
            try:
                session.catalog  # noqa: B018  (opens it: errors belong to the open)
            except BaseException:
                repo.close()
                raise
        return session

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            if self._catalog_opening is not None:
                self._catalog_opening.join()
                self._catalog_opening = None
                if "error" in self._catalog_result:
                    raise self._catalog_result.pop("error")
                self._catalog = self._catalog_result.pop("catalog")
            else:
                self._catalog = self._open_catalog()
            self.repo.cache = self._catalog
            self._cache_written_indexes(self._catalog)
        return self._catalog

    def _cache_written_indexes(self, catalog: Catalog) -> None:
        """Cache the index objects this run wrote before its catalog was open.

        A backup from a local repository opens its catalog only once its
        data is stored (SQLAlchemy and the catalog held ~19 MiB through the
        data path, at the nightly backup's peak); the index objects written
        meanwhile are read back here (a few, local) so that the catalog
        caches every index object, as if it had been open all along.  The
        backup does this before it lets go of its lock; one replaced since
        (a prune's repack) is not cached, as it would have been dropped.
        """
        written, self.repo.uncached_index_ids = self.repo.uncached_index_ids, []
        for index_id in written:
            try:
                catalog.store_index_packed(index_id, self.repo.read_index_packed(index_id))
            except ObjectMissing:
                log.debug("index object %s is gone; not cached", index_id)

    def _open_catalog(self) -> Catalog:
        from drtool.catalog.store import Catalog
        catalog = Catalog.open(self.options.catalog, self.repo.config.repo_id, self.replace_damaged_catalog,
                               full_check=self.check_catalog)
        if not self.options.catalog:  # shell completion finds a default-location catalog by its marker
            from drtool.catalog.location import remember_repository
            remember_repository(self.repo.config.repo_id, self.options.repository)
        return catalog

    def warm_catalog(self) -> None:
        """Start opening the catalog in the background (it is needed only at the end)."""
        if self._catalog is not None or self._catalog_opening is not None:
            return

        def opener() -> None:
            try:
                catalog = self._catalog_result["catalog"] = self._open_catalog()
                self.repo.cache = catalog  # index objects written from now on are cached
            except BaseException as exc:  # re-raised where the catalog is first used
                self._catalog_result["error"] = exc

        self._catalog_opening = threading.Thread(target=opener, name="catalog", daemon=True)
        self._catalog_opening.start()

    @property
    def catalog_deferred(self) -> bool:
        return self._catalog is None

    @staticmethod
    def init(options: OpenOptions, kdf: KdfParams | None = None,
             config: RepoConfig | None = None, group: str | None = None) -> Repository:
        backend = open_backend(options.repository, options.backend_options)
        repo = Repository.init(backend, options.passphrase, kdf=kdf, config=config, group=group)
        from drtool.catalog.store import Catalog
        Catalog.open(options.catalog, repo.config.repo_id).close()
        return repo

    def lock(self, command: str, exclusive: bool = False, read_only_ok: bool = False) -> Lock | NoLock:
        """The repository lock for ``command``.

        ``read_only_ok`` (restore, check: they never write the repository):
        with ``--no-lock``, or when the lock cannot be written because the
        repository is read-only for this process (read-only mount, a
        restore-only S3 role), run without a lock and say so.  In an
        emergency the copy you can read is the one you restore from.
        """
        if self.options.no_lock:
            if not read_only_ok:
                raise UsageError(f"--no-lock is only for commands that never write the repository "
                                 f"(restore, check); '{command}' does",
                                 hint="drop --no-lock; use --lock-wait to wait for another run")
            return NoLock()
        try:
            return Lock(self.repo, exclusive, command, host=self.host).acquire(wait=self.options.lock_wait)
        except ReadOnlyRepository as exc:
            if not read_only_ok:
                raise
            log.warning("the repository is read-only here (%s): %s runs without a lock; a prune on "
                        "another host could remove data it reads", exc, command)
            return NoLock()

    def sync(self) -> None:
        """Bring the catalog's snapshot list in line with the repository (one LIST).

        Also compares the list with the catalog's memory of committed
        snapshots: ``self.rollback`` names any that vanished without a forget.
        """
        if not self._synced:
            from drtool.core.rollback import detect
            ids = set(list_snapshot_ids(self.repo))
            self.damaged_snapshots = []
            self.catalog.sync_snapshots(ids, self._load_snapshot)
            self.rollback = detect(self, snapshot_ids=ids)
            self._synced = True

    def rollback_report(self) -> RollbackReport:
        """Vanished snapshots, also for a session that never synced (a restore without the catalog:
        an SQLite catalog is then only read, never opened for writing)."""
        if self.rollback is None:
            from drtool.core.rollback import detect
            self.rollback = detect(self, snapshot_ids=set(list_snapshot_ids(self.repo)), read_only=True)
        return self.rollback

    def _load_snapshot(self, snapshot_id: str) -> Snapshot | None:
        try:
            return load_snapshot(self.repo, snapshot_id)
        except DrtoolError as exc:  # one bad object must not hide the good ones
            log.warning("%s (skipped; run 'drtool check')", exc)
            self.damaged_snapshots.append(snapshot_id)
            return None

    def snapshots(self, name: str | None = None) -> list[Snapshot]:
        """Snapshots oldest first (by time, then id); from the catalog unless it is deferred."""
        if self.catalog_deferred:
            self.damaged_snapshots = []
            loaded = (self._load_snapshot(i) for i in list_snapshot_ids(self.repo))
            found = [s for s in loaded if s is not None and (not name or matches(s.name, name))]
            return sorted(found, key=lambda s: (s.time, s.id))
        self.sync()
        return self.catalog.snapshots(name)

    def find_snapshot(self, ref: str, name: str | None = None) -> Snapshot:
        snaps = self.snapshots(name)
        if ref == "latest":
            if not snaps:
                where = f" named {name!r}" if name else ""
                raise SnapshotNotFound(f"the repository has no snapshot{where}")
            return snaps[-1]
        snap_id = resolve_snapshot_id([s.id for s in snaps], ref)
        return next(s for s in snaps if s.id == snap_id)

    def snapshot_at(self, when: datetime, name: str | None) -> Snapshot:
        """Newest snapshot at or before ``when`` (point-in-time selection)."""
        snaps = [s for s in self.snapshots(name) if s.time <= when]
        if not snaps:
            first = self.snapshots(name)
            detail = f"; the first is from {first[0].time.isoformat()}" if first else ""
            raise SnapshotNotFound(f"no snapshot{' named ' + repr(name) if name else ''} "
                                   f"at or before {when.isoformat()}{detail}")
        return snaps[-1]

    def close(self) -> None:
        self.repo.close()
        if self._catalog_opening is not None:
            self._catalog_opening.join()
            self._catalog_opening = None
            self._catalog = self._catalog_result.pop("catalog", None)
        if self._catalog is not None:
            self._catalog.close()
        self.repo.backend.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_catalog_layer() -> None:
    """Import the catalog layer (SQLAlchemy, ~0.3 s) now, while the CLI's start-up thread derives
    the key: without this the import would start only once the key is there."""
    import drtool.catalog.store  # noqa: F401  (the import is the work done here)


def _open_repository_while_importing_catalog(backend: Backend, passphrase: bytes) -> Repository:
    """Unlock the repository while the catalog layer (SQLAlchemy) is imported.

    Argon2id releases the GIL and importing SQLAlchemy is pure Python; run
    together they overlap (~0.1 s of every command's start-up).
    """
    result: dict[str, Any] = {}

    def unlock() -> None:
        try:
            result["repo"] = Repository.open(backend, passphrase)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=unlock, name="unlock")
    worker.start()
    try:
        import drtool.catalog.store  # noqa: F401  (the import is the work done here)
    finally:
        worker.join()
    if "error" in result:
        raise result["error"]
    return result["repo"]
