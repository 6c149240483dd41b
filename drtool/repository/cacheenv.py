"""Where the blob index's disk cache lives, and its LMDB environment: opened once per process
(LMDB allows one environment per file per process), validated against the repository it
caches, recreated when it is not, and guarded across processes by a ``flock`` beside it.

Split from :mod:`drtool.repository.diskindex`, which keeps what the cache holds and how it is
read and written; this module is the file-system side both need.
"""
from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lmdb

from drtool.repository import completeness

log = logging.getLogger("drtool")

# 2: meta/token and the id table (a format-1 cache is rebuilt); 3: completeness marks and the
# removals token (:mod:`completeness`): a drtool that does not renew it must not share the cache
CACHE_FORMAT = b"3"
# Address space only (LMDB grows the file as it fills): ~130 bytes per blob, so 64 GiB is ~500 M blobs.
MAP_SIZE = 64 << 30
MAX_READERS = 1024
DBS = (b"blobs", b"packs", b"members", b"indexes", b"meta")


class CacheUnusable(Exception):
    """This directory cannot hold the cache for this process (permissions, no space, no LMDB)."""


# What writing to the cache may raise that only costs a speed-up (a full disk, an LMDB error):
# callers that treat the cache as optional catch these, and let anything else (a bug) through.
CACHE_ERRORS: tuple[type[BaseException], ...] = (lmdb.Error, OSError, CacheUnusable)


def cache_roots() -> list[Path]:
    """Where to try, in order: ``DRTOOL_CACHE_DIR`` (may be shared, e.g. /var/cache/drtool), the
    user's XDG cache, then a private directory under the temporary directory."""
    roots = []
    if os.environ.get("DRTOOL_CACHE_DIR"):
        roots.append(Path(os.environ["DRTOOL_CACHE_DIR"]))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    roots.append(Path(xdg) / "drtool")
    roots.append(Path(tempfile.gettempdir()) / f"drtool-cache-{os.getuid()}")
    return roots


_envs: dict[str, list] = {}  # path -> [Environment, open count]: LMDB allows one per file per process
_envs_lock = threading.Lock()


def acquire_env(path: Path, repo_id: str) -> lmdb.Environment:
    key = str(path)
    with _envs_lock:
        held = _envs.get(key)
        if held is not None:
            held[1] += 1
            return held[0]
        env = _open_valid(path, repo_id)
        _envs[key] = [env, 1]
        return env


def release_env(path: Path) -> None:
    with _envs_lock:
        held = _envs.get(str(path))
        if held is not None:
            held[1] -= 1
            if held[1] == 0:
                del _envs[str(path)]
                held[0].close()


@contextmanager
def guard(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` beside the cache: held to open, validate, reset and bulk-build it."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        guard = os.open(path / "open.lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        raise CacheUnusable(f"{path}: {exc.strerror}") from None
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield
    finally:
        os.close(guard)


def _open_valid(path: Path, repo_id: str) -> lmdb.Environment:
    """Open the cache at ``path``; remove and recreate it when it is not a valid cache of ``repo_id``."""
    with guard(path):
        fresh = not (path / "data.mdb").exists()
        try:
            env = _open_env(path)
            if _valid(env, repo_id):
                env.reader_check()  # reader slots of processes that died
                return env
            env.close()
            reason = "another format or repository, or an interrupted build"
        except lmdb.Error as exc:
            reason = str(exc)
        if not fresh:
            log.warning("the index cache %s is not usable (%s); rebuilding it from the repository", path, reason)
        for name in ("data.mdb", "lock.mdb"):
            try:
                (path / name).unlink()
            except FileNotFoundError:
                pass
        try:
            env = _open_env(path)
            with env.begin(write=True) as txn:
                meta = env.open_db(b"meta", txn=txn)
                txn.put(b"format", CACHE_FORMAT, db=meta)
                txn.put(b"repository", repo_id.encode(), db=meta)
                completeness.removed(txn, meta)  # the first removals token
                for name in DBS[:-1]:
                    env.open_db(name, txn=txn, dupsort=name == b"blobs")
            return env
        except lmdb.Error as exc:
            raise CacheUnusable(f"{path}: {exc}") from None
        except OSError as exc:
            raise CacheUnusable(f"{path}: {exc.strerror}") from None


def _open_env(path: Path) -> lmdb.Environment:
    # metasync=False: a crash may lose the last transaction, never the B-tree's integrity (and a
    # lost transaction is an index object read in again).  readahead=False: lookups are random.
    return lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=len(DBS), max_readers=MAX_READERS,
                     metasync=False, readahead=False, mode=0o600)


def _valid(env: lmdb.Environment, repo_id: str) -> bool:
    with env.begin() as txn:
        if txn.get(b"meta") is None:
            return False
    meta = env.open_db(b"meta")
    with env.begin(db=meta) as txn:
        # ``building`` with ``moving``: a move between key ranges, undone after the open (keyranges)
        return (txn.get(b"format") == CACHE_FORMAT and txn.get(b"repository") == repo_id.encode()
                and (txn.get(b"building") is None or txn.get(b"moving") is not None))


_MADV_DONTNEED = 4  # Linux


def mapping_start(path: Path) -> int | None:
    """Where this process maps ``path`` (LMDB does not say: ``info()['map_addr']`` is 0), from
    /proc/self/maps; None when it is not mapped or the system has no such file."""
    wanted = str(path)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].rstrip("\n") == wanted and fields[2] == "00000000":
                    return int(fields[0].split("-")[0], 16)
    except OSError:
        pass
    return None


def madvise_dontneed(start: int, length: int) -> None:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_DONTNEED)
    except (OSError, AttributeError):
        pass


READ_AHEAD_SHARE = 16  # read a file ahead when a write's random keys may touch 1/16 of its pages or more
_PAGE = 4096


def read_ahead(paths: list[Path], keys: int) -> None:
    """Read in order, into the page cache, each file of which a write of ``keys`` random keys
    may touch a sixteenth of the pages or more.

    The cache's files are mapped for random lookups (``readahead=False``,
    and the id table's buckets are random by design), so on a cold cache
    every page a move touches is one 4 KiB read: the 214,000 entries a
    1,000,000-file first backup left for the re-run went into the cache in
    10.6 s, 8 of them faults, against 2.9 s after reading its 200 MB in
    order (0.3 s here).  The pages go to the page cache, not this process
    (a 1 MiB buffer is reused); a file already cached costs the copy."""
    buffer = bytearray(1 << 20)
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as handle:
                if keys * READ_AHEAD_SHARE < os.fstat(handle.fileno()).st_size // _PAGE:
                    continue
                while handle.readinto(buffer):
                    pass
        except OSError:
            pass  # a missing table or filter: nothing to read
