"""Rebuilding an extracted chain's ``.delta`` files from their sub-page form, before ``--prepare``.

A sub-page record holds a page's changed blocks; the rest of the page is its
previous version in the chain, exactly as the backup's block map saw it: the
page in the latest earlier incremental's ``.delta`` that has it, else the
full's raw copy of the file (extracted, not yet prepared — prepare rewrites
pages, so every member is rebuilt before the full is prepared).  Members are
rebuilt in chain order, each ``.delta`` byte for byte as mariabackup wrote
it; each rebuilt page is checked against the digest taken at backup time.

Memory: the page numbers of the earlier members' ``.delta`` files (4 bytes
per page, loaded as needed) and a few open files; pages are read one at a
time.

A member's files are rebuilt side by side on a few threads (``REBUILD_THREADS``):
each page's read, digest and write give up the GIL, and the rebuild of a
big chain writes as many bytes as its ``.delta`` files hold, so one thread
left a core idle while the kernel took the writes.  A file's pages only ever
come from the same file in earlier members and the full, so each file has its
own :class:`_Bases` and the threads share nothing but the count.
"""
from __future__ import annotations

import bisect
import logging
import os
from array import array
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from drtool.databases import innodb_delta as delta
from drtool.databases import subpage_format as fmt
from drtool.errors import RestoreTargetError

log = logging.getLogger("drtool")
CHECKPOINTS = "xtrabackup_checkpoints"
_OPEN_FILES = 64
REBUILD_THREADS = min(4, os.cpu_count() or 2)


class _Bases:
    """Where the previous version of a page is, for the member being rebuilt."""

    def __init__(self, full_dir: str, earlier: list[str]) -> None:
        self.full_dir, self.earlier = full_dir, earlier
        self._numbers: dict[str, tuple[array, bool, int] | None] = {}
        self._fds: dict[str, int] = {}

    def page(self, target: str, page_no: int, page_size: int, where: str) -> bytes:
        """Page ``page_no`` of tablespace file ``target`` (relative) as the chain last stored it."""
        for directory in reversed(self.earlier):
            path = os.path.join(directory, target + ".delta")
            found = self._delta_numbers(path)
            if found is None:
                continue
            numbers, ordered, member_page_size = found
            index = _position(numbers, ordered, page_no)
            if index is not None:
                if member_page_size != page_size:
                    raise RestoreTargetError(f"{where}: page size {page_size} where the chain's earlier "
                                             f"{path} has {member_page_size}; nothing was restored")
                return self._read(path, delta.page_offset(index, page_size), page_size, where)
        return self._read(os.path.join(self.full_dir, target), page_no * page_size, page_size, where)

    def _delta_numbers(self, path: str) -> tuple[array, bool, int] | None:
        if path not in self._numbers:
            self._numbers[path] = None
            if os.path.exists(path):
                meta = delta.DeltaMeta.parse(Path(path[:-len(".delta")] + ".meta").read_bytes())
                if meta is None:
                    raise RestoreTargetError(f"{path[:-len('.delta')]}.meta is missing or damaged; nothing "
                                             f"was restored")
                size = meta.zip_size or meta.page_size
                numbers = delta.page_numbers(path, size)
                ordered = all(numbers[i] < numbers[i + 1] for i in range(len(numbers) - 1))
                self._numbers[path] = (numbers, ordered, size)
        return self._numbers[path]

    def _read(self, path: str, offset: int, size: int, where: str) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= _OPEN_FILES:
                os.close(self._fds.pop(next(iter(self._fds))))
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise RestoreTargetError(f"{where}: its previous version is not in the chain ({path} is "
                                         f"missing); nothing was restored") from None
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise RestoreTargetError(f"{where}: its previous version is not in the chain ({path} ends before "
                                     f"offset {offset + size}); nothing was restored")
        return data

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

    Members go in order (a member's pages are the next member's bases); within one, its files
    are rebuilt in parallel, the largest first so that the last to finish is a small one."""
    rebuilt = 0
    with ThreadPoolExecutor(max_workers=REBUILD_THREADS, thread_name_prefix="rebuild") as pool:
        for index, directory in enumerate(member_dirs):
            earlier = member_dirs[:index]
            files = sorted(_subpage_files(directory), key=lambda name: -os.path.getsize(
                os.path.join(directory, name)))
            futures = [pool.submit(_rebuild_alone, directory, relative, full_dir, earlier) for relative in files]
            _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            wait(pending)  # a file still being written is finished or failed before the error goes up
            rebuilt += sum(future.result() for future in futures if not future.cancelled())
            renamed = os.path.join(directory, CHECKPOINTS + fmt.SUFFIX.decode())
            if os.path.exists(renamed):
                os.replace(renamed, os.path.join(directory, CHECKPOINTS))
    return rebuilt


def _rebuild_alone(directory: str, relative: str, full_dir: str, earlier: list[str]) -> int:
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
        raise RestoreTargetError(f"{output} and its sub-page form are both in the stored stream; nothing "
                                 f"was restored")
    pages = 0
    try:
        with open(source, "rb") as handle, open(output, "wb") as out:
            page_size = fmt.page_size_of(handle, source)
            for kind, page_no, digest, data, mask in fmt.read_records(handle, source):
                if kind == fmt.BLOCKS:
                    where = f"page {page_no} of {target} in {directory}"
                    data = fmt.rebuild_page(bases.page(target, page_no, page_size, where), mask, data, digest,
                                            where)
                    pages += 1
                out.write(data)
        os.unlink(source)
    except OSError as exc:
        raise RestoreTargetError(f"cannot rebuild {output}: {exc.strerror or exc}; nothing was restored",
                                 hint="free space on the --target file system (each incremental's .delta files "
                                      "are rebuilt there at their full size) or restore to another --target") \
            from None
    return pages
