"""The backup host's map of block fingerprints of the last physical backup of a MariaDB source.

Sub-page incrementals (:mod:`drtool.databases.subpage_format`) store the
512-byte blocks of a changed page that differ from the page's previous
version.  The previous version is the one the chain's latest member holds:
the full's copy of the file, or the last incremental that stored the page.
This map holds one 8-byte fingerprint per block of those pages, so tonight's
backup can tell which blocks changed without reading anything back from the
repository.  It costs 1.6 % of the data size on the backup host's disk
(16 GiB for a 1 TB section), read and written one page's worth at a time, so
memory does not grow with the section.

The map is a cache, never a source of truth: it lives beside the blob index
cache (``<cache>/<repo id>/blockmap/<source>/<snapshot id>/``), one directory
per snapshot it describes, written under a pending name and renamed (after
``fsync``) only once the night's snapshot is committed.  A night whose parent
has no map on this host (another host took it, the cache was lost) stores
whole pages, as before, and starts a map from what it stores; the next full
gives a complete one.  A wrong map cannot restore wrong data: every rebuilt
page is checked against a digest of the real page taken at backup time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from drtool.repository.cacheenv import cache_roots

log = logging.getLogger("drtool")
INDEX = "index.json"
PENDING = "pending-"
FP_BYTES = 8
OPEN_FILES = 256
SYNC_THREADS = 8


class BlockMap:
    """One snapshot's map (read-only), or the map being written for tonight's (``writable``)."""

    def __init__(self, directory: Path, seed: int, files: dict[str, dict[str, int | str]],
                 writable: bool = False) -> None:
        self.directory, self.seed, self.files, self.writable = directory, seed, files, writable
        self._handles: dict[str, int] = {}
        self._own: set[str] = set()  # files this map has its own copy of (not a parent's hard link)
        self._written: set[str] = set()  # files opened for writing tonight: flushed by ``sync``
        self.failed = False

    # ----- reading --------------------------------------------------------------------------
    def page_size(self, path: bytes) -> int | None:
        """The page size the file's blocks were last written with (0: a full's copy), None if unknown."""
        entry = self.files.get(_key(path))
        return int(entry["page_size"]) if entry is not None else None

    def read(self, path: bytes, first_block: int, count: int) -> array | None:
        """The fingerprints of ``count`` blocks from ``first_block``; None where any is not known."""
        entry = self.files.get(_key(path))
        if entry is None:
            return None
        try:
            data = os.pread(self._fd(str(entry["file"])), count * FP_BYTES, first_block * FP_BYTES)
        except OSError:
            return None  # unreadable is unknown: the page is stored whole
        if len(data) != count * FP_BYTES:
            return None
        found = array("Q")
        found.frombytes(data)
        return None if 0 in found else found

    # ----- writing --------------------------------------------------------------------------
    def write(self, path: bytes, first_block: int, fps: array, page_size: int) -> None:
        """Record ``fps`` for the blocks from ``first_block`` (copying a parent's file on first write).

        A map that cannot be written (disk full, cache removed) is not an error of the backup: it
        is marked ``failed``, no longer written, and never committed (the next night stores whole
        pages and starts a new one)."""
        if self.failed:
            return
        try:
            self._write(path, first_block, fps, page_size)
        except OSError as exc:
            self.failed = True
            log.warning("the block map in %s cannot be written (%s): the next night stores its changed "
                        "pages whole", self.directory, exc.strerror or exc)

    def _write(self, path: bytes, first_block: int, fps: array, page_size: int) -> None:
        key = _key(path)
        entry = self.files.get(key)
        if entry is None:
            entry = self.files[key] = {"file": hashlib.blake2b(path, digest_size=16).hexdigest() + ".fp",
                                       "page_size": page_size}
            self._own.add(key)
        elif key not in self._own:
            self._break_link(str(entry["file"]))
            self._own.add(key)
        entry["page_size"] = page_size
        os.pwrite(self._fd(str(entry["file"])), fps.tobytes(), first_block * FP_BYTES)

    def forget(self, path: bytes) -> None:
        """Drop a file the map cannot follow (a .delta stored as it came): its pages go whole next
        night.  Its file goes too, so a later write starts from nothing, not from stale blocks."""
        key = _key(path)
        entry = self.files.pop(key, None)
        self._own.discard(key)
        if entry is not None:
            self._close(str(entry["file"]))
            try:
                os.unlink(self.directory / str(entry["file"]))
            except FileNotFoundError:
                pass
            except OSError:
                self.failed = True

    def _break_link(self, name: str) -> None:
        """A parent's file is hard-linked in; copy it before changing it (the parent's map stays valid)."""
        self._close(name)
        target = self.directory / name
        scratch = self.directory / (name + ".copy")
        shutil.copyfile(target, scratch)
        os.replace(scratch, target)

    def _fd(self, name: str) -> int:
        """An open descriptor of a map file; at most ``OPEN_FILES`` stay open (a section of 45,000
        tables must not run out of descriptors: an evicted one is simply opened again)."""
        fd = self._handles.pop(name, None)
        if fd is None:
            if len(self._handles) >= OPEN_FILES:
                os.close(self._handles.pop(next(iter(self._handles))))
            flags = os.O_RDWR | os.O_CREAT if self.writable else os.O_RDONLY
            fd = os.open(self.directory / name, flags, 0o600)
            if self.writable:
                self._written.add(name)
        self._handles[name] = fd  # most recently used last
        return fd

    def _close(self, name: str) -> None:
        fd = self._handles.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for name in list(self._handles):
            self._close(name)

    def sync(self) -> None:
        """Every file written tonight on disk before the map is renamed into place (a map whose
        blocks were lost in a crash would make the next night compare against stale fingerprints,
        and its restore fail): flushed by a few threads, since a night may touch thousands."""
        self.close()
        names = [name for name in self._written if (self.directory / name).exists()]
        with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
            list(pool.map(self._fsync, names))
        (self.directory / INDEX).write_text(json.dumps({"seed": self.seed, "files": self.files}))
        self._fsync(INDEX)

    def _fsync(self, name: str) -> None:
        fd = os.open(self.directory / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BlockMapStore:
    """The maps of one source on this host: at most the newest committed one plus tonight's pending."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def open(cls, repo_id: str, source: str) -> "BlockMapStore | None":
        """In the first cache root that can hold it; None when none can (nights then store whole pages)."""
        safe = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
        for root in cache_roots():
            base = root / repo_id / "blockmap" / safe
            try:
                base.mkdir(parents=True, exist_ok=True, mode=0o700)
                if os.access(base, os.W_OK | os.X_OK):
                    return cls(base)
            except OSError as exc:
                log.debug("block map cannot live in %s: %s", base, exc)
        return None

    def committed(self, snapshot_id: str) -> BlockMap | None:
        """The map of ``snapshot_id`` if this host has it whole."""
        directory = self.base / snapshot_id
        try:
            stored = json.loads((directory / INDEX).read_text())
            files = {str(k): dict(v) for k, v in stored["files"].items()}
            if not all((directory / str(v["file"])).is_file() for v in files.values()):
                return None
            return BlockMap(directory, int(stored["seed"]), files)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def begin(self, parent: BlockMap | None) -> BlockMap:
        """Tonight's map: the parent's files hard-linked in (copied only when changed), or a new seed."""
        self._clear_stale_pending()
        directory = self.base / f"{PENDING}{os.getpid()}-{secrets.token_hex(4)}"
        directory.mkdir(mode=0o700)
        if parent is None:
            return BlockMap(directory, secrets.randbits(63), {}, writable=True)
        for entry in parent.files.values():
            os.link(parent.directory / str(entry["file"]), directory / str(entry["file"]))
        return BlockMap(directory, parent.seed, {k: dict(v) for k, v in parent.files.items()}, writable=True)

    def commit(self, pending: BlockMap, snapshot_id: str) -> bool:
        """Make ``pending`` the map of the committed ``snapshot_id`` and drop the older ones; False
        (and the map thrown away) when it could not be written whole — the snapshot is stored either
        way, and the next night stores whole pages."""
        try:
            if pending.failed:
                raise OSError("a write failed earlier")
            pending.sync()
            pending.close()
            final = self.base / snapshot_id
            os.replace(pending.directory, final)
            fd = os.open(self.base, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("the block map of snapshot %s could not be kept (%s): the next night stores its "
                        "changed pages whole", snapshot_id[:8], exc.strerror or exc)
            self.abort(pending)
            return False
        for entry in self.base.iterdir():
            if entry.name != snapshot_id and not entry.name.startswith(PENDING):
                shutil.rmtree(entry, ignore_errors=True)
        return True

    def abort(self, pending: BlockMap) -> None:
        pending.close()
        shutil.rmtree(pending.directory, ignore_errors=True)

    def _clear_stale_pending(self, older_than: float = 24 * 3600) -> None:
        """Pending maps of crashed runs (a live run's is younger than a day)."""
        now = time.time()
        for entry in self.base.iterdir():
            try:
                if entry.name.startswith(PENDING) and now - entry.stat().st_mtime > older_than:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue


def _key(path: bytes) -> str:
    return path.hex()
