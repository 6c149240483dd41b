"""Sandboxes: throwaway places a rehearsal restores into, and the validations run there.

A rehearsal must never touch production, and must never leave debris: a
sandbox is created fresh (a new temporary directory, a throwaway database
server on a private socket), and :meth:`Sandbox.teardown` is called on every
path out -- success, failure, Ctrl-C or SIGTERM (see :func:`sigterm_as_interrupt`)
-- unless the operator asked to ``--keep`` it for a post-mortem.

Every sandbox restores the snapshot's files into ``data_dir`` first (so the
file-level checks see exactly what came out of the repository), then
``bring_up`` turns them into a running service where that applies -- except
a database sandbox whose ``bring_up`` reads the snapshot from the repository
itself (``restores_from_repository``: a physical or mydumper backup, a
dump or base backup restored to a point in time), when the step has no
file-level checks: restoring a mariabackup stream as a plain file first
would do the work twice, need twice the disk, and count in the measured RTO.  Database
sandboxes (``drtool.rehearse.sandbox_db``) subclass :class:`Sandbox`, overriding
``bring_up``, ``env``, ``query`` and ``teardown``.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator

from drtool.childenv import child_environment
from drtool.errors import DrtoolError, RestoreTargetError, UsageError
from drtool.restore.run import RestoreResult, restore
from drtool.rehearse.runbook import UNSET, Check, SandboxSpec
from drtool.core.session import Session
from drtool.snapshot.model import FILE, Node, Snapshot
from drtool.snapshot.store import walk_tree

SANDBOX_ROOT_ENV = "DRTOOL_SANDBOX_ROOT"
RUNBOOK_SANDBOX_ENV = "SANDBOX"  # the human runbooks' scratch directory (runbooks/*.md)
PREFIX = "drtool-rehearsal-"
LABEL_MAX = 32


@dataclass
class SandboxContext:
    """What a sandbox may need beyond its spec: the configured source and settings."""

    source: str = ""
    source_conf: dict[str, Any] | None = None
    settings: Any = None


class Sandbox:
    """A temporary directory holding one restored snapshot (``type = "directory"``)."""

    kind = "directory"

    def __init__(self, spec: SandboxSpec, label: str, root: str | None = None,
                 context: SandboxContext | None = None) -> None:
        self.spec = spec
        self.context = context or SandboxContext()
        self.label = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)[:LABEL_MAX]
        self.root = spec.path or root or sandbox_root(None)[0]
        self.path = ""
        self.snapshot: Snapshot | None = None
        #: what the drill lead must hear although the step may pass (a base passed over for an older one)
        self.warnings: list[str] = []

    @property
    def data_dir(self) -> str:
        return os.path.join(self.path, "data")

    def create(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix=PREFIX + self.label + "-", dir=self.root)
        except OSError as exc:
            raise RestoreTargetError(f"cannot create a sandbox under {self.root}: {exc.strerror}",
                                     hint="give --sandbox-root (or $SANDBOX, [rehearse] sandbox_root) "
                                          "a writable directory") from None

    def restore_files(self, session: Session, snap: Snapshot) -> RestoreResult:
        """Restore the snapshot's tree into ``data_dir`` (verified by the restorer)."""
        self.snapshot = snap
        return restore(session, snap, self.data_dir)

    def restores_from_repository(self, snap: Snapshot) -> bool:
        """Whether :meth:`bring_up` reads ``snap`` from the repository itself (through
        ``drtool.databases``, as ``drtool restore --source`` does), so that its files need not
        be restored into ``data_dir`` first unless a file-level check asks for them."""
        return False

    def bring_up(self, session: Session, snap: Snapshot, target: datetime, latest: bool) -> datetime:
        """Make the restored data usable; return the moment the data now reflects.

        ``latest`` means "everything the repository has" (database sandboxes
        then replay every archived log), else recover to ``target``.
        """
        return snap.time

    def env(self) -> dict[str, str]:
        """Connection details for command validations (and ``--keep`` users)."""
        env = {"DRTOOL_SANDBOX_DIR": self.data_dir, "DRTOOL_SANDBOX_TYPE": self.kind,
               "DRTOOL_SANDBOX_ROOT_DIR": self.path}
        if self.snapshot is not None:
            env.update(DRTOOL_SNAPSHOT=self.snapshot.id, DRTOOL_SNAPSHOT_NAME=self.snapshot.name,
                       DRTOOL_SNAPSHOT_TIME=self.snapshot.time.isoformat())
        return env

    def query(self, sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
        raise UsageError(f"sql validations need a postgresql or mariadb sandbox, not {self.kind}")

    def describe(self) -> str:
        return f"{self.kind} sandbox at {self.path} (remove with: rm -rf '{self.path}')"

    def server_log(self) -> str | None:
        """The end of the sandbox server's log (database sandboxes); None without a server."""
        return None

    def teardown(self) -> None:
        if self.path and os.path.lexists(self.path):
            remove_tree(self.path)


def sandbox_root(option: str | None, settings: Any = None) -> tuple[str, str]:
    """Where sandboxes go, and which setting said so: ``--sandbox-root``, then
    DRTOOL_SANDBOX_ROOT, then $SANDBOX (the runbooks' scratch directory), then the config's
    ``[rehearse] sandbox_root``; the system temp directory only when none is set (a full
    restore rarely fits in a tmpfs /tmp)."""
    if option:
        return option, "--sandbox-root"
    for name in (SANDBOX_ROOT_ENV, RUNBOOK_SANDBOX_ENV):
        if os.environ.get(name):
            return os.environ[name], f"${name}"
    configured = settings.section("rehearse").get("sandbox_root") if settings is not None else None
    if configured:
        if not isinstance(configured, str):
            raise UsageError(f"{settings.path}: [rehearse] sandbox_root must be a string (a directory)")
        return configured, f"[rehearse] sandbox_root in {settings.path}"
    return tempfile.gettempdir(), "the system temp directory; set --sandbox-root, $SANDBOX or [rehearse] sandbox_root"


def make_sandbox(spec: SandboxSpec, label: str, root: str | None = None,
                 context: SandboxContext | None = None) -> Sandbox:
    """Database sandboxes live in drtool.rehearse.sandbox_db (imported only when used)."""
    if spec.type == "directory":
        return Sandbox(spec, label, root, context)
    from drtool.rehearse import sandbox_db
    return sandbox_db.SANDBOX_TYPES[spec.type](spec, label, root, context)


def remove_tree(path: str) -> None:
    """rm -rf that also copes with restored read-only directories."""
    def retry(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
            func(failed)
        except FileNotFoundError:
            pass
    shutil.rmtree(path, onerror=retry)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (systemd stop, kill) into KeyboardInterrupt so teardown runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----- validations ------------------------------------------------------------------
FILE_CHECKS = ("files", "sample")
OUTPUT_TAIL = 5


@dataclass
class CheckResult:
    name: str
    type: str
    status: str
    detail: str
    seconds: float
    where: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CheckRunner:
    """Runs a step's validations against its sandbox; a failure is a result, not an exception."""

    def __init__(self, session: Session, sandbox: Sandbox, snap: Snapshot, rng: random.Random,
                 clock: Callable[[], datetime], extra_env: dict[str, str] | None = None,
                 shards: list[Snapshot] | None = None) -> None:
        """``shards``: a snapshot set's snapshots, all restored into this sandbox (checked as one)."""
        self.session, self.sandbox, self.snap = session, sandbox, snap
        self.snaps = shards or [snap]
        self.rng, self.clock = rng, clock
        self.extra_env = extra_env or {}

    def run(self, check: Check) -> CheckResult:
        started = self.clock()
        handler = {"files": self._files, "sample": self._sample, "command": self._command,
                   "sql": self._sql}[check.type]
        try:
            ok, detail = handler(check)
        except DrtoolError as exc:
            ok, detail = False, exc.one_line()
        except OSError as exc:
            ok, detail = False, f"{exc.strerror or exc} ({exc.filename or 'sandbox'})"
        seconds = round((self.clock() - started).total_seconds(), 3)
        return CheckResult(check.name, check.type, "passed" if ok else "failed", detail, seconds,
                           check.where)

    def _files(self, check: Check) -> tuple[bool, str]:
        files, size = count_files(self.sandbox.data_dir)
        totals = [manifest_totals(self.session, snap) for snap in self.snaps]
        want_files, want_size = sum(t[0] for t in totals), sum(t[1] for t in totals)
        ok = _within(files, want_files, check.tolerance) and _within(size, want_size, check.tolerance)
        return ok, (f"restored {files} file(s), {size} bytes; the manifest says {want_files} "
                    f"file(s), {want_size} bytes (tolerance {check.tolerance * 100:g}%)")

    def _sample(self, check: Check) -> tuple[bool, str]:
        nodes = [(p, n) for snap in self.snaps for p, n in walk_tree(self.session.repo, snap.tree)
                 if n.type == FILE]
        if not nodes:
            return True, "the snapshot holds no regular files to sample"
        sample = self.rng.sample(nodes, min(check.count, len(nodes)))
        bad = [f"{path} ({why})" for path, node in sample
               if (why := self._mismatch(os.path.join(self.sandbox.data_dir, path), node))]
        if bad:
            return False, (f"{len(bad)} of {len(sample)} sampled file(s) differ from the manifest: "
                           + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
        return True, f"{len(sample)} of {len(nodes)} file(s) sampled; all match the manifest"

    def _mismatch(self, path: str, node: Node) -> str:
        """Compare a restored file with its node by keyed blob ids, slice by slice."""
        repo = self.session.repo
        try:
            if os.lstat(path).st_size != node.size:
                return "size differs"
            with open(path, "rb") as handle:
                for hexid in node.content:
                    blob_id = bytes.fromhex(hexid)
                    data = handle.read(repo.locate(blob_id).raw_length)
                    if repo.ids.blob_id(data) != blob_id:
                        return f"content differs at offset {handle.tell() - len(data)}"
                if handle.read(1):
                    return "longer than the manifest"
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""

    def _command(self, check: Check) -> tuple[bool, str]:
        env = child_environment({**self.extra_env, **self.sandbox.env()})
        code, output = run_command(check.run, env, self.sandbox.data_dir, check.timeout)
        if code is None:
            return False, f"timed out after {check.timeout:g}s" + (f": {output}" if output else "")
        return code == 0, f"exit status {code}" + (f": {output}" if output else "")

    def _sql(self, check: Check) -> tuple[bool, str]:
        rows = self.sandbox.query(check.query, check.database)
        value: Any = rows[0][0] if rows and rows[0] else None
        got = value
        if check.expect is not UNSET:
            got = _rows_for(check.expect, rows, value)
            if not _same(got, check.expect):
                return False, f"expected {check.expect!r}, got {got!r}"
        if check.min is not None or check.max is not None:
            number = _as_number(value)
            if number is None:
                return False, f"expected a number, got {value!r}"
            if check.min is not None and number < check.min:
                return False, f"got {number:g}, below the minimum {check.min:g}"
            if check.max is not None and number > check.max:
                return False, f"got {number:g}, above the maximum {check.max:g}"
        return True, f"got {got!r}"


def count_files(root: str) -> tuple[int, int]:
    """Regular files and their total size under ``root`` (symlinks not followed)."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return files, size


def manifest_totals(session: Session, snap: Snapshot) -> tuple[int, int]:
    """File count and size from the snapshot's summary, or from its tree when absent."""
    summary = snap.summary or {}
    if "files" in summary and "size" in summary:
        return int(summary["files"]), int(summary["size"])
    nodes = [n for _p, n in walk_tree(session.repo, snap.tree) if n.type == FILE]
    return len(nodes), sum(n.size for n in nodes)


def _within(actual: int, expected: int, tolerance: float) -> bool:
    return abs(actual - expected) <= tolerance * expected


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _rows_for(expect: Any, rows: list[tuple[Any, ...]], value: Any) -> Any:
    """Shape the result like ``expect``: a scalar, a column (list) or rows (list of lists)."""
    if isinstance(expect, list):
        if expect and isinstance(expect[0], list):
            return [list(r) for r in rows]
        return [r[0] if r else None for r in rows]
    return value


def _same(got: Any, expect: Any) -> bool:
    if isinstance(expect, list):
        return isinstance(got, list) and len(got) == len(expect) and all(
            _same(g, e) for g, e in zip(got, expect))
    if isinstance(expect, (int, float)) and not isinstance(expect, bool):
        number = _as_number(got)
        return number is not None and abs(number - expect) <= 1e-9 * max(1.0, abs(expect))
    if isinstance(expect, bool):
        return got in (expect, int(expect)) or str(got).lower() in (("t", "true", "1") if expect
                                                                   else ("f", "false", "0"))
    return str(got) == str(expect)


def run_command(command: str | list[str], env: dict[str, str], cwd: str,
                timeout: float) -> tuple[int | None, str]:
    """Run a validation command in its own process group; kill the group on timeout or Ctrl-C."""
    proc = subprocess.Popen(command, shell=isinstance(command, str), env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, code = proc.communicate()[0], None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    lines = out.decode(errors="replace").strip().splitlines()
    return code, " | ".join(lines[-OUTPUT_TAIL:])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
