"""Local directory backend: atomic puts by temp file + fsync + rename.

Used for the embedded default and for NFS-mounted second sites.  A crash
mid-put leaves only a ``.tmp-*`` file, which listing ignores and ``prune``
may remove.
"""
from __future__ import annotations

import errno
import grp
import mmap
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from drtool.backends.base import Backend, ObjectInfo, StagedObject
from drtool.backends.local_staged import DIRECT_IO_DEFAULT, LocalStagedObject, WriteFailures, fsync_dir
from drtool.errors import (BackendError, ObjectMissing, ReadOnlyRepository, RepositoryFull, RepositoryNotFound,
                           UsageError)

TMP_PREFIX = ".tmp-"
SHARED_DIR_MODE = 0o2770   # group-shared repository: setgid keeps the group on new entries
SHARED_FILE_MODE = 0o640   # objects are immutable (replaced by rename): the group only reads them
MAP_MIN_BYTES = 1024 * 1024
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class LocalBackend(Backend):
    """Capabilities beyond the core contract (``drtool.backends.capabilities``): staged and
    part writes, mapped and buffered reads, conditional create, location setup, group
    sharing and removal of abandoned temporaries.

    A group-shared repository (``init --group``) is recognised by its top directory:
    setgid with group ``rwx``.  Every writer then creates directories ``2770`` and files
    ``0640`` whatever its umask (PostgreSQL runs ``archive_command`` with umask 077), so
    the backup user and the database user keep reading each other's objects."""

    def __init__(self, root: str | os.PathLike[str], direct_io: bool = DIRECT_IO_DEFAULT) -> None:
        """``direct_io``: stream packs with O_DIRECT (DRTOOL_DIRECT_IO=0 turns it off)."""
        super().__init__()
        self.direct_io = direct_io
        self._write_failures = WriteFailures()  # background pack writes that failed
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self._shared: bool | None = None  # group-shared? learnt from the top directory once

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise BackendError(f"invalid object name {name!r}")
        return self.root / name

    def create_location(self) -> None:
        self._refuse_non_directory()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create repository directory {self.root}: {exc.strerror}") from None

    def share_with_group(self, group: str) -> None:
        """Hand the (new) repository directory to ``group``: setgid, group ``rwx``."""
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise UsageError(f"there is no OS group {group!r}",
                             hint=f"create it (groupadd --system {group}) and add the backup and database "
                                  f"users to it (usermod -aG {group} postgres)") from None
        try:
            os.chown(self.root, -1, gid)
            os.chmod(self.root, SHARED_DIR_MODE)
            mode = self.root.stat().st_mode
        except PermissionError:
            mode = 0
        if not mode & stat.S_ISGID or stat.S_IMODE(mode) & 0o070 != 0o070:  # non-members lose setgid
            raise UsageError(f"cannot give group {group} the repository directory {self.root}: "
                             f"this user is not a member of it",
                             hint=f"usermod -aG {group} {_user_name()} (then log in again), or run init as root")
        self._shared = True

    def shared_group(self) -> int | None:
        return self.root.stat().st_gid if self._is_shared() else None

    def _is_shared(self) -> bool:
        if self._shared is None:
            try:
                mode = self.root.stat().st_mode
            except OSError:
                return False  # no repository yet: ask again later
            self._shared = bool(mode & stat.S_ISGID) and stat.S_IMODE(mode) & 0o070 == 0o070
        return self._shared

    def _make_dirs(self, folder: Path) -> None:
        """``mkdir -p`` inside the repository; group-shared: each new directory ``2770``."""
        if folder.is_dir():
            return
        if not self._is_shared():
            folder.mkdir(parents=True, exist_ok=True)
            return
        missing = []
        while not folder.is_dir() and folder != self.root:
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, SHARED_DIR_MODE)
            except FileExistsError:
                _await_group_access(path)  # another writer made it and is about to chmod it
                continue
            os.chmod(path, SHARED_DIR_MODE)  # mkdir's mode went through the umask

    def _refuse_non_directory(self) -> None:
        """``--repo`` naming a file (or a path through one) is a wrong path, not an internal error."""
        for path in (self.root, *self.root.parents):
            if path.exists() or path.is_symlink():
                if not path.is_dir():
                    raise RepositoryNotFound(f"no drtool repository at {self.url}: {path} is a file, "
                                             f"not a directory", hint="--repo must name a directory (or an s3:// URL)")
                return

    def put(self, name: str, data: bytes) -> None:
        self.put_parts(name, [data])

    def stage(self, prefix: str) -> StagedObject:
        folder = self._path(prefix.strip("/"))
        try:
            if not self.root.is_dir():
                raise RepositoryNotFound(f"repository directory {self.root} does not exist")
            self._make_dirs(folder)
            return LocalStagedObject(folder, self._path, self._count_put,
                                     lambda exc, what: _write_error(exc, f"{what} in {self.root}"),
                                     direct_io=self.direct_io, failures=self._write_failures,
                                     make_dirs=self._make_dirs,
                                     file_mode=SHARED_FILE_MODE if self._is_shared() else None)
        except OSError as exc:
            raise _write_error(exc, prefix) from None

    def remove_abandoned_temporaries(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for filename in filenames:
                if not filename.startswith(TMP_PREFIX):
                    continue
                path = os.path.join(dirpath, filename)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def _count_put(self, size: int) -> None:
        self.stats.puts += 1
        self.stats.bytes_up += size

    def put_parts(self, name: str, parts: Sequence[bytes | bytearray]) -> None:
        path = self._path(name)
        self.stats.puts += 1
        self.stats.bytes_up += sum(len(p) for p in parts)
        if not self.root.is_dir():
            raise RepositoryNotFound(f"repository directory {self.root} does not exist")
        try:
            tmp = self._write_temp(path, parts)
            try:
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            fsync_dir(path.parent)
        except OSError as exc:
            raise _write_error(exc, f"{name} in {self.root}") from None

    def get(self, name: str) -> bytes:
        self.stats.gets += 1
        try:
            data = self._path(name).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"object {name} is missing from the repository") from None
        except OSError as exc:
            raise _read_error(exc, name) from None
        self.stats.bytes_down += len(data)
        return data

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(f"invalid range {offset}+{length} for {name}")
        self.stats.gets += 1
        try:
            with open(self._path(name), "rb") as handle:
                if not length:  # to the end, or empty: only the size tells a range past the end
                    size = os.fstat(handle.fileno()).st_size
                    if offset > size:
                        raise ObjectMissing(f"object {name} is shorter than expected "
                                            f"({size} < {offset} bytes)")
                handle.seek(offset)
                data = handle.read(-1 if length is None else length)
        except FileNotFoundError:
            raise ObjectMissing(f"object {name} is missing from the repository") from None
        except OSError as exc:
            raise _read_error(exc, name) from None
        if length is not None and len(data) != length:
            raise ObjectMissing(f"object {name} is shorter than expected "
                                f"({offset + len(data)} < {offset + length} bytes)")
        self.stats.bytes_down += len(data)
        return data

    def _open_for_reading(self, name: str) -> int:
        try:
            return os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectMissing(f"object {name} is missing from the repository") from None
        except OSError as exc:
            raise _read_error(exc, name) from None

    def get_range_view(self, name: str, offset: int, length: int) -> memoryview:
        """Large ranges are mapped (MAP_POPULATE), not copied: a restore reads every pack once
        and the copy was ~6 % of its CPU (perf: ``_copy_to_iter``).  Packs are immutable and
        replaced only by rename, so a mapping never sees its file shrink."""
        if length < MAP_MIN_BYTES:
            return memoryview(self.get_range(name, offset, length))
        self.stats.gets += 1
        fd = self._open_for_reading(name)
        try:
            size = os.fstat(fd).st_size
            if offset + length > size:
                raise ObjectMissing(f"object {name} is shorter than expected "
                                    f"({size} < {offset + length} bytes)")
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(fd, offset + length - start, flags=mmap.MAP_SHARED | _MAP_POPULATE,
                               prot=mmap.PROT_READ, offset=start)
        except OSError as exc:
            raise _read_error(exc, name) from None
        finally:
            os.close(fd)
        self.stats.bytes_down += length
        return memoryview(mapped)[offset - start:]

    def get_range_into(self, name: str, offset: int, length: int, buf: bytearray) -> memoryview:
        """``preadv`` into a recycled buffer: a restore reads each group once, and mapping
        each range cost a TLB shoot-down per unmap on every core (perf, 2 MiB groups:
        ``smp_call_function_many_cond`` ~5 % of the restore's CPU) where a copy is cheaper."""
        self.stats.gets += 1
        view = memoryview(buf)[:length]
        fd = self._open_for_reading(name)
        try:
            done = 0
            while done < length:
                got = os.preadv(fd, [view[done:]], offset + done)
                if got == 0:
                    raise ObjectMissing(f"object {name} is shorter than expected "
                                        f"({offset + done} < {offset + length} bytes)")
                done += got
        except OSError as exc:
            raise _read_error(exc, name) from None
        finally:
            os.close(fd)
        self.stats.bytes_down += length
        return view

    def read_ahead(self, name: str, offset: int, length: int) -> None:
        """``posix_fadvise(WILLNEED)``: the kernel queues the reads and returns (a hint: errors are
        the later read's to report)."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def stat(self, name: str) -> ObjectInfo | None:
        self.stats.heads += 1
        try:
            return ObjectInfo(name, self._path(name).stat().st_size)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            self._refuse_non_directory()  # --repo names a file: RepositoryNotFound
            raise BackendError(f"cannot read {name} in {self.root}: a file stands where a directory belongs",
                               hint="run 'drtool check'") from None

    def delete(self, name: str) -> None:
        self.stats.deletes += 1
        _unlink_quietly(self._path(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.stats.lists += 1
        base = self.root
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        if not start.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, base)
            for filename in filenames:
                if filename.startswith(TMP_PREFIX):
                    continue
                name = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                if name.startswith(prefix):
                    try:
                        size = os.stat(os.path.join(dirpath, filename)).st_size
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(name, size)

    def _write_temp(self, path: Path, parts: Sequence[bytes | bytearray]) -> str:
        """A durable temporary file beside ``path`` (renamed or linked into place); private,
        or readable by the group of a group-shared repository."""
        self._make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        try:
            if self._is_shared():
                os.fchmod(fd, SHARED_FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                for part in parts:
                    handle.write(part)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Exclusive create via link(2), which is atomic on POSIX file systems."""
        path = self._path(name)
        tmp = self._write_temp(path, [data])
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            self.stats.puts += 1
            fsync_dir(path.parent)
            return True
        finally:
            _unlink_quietly(tmp)


def _write_error(exc: OSError, what: str) -> BackendError:
    if exc.errno == errno.ENOSPC:
        return RepositoryFull(f"repository disk is full while writing {what}",
                            hint="free space on the repository file system; nothing was committed")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ReadOnlyRepository(f"cannot write {what}: {exc.strerror}")
    return BackendError(f"cannot write {what}: {exc.strerror}")


def _await_group_access(path: Path, timeout: float = 2.0) -> None:
    """Between another writer's mkdir and its chmod the directory may still lack the group's
    bits (its umask); wait that moment out rather than fail to write into it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stat.S_IMODE(os.stat(path).st_mode) & 0o070 == 0o070:
                return
        except OSError:
            return
        time.sleep(0.01)


def _read_error(exc: OSError, name: str) -> BackendError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return BackendError(f"cannot read {name}: permission denied for OS user {_user_name()}",
                            hint="a repository shared by several OS users needs 'drtool init --group' "
                                 "(or the chgrp/chmod of docs/operations.md, 'One repository, two writers')")
    return BackendError(f"cannot read {name}: {exc.strerror}")


def _user_name() -> str:
    import pwd
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
