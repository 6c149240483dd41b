"""Restore: verified, parallel, sparse-aware, atomic per file, resumable, confined to the target.

Each file is written to a hidden temporary name and renamed into place only
after every blob was authenticated and written, so a restored file that
exists under its real name is always complete.  The walk plans which blobs
of each compression group go where, and workers open every group once
(``restore_groups``).  All-zero blobs become holes.  A file already present
with matching content is kept, which makes re-running an interrupted
restore cheap.

The target is walked with directory descriptors (``restore_target``):
entry names are checked when trees are read, nothing is ever looked up
through a symbolic link, and what exists and differs is handled by the
overwrite policy (default ``never``: kept, reported, exit 3).  ``--dry-run``
runs the same walk without writing, so it lists exactly what a restore
would create, replace and leave alone.
"""
from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

from drtool.digests import token_hex
from drtool.errors import DrtoolError, IntegrityError, RestoreTargetError, UsageError
from drtool.core.heap import collector_paused
from drtool.core import coldpacks
from drtool.repository import warming
from drtool.restore.groups import Aborted, FileJob, GroupPlanner, GroupWriter
from drtool.restore.target import (CONFLICT, CREATE_FLAGS, DEFAULT_POLICY, KEEP, NEW, REPLACE,
                                       DirHandle, Existing, check_policy, enter_dir, judge_file,
                                       judge_other, lstat_at, open_existing_for_reading, open_rel,
                                       open_root, raise_open_file_limit, remove_for_replacement)
from drtool.core.session import Session
from drtool.repository.repo import Repository
from drtool.snapshot.model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node, Snapshot
from drtool.snapshot.names import display
from drtool.snapshot.store import load_tree_checked

# One worker per core: more threads only add GIL handoffs and page-fault churn
# (measured on the full bench: 2 workers 3.7 s, 4 workers 5.6 s, 6 workers 8.8 s).
RESTORE_WORKERS = int(os.environ.get("DRTOOL_RESTORE_WORKERS", "0")) or None
MAX_OPEN_FILES = 256  # temporaries open at once (each waits for its groups to be handed out)
# Remote stores read whole packs: a 20 MiB pack of small media feeds ~70 files, and with four
# packs in flight and more being collected, 256 open files ran out; every file opened then
# flushed the fetcher, which sent a pack's few collected groups as a request of their own
# (S3 bench: 104 GETs for 41 packs; with 4,096, 44).
REMOTE_MAX_OPEN_FILES = 4096
PART_PREFIX = ".drtool-part-"
# Only tree blobs go through the group cache now; data groups are opened once each.
RESTORE_GROUP_CACHE = 16 * 1024 * 1024
LIST_LIMIT = 10_000  # paths kept per list in the result (counts are exact)


@dataclass
class RestoreResult:
    snapshot: Snapshot
    target: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    files_skipped_existing: int = 0
    damaged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    plan_only: bool = False
    packs: int = 0
    overwrite: str = DEFAULT_POLICY
    overwritten: list[str] = field(default_factory=list)
    not_overwritten: list[str] = field(default_factory=list)
    overwritten_count: int = 0
    not_overwritten_count: int = 0
    requests: dict[str, float] = field(default_factory=dict)  # the backend's counts (cost, limits)
    warm: dict[str, object] | None = None  # packs in an archive class that were (to be) warmed

    def note(self, replaced: bool, line: str) -> None:
        """An existing entry that was (or would be) replaced, or kept although it differs."""
        if replaced:
            self.overwritten_count += 1
            if len(self.overwritten) < LIST_LIMIT:
                self.overwritten.append(line)
        else:
            self.not_overwritten_count += 1
            if len(self.not_overwritten) < LIST_LIMIT:
                self.not_overwritten.append(line)

    def as_dict(self) -> dict[str, object]:
        return {"snapshot": self.snapshot.id, "name": self.snapshot.name,
                "time": self.snapshot.time.astimezone().isoformat(), "target": self.target,
                "files": self.files, "dirs": self.dirs, "bytes": self.bytes, "packs": self.packs,
                "files_skipped_existing": self.files_skipped_existing, "damaged": self.damaged,
                "skipped": self.skipped, "dry_run": self.plan_only, "overwrite": self.overwrite,
                "overwritten": self.overwritten, "overwritten_count": self.overwritten_count,
                "not_overwritten": self.not_overwritten,
                "not_overwritten_count": self.not_overwritten_count, "requests": self.requests,
                "warm": self.warm}


def selected(path: str, includes: list[str]) -> bool:
    if not includes:
        return True
    return any(path == inc or path.startswith(inc + "/") or inc.startswith(path + "/")
               for inc in includes)


def normalize_includes(repo: Repository, snap: Snapshot, includes: list[str]) -> list[str]:
    """``--include`` paths relative to the snapshot's root; each must name something in it.

    Checked before anything is written: an include that matches nothing
    would otherwise "restore" zero files and exit 0.
    """
    normal = []
    for include in includes:
        parts = [p for p in include.strip().split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise UsageError(f"--include {include!r} is not a path inside the snapshot",
                             hint="give a path as the snapshot lists it, e.g. media/photos")
        nodes = load_tree_checked(repo, snap.tree)
        for depth, part in enumerate(parts):
            node = next((n for n in nodes if n.name == part), None)
            if node is None:
                here = "/".join(parts[:depth]) or "its top level"
                names = ", ".join(display(n.name) for n in nodes[:8]) + (", ..." if len(nodes) > 8 else "")
                raise DrtoolError(f"--include {include!r} matches nothing in snapshot {snap.short_id}: "
                                  f"no {'/'.join(parts[:depth + 1])!r}; nothing was restored",
                                  hint=f"{here} holds: {names or '(nothing)'}")
            if depth < len(parts) - 1:
                if node.type != DIR or not node.subtree:
                    raise DrtoolError(f"--include {include!r} matches nothing in snapshot "
                                      f"{snap.short_id}: {'/'.join(parts[:depth + 1])!r} is not a directory")
                nodes = load_tree_checked(repo, node.subtree)
        normal.append("/".join(parts))
    return normal


def _remote_open_files() -> int:
    """REMOTE_MAX_OPEN_FILES, or half the descriptor limit when that is lower (the walk holds a
    descriptor per directory level as well)."""
    raise_open_file_limit()
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return MAX_OPEN_FILES
    if soft == resource.RLIM_INFINITY:
        return REMOTE_MAX_OPEN_FILES
    return max(MAX_OPEN_FILES, min(REMOTE_MAX_OPEN_FILES, soft // 2))


class Restorer:
    def __init__(self, session: Session, snap: Snapshot, target: str, *, includes: list[str],
                 allow_partial: bool = False, progress: Callable[[int], None] | None = None,
                 workers: int | None = None, max_open_files: int = MAX_OPEN_FILES,
                 overwrite: str = DEFAULT_POLICY, dry_run: bool = False) -> None:
        self.repo: Repository = session.repo
        self.snap = snap
        self.target = os.path.abspath(target)
        self.includes = normalize_includes(self.repo, snap, includes)
        self.allow_partial = allow_partial
        self.policy = check_policy(overwrite)
        self.dry_run = dry_run
        self.result = RestoreResult(snap, self.target, plan_only=dry_run, overwrite=self.policy)
        self._packs: set[bytes] = set()
        self._writer = GroupWriter(self.repo, workers or RESTORE_WORKERS or max(2, os.cpu_count() or 2),
                                   on_file_done=self._complete, progress=progress)
        if self._writer.fetcher is not None and max_open_files == MAX_OPEN_FILES:
            max_open_files = _remote_open_files()
        self._planner = GroupPlanner(self._writer.submit,
                                     crowded=lambda: len(self._open_jobs) >= max_open_files // 2,
                                     after_flush=self._writer.flush)
        # Files whose temporary is open; bounded, because a file stays open
        # until the planner has handed out every group it needs.
        self._open_jobs: set[FileJob] = set()
        self._open_slots = threading.BoundedSemaphore(max_open_files)
        self._links: dict[str, str] = {}
        self._pending_links: list[tuple[str, str, Node]] = []
        self._dirs: list[tuple[str, Node]] = []
        self._root: DirHandle | None = None
        self._run_token = token_hex(4)  # part names: no getrandom per file
        self._part_numbers = itertools.count()
        self._fatal: BaseException | None = None
        self._lock = threading.Lock()

    def run(self) -> RestoreResult:
        raise_open_file_limit()
        self._root = open_root(self.target, create=not self.dry_run)
        try:
            if not self.dry_run:
                _remove_stale_parts(self._root)
            self._run_walk()
            if self._fatal:
                raise self._fatal
            if not self.dry_run:
                self._finish_links_and_dirs()
            self.result.packs = len(self._packs)
            return self.result
        finally:
            self._root.release()

    def _run_walk(self) -> None:
        try:
            try:
                self._walk()
            except DrtoolError as exc:
                self._set_fatal(exc)
            # Also after an error: files already started are finished where
            # they can be, so that re-running the restore resumes from them.
            self._planner.flush()
            self._writer.wait()
        finally:
            self._writer.aborted = True  # only when an exception escaped: skip what is still queued
            self._writer.shutdown()
            self._discard_unfinished()

    def _walk(self) -> None:
        """Depth first with an explicit stack of open directories; directories before their contents."""
        assert self._root is not None
        stack: list[tuple[DirHandle, Iterator[Node]]] = [
            (self._root.acquire(), iter(load_tree_checked(self.repo, self.snap.tree)))]
        try:
            while stack and not self._fatal:
                handle, nodes = stack[-1]
                node = next(nodes, None)
                if node is None:
                    stack.pop()[0].release()
                    continue
                rel = f"{handle.rel}/{node.name}" if handle.rel else node.name
                if self.includes and not selected(rel, self.includes):
                    continue
                try:
                    if node.type == DIR:
                        child = self._restore_dir(handle, node, rel)
                        if child is not None and node.subtree:
                            stack.append((child, iter(load_tree_checked(self.repo, node.subtree))))
                        elif child is not None:
                            child.release()
                    elif node.type == FILE:
                        self._restore_file(handle, node, rel)
                    else:
                        self._restore_special(handle, node, rel)
                except OSError as exc:
                    raise _target_error(exc, self._show(rel)) from None
        finally:
            for handle, _nodes in stack:
                handle.release()

    def _set_fatal(self, error: BaseException) -> None:
        with self._lock:
            self._fatal = self._fatal or error

    def _show(self, rel: str) -> str:
        return os.path.join(self.target, rel)

    def _existing(self, rel: str, existing: Existing) -> bool:
        """Record a replacement or a conflict; False when the entry must be left as it is."""
        if existing.decision == CONFLICT:
            self.result.note(False, f"{self._show(rel)}: {existing.reason}")
            return False
        if existing.decision == REPLACE:
            self.result.note(True, f"{self._show(rel)}: {existing.reason}")
        return True

    def _restore_dir(self, parent: DirHandle, node: Node, rel: str) -> DirHandle | None:
        child, existing = enter_dir(parent, node.name, rel, self.policy, self.dry_run)
        self._existing(rel, existing)
        if child is None:
            return None
        if not child.fresh and not self.dry_run:
            _remove_stale_parts(child)
        if not self.dry_run:
            self._dirs.append((rel, node))
        self.result.dirs += 1
        return child

    def _restore_file(self, parent: DirHandle, node: Node, rel: str) -> None:
        self.result.files += 1
        self.result.bytes += node.size
        if node.link_key and node.link_key in self._links and not self.dry_run:
            self._pending_links.append((self._links[node.link_key], rel, node))  # linked once files exist
            return
        existing = (Existing(NEW) if parent.fresh
                    else judge_file(parent, node.name, node, self.policy, self._content_matches))
        if not self._existing(rel, existing):
            return  # kept as it is; a later hard link to it becomes the first instead
        if node.link_key:
            self._links[node.link_key] = rel
        if existing.decision == KEEP:
            self.result.files_skipped_existing += 1
            return
        if self.dry_run:
            self._packs.update(self.repo.locate(bytes.fromhex(c)).pack_id for c in node.content)
            return
        job = self._open_job(parent, node, rel)
        self._plan_blobs(job)

    def _restore_special(self, parent: DirHandle, node: Node, rel: str) -> None:
        if node.type not in (SYMLINK, FIFO) and not (node.type in (CHARDEV, BLOCKDEV) and os.geteuid() == 0):
            self.result.skipped.append(f"{self._show(rel)} ({node.type} not restored)")
            return
        existing = Existing(NEW) if parent.fresh else judge_other(parent, node.name, node, self.policy)
        if not self._existing(rel, existing) or existing.decision == KEEP or self.dry_run:
            return
        remove_for_replacement(parent, node.name, existing)
        fd, name = parent.fd, node.name
        if node.type == SYMLINK:
            os.symlink(node.target or "", name, dir_fd=fd)
        elif node.type == FIFO:
            os.mkfifo(name, node.mode & 0o7777, dir_fd=fd)
        else:
            kind = 0o020000 if node.type == CHARDEV else 0o060000
            os.mknod(name, (node.mode & 0o7777) | kind, node.rdev, dir_fd=fd)
        _apply_metadata_at(fd, name, node, is_link=node.type == SYMLINK)

    def _open_job(self, parent: DirHandle, node: Node, rel: str) -> FileJob:
        if not self._open_slots.acquire(blocking=False):
            self._planner.flush()  # the open files finish only once their groups are handed out
            self._open_slots.acquire()
        tmp = f"{PART_PREFIX}{self._run_token}-{next(self._part_numbers)}"
        try:
            fd = os.open(tmp, CREATE_FLAGS, 0o600, dir_fd=parent.fd)
        except BaseException:
            self._open_slots.release()
            raise
        # Every blob reference, plus one for planning itself: the file cannot
        # complete while its blobs are still being handed out.
        job = FileJob(self._show(rel), node, fd, tmp, len(node.content) + 1, parent.acquire(), node.name)
        with self._lock:
            self._open_jobs.add(job)
        return job

    def _plan_blobs(self, job: FileJob) -> None:
        """Hand every blob of the file to the planner; a blob missing from the index fails the file."""
        planned = 0
        try:
            os.ftruncate(job.fd, job.node.size)
            offset = 0
            locate, add = self.repo.locate, self._planner.add
            for hexid in job.node.content:
                blob_id = bytes.fromhex(hexid)
                loc = locate(blob_id)
                add(loc, (job, offset, loc.inner, loc.raw_length, blob_id))
                planned += 1
                offset += loc.raw_length
        except (IntegrityError, OSError) as exc:
            job.error = job.error or exc
        finally:
            self._writer.settle(job, len(job.node.content) + 1 - planned)

    def _content_matches(self, parent: DirHandle, name: str, node: Node) -> bool:
        fd = open_existing_for_reading(parent, name)
        if fd is None:
            return False
        try:
            with os.fdopen(fd, "rb") as handle:
                for hexid in node.content:
                    blob_id = bytes.fromhex(hexid)
                    data = handle.read(self.repo.locate(blob_id).raw_length)
                    if self.repo.ids.blob_id(data) != blob_id:
                        return False
        except (OSError, DrtoolError):
            return False
        return True

    def _complete(self, job: FileJob) -> None:
        """Every blob of the file is written (or failed): rename it into place, or discard it."""
        with self._lock:
            self._open_jobs.discard(job)
        self._open_slots.release()
        parent: DirHandle = job.parent
        try:
            if job.error is None:
                _apply_metadata_fd(job.fd, job.node)
                os.close(job.fd)
                os.replace(job.tmp, job.name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
                return
            os.close(job.fd)
            os.unlink(job.tmp, dir_fd=parent.fd)
        except OSError as exc:
            job.error = job.error or _target_error(exc, job.path)
            _unlink_quietly(job.tmp, parent)
        finally:
            parent.release()
        self._file_failed(job)

    def _file_failed(self, job: FileJob) -> None:
        error = job.error
        if isinstance(error, Aborted):
            return  # another error stopped the restore; that one is reported
        if isinstance(error, OSError):
            error = _target_error(error, job.path)
        with self._lock:
            if isinstance(error, IntegrityError) and self.allow_partial:
                self.result.damaged.append(f"{job.path}: {error}")
                return
            if self._fatal is None:
                if isinstance(error, IntegrityError):
                    error = IntegrityError(f"cannot restore {job.path}: {error}",
                                           hint="run 'drtool check --read-data'; use --allow-partial "
                                                "to restore everything else")
                self._fatal = error

    def _discard_unfinished(self) -> None:
        """After an error: files whose blobs were never all handed out leave no temporary behind."""
        with self._lock:
            jobs, self._open_jobs = list(self._open_jobs), set()
        for job in jobs:
            try:
                os.close(job.fd)
            except OSError:
                pass
            _unlink_quietly(job.tmp, job.parent)
            job.parent.release()

    def _judge_link(self, dirs: dict[str, int], first: str, rel: str, node: Node) -> tuple[Existing, int, str]:
        """What is at a hard link's second name: nothing, the first name's inode already, or other."""
        parent_rel, _, name = rel.rpartition("/")
        fd = open_rel(self._root, parent_rel, dirs)  # type: ignore[arg-type]
        existing = judge_file(DirHandle(fd, parent_rel, False), name, node, self.policy, self._content_matches)
        if existing.st is not None:
            first_st = self._lstat_rel(dirs, first)
            if first_st is not None and (first_st.st_ino, first_st.st_dev) == (existing.st.st_ino,
                                                                                existing.st.st_dev):
                existing = Existing(KEEP, existing.st)
        return existing, fd, name

    def _lstat_rel(self, dirs: dict[str, int], rel: str) -> os.stat_result | None:
        parent_rel, _, name = rel.rpartition("/")
        try:
            fd = open_rel(self._root, parent_rel, dirs)  # type: ignore[arg-type]
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None

    def _finish_links_and_dirs(self) -> None:
        """Hard links, then directory metadata deepest first (a read-only directory is set last)."""
        dirs: dict[str, int] = {}
        try:
            for first, rel, node in self._pending_links:
                if len(dirs) > 64:  # bounded: links may be spread over many directories
                    _close_all(dirs)
                try:
                    existing, fd, name = self._judge_link(dirs, first, rel, node)
                    if existing.decision == KEEP:
                        self.result.files_skipped_existing += 1
                    if not self._existing(rel, existing) or existing.decision == KEEP:
                        continue
                    first_parent, _, first_name = first.rpartition("/")
                    first_fd = open_rel(self._root, first_parent, dirs)  # type: ignore[arg-type]
                    if existing.decision == REPLACE:
                        os.unlink(name, dir_fd=fd)
                    os.link(first_name, name, src_dir_fd=first_fd, dst_dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    raise _target_error(exc, self._show(rel)) from None
            _close_all(dirs)
            for rel, node in reversed(self._dirs):
                try:
                    fd = open_rel(self._root, rel, dirs)  # type: ignore[arg-type]
                    _apply_metadata_fd(fd, node, best_effort=True)
                except OSError as exc:
                    raise _target_error(exc, self._show(rel)) from None
                finally:  # its subdirectories are done: in reversed pre-order, only ancestors stay open
                    cached = dirs.pop(rel, None)
                    if cached is not None:
                        os.close(cached)
        finally:
            _close_all(dirs)


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _apply_metadata_fd(fd: int, node: Node, best_effort: bool = False) -> None:
    """Owner (as root), mode and mtime through the descriptor: nothing is looked up by name."""
    try:
        if os.geteuid() == 0:
            os.fchown(fd, node.uid, node.gid)
        os.fchmod(fd, node.mode & 0o7777)
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
    except PermissionError:
        if not best_effort:
            raise


def _apply_metadata_at(dir_fd: int | None, name: str, node: Node, is_link: bool) -> None:
    """Metadata of a link or special file this run just created (links themselves, never their targets)."""
    try:
        if os.geteuid() == 0:
            os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        if not is_link:
            os.chmod(name, node.mode & 0o7777, dir_fd=dir_fd)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    except (NotImplementedError, PermissionError):
        pass  # metadata is best effort for links and unprivileged runs


def _remove_stale_parts(folder: DirHandle) -> None:
    """Delete temporaries of an earlier restore that was killed (SIGKILL, power loss):
    it could not clean up, and they would stay in the restored tree forever.
    Directories come before their contents, so this never sees our own."""
    try:
        names = [n for n in os.listdir(folder.fd) if n.startswith(PART_PREFIX)]  # type: ignore[arg-type]
    except OSError:
        return
    for name in names:
        st = lstat_at(folder, name)
        if st is not None and stat.S_ISREG(st.st_mode):
            _unlink_quietly(name, folder)


def _unlink_quietly(name: str, parent: DirHandle) -> None:
    try:
        os.unlink(name, dir_fd=parent.fd)
    except OSError:
        pass


def _target_error(exc: OSError, path: str) -> DrtoolError:
    if exc.errno == errno.ENOSPC:
        return RestoreTargetError(f"restore target is full while writing {path}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return RestoreTargetError(f"cannot write {path}: {exc.strerror}",
                                  hint="choose a writable --target")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return RestoreTargetError(f"cannot restore {path}: something in the target changed into a "
                                  f"symbolic link or file while the restore ran ({exc.strerror})",
                                  hint="make sure nothing else writes to --target, then re-run")
    return RestoreTargetError(f"cannot write {path}: {exc.strerror}")


def cold_packs(repo: Repository, snap: Snapshot, includes: list[str], *,
               wait: bool) -> warming.WarmPlan | None:
    """Packs of the snapshot in an archive class: warmed and waited for (``wait``) or only planned
    (``--dry-run``: then, with tree packs still cold, only those are known)."""
    trees = coldpacks.warm_trees(repo, wait=wait)
    if trees is None or not coldpacks.data_needs_checking(repo, trees) or (trees.needed and not wait):
        return trees
    includes = normalize_includes(repo, snap, includes)
    return coldpacks.warm_data(repo, [snap.tree], (lambda path: selected(path, includes)) if includes else None,
                               wait=wait)


def plan(session: Session, snap: Snapshot, target: str, includes: list[str],
         overwrite: str = DEFAULT_POLICY) -> RestoreResult:
    """What a restore would do, without writing anything (``--dry-run``): the same walk, read-only.

    With tree packs still in an archive class nothing can be walked: the
    result then only says which tree packs must be warmed first.
    """
    session.repo.load_index(read_only=True)
    warm = cold_packs(session.repo, snap, includes, wait=False)
    if warm is not None and warm.scope == "trees" and warm.needed:
        result = RestoreResult(snap, os.path.abspath(target), plan_only=True)
    else:
        result = Restorer(session, snap, target, includes=includes, overwrite=overwrite, dry_run=True).run()
    result.warm = warm.as_dict() if warm is not None else None
    return result


def restore(session: Session, snap: Snapshot, target: str, *, includes: list[str] | None = None,
            allow_partial: bool = False, progress: Callable[[int], None] | None = None,
            overwrite: str = DEFAULT_POLICY) -> RestoreResult:
    with session.lock("restore", read_only_ok=True):
        session.repo.load_index(read_only=True)  # the repository's new index objects: not cached here
        session.repo.limit_group_cache(RESTORE_GROUP_CACHE)
        warm = cold_packs(session.repo, snap, includes or [], wait=True)
        with collector_paused():
            result = Restorer(session, snap, target, includes=includes or [], allow_partial=allow_partial,
                              progress=progress, overwrite=overwrite).run()
        result.requests = session.repo.backend.stats.as_dict()
        result.warm = warm.as_dict() if warm is not None else None
        return result
