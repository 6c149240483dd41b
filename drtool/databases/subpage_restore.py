"""Rebuilding an extracted chain's ``.delta`` files from their sub-page form, before ``--prepare``.

A sub-page record holds a page's changed blocks; the rest of the page is its
previous version in the chain, exactly as the backup's block map saw it: the
page in the latest earlier incremental's ``.delta`` that has it, else the
full's raw copy of the file (extracted, not yet prepared — prepare rewrites
pages, so every member is rebuilt before the full is prepared).  Members are
rebuilt in chain order, each ``.delta`` byte for byte as mariabackup wrote
it; each rebuilt page is checked against the digest taken at backup time.

Memory: the page numbers of the earlier members' ``.delta`` files (4 bytes
per page, loaded as needed) and a few open files per thread; each thread
rebuilds up to 64 pages in place in one buffer (the base page read into
it, the stored blocks laid over it) and writes them at once.  A
member's files are rebuilt on a few threads at once.
"""
from __future__ import annotations

import bisect
import logging
import os
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from drtool.databases import innodb_delta as delta
from drtool.databases import subpage_format as fmt
from drtool.errors import RestoreChainError, RestoreTargetError
from drtool.fdio import write_all

log = logging.getLogger("drtool")
CHECKPOINTS = "xtrabackup_checkpoints"
_OPEN_FILES = 64
REBUILD_THREADS = max(2, min(4, os.cpu_count() or 2))
_WRITE_BATCH = 64            # pages rebuilt into one buffer, written at once
_READ_BUFFER = 1024 * 1024


class _Bases:
    """Where the previous version of a page is, for the member being rebuilt."""

    def __init__(self, full_dir: str, earlier: list[str]) -> None:
        self.full_dir, self.earlier = full_dir, earlier
        self._numbers: dict[str, tuple[array, bool, int] | None] = {}
        self._fds: dict[str, int] = {}
        self._paths: dict[str, list[str]] = {}
        self._full: dict[str, str] = {}

    def page_into(self, target: str, page_no: int, where: str, out: memoryview) -> None:
        """Page ``page_no`` of tablespace file ``target`` (relative) as the chain last stored it,
        read into ``out`` (a page's size)."""
        page_size = len(out)
        for path in self._delta_paths(target):
            found = self._delta_numbers(path)
            if found is None:
                continue
            numbers, ordered, member_page_size = found
            index = _position(numbers, ordered, page_no)
            if index is not None:
                if member_page_size != page_size:
                    raise RestoreChainError(f"{where}: page size {page_size} where the chain's earlier "
                                            f"{path} has {member_page_size}; nothing was restored")
                self._read_into(path, delta.page_offset(index, page_size), out, where)
                return
        self._read_into(self._full_path(target), page_no * page_size, out, where)

    def _delta_paths(self, target: str) -> list[str]:
        """The earlier members' ``.delta`` of ``target``, latest first (joined once per file)."""
        paths = self._paths.get(target)
        if paths is None:
            paths = self._paths[target] = [os.path.join(d, target + ".delta") for d in reversed(self.earlier)]
        return paths

    def _full_path(self, target: str) -> str:
        path = self._full.get(target)
        if path is None:
            path = self._full[target] = os.path.join(self.full_dir, target)
        return path

    def _delta_numbers(self, path: str) -> tuple[array, bool, int] | None:
        if path not in self._numbers:
            self._numbers[path] = None
            if os.path.exists(path):
                meta = delta.DeltaMeta.parse(Path(path[:-len(".delta")] + ".meta").read_bytes())
                if meta is None:
                    raise RestoreChainError(f"{path[:-len('.delta')]}.meta is missing or damaged; nothing "
                                            f"was restored")
                size = meta.zip_size or meta.page_size
                numbers = delta.page_numbers(path, size)
                ordered = all(numbers[i] < numbers[i + 1] for i in range(len(numbers) - 1))
                self._numbers[path] = (numbers, ordered, size)
        return self._numbers[path]

    def _read_into(self, path: str, offset: int, out: memoryview, where: str) -> None:
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= _OPEN_FILES:
                os.close(self._fds.pop(next(iter(self._fds))))
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise RestoreChainError(f"{where}: its previous version is not in the chain ({path} is "
                                        f"missing); nothing was restored") from None
        if os.preadv(fd, [out], offset) != len(out):
            raise RestoreChainError(f"{where}: its previous version is not in the chain ({path} ends before "
                                    f"offset {offset + len(out)}); nothing was restored")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _position(numbers: array, ordered: bool, page_no: int) -> int | None:
    if ordered:
        index = bisect.bisect_left(numbers, page_no)
        return index if index < len(numbers) and numbers[index] == page_no else None
    try:
        return numbers.index(page_no)
    except ValueError:
        return None


def rebuild_chain(full_dir: str, member_dirs: list[str]) -> int:
    """Rebuild every sub-page file of the incrementals in ``member_dirs`` (chain order); pages rebuilt.

    The files of one member are rebuilt on a few threads, largest first (a file's pages depend only
    on earlier members and the full, not on other files): ``pread``, BLAKE3 and the writes release
    the GIL (bench, 112,132 pages: 8.6 s on one thread)."""
    rebuilt = 0
    for index, directory in enumerate(member_dirs):
        files = sorted(_subpage_files(directory), key=lambda rel: -os.path.getsize(os.path.join(directory, rel)))
        with ThreadPoolExecutor(max_workers=REBUILD_THREADS, thread_name_prefix="subpage-rebuild") as pool:
            jobs = [pool.submit(_rebuild_alone, full_dir, member_dirs[:index], directory, rel) for rel in files]
            try:
                rebuilt += sum(job.result() for job in jobs)
            finally:
                for job in jobs:  # the first error stops what has not started
                    job.cancel()
        renamed = os.path.join(directory, CHECKPOINTS + fmt.SUFFIX.decode())
        if os.path.exists(renamed):
            os.replace(renamed, os.path.join(directory, CHECKPOINTS))
    return rebuilt


def _rebuild_alone(full_dir: str, earlier: list[str], directory: str, relative: str) -> int:
    """One file, with bases of its own (a thread's: its descriptors and page numbers are not shared)."""
    bases = _Bases(full_dir, earlier)
    try:
        return _rebuild_file(directory, relative, bases)
    finally:
        bases.close()


def _subpage_files(directory: str) -> list[str]:
    suffix = fmt.SUFFIX.decode()
    found = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name.endswith(suffix) and name != CHECKPOINTS + suffix:
                found.append(os.path.relpath(os.path.join(root, name), directory))
    return sorted(found)


def _rebuild_file(directory: str, relative: str, bases: _Bases) -> int:
    """``X.delta`` from ``X.delta.drtool-subpage``; the sub-page file is removed once it is rebuilt."""
    source = os.path.join(directory, relative)
    output = source[:-len(fmt.SUFFIX)]
    target = relative[:-len(fmt.SUFFIX) - len(".delta")]
    if os.path.exists(output):
        raise RestoreChainError(f"{output} and its sub-page form are both in the stored stream; nothing "
                                f"was restored")
    pages = 0
    try:
        with open(source, "rb", buffering=_READ_BUFFER) as handle:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            try:
                page_size = fmt.page_size_of(handle, source)
                batch = memoryview(bytearray(_WRITE_BATCH * page_size))  # pages rebuilt in place, one write
                used = 0
                for kind, page_no, digest, data, mask in fmt.read_records(handle, source):
                    slot = batch[used:used + page_size]
                    if kind == fmt.BLOCKS:
                        where = f"page {page_no} of {target} in {directory}"
                        bases.page_into(target, page_no, where, slot)
                        fmt.rebuild_page_in(slot, mask, data, digest, where)
                        pages += 1
                    else:
                        slot[:] = data
                    used += page_size
                    if used == len(batch):
                        write_all(fd, batch)
                        used = 0
                write_all(fd, batch[:used])
            finally:
                os.close(fd)
        os.unlink(source)
    except OSError as exc:
        raise RestoreTargetError(f"cannot rebuild {output}: {exc.strerror or exc}; nothing was restored",
                                 hint="free space on the --target file system (each incremental's .delta files "
                                      "are rebuilt there at their full size) or restore to another --target") \
            from None
    return pages
